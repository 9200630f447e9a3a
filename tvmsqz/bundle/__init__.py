"""Runtime-only bundles: ship a compiled model to a device that has neither TVM nor pip.

`tvmsqz package ARTIFACT.so -o DIR [--tar]` builds, for the artifact's architecture::

    DIR/bundle.json            format, model, target, arch, input, runtime versions, sizes,
                               and every file below with its size and sha256
    DIR/model/NAME.so(.json)   the artifact and its manifest, unchanged
    DIR/lib/libtvm_runtime.so  the TVM runtime and tvm-ffi of that architecture, from the
    DIR/lib/libtvm_ffi.so      matching wheels (stripped); never libtvm_compiler.so
    DIR/bin/tvmsqz-run         C++ runner (target's compiler, rpath $ORIGIN/../lib)
    DIR/bin/tvmsqz-run.py      Python runner: python3 + numpy, ctypes on the tvm-ffi C ABI
    DIR/share/labels.txt       ImageNet class names for the top-5
    DIR/README.txt

* `build`: `build_bundle`, the C++ runner build (cached), per-architecture facts from the
  artifact (`bundle_target`).
* `runtimes`: where the runtime of an architecture comes from (`find_runtime`).
* `run`: run a bundle's runners here or chrooted in the TVM-less emulated aarch64 root.
* `runner.cpp`, `pyrunner.py`: the runners' sources, copied or compiled into bundles.

See docs/bundle.md.
"""

from .build import CPP_RUNNER, FORMAT, PY_RUNNER, BundleTarget, build_bundle, build_runner, bundle_target, host_arch
from .run import RUNNERS, bare_arm_root, bare_root_problem, run_bundle, runner_report
from .runtimes import RuntimeSource, candidate_sources, find_runtime

__all__ = [
    "CPP_RUNNER",
    "FORMAT",
    "PY_RUNNER",
    "RUNNERS",
    "BundleTarget",
    "RuntimeSource",
    "bare_arm_root",
    "bare_root_problem",
    "build_bundle",
    "build_runner",
    "bundle_target",
    "candidate_sources",
    "find_runtime",
    "host_arch",
    "run_bundle",
    "runner_report",
]
