"""int8 compilation: QDQ folding into VNNI-tensorized kernels, checked bit for bit against numpy
integer references and against ONNX Runtime running the same QDQ models.

The small models are QDQ graphs written here with onnx.helper (what ONNX Runtime's
`quantize_static` and the project's quantizer emit): each conv reads `DequantizeLinear` codes and
`DequantizeLinear` int8 per-channel weights; the compiler must turn them into integer convs whose
epilogue requantizes. The reference computes the same float32 operations in the same order as
the compiled epilogue (see `tvmsqz.passes.qdq`), so outputs must be equal, not close.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from conftest import VNNI_FLAGS, require_cpu
from onnx import TensorProto
from onnx import helper as oh
from onnx import numpy_helper as nh

import tvmsqz

f32 = np.float32


class QDQBuilder:
    """A QDQ ONNX graph, one quantized conv (+ ReLU) at a time, with its numpy reference."""

    def __init__(self, x: np.ndarray, rng: np.random.Generator):
        self.rng = rng
        self.nodes: list = []
        self.inits: list = []
        self.name = "x"
        self.shape = x.shape
        self.ref = x.astype(f32)
        self.pending = None  # (acc, S, B, relu) of the last conv, not yet requantized
        self.n = 0

    def _init(self, value, name: str) -> str:
        self.inits.append(nh.from_array(np.asarray(value), name))
        return name

    def conv(
        self,
        out_channels: int,
        k: int,
        *,
        pad: int = 0,
        stride: int = 1,
        sx: float,
        zx: int,
        relu=True,
        weights: np.ndarray | None = None,
    ):
        """Quantize the current tensor (sx, zx: uint8), conv with per-channel int8 weights
        (random, or `weights`, which each channel's scale maps to +-127 at its largest)."""
        i = self.n = self.n + 1
        c = self.shape[1]
        w = weights if weights is not None else self.rng.normal(size=(out_channels, c, k, k)) / np.sqrt(c * k * k)
        w = np.asarray(w, f32)
        b = (self.rng.normal(size=out_channels) * 0.1).astype(f32)
        sw = (np.abs(w).reshape(out_channels, -1).max(1) / 127).astype(f32)
        wq = np.clip(np.round(w / sw[:, None, None, None]), -127, 127).astype(np.int8)
        self.nodes += [
            oh.make_node(
                "QuantizeLinear",
                [self.name, self._init(f32(sx), f"sx{i}"), self._init(np.uint8(zx), f"zx{i}")],
                [f"xq{i}"],
            ),
            oh.make_node("DequantizeLinear", [f"xq{i}", f"sx{i}", f"zx{i}"], [f"xd{i}"]),
            oh.make_node(
                "DequantizeLinear",
                [
                    self._init(wq, f"wq{i}"),
                    self._init(sw, f"sw{i}"),
                    self._init(np.zeros(out_channels, np.int8), f"zw{i}"),
                ],
                [f"wd{i}"],
                axis=0,
            ),
            oh.make_node(
                "Conv",
                [f"xd{i}", f"wd{i}", self._init(b, f"b{i}")],
                [f"c{i}"],
                pads=[pad] * 4,
                strides=[stride] * 2,
                kernel_shape=[k, k],
            ),
        ]
        self.name = f"c{i}"
        if relu:
            self.nodes.append(oh.make_node("Relu", [f"c{i}"], [f"r{i}"]))
            self.name = f"r{i}"
        codes = self._codes(f32(sx), zx)
        acc = integer_conv(codes, wq, pad, stride, zx)
        self.pending = (acc, (f32(sx) * sw).astype(f32)[None, :, None, None], b[None, :, None, None], relu)
        self.ref = None
        self.shape = acc.shape

    def _codes(self, scale: f32, zero: int) -> np.ndarray:
        """uint8 codes of the current tensor, as the compiled graph makes them: a conv's output
        with zero point 0 in one multiply-add (`passes.qdq._Requantizer`), else float, then
        round(x * (1/s)) + z."""
        inv = f32(1) / scale
        if self.pending is not None and zero == 0:
            acc, s, b, _ = self.pending  # ReLU: implied by the clip at code 0
            q = np.round(acc.astype(f32) * (s * inv).astype(f32) + (b * inv).astype(f32))
        else:
            x = self._float()
            q = np.round(x * inv) + f32(zero)
        return np.maximum(np.minimum(q, f32(255)), f32(0)).astype(np.uint8)

    def _float(self) -> np.ndarray:
        if self.pending is None:
            return self.ref
        acc, s, b, relu = self.pending
        out = acc.astype(f32) * s + b
        return np.maximum(out, f32(0)) if relu else out

    def quantize_output(self, sy: float) -> None:
        """End on a Q/DQ pair (uint8, zero point 0) of the current tensor."""
        i = self.n = self.n + 1
        self.nodes += [
            oh.make_node(
                "QuantizeLinear",
                [self.name, self._init(f32(sy), f"sy{i}"), self._init(np.uint8(0), f"zy{i}")],
                [f"yq{i}"],
            ),
            oh.make_node("DequantizeLinear", [f"yq{i}", f"sy{i}", f"zy{i}"], [f"y{i}"]),
        ]
        self.name = f"y{i}"
        self.ref = self._codes(f32(sy), 0).astype(f32) * f32(sy)
        self.pending = None

    def model(self, x_shape) -> onnx.ModelProto:
        graph = oh.make_graph(
            self.nodes,
            "qdq",
            [oh.make_tensor_value_info("x", TensorProto.FLOAT, list(x_shape))],
            [oh.make_tensor_value_info(self.name, TensorProto.FLOAT, list(self.shape))],
            self.inits,
        )
        model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 13)])
        model.ir_version = 8
        return model


