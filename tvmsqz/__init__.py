"""tvmsqz: SqueezeNet-class CNNs from ONNX to tuned TVM artifacts.

The API (see `tvmsqz.api`): `load_model`, `compile`, `tune`, `bench`, `load`; the `Model`,
`Artifact` and `BenchReport` they pass around; `TvmsqzError` for every bad input. Importing the
package imports none of it: the names load on first use, so `import tvmsqz` stays cheap and no
module of the package depends on this one.
"""

from .errors import TvmsqzError
from .version import __version__

_API = ("load_model", "compile", "tune", "bench", "load", "Model", "Artifact", "BenchReport", "resolve_target")

__all__ = [*_API, "TvmsqzError", "__version__"]


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'tvmsqz' has no attribute {name!r}")
