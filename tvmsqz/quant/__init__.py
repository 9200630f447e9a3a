"""Post-training int8 quantisation shared by the backends: calibration inputs, power-of-two
scale selection and empirical bias correction (numpy only; no backend, no TVM).

  scales     power-of-two exponents (MSE-optimal per tensor, per output channel for weights),
             integer zero points, `quantize_np` / `dequantize_np` (the rounding every backend's
             generated code must reproduce bit for bit)
  calibrate  calibration inputs: the bundled real photos, mirrored left-right so that the
             evaluation views are not the calibration views, or the user's images
  bias       empirical bias correction (Nagel et al. 2019): the per-output-channel mean error
             of a quantised convolution against fp32, folded into its integer bias

VTA (`tvmsqz.vta.quant`) builds its quantised network on these; it imports nothing from a
backend, so the CPU int8 path can use the same pieces.
"""

from .bias import conv_mean_error, corrected_bias, mean_patch
from .calibrate import calibration_inputs, default_calibration
from .scales import choose_exponent, choose_exponent_zp, dequantize_np, quantize_np, weight_exponents, zero_point

__all__ = [
    "calibration_inputs",
    "choose_exponent",
    "choose_exponent_zp",
    "conv_mean_error",
    "corrected_bias",
    "default_calibration",
    "dequantize_np",
    "mean_patch",
    "quantize_np",
    "weight_exponents",
    "zero_point",
]