def integer_conv(xq: np.ndarray, wq: np.ndarray, pad: int, stride: int, zx: int) -> np.ndarray:
    """numpy: the exact int32 accumulator of a conv on uint8 codes (padding holds the zero
    point's code; the zero point leaves through the weight sums)."""
    k, _, r, s = wq.shape
    xp = np.pad(xq.astype(np.int64), ((0, 0), (0, 0), (pad, pad), (pad, pad)), constant_values=zx)
    h = (xp.shape[2] - r) // stride + 1
    w = (xp.shape[3] - s) // stride + 1
    acc = np.zeros((xq.shape[0], k, h, w), np.int64)
    for ky in range(r):
        for kx in range(s):
            window = xp[:, :, ky : ky + stride * (h - 1) + 1 : stride, kx : kx + stride * (w - 1) + 1 : stride]
            acc += np.einsum("nchw,kc->nkhw", window, wq[:, :, ky, kx].astype(np.int64))
    acc -= zx * wq.astype(np.int64).reshape(k, -1).sum(1)[None, :, None, None]
    assert np.abs(acc).max() < 2**24  # exact in float32, as in the kernel's cast
    return acc.astype(np.int32)


#: Each x86 dot-product flavour: target, the CPU flags its code needs, its conv block's name.
FLAVOURS = {
    "vnni": ("x86-avx512", VNNI_FLAGS, "conv2d_nchwc_vnni"),
    "avx512bw": ("x86-avx512bw", {"avx512f", "avx512bw", "avx512vl"}, "conv2d_nchwc_avx512bw"),
    "avx2": ("x86-avx2", {"avx2", "fma"}, "conv2d_nchwc_avx2"),
}


