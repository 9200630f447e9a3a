"""One module per target family; `targets/*.json` names the family, this picks the module.

A backend module provides the family-specific hooks that `build` and `runtime` call:
`pre_tuning_passes(spec)`, `post_database_passes(spec)`, `default_schedule(mod, spec)`,
`pass_config(spec)` (extra PassContext options), `export(executable, spec, path)` and `device(spec)`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import TvmsqzError
from ..targets import TargetSpec

_FAMILIES = {"cpu": "cpu", "cuda": "cuda"}


def get_backend(spec: TargetSpec) -> ModuleType:
    module = _FAMILIES.get(spec.family)
    if module is None:
        raise TvmsqzError(f"target {spec.name!r} (family {spec.family!r}) does not use the TVM build flow")
    return importlib.import_module(f"{__name__}.{module}")
