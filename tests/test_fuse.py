"""Fire-module fusion (tvmsqz.passes.fuse): what is rewritten, what is not, numbers, MetaSchedule.

Graphs are built for the purpose with onnx.helper (small shapes, so each compile takes about a
second); the built-in models are checked at the end.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from tvmsqz.passes.fuse import (
    FuseFireModules,
    LowerFireViews,
    fire_kernel_names,
    fuse_fire,
)


def _target():
    with open("/proc/cpuinfo") as handle:
        avx512 = "avx512f" in handle.read()
    return tvm.target.Target({"kind": "llvm", "mcpu": "x86-64-v4" if avx512 else "x86-64-v3", "num-cores": 2})


TARGET = _target()


# ----------------------------------------------------------------------------------------------
# Graph builder
# ----------------------------------------------------------------------------------------------


class _G:
    """Tiny ONNX graph builder with seeded weights."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.RandomState(seed)
        self.nodes, self.inits, self.n = [], [], 0

    def name(self, prefix: str) -> str:
        self.n += 1
        return f"{prefix}{self.n}"

    def const(self, arr: np.ndarray) -> str:
        name = self.name("c")
        self.inits.append(numpy_helper.from_array(arr.astype(np.float32), name))
        return name

    def op(self, op_type: str, inputs: list, **attrs) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def conv(
        self, x: str, cin: int, cout: int, k: int, bias: str | None = "conv", relu: bool = True, group: int = 1
    ) -> str:
        w = self.const(self.rng.randn(cout, cin // group, k, k) * (1.0 / np.sqrt(cin * k * k)))
        b = self.rng.randn(cout) * 0.1
        pads = [k // 2] * 4
        if bias == "conv":
            y = self.op("Conv", [x, w, self.const(b)], pads=pads, group=group)
        else:
            y = self.op("Conv", [x, w], pads=pads, group=group)
            if bias is not None:
                shape = {"c11": (cout, 1, 1), "1c11": (1, cout, 1, 1), "c": (cout,)}[bias]
                y = self.op("Add", [y, self.const(b.reshape(shape))])
        return self.op("Relu", [y]) if relu else y

    def model(self, inputs: dict, outputs: list) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes,
            "g",
            [helper.make_tensor_value_info(k, TensorProto.FLOAT, v) for k, v in inputs.items()],
            [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs],
            self.inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        return model


def fire_model(
    cin=8,
    sq=4,
    e1=8,
    e3=8,
    hw=6,
    bias="conv",
    relu=True,
    order=(1, 3),
    bypass=None,
    squeeze_out=False,
    branch_out=False,
    seed=0,
):
    """data -> squeeze (1x1 + ReLU) -> concat([expand e1 1x1, expand e3 3x3] in `order`) [+ bypass]."""
    g = _G(seed)
    s = g.conv("data", cin, sq, 1)
    outs = {1: g.conv(s, sq, e1, 1, bias, relu), 3: g.conv(s, sq, e3, 3, bias, relu)}
    y = g.op("Concat", [outs[k] for k in order], axis=1)
    if bypass == "identity":
        y = g.op("Add", [y, "data"])
    elif bypass == "conv":
        y = g.op("Add", [y, g.conv("data", cin, e1 + e3, 1, relu=False)])
    elif bypass == "broadcast":  # per-channel residual: not a same-shape bypass
        y = g.op("Add", [y, g.const(g.rng.randn(1, e1 + e3, 1, 1))])
    outputs = [y] + ([s] if squeeze_out else []) + ([outs[1]] if branch_out else [])
    return g.model({"data": (1, cin, hw, hw)}, outputs)


def import_model(model, fold_constants=False):
    from tvm.relax.frontend.onnx import from_onnx

    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    mod = from_onnx(model, shape_dict={"data": shape}, keep_params_in_input=False)
    if fold_constants:
        mod = relax.transform.FoldConstant()(mod)
    return mod


def op_names(mod) -> list:
    """Relax ops and call_tir callees in main, in order."""
    names = []
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op):
                if value.op.name == "relax.call_tir":
                    names.append(value.args[0].name_hint)
                else:
                    names.append(value.op.name)
    return names


def pipeline_kernels(mod) -> list:
    """Kernels main calls after the standard Relax lowering (LegalizeOps, FuseOps, FuseTIR)."""
    with TARGET:
        return op_names(relax.get_pipeline("zero")(mod))


def run_tvm(mod, x: np.ndarray) -> list:
    ex = tvm.compile(mod, target=TARGET)
    vm = relax.VirtualMachine(ex, tvm.cpu())
    out = vm["main"](tvm.runtime.tensor(x))
    return [out.numpy()] if hasattr(out, "numpy") else [o.numpy() for o in out]


def run_ort(model, x: np.ndarray) -> list:
    import onnxruntime as ort

    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"data": x})


