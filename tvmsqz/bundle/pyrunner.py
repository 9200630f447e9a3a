#!/usr/bin/env python3
"""tvmsqz-run.py: the Python runner of a tvmsqz bundle; needs python3, numpy and the bundle.

    python3 bin/tvmsqz-run.py [--input x.npy] [-o y.npy] [--repeat N] [--warmup N]
                              [--threads N] [--top K] [--seed S] [--json]

It drives the bundled `lib/libtvm_ffi.so` and `lib/libtvm_runtime.so` through ctypes and the
stable tvm-ffi C ABI (`tvm/ffi/c_api.h`): no `tvm` or `tvm_ffi` Python package, no compiled
Python extension, so it runs on any Python 3.8+ of the device whatever its minor version (the
`tvm_ffi` extension module is built for one CPython ABI only), and never maps
`libtvm_compiler.so`. docs/bundle.md says why this was chosen over bundling tvm's Python
package.

Like the C++ runner it checks every file bundle.json lists (size, sha256) before the model is
mapped (dlopen of a truncated shared object kills the process with SIGBUS), refuses an input of
the wrong shape or dtype, and reports each refusal as one line on stderr with exit code 2. The
seeded input (splitmix64, uniform in [-1, 1)) is bit-identical to the C++ runner's.

This file is copied into bundles: it imports nothing from tvmsqz.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import json
import os
import sys
import time

FORMAT = "tvmsqz-bundle/1"


def install_parallel_launch(path: str) -> None:
    """Point the loaded model's parallel loops at its chunk-claiming launcher (the same swap as
    tvmsqz.vm.install_parallel_launch: TVMSQZ_PARALLEL=static keeps TVM's own thread pool)."""
    if os.environ.get("TVMSQZ_PARALLEL", "claim") == "static":
        return
    try:
        lib = ctypes.CDLL(os.path.abspath(path), mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
        install = lib.tvmsqz_parallel_install
    except (OSError, AttributeError):
        return
    install.restype = ctypes.c_int
    install()


BUNDLE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
POOLED_ALLOCATOR = 2  # tvm::runtime::memory::AllocatorType::kPooled
KDL_CPU = 1
#: bundle.json "device" -> DLPack device type (kDLCPU 1, kDLCUDA 2)
DL_DEVICES = {"cpu": 1, "cuda": 2}
# tvm-ffi type indices (c_api.h, TVMFFITypeIndex)
T_NONE, T_INT, T_BOOL, T_DTYPE, T_DEVICE, T_RAW_STR = 0, 1, 2, 5, 6, 8
T_OBJECT_BEGIN, T_TENSOR, T_ARRAY = 64, 70, 71


class Refusal(Exception):
    """A bundle, input or model this runner will not run: printed as one `error:` line."""


# ----------------------------------------------------------------------------- the C ABI


class _ByteArray(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("size", ctypes.c_size_t)]


class _Value(ctypes.Union):
    _fields_ = [("v_int64", ctypes.c_int64), ("v_float64", ctypes.c_double), ("v_ptr", ctypes.c_void_p)]


class _Any(ctypes.Structure):
    _fields_ = [("type_index", ctypes.c_int32), ("zero_padding", ctypes.c_uint32), ("v", _Value)]


class _Object(ctypes.Structure):  # TVMFFIObject, the header of every heap object
    _fields_ = [
        ("combined_ref_count", ctypes.c_uint64),
        ("type_index", ctypes.c_int32),
        ("padding", ctypes.c_uint32),
        ("deleter", ctypes.c_void_p),
    ]


class _ErrorCell(ctypes.Structure):  # follows the header of an Error object
    _fields_ = [("kind", _ByteArray), ("message", _ByteArray)]


class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _DLDevice),
        ("ndim", ctypes.c_int32),
        ("dtype", _DLDataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


class _DLManagedTensor(ctypes.Structure):
    pass


_DELETER = ctypes.CFUNCTYPE(None, ctypes.POINTER(_DLManagedTensor))
_DLManagedTensor._fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", _DELETER)]
#: the input's DLPack deleter: numpy owns the memory. Module-level, so that it outlives every
#: tensor (a callback freed before the tensor that calls it crashes the interpreter).
_KEEP_MEMORY = _DELETER(lambda _: None)
#: the name of an unconsumed DLPack capsule (kept alive: PyCapsule_New does not copy it)
_DLTENSOR_NAME = b"dltensor"

#: numpy dtype name -> DLPack (code, bits): kDLInt 0, kDLUInt 1, kDLFloat 2
_DL_CODES = {
    "float32": (2, 32),
    "float16": (2, 16),
    "float64": (2, 64),
    "int8": (0, 8),
    "uint8": (1, 8),
    "int32": (0, 32),
    "int64": (0, 64),
}


class Device:
    """A DLDevice argument (kTVMFFIDevice)."""

    def __init__(self, device_type: int, device_id: int = 0):
        self.device_type, self.device_id = device_type, device_id


class DataType:
    """A DLDataType argument (kTVMFFIDataType)."""

    def __init__(self, code: int, bits: int, lanes: int = 1):
        self.code, self.bits, self.lanes = code, bits, lanes


class Runtime:
    """The bundled libraries, and calls into tvm-ffi's global functions through them.

    `device_libs` are the bundle's device runtime libraries (`libtvm_runtime_cuda.so`, and the
    CUDA runtime `libcudart.so.*` it needs), loaded after libtvm_runtime.so: loading one
    registers its DeviceAPI and the VM builtins (CUDA graphs) with the runtime.
    """

    def __init__(self, libdir: str, device_libs: list[str] | tuple[str, ...] = ()):
        mode = getattr(os, "RTLD_GLOBAL", 0x100) | getattr(os, "RTLD_NOW", 2)
        try:
            # tvm_ffi first: libtvm_runtime.so needs it, and the model finds both by symbol
            self.ffi = ctypes.CDLL(os.path.join(libdir, "libtvm_ffi.so"), mode=mode)
            self.rt = ctypes.CDLL(os.path.join(libdir, "libtvm_runtime.so"), mode=mode)
        except OSError as exc:
            raise Refusal(f"cannot load the bundled TVM runtime: {exc}") from None
        self.device_libs = []
        for name in device_libs:  # the CUDA runtime before libtvm_runtime_cuda.so (its NEEDED)
            try:
                self.device_libs.append(ctypes.CDLL(os.path.join(libdir, name), mode=mode))
            except OSError as exc:
                raise Refusal(
                    f"cannot load the bundled device runtime {name}: {exc} "
                    "(a CUDA bundle needs the NVIDIA driver, libcuda.so.1)"
                ) from None
        f = self.ffi
        f.TVMFFIFunctionGetGlobal.argtypes = [ctypes.POINTER(_ByteArray), ctypes.POINTER(ctypes.c_void_p)]
        f.TVMFFIFunctionCall.argtypes = [ctypes.c_void_p, ctypes.POINTER(_Any), ctypes.c_int32, ctypes.POINTER(_Any)]
        f.TVMFFIObjectDecRef.argtypes = [ctypes.c_void_p]
        f.TVMFFIErrorMoveFromRaised.argtypes = [ctypes.POINTER(ctypes.c_void_p)]
        f.TVMFFIErrorMoveFromRaised.restype = None
        f.TVMFFITensorFromDLPack.argtypes = [
            ctypes.POINTER(_DLManagedTensor),
            ctypes.c_int32,
            ctypes.c_int32,
            ctypes.POINTER(ctypes.c_void_p),
        ]
        f.TVMFFITensorToDLPack.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.POINTER(_DLManagedTensor))]
        self._globals: dict[str, int] = {}

    def raise_error(self, what: str) -> None:
        err = ctypes.c_void_p()
        self.ffi.TVMFFIErrorMoveFromRaised(ctypes.byref(err))
        if not err.value:
            raise Refusal(f"{what} failed")
        cell = _ErrorCell.from_address(err.value + ctypes.sizeof(_Object))
        kind = ctypes.string_at(cell.kind.data, cell.kind.size).decode(errors="replace")
        message = ctypes.string_at(cell.message.data, cell.message.size).decode(errors="replace")
        self.ffi.TVMFFIObjectDecRef(err)
        raise Refusal(f"{what}: {kind}: {message.strip().splitlines()[0] if message.strip() else ''}")

    def global_func(self, name: str) -> int:
        if name not in self._globals:
            raw = name.encode()
            buf = ctypes.create_string_buffer(raw)
            handle = ctypes.c_void_p()
            if self.ffi.TVMFFIFunctionGetGlobal(
                ctypes.byref(_ByteArray(ctypes.addressof(buf), len(raw))), ctypes.byref(handle)
            ):
                self.raise_error(f"looking up {name}")
            if not handle.value:
                raise Refusal(f"the bundled runtime has no function {name}")
            self._globals[name] = handle.value
        return self._globals[name]

    def call(self, func: int, *args, what: str = "a runtime call") -> Owned:
        """Call a tvm-ffi Function with ints, strings and Owned objects; the result is owned."""
        keep = []
        packed = (_Any * max(1, len(args)))()
        for slot, arg in zip(packed, args):
            if isinstance(arg, Owned):
                slot.type_index, slot.v.v_ptr = arg.type_index, arg.handle
            elif isinstance(arg, Device):
                slot.type_index, slot.v.v_int64 = T_DEVICE, arg.device_type | (arg.device_id << 32)
            elif isinstance(arg, DataType):
                slot.type_index, slot.v.v_int64 = T_DTYPE, arg.code | (arg.bits << 8) | (arg.lanes << 16)
            elif arg is None:
                slot.type_index, slot.v.v_int64 = T_NONE, 0
            elif isinstance(arg, bool):
                slot.type_index, slot.v.v_int64 = T_BOOL, int(arg)
            elif isinstance(arg, int):
                slot.type_index, slot.v.v_int64 = T_INT, arg
            else:
                keep.append(ctypes.create_string_buffer(str(arg).encode()))
                slot.type_index, slot.v.v_ptr = T_RAW_STR, ctypes.addressof(keep[-1])
        result = _Any()
        if self.ffi.TVMFFIFunctionCall(ctypes.c_void_p(func), packed, len(args), ctypes.byref(result)):
            self.raise_error(what)
        owned = Owned(self, result.type_index, result.v.v_ptr if result.type_index >= T_OBJECT_BEGIN else None)
        if result.type_index in (T_INT, T_BOOL):
            owned.value = result.v.v_int64
        return owned


