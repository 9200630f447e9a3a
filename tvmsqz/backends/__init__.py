"""One backend per target family: `targets/*.json` names the family, this picks the module.

A backend owns everything about its family (as an ONNX Runtime execution provider owns its
device); the CLI, `runtime`, `tune` and `targets` ask it and never branch on a family or a TVM
target kind. Every backend module `tvmsqz.backends.<family>` provides:

Target data
    `resolve_target_data(raw) -> raw`  family-specific resolution (a GPU's architecture, ...),
                                       called by `targets.get_target` at call time
    `runs_on_host(spec) -> bool`       whether its artifacts run in this process
    `RUNTIME_ONLY`                     whether its artifacts load through libtvm_runtime.so alone
Commands (what the CLI calls)
    `compile_model(model, spec, output, **options) -> str`   writes artifact + manifest, returns
                                                             the line to print
    `bench_model(model, spec, **options) -> dict`            the bench report
    `tune_model(model, spec, **options) -> (dict, str)`      summary and the line to print
    `load_artifact(path, manifest) -> runner`               `.run(x) -> np.ndarray`; runtime side,
                                                             imports no compiler module
TVM build flow (the families TVM compiles: cpu, cuda; see `tvmflow`)
    `device_type(spec)`, `device(spec)`, `pre_tuning_passes(spec)`, `post_database_passes(spec)`,
    `default_schedule(mod, spec)`, `pass_config(spec)`, `export(executable, spec, path)`,
    `tuning_builder_runner(spec, rpc, *, workers, measure_threads)`

Importing this package imports no backend; `get_backend` imports the one asked for.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import TvmsqzError
from ..spec import TargetSpec

FAMILIES = ("cpu", "cuda", "vta")


def backend_for_family(family: str) -> ModuleType:
    """The backend module of a family name (as a manifest or target file gives it)."""
    if family not in FAMILIES:
        raise TvmsqzError(f"unknown target family {family!r} (known: {', '.join(FAMILIES)})")
    return importlib.import_module(f"{__name__}.{family}")


def get_backend(spec: TargetSpec) -> ModuleType:
    """The backend module of a resolved target."""
    return backend_for_family(spec.family)