def assert_parity(model, mod, seed=1):
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim)
    x = np.random.RandomState(seed).randn(*shape).astype(np.float32)
    ours, ref = run_tvm(mod, x), run_ort(model, x)
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape
        span = float(b.max() - b.min()) or 1.0
        assert np.abs(a - b).max() <= 1e-4 * span, (np.abs(a - b).max(), span)


# ----------------------------------------------------------------------------------------------
# Patterns that must match
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, fold_constants",
    [
        ({}, False),  # ONNX Conv with bias input: reshape(const) + add
        ({}, True),  # after FoldConstant: add of a (1, C, 1, 1) constant
        ({"bias": "c11"}, False),  # bias as a separate Add of a (C, 1, 1) initializer
        ({"bias": "1c11"}, True),
        ({"bias": None}, False),  # no bias at all
        ({"relu": False}, False),  # no ReLU on either branch
        ({"order": (3, 1)}, False),  # 3x3 branch first
        ({"e1": 4, "e3": 12}, False),  # uneven channel split
    ],
)
def test_fire_is_rewritten(kwargs, fold_constants):
    model = fire_model(**kwargs)
    mod = import_model(model, fold_constants)
    fused = fuse_fire(mod)
    ops = op_names(fused)
    assert "relax.concat" not in ops
    fire = [o for o in ops if o.startswith("fire_expand_")]
    assert len(fire) == 1, ops
    assert ops.count("relax.nn.conv2d") == 1  # only the squeeze is left
    assert fire_kernel_names(fused) == fire
    kernels = pipeline_kernels(fused)
    assert not any("concat" in k for k in kernels), kernels
    assert sum(k.startswith("fire_expand_") for k in kernels) == 1
    assert_parity(model, fused)


def test_kernel_layout_and_name():
    fused = fuse_fire(import_model(fire_model(e1=4, e3=12, order=(3, 1))))
    (name,) = fire_kernel_names(fused)
    assert name == "fire_expand_4_12k3_4k1_6x6"  # squeeze channels, branches in concat order, HxW
    func = fused[name]
    # Each branch writes straight into its own channel slice of the one output buffer.
    views = func.body.block.match_buffers
    assert [int(v.buffer.elem_offset) for v in views] == [0, 12 * 36]
    assert [int(v.buffer.shape[1]) for v in views] == [12, 4]
    text = func.script()
    assert "if_then_else(T.int64(12) <= " not in text  # no concat-style gather
    assert text.count("T.init()") == 2  # one reduction per branch
    # Weights stay constants in the call, marked layout-free for weight prepacking.
    assert list(func.attrs["layout_free_buffers"]) == [1, 2, 3, 4]
    # AttachAttrLayoutFreeBuffers then changes nothing (and keeps the kernel's name).
    with TARGET:
        attached = relax.transform.AttachAttrLayoutFreeBuffers()(fused)
    assert fire_kernel_names(attached) == [name]


def test_module_pass_form_and_idempotence():
    mod = import_model(fire_model())
    fused = FuseFireModules()(mod)
    assert len(fire_kernel_names(fused)) == 1
    again = fuse_fire(fused)
    assert fire_kernel_names(again) == fire_kernel_names(fused)
    tvm.ir.assert_structural_equal(again["main"], fused["main"])


def test_identical_fires_share_one_kernel():
    g = _G()
    x = "data"
    for _ in range(2):
        s = g.conv(x, 16, 4, 1)
        x = g.op("Concat", [g.conv(s, 4, 8, 1), g.conv(s, 4, 8, 3)], axis=1)
    model = g.model({"data": (1, 16, 5, 5)}, [x])
    fused = fuse_fire(import_model(model))
    ops = op_names(fused)
    assert ops.count("fire_expand_4_8k1_8k3_5x5") == 2
    assert fire_kernel_names(fused) == ["fire_expand_4_8k1_8k3_5x5"]
    assert_parity(model, fused)