class Owned:
    """A value returned by tvm-ffi; object values hold one reference, dropped by `release`."""

    #: The result itself when it is an int or a bool (no object to own).
    value: int | None = None

    def __init__(self, runtime: Runtime, type_index: int, handle: int | None):
        self.runtime, self.type_index, self.handle = runtime, type_index, handle

    def release(self) -> None:
        if self.handle:
            self.runtime.ffi.TVMFFIObjectDecRef(ctypes.c_void_p(self.handle))
            self.handle = None

    def __del__(self) -> None:
        try:
            self.release()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass


class Model:
    """The bundled model in a Relax VM on its device (the CPU or a GPU), called with numpy arrays
    (`tensor`, `to_numpy`: copied to and from the device) or DLPack capsules (`from_dlpack`,
    `to_dlpack`: no copy, e.g. torch tensors already on the GPU)."""

    def __init__(self, runtime: Runtime, path: str, device: str = "cpu", device_id: int = 0):
        if device not in DL_DEVICES:
            raise Refusal(f"the bundle's device {device!r} is unknown to this runner (known: {', '.join(DL_DEVICES)})")
        self.rt = runtime
        self.device = Device(DL_DEVICES[device], device_id)
        get = runtime.global_func("ffi.ModuleGetFunction")
        what = f"cannot load {path} as a TVM artifact"
        self.lib = runtime.call(runtime.global_func("ffi.ModuleLoadFromFile"), path, what=what)
        install_parallel_launch(path)
        load_exec = runtime.call(get, self.lib, "vm_load_executable", True, what=what)
        if not load_exec.handle:
            raise Refusal(f"{what}: it has no Relax VM executable")
        self.vm = runtime.call(load_exec.handle, what=what)
        init = runtime.call(get, self.vm, "vm_initialization", False, what=what)
        if self.device.device_type == KDL_CPU:
            runtime.call(init.handle, KDL_CPU, 0, POOLED_ALLOCATOR, what=what)
        else:  # the accelerator, then the CPU as the host device (as tvm's VirtualMachine does)
            runtime.call(
                init.handle,
                self.device.device_type,
                self.device.device_id,
                POOLED_ALLOCATOR,
                KDL_CPU,
                0,
                POOLED_ALLOCATOR,
                what=what,
            )
        self.main = runtime.call(get, self.vm, "main", False, what=what)
        self._keep: list = []

    def tensor(self, x):
        """The model's input from numpy array `x`: on the CPU a view of `x` (which must stay
        alive), on a GPU a device copy of it."""
        host = self.host_tensor(x)
        if self.device.device_type == KDL_CPU:
            return host
        dev = copy_to_device(self.rt, host, x.shape, x.dtype.name, self.device)
        host.release()
        return dev

    def sync(self) -> None:
        """Wait for the device (a no-op on the CPU): what a timed GPU call must end with."""
        if self.device.device_type != KDL_CPU:
            sync(self.rt, self.device)

    def from_dlpack(self, capsule) -> Owned:
        """A tvm-ffi Tensor sharing the memory of a DLPack capsule (`torch.utils.dlpack.to_dlpack`),
        which is consumed (renamed `used_dltensor`, as the DLPack protocol asks)."""
        api = ctypes.pythonapi
        api.PyCapsule_GetPointer.restype, api.PyCapsule_GetPointer.argtypes = (
            ctypes.c_void_p,
            [ctypes.py_object, ctypes.c_char_p],
        )
        api.PyCapsule_SetName.restype, api.PyCapsule_SetName.argtypes = (
            ctypes.c_int,
            [ctypes.py_object, ctypes.c_char_p],
        )
        ptr = api.PyCapsule_GetPointer(capsule, b"dltensor")
        handle = ctypes.c_void_p()
        if self.rt.ffi.TVMFFITensorFromDLPack(
            ctypes.cast(ptr, ctypes.POINTER(_DLManagedTensor)), 64, 1, ctypes.byref(handle)
        ):
            self.rt.raise_error("wrapping a DLPack tensor")
        api.PyCapsule_SetName(capsule, b"used_dltensor")
        return Owned(self.rt, T_TENSOR, handle.value)

    def to_dlpack(self, out: Owned):
        """The model's output (first tensor) as a DLPack capsule (`torch.from_dlpack` takes it)."""
        out = self._first_tensor(out)
        managed = ctypes.POINTER(_DLManagedTensor)()
        if self.rt.ffi.TVMFFITensorToDLPack(ctypes.c_void_p(out.handle), ctypes.byref(managed)):
            self.rt.raise_error("exporting the output")
        api = ctypes.pythonapi
        api.PyCapsule_New.restype, api.PyCapsule_New.argtypes = (
            ctypes.py_object,
            [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p],
        )
        return api.PyCapsule_New(ctypes.cast(managed, ctypes.c_void_p), _DLTENSOR_NAME, None)

    def _first_tensor(self, out: Owned) -> Owned:
        if out.type_index == T_ARRAY:
            out = self.rt.call(self.rt.global_func("ffi.ArrayGetItem"), out, 0)
        if out.type_index != T_TENSOR:
            raise Refusal(f"the model returned type {out.type_index}, not a tensor")
        return out

    def host_tensor(self, x):
        """A tvm-ffi Tensor on the CPU viewing `x` (which must stay alive): DLPack, no copy."""
        shape = (ctypes.c_int64 * x.ndim)(*x.shape)
        code, bits = _DL_CODES[x.dtype.name]
        managed = _DLManagedTensor()
        managed.dl_tensor = _DLTensor(
            x.ctypes.data, _DLDevice(KDL_CPU, 0), x.ndim, _DLDataType(code, bits, 1), shape, None, 0
        )
        managed.deleter = _KEEP_MEMORY
        handle = ctypes.c_void_p()
        if self.rt.ffi.TVMFFITensorFromDLPack(ctypes.byref(managed), 64, 1, ctypes.byref(handle)):
            self.rt.raise_error("wrapping the input")
        self._keep.append((x, shape, managed))
        return Owned(self.rt, T_TENSOR, handle.value)

    def close(self) -> None:
        """Drop the VM and the module (in that order) while the library is still loaded."""
        for obj in (*self.weights, self.main, self.vm, self.lib):
            obj.release()

    def _to_host(self, out: Owned) -> Owned:
        import numpy as np

        managed = ctypes.POINTER(_DLManagedTensor)()
        if self.rt.ffi.TVMFFITensorToDLPack(ctypes.c_void_p(out.handle), ctypes.byref(managed)):
            self.rt.raise_error("reading the output")
        t = managed.contents.dl_tensor
        dtype = next((n for n, cb in _DL_CODES.items() if cb == (t.dtype.code, t.dtype.bits)), None)
        shape = tuple(t.shape[i] for i in range(t.ndim))
        managed.contents.deleter(managed)
        if dtype is None:
            raise Refusal(f"the model returned an unsupported tensor (dtype code {t.dtype.code}/{t.dtype.bits})")
        host_array = aligned_copy(np.empty(shape, dtype=dtype))
        host = self.host_tensor(host_array)
        copy_tensor(self.rt, out, host, "copying the output from the device")
        self.sync()
        return host

    #: The tensors `main` takes after its input (a `--compress` model; see `bind_weights`).
    weights: list = []

    def bind_weights(self, path: str, names: list) -> float:
        """Decode a `--compress` model's weight file (`tvmsqz_weightfile.py`, beside this runner)
        and run the model's load-time packing once, as `tvmsqz.vm.bind_weights` does; seconds."""
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        try:
            from tvmsqz_weightfile import WeightFileError, read
        except ImportError:
            raise Refusal("bin/tvmsqz_weightfile.py is missing: copy the bundle again") from None
        finally:
            sys.path.pop(0)
        get = self.rt.global_func("ffi.ModuleGetFunction")
        loader = self.rt.call(get, self.vm, "tvmsqz_load_params", True)
        if not loader.handle:
            raise Refusal("bundle.json names a weight file, and the model loads none")
        start = time.perf_counter()
        try:
            tensors = read(path)
        except WeightFileError as exc:
            raise Refusal(str(exc)) from None
        if list(tensors) != list(names):
            raise Refusal(f"{os.path.basename(path)} holds other tensors than the model was built for")
        arrays = [aligned_copy(v) for v in tensors.values()]
        args = [self.tensor(a) for a in arrays]
        packed = self.rt.call(loader.handle, *args, what=f"cannot bind {os.path.basename(path)} to the model")
        if packed.type_index != T_ARRAY:
            raise Refusal("the model's weight packing returned something other than a tuple")
        count = self.rt.call(self.rt.global_func("ffi.ArraySize"), packed).value
        self.weights = [self.rt.call(self.rt.global_func("ffi.ArrayGetItem"), packed, i) for i in range(count)]
        for a in args:
            a.release()
        packed.release()
        return time.perf_counter() - start

    def __call__(self, arg: Owned) -> Owned:
        return self.rt.call(self.main.handle, arg, *self.weights, what="the model failed on this input")

    def to_numpy(self, out: Owned):
        import numpy as np

        out = self._first_tensor(out)
        if self.device.device_type != KDL_CPU:  # copy to a host tensor first
            out = self._to_host(out)
        managed = ctypes.POINTER(_DLManagedTensor)()
        if self.rt.ffi.TVMFFITensorToDLPack(ctypes.c_void_p(out.handle), ctypes.byref(managed)):
            self.rt.raise_error("reading the output")
        t = managed.contents.dl_tensor
        dtype = next((n for n, cb in _DL_CODES.items() if cb == (t.dtype.code, t.dtype.bits)), None)
        if dtype is None or t.device.device_type != KDL_CPU:
            raise Refusal(f"the model returned an unsupported tensor (dtype code {t.dtype.code}/{t.dtype.bits})")
        shape = tuple(t.shape[i] for i in range(t.ndim))
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = count * np.dtype(dtype).itemsize
        raw = ctypes.string_at(t.data + t.byte_offset, nbytes)
        managed.contents.deleter(managed)
        return np.frombuffer(raw, dtype=dtype).reshape(shape).copy()


