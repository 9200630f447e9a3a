"""A compiled TVM artifact loaded into a Relax VM: the runtime side of the CPU and CUDA backends.

This module is what a device runs, so it imports nothing of the compiler side of tvmsqz
(onnx, torch, the Relax frontend, passes) and, when asked (`prefer_runtime_lib`), loads TVM
through `libtvm_runtime.so` alone.
"""

from __future__ import annotations

import os
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from .artifact import ArtifactBase
from .errors import TvmsqzError
from .quiet import quiet_stderr

#: Set by `prefer_runtime_lib`: open artifacts through `libtvm_runtime.so` only.
_PREFER_RUNTIME_LIB = False


def prefer_runtime_lib() -> None:
    """Ask that this process load TVM through `libtvm_runtime.so` only, as a device does.

    The full wheel's `import tvm` maps `libtvm_compiler.so` (LLVM inside): ~110 MiB more RSS
    than the runtime needs to run an artifact. TVM reads `TVM_USE_RUNTIME_LIB` once, at its
    first import, so this only takes effect where nothing has imported tvm yet; `tvm_import`
    applies it. Opt-in (`tvmsqz run`, the memory probe) rather than automatic: a process that
    loads an artifact and compiles afterwards (a test session, a notebook) needs the compiler.
    """
    global _PREFER_RUNTIME_LIB
    _PREFER_RUNTIME_LIB = True


def tvm_import(device_type: str = "cpu"):
    """`import tvm`, through the runtime library only when `prefer_runtime_lib` asked, tvm is not
    imported yet and the artifact runs on the CPU (then TVM_USE_RUNTIME_LIB=1 is set for this
    process). A runtime-only import loads no device sidecar (`libtvm_runtime_cuda.so` and the
    like: TVM registers those with its backends, which runtime-only mode skips), so artifacts for
    other devices keep the full import."""
    if _PREFER_RUNTIME_LIB and device_type == "cpu" and "tvm" not in sys.modules:
        os.environ["TVM_USE_RUNTIME_LIB"] = "1"
    import tvm

    return tvm


def tvm_libraries_mapped() -> list[str]:
    """Names of the TVM libraries mapped into this process (`/proc/self/maps`): how to tell that
    `libtvm_compiler.so` (or a source build's `libtvm.so`) stayed out. Empty where /proc is absent."""
    try:
        with open("/proc/self/maps") as fh:
            names = {line.rsplit("/", 1)[-1].strip() for line in fh if "/libtvm" in line}
    except OSError:
        return []
    return sorted(n for n in names if n.endswith(".so"))


def check_input(
    x: np.ndarray,
    shape: tuple[int, ...] | None,
    dtype: str = "float32",
    *,
    cast: bool = False,
    allow_nonfinite: bool = False,
) -> np.ndarray:
    """The array a model may be fed: its shape, its dtype (or `cast`), finite values (or `allow_nonfinite`).

    A wrong dtype is refused rather than silently converted (float64 photos, int8 tensors are
    usually a preprocessing bug); one inf makes every output NaN, so it is refused too.
    """
    x = np.asarray(x)
    if shape is not None and tuple(x.shape) != tuple(shape):
        raise TvmsqzError(f"input has shape {list(x.shape)}, the artifact expects {list(shape)}")
    if x.dtype != np.dtype(dtype):
        if not cast:
            raise TvmsqzError(f"input has dtype {x.dtype}, the artifact expects {dtype} (pass --cast to convert)")
        if not (np.issubdtype(x.dtype, np.number) and not np.iscomplexobj(x)):
            raise TvmsqzError(f"input has dtype {x.dtype}, which cannot be cast to {dtype}")
        x = x.astype(dtype)
    if not allow_nonfinite and np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        bad = int(x.size - np.isfinite(x).sum())
        raise TvmsqzError(f"input has {bad} NaN/inf value(s) (pass --allow-nonfinite to run it anyway)")
    return np.ascontiguousarray(x)