@pytest.mark.parametrize("fold_squeeze", [False, True])
def test_batch_two(fold_squeeze):
    model = fire_model(cin=16, bypass="identity")
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    fused = fuse_fire(import_model(model), fold_squeeze=fold_squeeze)
    (name,) = fire_kernel_names(fused)
    assert name.endswith("_res_n2")
    assert_parity(model, fused)


def test_different_fires_get_different_kernels():
    g = _G()
    x = "data"
    for relu in (True, False):
        s = g.conv(x, 16, 4, 1)
        x = g.op("Concat", [g.conv(s, 4, 8, 1, relu=relu), g.conv(s, 4, 8, 3, relu=relu)], axis=1)
    model = g.model({"data": (1, 16, 5, 5)}, [x])
    fused = fuse_fire(import_model(model))
    assert fire_kernel_names(fused) == ["fire_expand_4_8k1_8k3_5x5", "fire_expand_4_8k1_8k3_5x5_linear"]
    assert_parity(model, fused)


# ----------------------------------------------------------------------------------------------
# Patterns that must not match
# ----------------------------------------------------------------------------------------------


def _different_inputs():
    g = _G()
    s1, s2 = g.conv("data", 8, 4, 1), g.conv("data", 8, 4, 1)
    y = g.op("Concat", [g.conv(s1, 4, 8, 1), g.conv(s2, 4, 8, 3)], axis=1)
    return g.model({"data": (1, 8, 6, 6)}, [y])


def _spatial_axis():
    g = _G()
    s = g.conv("data", 8, 4, 1)
    y = g.op("Concat", [g.conv(s, 4, 8, 1), g.conv(s, 4, 8, 3)], axis=2)
    return g.model({"data": (1, 8, 6, 6)}, [y])


def _mixed_relu():
    g = _G()
    s = g.conv("data", 8, 4, 1)
    y = g.op("Concat", [g.conv(s, 4, 8, 1, relu=True), g.conv(s, 4, 8, 3, relu=False)], axis=1)
    return g.model({"data": (1, 8, 6, 6)}, [y])


def _grouped():
    g = _G()
    s = g.conv("data", 8, 4, 1)
    y = g.op("Concat", [g.conv(s, 4, 8, 1), g.conv(s, 4, 8, 3, group=2)], axis=1)
    return g.model({"data": (1, 8, 6, 6)}, [y])


def _w_broadcast_bias():
    # Add of a (C,) constant broadcasts along W (here W == C), so it is not a channel bias.
    return fire_model(e1=6, e3=6, hw=6, bias="c")


def _concat_with_squeeze():
    g = _G()
    s = g.conv("data", 8, 4, 1)
    y = g.op("Concat", [g.conv(s, 4, 8, 1), s], axis=1)
    return g.model({"data": (1, 8, 6, 6)}, [y])


@pytest.mark.parametrize(
    "build",
    [
        _different_inputs,
        _spatial_axis,
        _mixed_relu,
        _grouped,
        _w_broadcast_bias,
        _concat_with_squeeze,
        lambda: fire_model(branch_out=True),  # a branch result is also used elsewhere
    ],
    ids=[
        "different-inputs",
        "spatial-axis",
        "mixed-relu",
        "grouped",
        "w-broadcast-bias",
        "concat-with-squeeze",
        "branch-used-twice",
    ],
)
def test_no_rewrite(build):
    model = build()
    mod = import_model(model)
    fused = fuse_fire(mod, fold_squeeze=True)
    assert fused is mod  # untouched
    assert fire_kernel_names(fused) == []
    assert "relax.concat" in op_names(fused)


def test_no_rewrite_still_runs():
    model = _w_broadcast_bias()
    assert_parity(model, fuse_fire(import_model(model)))


# ----------------------------------------------------------------------------------------------
# Bypass and squeeze folding
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["identity", "conv"])
def test_bypass_add_is_folded(kind):
    model = fire_model(cin=16, bypass=kind)
    mod = import_model(model)
    fused = fuse_fire(mod)
    ops = op_names(fused)
    assert "relax.concat" not in ops and "relax.add" not in ops[ops.index(fire_kernel_names(fused)[0]) :]
    assert fire_kernel_names(fused) == ["fire_expand_4_8k1_8k3_6x6_res"]
    assert_parity(model, fused)
    # Option off: the add stays a separate op, the expand kernel is still fused.
    kept = fuse_fire(mod, fold_bypass=False)
    assert fire_kernel_names(kept) == ["fire_expand_4_8k1_8k3_6x6"]
    assert op_names(kept)[-1] == "relax.add"
    assert_parity(model, kept)