# ----------------------------------------------------------------------------- device memory


def copy_to_device(rt: Runtime, host: Owned, shape, dtype: str, device: Device) -> Owned:
    """A new tensor on `device` holding a copy of the host tensor `host` (synchronized)."""
    code, bits = _DL_CODES[dtype]
    dims = rt.call(rt.global_func("ffi.Shape"), *[int(d) for d in shape])
    dev = rt.call(
        rt.global_func("runtime.TVMTensorAllocWithScope"),
        dims,
        DataType(code, bits),
        device,
        None,
        what="allocating the input on the device",
    )
    dims.release()
    copy_tensor(rt, host, dev, "copying the input to the device")
    sync(rt, device)
    return dev


def copy_tensor(rt: Runtime, src: Owned, dst: Owned, what: str) -> None:
    """Copy between two tensors of the same shape and dtype, on any devices (queued on the
    device's default stream: `sync` before the host reads)."""
    rt.call(rt.global_func("runtime.TVMTensorCopyFromTo"), src, dst, what=what)


def sync(rt: Runtime, device: Device) -> None:
    """Wait until the device's default stream (0) has run everything queued on it."""
    rt.call(rt.global_func("runtime.Device_StreamSync"), device, 0, what="synchronizing the device")


# ----------------------------------------------------------------------------- bundle checks


