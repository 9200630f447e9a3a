"""One backend per target family: `targets/*.json` names the family, this picks the module.

A backend owns everything about its family (as an ONNX Runtime execution provider owns its
device); the CLI, `runtime`, `tune` and `targets` ask it and never branch on a family or a TVM
target kind. Every backend module `tvmsqz.backends.<family>` provides:

Target data
    `resolve_target_data(raw) -> raw`  family-specific resolution (a GPU's architecture, ...),
                                       called by `targets.get_target` at call time
    `runs_on_host(spec) -> bool`       whether its artifacts run in this process
    `RUNTIME_ONLY`                     whether its artifacts load through libtvm_runtime.so alone
Pipeline and loading
    `pipeline`                         None: the shared TVM pipeline (`tvmsqz.flow`) compiles, benches
                                       and tunes this family through the build hooks below; or an
                                       object with `compile(model, spec, backend, output, **o) ->
                                       manifest`, `bench(model, spec, backend, **o) -> dict`,
                                       `tune(model, spec, backend, **o) -> dict` and
                                       `print_report(report, console)` (VTA's own pipeline)
    `load_artifact(path, manifest) -> Artifact`   the `tvmsqz.artifact.Artifact` protocol; runtime
                                       side, imports no compiler module
TVM build hooks (the families TVM compiles: cpu, cuda; called by `build`, `tune`)
    `device_type(spec)`, `device(spec)`, `layout_passes(spec)`, `pre_tuning_passes(spec)`,
    `post_database_passes(spec)`, `default_schedule(mod, spec)`, `space_generator(spec, mod, space)`,
    `pass_config(spec)`, `export(executable, spec, path)`,
    `tuning_builder_runner(spec, rpc, *, workers, measure_threads, measure)`

A backend supplies hooks and imports none of the modules that call them (`api`, `flow`, `build`,
`bench`, `tune`): import-linter checks it (pyproject.toml).
Importing this package imports no backend; `get_backend` imports the one asked for.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import TvmsqzError
from ..spec import FAMILIES, TargetSpec


def backend_for_family(family: str) -> ModuleType:
    """The backend module of a family name (as a manifest or target file gives it)."""
    if family not in FAMILIES:
        raise TvmsqzError(f"unknown target family {family!r} (known: {', '.join(FAMILIES)})")
    return importlib.import_module(f"{__name__}.{family}")


def get_backend(spec: TargetSpec) -> ModuleType:
    """The backend module of a resolved target."""
    return backend_for_family(spec.family)