def install_parallel_launch(path: str | Path) -> int | None:
    """Point a loaded CPU artifact's parallel loops at its own chunk-claiming launcher.

    CPU artifacts carry `tvmsqz_parallel_install` (tvmsqz/backends/cpu/parallel_launch.c): after TVM
    loaded the library, this swaps TVM's static one-chunk-per-pinned-thread pool for threads that
    claim chunks as they free up, so a slow or shared core does not hold up every kernel. Returns
    the thread count, or None for an artifact without it or with `TVMSQZ_PARALLEL=static` (TVM's
    own pool). The library must already be loaded (RTLD_NOLOAD: this never loads it a second time).
    """
    import ctypes
    import os

    if os.environ.get("TVMSQZ_PARALLEL", "claim") == "static":
        return None
    try:
        # An absolute path: dlopen looks a bare name up in the library path, not here.
        lib = ctypes.CDLL(os.path.abspath(path), mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        install = lib.tvmsqz_parallel_install
    except (OSError, AttributeError):  # not loaded here (another device), or built without it
        return None
    install.restype = ctypes.c_int
    threads = int(install())
    return threads or None


def check_elf(path: Path) -> None:
    """Refuse a file that is not a whole ELF shared object before `dlopen` sees it.

    `dlopen` maps the file; a truncated one kills the process with SIGBUS when a page past the
    end is touched. The section header table is the last thing a linker writes, so a file that
    ends before it (or has no valid ELF header) is truncated or foreign.
    """
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    size = path.stat().st_size
    try:
        with open(path, "rb") as fh:
            header = ELFFile(fh).header
    except (ELFError, OSError, ValueError) as exc:
        raise TvmsqzError(f"{path} is not an ELF shared library ({exc})") from None
    if header["e_type"] != "ET_DYN":
        raise TvmsqzError(f"{path} is not a shared library (ELF type {header['e_type']})")
    end = header["e_shoff"] + header["e_shnum"] * header["e_shentsize"]
    if end > size:
        raise TvmsqzError(f"{path} is truncated ({size} bytes, its ELF header needs {end})")


#: The Relax function `build` adds to every artifact: it returns the input shape, so a `.so` that
#: travels without its manifest still says what it takes (checked before the VM is called).
INPUT_SHAPE_FUNC = "tvmsqz_input_shape"


def embedded_input_shape(vm) -> tuple[int, ...] | None:
    """The input shape compiled into an artifact (`INPUT_SHAPE_FUNC`), or None for one built
    without it."""
    try:
        func = vm[INPUT_SHAPE_FUNC]
    except (AttributeError, KeyError, RuntimeError, ValueError):
        return None
    try:
        return tuple(int(d) for d in func())
    except Exception:  # noqa: BLE001 - a foreign function of that name: no shape, the VM checks
        return None


#: The functions a `--compress` artifact adds (`tvmsqz.passes.params`, named here too because the
#: runtime side imports no compiler module): the load-time weight packing, and the weights' shapes.
LOADER_FUNC = "tvmsqz_load_params"
WEIGHT_SHAPES_FUNC = "tvmsqz_weight_shapes"


def _function(vm, name: str):
    try:
        return vm[name]
    except (AttributeError, KeyError, RuntimeError, ValueError):
        return None


def bind_weights(vm, path: Path, manifest: dict | None, device, tvm) -> tuple[list, float]:
    """Decode a `--compress` artifact's weight file and run its load-time packing: the tensors
    `main` takes after its input, and the seconds it took. A plain artifact gives ([], 0.0).

    The file is the one the manifest names, beside the `.so` (its size and sha256 were checked
    with the manifest); every tensor's name and shape must be what the artifact was built for."""
    from .weightfile import WeightFileError, read

    loader = _function(vm, LOADER_FUNC)
    fields = (manifest or {}).get("weights")
    if loader is None:
        if fields:
            raise TvmsqzError(f"{path} does not load a weight file, yet its manifest names {fields.get('file')}")
        return [], 0.0
    if not isinstance(fields, dict) or not isinstance(fields.get("file"), str):
        raise TvmsqzError(f"{path} keeps its weights in a weight file, and its manifest (naming it) is missing")
    start = time.perf_counter()
    try:
        tensors = read(path.with_name(fields["file"]))
    except WeightFileError as exc:
        raise TvmsqzError(str(exc)) from None
    names = fields.get("tensors")
    if list(tensors) != names:
        raise TvmsqzError(f"{fields['file']} holds other tensors than {path.name} was built for (a swapped file?)")
    shapes = [tuple(v.shape) for v in tensors.values()]
    expected = _function(vm, WEIGHT_SHAPES_FUNC)
    flat = [len(shapes)] + [d for s in shapes for d in (len(s), *s)]
    if expected is None or [int(d) for d in expected()] != flat:
        raise TvmsqzError(f"{fields['file']} holds tensors of other shapes than {path.name} takes (a swapped file?)")
    args = [tvm.runtime.tensor(np.ascontiguousarray(v), device=device) for v in tensors.values()]
    packed = loader(*args)
    return list(packed), time.perf_counter() - start


class VMArtifact(ArtifactBase):
    """A loaded `.so` with a Relax VM on one device (the `Artifact` protocol of `tvmsqz.artifact`).

    A `--compress` artifact's weights are decoded and packed once, here (`bind_weights`), and
    passed to every call of `main` after the input."""

    def __init__(self, path: Path, vm, manifest: dict | None, device=None, weights: list | None = None):
        self.path = path
        self.vm = vm
        self.manifest = manifest or {}
        self.device = device
        self.weights = weights or []
        self._embedded_shape = None if manifest else embedded_input_shape(vm)

    @classmethod
    def open(cls, path: str | Path, manifest: dict | None, device_type: str) -> VMArtifact:
        """Load the module into a Relax VM on `device_type` (the backend's choice)."""
        tvm = tvm_import(device_type)
        from tvm.runtime.vm import VirtualMachine

        path = Path(path)
        check_elf(path)
        try:
            with quiet_stderr():
                lib = tvm.runtime.load_module(str(path))
            install_parallel_launch(path)
            vm = VirtualMachine(lib, tvm.device(device_type, 0))
        except Exception as exc:  # noqa: BLE001 - TVM's loader raises many types for a foreign file
            raise TvmsqzError(f"cannot load {path} as a TVM artifact: {str(exc).strip().splitlines()[-1]}") from None
        weights, seconds = bind_weights(vm, path, manifest, tvm.device(device_type, 0), tvm)
        artifact = cls(path, vm, manifest, tvm.device(device_type, 0), weights)
        artifact.load_seconds = seconds
        return artifact

    #: Seconds spent decoding and packing the weight file at load (0 without one).
    load_seconds = 0.0

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """The manifest's input shape; for a `.so` without one, the shape compiled into it."""
        spec = self.manifest.get("input")
        return tuple(spec["shape"]) if spec else self._embedded_shape

    def check_input(self, x: np.ndarray) -> np.ndarray:
        return check_input(x, self.input_shape, self.input_dtype, cast=True, allow_nonfinite=True)

    def run(self, x: np.ndarray) -> np.ndarray:
        import tvm

        arg = tvm.runtime.tensor(self.check_input(x), device=self.device)
        try:
            out = self.vm["main"](arg, *self.weights)
        except Exception as exc:  # noqa: BLE001 - shapes were checked above: this is the kernel's own failure
            lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
            detail = lines[-1] if lines else type(exc).__name__
            unchecked = "" if self.input_shape else " (built without its input shape, so it was not checked first)"
            raise TvmsqzError(f"the artifact failed on this input{unchecked}: {detail}") from None
        if isinstance(out, (list, tuple)) or hasattr(out, "__getitem__") and not hasattr(out, "numpy"):
            out = out[0]
        return out.numpy()

    def timer(self, x: np.ndarray):
        """A zero-argument callable running one inference on a preloaded input (for benches)."""
        import tvm

        arg = tvm.runtime.tensor(self.check_input(x), device=self.device)
        main = self.vm["main"]
        weights = self.weights

        def run_once() -> None:
            main(arg, *weights)

        return run_once

    def profile(self, x: np.ndarray, repeat: int = 5) -> list[dict]:
        """Per-kernel wall time, from the Relax VM's call instrumentation."""
        import tvm
        from tvm.runtime.vm import VMInstrumentReturnKind

        totals: dict[str, float] = defaultdict(float)
        calls: dict[str, int] = defaultdict(int)
        started: dict[str, float] = {}
        shapes: dict[str, list] = {}

        def instrument(func, name, before_run, ret_value, *args):
            if name.startswith("vm.builtin") or name.startswith("relax.") or name == "main":
                return VMInstrumentReturnKind.NO_OP
            if before_run:
                if name not in shapes:  # destination-passing style: the last argument is the output
                    shapes[name] = [list(getattr(a, "shape", ())) for a in args]
                started[name] = time.perf_counter()
            else:
                totals[name] += time.perf_counter() - started.pop(name)
                calls[name] += 1
            return VMInstrumentReturnKind.NO_OP

        arg = tvm.runtime.tensor(self.check_input(x), device=self.device)
        self.vm["main"](arg, *self.weights)  # warm-up outside the profile
        self.vm.set_instrument(instrument)
        try:
            for _ in range(repeat):
                self.vm["main"](arg, *self.weights)
        finally:
            self.vm.set_instrument(None)
        rows = [
            {"name": n, "time_us": totals[n] / repeat * 1e6, "calls": calls[n] // repeat, "shapes": shapes.get(n, [])}
            for n in totals
        ]
        return sorted(rows, key=lambda r: -r["time_us"])