def inside_bundle(root: str, rel, what: str) -> str:
    """`root/rel` for a path bundle.json names; a Refusal when it is not a relative path that stays
    inside the bundle (absolute, `..`, or a link leading out): nothing outside is ever loaded."""
    if not isinstance(rel, str) or not rel or "\0" in rel:
        raise Refusal(f"bundle.json is invalid: {what} is not a file name")
    if os.path.isabs(rel) or ".." in rel.replace("\\", "/").split("/"):
        raise Refusal(f"bundle.json is invalid: {what} {rel!r} points outside the bundle")
    full = os.path.join(root, rel)
    real_root = os.path.realpath(root)
    if os.path.commonpath([real_root, os.path.realpath(full)]) != real_root:
        raise Refusal(f"bundle.json is invalid: {what} {rel!r} points outside the bundle")
    return full


def check_output(output: str, input_path: str | None, root: str, manifest: dict) -> None:
    """Refuse an `-o` that would replace what this run reads: the input, bundle.json or a bundle file."""
    if input_path and os.path.exists(output) and os.path.exists(input_path) and os.path.samefile(output, input_path):
        raise Refusal(f"-o {output} is the input {input_path}: it would be overwritten; choose another -o")
    real = os.path.realpath(output)
    listed = ["bundle.json"] + [e.get("file") for e in manifest.get("files", []) if isinstance(e, dict)]
    for rel in listed:
        if isinstance(rel, str) and real == os.path.realpath(os.path.join(root, rel)):
            raise Refusal(f"-o {output} is the bundle's {rel}: it would be overwritten; choose another -o")


