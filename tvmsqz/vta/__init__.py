"""VTA target: int8 SqueezeNet on the Versatile Tensor Accelerator, simulated.

Layers (each usable on its own):
  config    hardware parameters as data (`targets/vta.json`), derived sizes
  isa       bit-exact 128-bit instruction / 32-bit micro-op encode and decode
  sim       behavioural simulator: queues, dependency tokens, SRAM, int8/int32 semantics,
            deadlock detection, cycle estimate and DRAM traffic
  program   sequential program + data dependencies -> dependency tokens
  lower     one int8 conv layer (or fused expand pair) -> VTA program, with tiling
  pool      one int8 max-pool -> VTA program on the ALU (MAX over the window's taps)
  tune      evolutionary tiling search scored by simulated cycles, JSON database
  graph     ONNX -> small graph, numpy fp32 interpreter, im2col rewrite of the first conv,
            VTA/host partition (every conv and max-pool on VTA; what stays on the host, why)
  quant     power-of-two int8 post-training quantisation (weights per channel, zero points
            where they fold exactly), quantised numpy reference
  host      host segments as Relax functions compiled with TVM for the CPU
  artifact  compile_vta / load_vta / bench_vta / tune_vta

No FPGA board has run any of this: the device is the simulator.
"""

from .artifact import VTAModel, bench_vta, compile_vta, load_vta, sidecar_path, tune_vta
from .config import VTAConfig, load_config

__all__ = ["compile_vta", "load_vta", "bench_vta", "tune_vta", "VTAModel", "VTAConfig", "load_config",
           "sidecar_path"]