def compile_and_run(model: onnx.ModelProto, x: np.ndarray, flavour: str = "vnni") -> np.ndarray:
    """Compile a (non-classifier) QDQ graph for the flavour's x86 target at int8 untuned and run
    it: the build path of `tvmsqz.compile` below the API (whose frontend accepts image
    classifiers only)."""
    import tvm
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from tvmsqz.build import compile_module
    from tvmsqz.targets import get_target

    mod = from_onnx(model, shape_dict={"x": list(x.shape)}, keep_params_in_input=False)
    target, flags, block = FLAVOURS[flavour]
    require_cpu(flags, f"the int8 {target} kernels")
    executable, report = compile_module(mod, get_target(target).for_precision("int8"))
    assert any(block in k for k in report.kernels)  # the tensorized kernels, not TVM's generic conv
    vm = relax.VirtualMachine(executable, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy()


def _run_ort(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"x": x})[0]


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_requantization_bit_exact_first_and_padded_convs(flavour):
    """First conv (3 channels regrouped to 4, zero point 128 through the weight sums), a padded
    3x3 conv, a 1x1 conv and a strided conv: every output equals the numpy reference, with
    each dot-product flavour (VNNI, AVX-512 without VNNI, AVX2)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 3, 23, 23)).astype(f32)
    b = QDQBuilder(x, rng)
    b.conv(32, 3, sx=0.02, zx=128)  # first conv: no padding, asymmetric input
    b.conv(16, 1, sx=0.05, zx=0)  # squeeze
    b.conv(32, 3, pad=1, sx=0.03, zx=0)  # padded expand
    b.conv(48, 3, stride=2, sx=0.04, zx=0)
    b.quantize_output(0.02)
    model = b.model(x.shape)
    out = compile_and_run(model, x, flavour)
    np.testing.assert_array_equal(out, b.ref)
    # and ONNX Runtime, running the same QDQ graph, agrees to within one output code
    assert np.abs(out - _run_ort(model, x)).max() <= 0.02 * 1.0001


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_prime_output_width_computes_wider_and_crops(flavour):
    """SqueezeNet 1.0's first conv shape in small: 3 channels, 7x7, stride 2, an output width
    with no register-tile divisor (29, prime) that the kernel computes 32 wide and crops."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1, 3, 63, 63)).astype(f32)
    b = QDQBuilder(x, rng)
    b.conv(32, 7, stride=2, sx=0.02, zx=128)
    assert b.shape[3] == 29
    b.quantize_output(0.03)
    np.testing.assert_array_equal(compile_and_run(b.model(x.shape), x, flavour), b.ref)