#: The input a bundle may declare: 4 dimensions within these bounds (as `tvmsqz compile` makes
#: them), at most MAX_INPUT_ELEMENTS in all: the runner allocates it before anything else.
MAX_DIM = 4096
MAX_INPUT_ELEMENTS = 1 << 30
_HEX = set("0123456789abcdef")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_bundle_fields(m: dict, root: str) -> None:
    """bundle.json's fields, each checked for type and bounds before any is used (the schema of
    docs/bundle.md, written out: the device has no jsonschema); a Refusal names the field."""

    def bad(field: str, why: str) -> Refusal:
        return Refusal(f"bundle.json is invalid: {field} {why}")

    def obj(v, field: str) -> dict:
        if not isinstance(v, dict):
            raise bad(field, "is not an object")
        return v

    def text(d: dict, key: str, field: str, required: bool = True) -> None:
        if key not in d and not required:
            return
        if not isinstance(d.get(key), str) or not d[key] or len(d[key]) > 4096:
            raise bad(f"{field}.{key}" if field else key, "is not a non-empty string")

    for key in ("target", "arch"):
        text(m, key, "")
    text(m, "device", "", required=False)
    model = obj(m.get("model"), "model")
    for key in ("file", "name", "labels"):
        text(model, key, "model")
    spec = obj(m.get("input"), "input")
    text(spec, "name", "input")
    if spec.get("dtype") not in ("float32", "float16", "int8", "uint8"):
        raise bad("input.dtype", f"{spec.get('dtype')!r} is not float32, float16, int8 or uint8")
    shape = spec.get("shape")
    if not (isinstance(shape, list) and len(shape) == 4 and all(_is_int(d) and 1 <= d <= MAX_DIM for d in shape)):
        raise bad("input.shape", f"{shape!r} is not 4 integers in 1..{MAX_DIM}")
    elements = 1
    for d in shape:
        elements *= d
    if elements > MAX_INPUT_ELEMENTS:
        raise bad("input.shape", f"{shape} is {elements} elements, over {MAX_INPUT_ELEMENTS}")
    files = m.get("files")
    if not isinstance(files, list):
        raise bad("files", "is not a list")
    for i, entry in enumerate(files):
        entry = obj(entry, f"files[{i}]")
        text(entry, "file", f"files[{i}]")
        if not (_is_int(entry.get("bytes")) and entry["bytes"] >= 0):
            raise bad(f"files[{i}].bytes", "is not a size in bytes")
        sha = entry.get("sha256")
        if not (isinstance(sha, str) and len(sha) == 64 and set(sha) <= _HEX):
            raise bad(f"files[{i}].sha256", "is not a sha256 (64 hex digits)")
        inside_bundle(root, entry["file"], f"files[{i}].file")
    runtime = m.get("runtime", {})
    libs = obj(runtime, "runtime").get("device_libs", [])
    if not (isinstance(libs, list) and all(isinstance(n, str) and n and "/" not in n for n in libs)):
        raise bad("runtime.device_libs", "is not a list of library names")


