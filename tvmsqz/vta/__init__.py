"""VTA target: int8 SqueezeNet on the Versatile Tensor Accelerator, simulated.

Layers (each usable on its own; the VTA backend, `tvmsqz.backends.vta`, drives them with the
target it is given and nothing here reads the targets folder or imports a backend):
  config    hardware parameters as data (a VTA target's "vta"/"cycle_model"; defaults =
            `targets/vta.json`), derived sizes (BLOCK, buffer depths, element bytes)
  isa       bit-exact 128-bit instruction / 32-bit micro-op encode and decode
  sim       behavioural simulator: queues, dependency tokens, SRAM, int8/int32 semantics,
            deadlock detection, cycle estimate and DRAM traffic
  program   sequential program + data dependencies -> dependency tokens
  lower     one int8 conv layer (or fused expand pair) -> VTA program, with tiling
  pool      one int8 max-pool -> VTA program on the ALU (MAX over the window's taps)
  tune      evolutionary tiling search scored by simulated cycles; the JSON tiling database
            and where a target's shipped one lives
  graph     ONNX -> small graph, numpy fp32 interpreter, im2col rewrite of the first conv,
            VTA/host partition (every conv and max-pool on VTA; what stays on the host, why)
  quant     VTA's quantised network (QuantNet: host segments + int8 VTA layers) built with
            `tvmsqz.quant` (scales, zero points, calibration, bias correction); numpy reference
  host      host segments as Relax functions compiled with TVM for the host CPU target
  artifact  compile_vta / load_vta (VTAModel, the Artifact protocol) / bench_vta / tune_vta

No FPGA board has run any of this: the device is the simulator.
"""

from .artifact import VTAModel, bench_vta, compile_vta, load_vta, sidecar_path, tune_vta
from .config import VTAConfig, load_config

__all__ = ["compile_vta", "load_vta", "bench_vta", "tune_vta", "VTAModel", "VTAConfig", "load_config", "sidecar_path"]