def test_padded_conv_with_zero_point_pads_the_code():
    """A padded conv on an asymmetric input: the padding must hold the zero point's code."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(1, 4, 12, 12)).astype(f32)
    b = QDQBuilder(x, rng)
    b.conv(16, 3, pad=1, sx=0.03, zx=100)
    b.quantize_output(0.05)
    np.testing.assert_array_equal(compile_and_run(b.model(x.shape), x), b.ref)


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_full_range_codes_and_weights_do_not_saturate(flavour):
    """Activation codes at 255 against weights at +-127 in every input-channel pair: a plain
    `pmaddubsw` would saturate its int16 pair sums (255 * 127 * 2 = 64770); every flavour must
    give the exact int32 sums (the requantized outputs equal the numpy reference)."""
    rng = np.random.default_rng(2)
    x = np.full((1, 16, 6, 6), 10.0, f32)  # every code clips to 255
    x[:, :, ::2, 1::2] = -10.0  # and some to 0
    b = QDQBuilder(x, rng)
    sign = np.where(rng.random((16, 16, 1, 1)) < 0.5, -1.0, 1.0).astype(f32)
    sign[:8] = 1.0  # half the outputs: all weights +127, the worst case
    b.conv(16, 1, sx=0.02, zx=0, relu=False, weights=sign)
    b.quantize_output(2.0)
    out = compile_and_run(b.model(x.shape), x, flavour)
    codes = np.where(x > 0, 255, 0).astype(np.uint8)
    acc = integer_conv(codes, (127 * sign).astype(np.int8), 0, 1, 0)
    assert acc.max() == 127 * 255 * 16  # the inputs do reach the saturating case
    np.testing.assert_array_equal(out, b.ref)


def test_fold_rules_leave_no_quantize_and_make_integer_convs():
    """Fold on an ONNX Runtime QDQ SqueezeNet: every conv integer, no quantize/dequantize left,
    max-pools on uint8, the Fire concats on uint8 (concat-free after layout)."""
    from tvm import relax

    from tvmsqz.frontend import import_onnx
    from tvmsqz.passes.qdq import fold_qdq

    model = ort_qdq_squeezenet()
    mod, _ = import_onnx(model, None)
    folded, convs = fold_qdq(mod)
    assert convs == 26
    ops: dict[str, list] = {}

    def visit(expr) -> None:
        if isinstance(expr, relax.Call) and hasattr(expr.op, "name"):
            ops.setdefault(expr.op.name, []).append(expr)

    relax.analysis.post_order_visit(folded["main"], visit)
    assert "relax.quantize" not in ops and "relax.dequantize" not in ops
    assert all(str(c.args[0].ty.dtype) == "uint8" and str(c.ty.dtype) == "int32" for c in ops["relax.nn.conv2d"])
    assert all(str(c.ty.dtype) == "uint8" for c in ops["relax.nn.max_pool2d"])
    assert all(str(c.ty.dtype) == "uint8" for c in ops["relax.concat"])


_ORT_QDQ: dict = {}


def ort_qdq_squeezenet(name: str = "squeezenet1_1") -> onnx.ModelProto:
    """SqueezeNet quantized by ONNX Runtime's `quantize_static` (QDQ, per-channel int8 weights,
    uint8 activations), calibrated on the mirrored built-in photos."""
    if name in _ORT_QDQ:
        return _ORT_QDQ[name]
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    from tvmsqz.quant import default_calibration

    model = tvmsqz.load_model(name, import_now=False)
    calibration = default_calibration(model.preprocess, 224)
    input_name = model.onnx.graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter(calibration)

        def get_next(self):
            item = next(self.items, None)
            return None if item is None else {input_name: item}

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "qdq.onnx"
        onnx.save(model.onnx, src)
        quantize_static(
            str(src),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        _ORT_QDQ[name] = onnx.load(dst)
    return _ORT_QDQ[name]


@pytest.mark.slow
def test_ort_qdq_squeezenet_agrees_with_onnxruntime():
    """QDQ import: SqueezeNet 1.1 quantized by ONNX Runtime compiles to the int8 kernels and
    agrees with ONNX Runtime running the same QDQ model (outputs within one code, same top-1)."""
    require_cpu(VNNI_FLAGS, "the int8 x86-avx512 kernels")
    from tvmsqz.images import preprocess, sample_images

    model = ort_qdq_squeezenet()
    art = tvmsqz.compile(tvmsqz.load_model(model, name="squeezenet1_1-ort-qdq"), "x86-avx512", tuning=False)
    assert art.manifest["precision"] == "int8"
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    agree = 0
    photos = sample_images()
    for _, img in photos:
        x = preprocess(img, "torchvision", 224)
        ours, theirs = art.run(x), sess.run(None, {name: x})[0]
        agree += int(ours.argmax() == theirs.argmax())
        step = float(np.abs(theirs).max()) / 64  # a few output codes at most
        assert np.abs(ours - theirs).max() <= step
    assert agree == len(photos)


def test_untuned_elementwise_kernels_get_a_parallel_schedule():
    """A kernel without a reduction (never tuned: the int8 input's quantize + regroup) gets the
    parallel elementwise default, with the same result; one with a reduction is left alone."""
    import tvm
    from tvm import te, tirx
    from tvm.s_tir import Schedule

    from tvmsqz.backends.cpu.kernels.elementwise import schedule_elementwise
    from tvmsqz.backends.cpu.kernels.int8 import pack_data

    data = te.placeholder((1, 3, 40, 40), "float32", name="data")
    codes = te.compute(
        data.shape, lambda n, c, y, x: te.max(te.min(te.round(data[n, c, y, x] * 20.0) + 100.0, 255.0), 0.0), "q"
    )
    blocked = te.compute((1, 3, 40, 40, 1), lambda n, c, y, x, i: codes[n, c, y, x].astype("uint8"), "layout")
    func = te.create_prim_func([data, pack_data(blocked)])
    scheduled = schedule_elementwise(func)
    assert scheduled is not None
    sch = Schedule(scheduled)
    (block,) = sch.get_child_blocks(sch.get_sblock("root"))  # every other block inlined
    assert tirx.ForKind.PARALLEL in [sch.get(loop).kind for loop in sch.get_loops(block)]
    x = np.random.default_rng(4).normal(size=(1, 3, 40, 40)).astype(f32) * 5
    outs = []
    for f in (func, scheduled):
        lib = tvm.compile(tvm.IRModule({"main": f.with_attr("global_symbol", "main")}), target="llvm").jit()
        out = tvm.runtime.tensor(np.zeros((1, 1, 40, 40, 4), np.uint8))
        lib["main"](tvm.runtime.tensor(x), out)
        outs.append(out.numpy())
    np.testing.assert_array_equal(outs[0], outs[1])
    assert outs[0][..., 3].max() == 0 and outs[0][..., :3].max() > 0

    k = te.reduce_axis((0, 40), "k")
    total = te.compute((1, 3, 40), lambda n, c, y: te.sum(data[n, c, y, k], axis=k), "total")
    assert schedule_elementwise(te.create_prim_func([data, total])) is None