def read_bundle(root: str) -> dict:
    """bundle.json, with every file it lists checked (size, then sha256) before any is loaded."""
    path = os.path.join(root, "bundle.json")
    try:
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except OSError as exc:
        raise Refusal(f"cannot read {path}: {exc.strerror}") from None
    except (ValueError, RecursionError):  # not UTF-8, not JSON, or nested too deep
        raise Refusal(f"{path} is corrupt (not JSON)") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise Refusal(f"{path} is not a {FORMAT} manifest")
    check_bundle_fields(manifest, root)
    model_file = (manifest.get("model") or {}).get("file")
    inside_bundle(root, model_file, "model.file")
    inside_bundle(root, (manifest.get("model") or {}).get("labels"), "model.labels")
    if model_file not in {e.get("file") for e in manifest.get("files", [])}:
        raise Refusal(f"bundle.json lists no size and sha256 for the model {model_file}")
    for entry in manifest.get("files", []):
        full = os.path.join(root, entry["file"])
        if not os.path.isfile(full):
            raise Refusal(f"{full} is missing (listed in bundle.json): copy the bundle again")
        size = os.path.getsize(full)
        if size != entry["bytes"]:
            raise Refusal(
                f"{full} is {size} bytes, bundle.json says {entry['bytes']}: truncated or replaced; "
                "copy the bundle again"
            )
        digest = hashlib.sha256()
        with open(full, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != entry["sha256"]:
            raise Refusal(
                f"{full} does not match the sha256 in bundle.json: modified or corrupt; copy the bundle again"
            )
    return manifest


def seeded_input(seed: int, shape: list[int]):
    """splitmix64 -> uniform [-1, 1) float32, bit-identical to the C++ runner's `SeededInput`."""
    import numpy as np

    n = int(np.prod(shape, dtype=np.int64))
    with np.errstate(over="ignore"):
        z = np.uint64(seed) + np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(31)
    u = (z >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)
    return (2.0 * u - 1.0).astype(np.float32).reshape(shape)


def load_input(path: str, spec: dict):
    """The input .npy, its header checked before any data is read (as the C++ runner and `tvmsqz
    run` do): a .npy array (not .npz, not pickled objects), little-endian, C order, exactly the
    model's shape and dtype; a header declaring 1e12 elements is refused, never allocated."""
    import numpy as np

    if os.path.isdir(path):
        raise Refusal(f"cannot read {path} as a .npy array: it is a directory")
    try:
        with open(path, "rb") as fh:
            magic = fh.read(6)
            if magic[:2] == b"PK":
                raise Refusal(f"{path} is a .npz archive: save the one input array with numpy.save (.npy)")
            if magic != b"\x93NUMPY":
                raise Refusal(f"cannot read {path} as a .npy array (no .npy header)")
            fh.seek(0)
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            else:
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            if dtype.hasobject:
                raise Refusal(f"{path} holds Python objects, not numbers")
            if dtype.byteorder == ">" or (dtype.byteorder == "=" and sys.byteorder == "big"):
                raise Refusal(
                    f"input {path} is big-endian ({dtype.str}); the model expects little-endian {spec['dtype']}"
                )
            if list(shape) != list(spec["shape"]):
                raise Refusal(f"input {path} has shape {list(shape)}, the model expects {list(spec['shape'])}")
            if dtype.name != spec["dtype"]:
                raise Refusal(f"input {path} has dtype {dtype.name}, the model expects {spec['dtype']}")
            if fortran:
                raise Refusal(f"{path} is in Fortran order; save it C-contiguous")
            count = 1
            for d in shape:
                count *= d
            data = fh.read(count * dtype.itemsize + 1)
    except OSError as exc:
        raise Refusal(f"cannot read {path}: {exc.strerror or exc}") from None
    except (ValueError, EOFError, TypeError) as exc:  # a malformed header
        raise Refusal(f"cannot read {path} as a .npy array: {str(exc).splitlines()[0] if str(exc) else exc}") from None
    if len(data) != count * dtype.itemsize:
        raise Refusal(
            f"input {path} is truncated or has trailing bytes "
            f"({len(data)} data bytes, {count * dtype.itemsize} expected)"
        )
    return np.frombuffer(data, dtype=dtype).reshape(shape)


def check_output_path(output: str) -> None:
    """Refuse an -o that cannot be a file before the model runs: a folder, a missing folder."""
    if os.path.isdir(output):
        raise Refusal(f"-o {output} is a directory; give a file name like y.npy")
    folder = os.path.dirname(output) or "."
    if not os.path.isdir(folder):
        raise Refusal(f"cannot write {output}: directory {folder} does not exist")


def write_npy(output: str, y) -> None:
    """`y` to `output` through a temp file beside it, renamed only when whole: a full disk, a
    folder in the way or any other failure leaves neither a partial `output` nor the temp file."""
    import numpy as np

    tmp = f"{output}.tmp.{os.getpid()}"
    try:
        with open(tmp, "wb") as fh:
            np.save(fh, y)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, output)
    except OSError as exc:
        reason = "no space left on device" if exc.errno == 28 else (exc.strerror or str(exc))
        raise Refusal(f"cannot write {output}: {reason}") from None
    finally:
        try:
            os.remove(tmp)
        except OSError:
            pass