def test_broadcast_add_is_not_folded():
    model = fire_model(bypass="broadcast")
    fused = fuse_fire(import_model(model))
    assert fire_kernel_names(fused) == ["fire_expand_4_8k1_8k3_6x6"]
    assert op_names(fused)[-1] == "relax.add"
    assert_parity(model, fused)


@pytest.mark.parametrize("bypass", [None, "identity"])
def test_fold_squeeze(bypass):
    model = fire_model(cin=16, bypass=bypass)
    mod = import_model(model)
    fused = fuse_fire(mod, fold_squeeze=True)
    ops = op_names(fused)
    assert "relax.nn.conv2d" not in ops and "relax.concat" not in ops
    assert fire_kernel_names(fused) == ["fire_module_16_4_8k1_8k3_6x6" + ("_res" if bypass else "")]
    assert ops == fire_kernel_names(fused)  # the whole Fire module is one call
    assert_parity(model, fused)


def test_squeeze_used_elsewhere_is_not_folded():
    model = fire_model(squeeze_out=True)
    fused = fuse_fire(import_model(model), fold_squeeze=True)
    assert fire_kernel_names(fused) == ["fire_expand_4_8k1_8k3_6x6"]
    assert op_names(fused).count("relax.nn.conv2d") == 1
    assert_parity(model, fused)


# ----------------------------------------------------------------------------------------------
# MetaSchedule: the fused kernel is a task of its own and tunes like any other
# ----------------------------------------------------------------------------------------------


def _in_process_builder():
    """Build candidates in this process (no worker start-up, no tensor_intrin import)."""
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
    from tvm.s_tir.meta_schedule.builder.local_builder import default_export

    @derived_object
    class InProcessBuilder(PyBuilder):
        def build(self, build_inputs):
            from tvm.driver import build as tvm_build
            from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

            results = []
            for item in build_inputs:
                try:
                    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(item.mod)
                    results.append(BuilderResult(default_export(tvm_build(mod, target=item.target)), None))
                except Exception as exc:  # noqa: BLE001 - reported to MetaSchedule as a failure
                    results.append(BuilderResult(None, str(exc)))
            return results

    return InProcessBuilder()


def test_metaschedule_extracts_and_tunes_fused_kernel(tmp_path):
    from tvm.s_tir import meta_schedule as ms

    from tvmsqz.builder import import_tensor_intrin

    import_tensor_intrin()  # TuneContext imports it; ~3 s this way instead of ~40 s
    model = fire_model(cin=16, sq=8, e1=16, e3=16, hw=8)
    mod = import_model(model)
    fused = fuse_fire(mod)
    (name,) = fire_kernel_names(fused)
    with TARGET:
        prepared = relax.get_pipeline("zero")(fused)
        prepared = relax.transform.AttachAttrLayoutFreeBuffers()(prepared)
    tasks = ms.relax_integration.extract_tasks(prepared, TARGET)
    assert name in [t.task_name for t in tasks]
    assert not any("concat" in t.task_name for t in tasks)

    database = ms.relax_integration.tune_relax(
        prepared,
        {},
        TARGET,
        str(tmp_path),
        max_trials_global=4,
        num_trials_per_iter=4,
        op_names=[name],
        builder=_in_process_builder(),
        runner=ms.runner.LocalRunner(timeout_sec=60),
        strategy="replay-trace",
        cost_model="random",
    )
    records = database.get_all_tuning_records()
    assert any(r.run_secs for r in records), "no candidate of the fused kernel built and ran"

    with TARGET, database, tvm.transform.PassContext(opt_level=3):
        tuned = relax.transform.MetaScheduleApplyDatabase()(prepared)
        assert tuned[name].attrs.get("tirx.is_scheduled", False)
        # CPU weight prepack, as tvmsqz's CPU backend does it, with LowerFireViews first.
        tuned = tvm.transform.Sequential(
            [
                LowerFireViews(),
                relax.transform.SplitLayoutRewritePreproc(),
                relax.transform.LiftTransformParams(),
                relax.transform.FoldConstant(),
            ]
        )(tuned)
    assert any(gv.name_hint.startswith(name) for gv in tuned.functions)
    assert_parity(model, tuned)