def aligned_copy(x, alignment: int = 64):
    """`x` copied into a C-contiguous buffer whose data pointer is `alignment`-aligned (TVM's kernels
    assume 64-byte aligned tensors)."""
    import numpy as np

    raw = np.empty(x.nbytes + alignment, dtype=np.uint8)
    start = -raw.ctypes.data % alignment
    out = raw[start : start + x.nbytes].view(x.dtype).reshape(x.shape)
    out[...] = x
    return out


def peak_rss_bytes() -> int | None:
    """VmHWM of this process (the figure tvmsqz.memprobe reports for every runtime); None where
    /proc is not mounted (a bare chroot)."""
    try:
        with open("/proc/self/status") as fh:
            found = [ln.split()[1] for ln in fh if ln.startswith("VmHWM:")]
        return int(found[0]) * 1024 if found else None
    except OSError:
        return None


def stats(ms: list[float]) -> dict:
    """min/median/p90/mean/runs as tvmsqz.benchmark reports them (numpy's linear percentile)."""
    import numpy as np

    a = np.asarray(ms)
    return {
        "min": float(a.min()),
        "median": float(np.median(a)),
        "p90": float(np.percentile(a, 90)),
        "mean": float(a.mean()),
        "runs": int(a.size),
    }


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, like every other refusal
        raise Refusal(f"{message} (see --help)")


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="tvmsqz-run.py", description="Run the bundled model.")
    parser.add_argument("--input", "-i", help="input .npy (default: a seeded random tensor)")
    parser.add_argument("-o", "--output", help="write the raw output array to this .npy")
    parser.add_argument("--repeat", type=int, default=10, help="timed runs (default 10)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs first (default 1)")
    parser.add_argument("--threads", type=int, default=0, help="TVM threads (default: TVM_NUM_THREADS or all cores)")
    parser.add_argument("--top", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="also print one JSON line (latency, peak RSS, top)")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.warmup < 0 or args.top < 1 or args.seed < 0:
        raise Refusal("--repeat and --top want integers >= 1, --warmup and --seed >= 0")
    if args.threads:
        os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when the runtime's pool starts

    manifest = read_bundle(BUNDLE)
    spec, model_info = manifest["input"], manifest["model"]
    if args.output:
        check_output(args.output, args.input, BUNDLE, manifest)
        check_output_path(args.output)
    try:
        import numpy as np
    except ImportError:
        raise Refusal("the Python runner needs numpy (apt install python3-numpy, or use bin/tvmsqz-run)") from None

    if args.input:
        x, source = load_input(args.input, spec), args.input
    elif spec["dtype"] == "float32":
        x, source = seeded_input(args.seed, spec["shape"]), f"seeded random, seed {args.seed}"
    else:
        raise Refusal("a seeded input is float32 only; pass --input x.npy")

    runtime = Runtime(os.path.join(BUNDLE, "lib"), manifest.get("runtime", {}).get("device_libs", []))
    model = Model(runtime, os.path.join(BUNDLE, model_info["file"]), manifest.get("device", "cpu"))
    load_ms = 0.0
    if isinstance(model_info.get("weights"), dict):
        w = model_info["weights"]
        path = inside_bundle(BUNDLE, w.get("file"), "model.weights.file")
        load_ms = model.bind_weights(path, w.get("tensors") or []) * 1e3
    xa = aligned_copy(x)
    arg = model.tensor(xa)
    for _ in range(args.warmup):
        model(arg).release()
    model.sync()
    ms = []
    out = None
    for _ in range(args.repeat):
        start = time.perf_counter()
        out = model(arg)
        model.sync()  # a GPU call returns once its kernels are queued
        ms.append((time.perf_counter() - start) * 1e3)
        if len(ms) < args.repeat:
            out.release()
    y = model.to_numpy(out)
    for obj in (out, arg):
        obj.release()
    model.close()
    if args.output:
        write_npy(args.output, y)

    with open(os.path.join(BUNDLE, model_info["labels"]), encoding="utf-8") as fh:
        labels = fh.read().splitlines()
    flat = y.reshape(y.shape[0], -1)[0] if y.ndim else y.reshape(1)
    top = []
    if y.dtype == np.float32:
        order = sorted(range(flat.size), key=lambda i: (-flat[i], i))[: args.top]
        top = [(int(i), float(flat[i])) for i in order]
    named = len(labels) == flat.size
    lat = stats(ms)
    print(
        f"model {model_info['name']} ({manifest['target']}, {manifest['arch']}, "
        f"device {manifest.get('device', 'cpu')}), input {spec['name']} "
        f"{list(spec['shape'])} {spec['dtype']} ({source})"
    )
    print(f"output {list(y.shape)} {y.dtype.name}" + (f" -> {args.output}" if args.output else ""))
    for rank, (cls, score) in enumerate(top, 1):
        print(f"{rank:2d}  {cls:6d}  {score:12.5g}  {labels[cls] if named else ''}")
    print(
        f"latency over {args.repeat} runs: median {lat['median']:.3f} ms, min {lat['min']:.3f} ms, "
        f"mean {lat['mean']:.3f} ms"
    )
    if args.json:
        print(
            json.dumps(
                {
                    "runner": "python",
                    "arch": manifest["arch"],
                    "device": manifest.get("device", "cpu"),
                    "output_shape": list(y.shape),
                    "top": [list(t) for t in top],
                    "latency_ms": lat,
                    "peak_rss_bytes": peak_rss_bytes(),
                    "weights_load_ms": round(load_ms, 3),
                }
            )
        )
    sys.stdout.flush()
    return 0


def _exit(code: int) -> None:
    """Flush and leave without interpreter teardown: tvm-ffi objects still referenced from Python
    frames would otherwise be released in arbitrary order after their library state is gone."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    try:
        _exit(main())
    except Refusal as exc:  # one line, even when a path in it holds a line break
        print("error: " + str(exc).replace("\r", "\\r").replace("\n", "\\n"), file=sys.stderr)
        _exit(2)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        _exit(130)
    except MemoryError:
        print("error: out of memory", file=sys.stderr)
        _exit(2)
    except Exception as exc:  # noqa: BLE001 - anything unforeseen is still one line
        detail = " ".join(str(exc).split())[:300]
        print(f"error: internal error ({type(exc).__name__}): {detail}", file=sys.stderr)
        _exit(2)