def test_lower_fire_views_leaves_unscheduled_kernels():
    fused = fuse_fire(import_model(fire_model()))
    (name,) = fire_kernel_names(fused)
    assert LowerFireViews()(fused)[name].same_as(fused[name])
    lowered = LowerFireViews(only_scheduled=False)(fused)
    assert len(lowered[name].body.block.match_buffers) == 0
    assert_parity(fire_model(), lowered)


# ----------------------------------------------------------------------------------------------
# Other targets (target-independent pass: only codegen is checked here)
# ----------------------------------------------------------------------------------------------


def test_compiles_for_aarch64():
    fused = fuse_fire(import_model(fire_model()), fold_squeeze=True)
    target = tvm.target.Target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mattr": ["+neon"]})
    tvm.compile(fused, target=target)


def test_compiles_for_cuda(monkeypatch):
    """Fused kernels compile for CUDA; where a GPU is present TVM runs nvcc (tvmsqz's choice)."""
    import os

    from conftest import require
    from tvm.s_tir import dlight as dl

    from tvmsqz.backends.cuda.fatbin import device_code_info
    from tvmsqz.backends.cuda.nvcc import compile_cuda_source, locate_nvcc

    nvcc = locate_nvcc()  # PATH, the nvidia-cuda-nvcc pip package, CUDA_HOME
    require(nvcc is not None, "no nvcc found (scripts/setup_cuda.sh installs nvidia-cuda-nvcc)")
    monkeypatch.setenv("PATH", os.pathsep.join([os.path.dirname(nvcc), os.environ["PATH"]]))
    monkeypatch.setenv("TVM_CUDA_COMPILE_MODE", "nvcc")

    fused = fuse_fire(import_model(fire_model()))
    target = tvm.target.Target({"kind": "cuda", "arch": "sm_80"})
    with target:
        mod = relax.get_pipeline("zero")(fused)
        mod = dl.ApplyDefaultSchedule(dl.gpu.Fallback())(mod)
    executable = tvm.compile(mod, target=target)
    # Without a GPU TVM keeps the CUDA source: compile it as `tvmsqz compile` would.
    (source,) = [m.inspect_source("cuda") for m in executable.mod.imports[0].imports if m.kind == "cuda"]
    assert device_code_info(compile_cuda_source(source, "sm_80", nvcc), "fatbin")["sass"] == ["sm_80"]


# ----------------------------------------------------------------------------------------------
# Built-in models
# ----------------------------------------------------------------------------------------------

BUILTIN = ["squeezenet1_0", "squeezenet1_1", "squeezenet1_0_bypass", "squeezenet1_0_complex_bypass"]


@pytest.fixture(scope="module")
def builtin_models():
    from tvmsqz import frontend, models

    cache = {}

    def get(name):
        if name not in cache:
            model, _ = models.load_onnx(name)
            mod, spec = frontend.import_onnx(model)
            cache[name] = (model, mod, spec)
        return cache[name]

    return get


@pytest.mark.parametrize("name", BUILTIN)
def test_builtin_models_one_kernel_per_fire(builtin_models, name):
    _, mod, _ = builtin_models(name)
    fused = fuse_fire(mod)
    kernels = pipeline_kernels(fused)
    assert not any("concat" in k for k in kernels), kernels
    assert sum(k.startswith("fire_expand_") for k in kernels) == 8  # fire2 .. fire9
    # The bypass adds are part of the Fire kernels: no elementwise add kernel is left.
    assert not any(k.startswith("add") or k.startswith("fused_add") for k in kernels), kernels
    if "bypass" in name:
        assert sum(k.endswith("_res") for k in kernels) == (8 if "complex" in name else 4)
    unfused = pipeline_kernels(mod)
    assert sum("concat" in k for k in unfused) == 8  # what the rewrite removes


@pytest.mark.slow
@pytest.mark.parametrize("name, fold_squeeze", [(n, False) for n in BUILTIN] + [("squeezenet1_1", True)])
def test_builtin_models_match_onnxruntime(builtin_models, name, fold_squeeze):
    model, mod, spec = builtin_models(name)
    fused = fuse_fire(mod, fold_squeeze=fold_squeeze)
    x = np.random.RandomState(0).rand(*spec.shape).astype(np.float32)
    (ours,), (ref,) = run_tvm(fused, x), run_ort(model, x)
    span = float(ref.max() - ref.min())
    assert np.abs(ours - ref).max() <= 1e-4 * span
