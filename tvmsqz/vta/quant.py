"""Post-training int8 quantisation with power-of-two scales.

Every tensor that enters or leaves a VTA layer is int8 with a scale 2**-a (`a` = its exponent):
value = q * 2**-a. Weights of a VTA layer are int8 with scale 2**-wexp (one exponent per layer,
so the fused expand pair shares it), biases int32 with scale 2**-(a_in + wexp), and the output is

    q_out = clip((acc + bias + 2**(shift-1)) >> shift, lo, 127),  shift = a_in + wexp - a_out

with lo = 0 after a ReLU (-128 otherwise): requantisation is the ALU's shift and clip. A
max-pool on VTA keeps its input's scale (max commutes with the monotone quantiser), so its
output exponent is its input's, not calibrated. The
activation exponents are calibrated on real images: for each tensor, the exponent that
minimises the mean squared quantisation error over the calibration activations (between "no
clipping" and 4 bits finer, so outliers may clip). The host quantises with
q = clip(floor(x * 2**a + 0.5), -128, 127), identically in numpy and in the TVM host code.

The generic pieces (MSE exponent search, zero points, per-channel weight exponents, the
rounding `quantize_np`/`dequantize_np`, the bias-correction arithmetic) live in `tvmsqz.quant`;
this module builds VTA's quantised network (`QuantNet`: host segments + VTA layers) on them.

Bias correction (`correct_biases`, on by default): rounding and clipping errors do not average
out to zero per channel, and they add up through the layers. After the exponents are fixed, the
calibration images run through the quantised reference layer by layer; each VTA convolution's
int32 bias absorbs the mean difference, per output channel, between its pre-activation on the
quantised input with quantised weights and the fp32 pre-activation (empirical bias correction,
Nagel et al. 2019). Only bias values change: the VTA programs, their cycles and the bit-exact
agreement with the numpy reference are untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from tvmsqz.errors import TvmsqzError
from tvmsqz.quant.bias import conv_mean_error, corrected_bias
from tvmsqz.quant.scales import (
    choose_exponent,
    choose_exponent_zp,
    dequantize_np,
    quantize_np,
    weight_exponents,
    zero_point,
)

from .graph import Graph, VTAUnit, eval_op, partition, pool_layer, run_fp32
from .lower import Branch, ConvLayer, pack_activation, unpack_activation

MAX_SAMPLES = 400_000


@dataclass
class HostSegment:
    index: int
    ops: list  # graph Ops
    inputs: list  # [(tensor, "q"|"f")]: int8 in VTA's blocked layout, or float32
    outputs: list


@dataclass
class QuantNet:
    graph: Graph
    stages: list  # HostSegment | VTAUnit
    qexp: dict  # tensor -> exponent
    layers: dict  # unit output tensor -> ConvLayer | PoolLayer
    wexp: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    zero: dict = field(default_factory=dict)  # tensor -> (C,) int zero points (host-quantised inputs only)
    block: int = 16  # the configuration's GEMM block: VTA-side tensors are (C/block, H, W, block) int8

    # ------------------------------------------------------------------ queries
    def vta_units(self) -> list:
        return [s for s in self.stages if isinstance(s, VTAUnit)]

    def host_segments(self) -> list:
        return [s for s in self.stages if isinstance(s, HostSegment)]

    def macs(self) -> tuple[int, int]:
        """(MACs on VTA, MACs of all convolutions)."""
        off = sum(L.macs for L in self.layers.values())
        total = 0
        for op in self.graph.ops:
            if op.kind == "conv":
                o, c, k, _ = op.attrs["weight"].shape
                _, _, ho, wo = self.graph.shapes[op.output]
                total += o * c * k * k * ho * wo
        return off, total

    # ------------------------------------------------------------------ numpy host
    def host_numpy(self, seg: HostSegment, args: list) -> list:
        env = {}
        for (t, rep), v in zip(seg.inputs, args):
            if rep == "q":
                c = self.graph.shapes[t][1]
                v = dequantize_np(unpack_activation(v, c), self.qexp[t], self.zero.get(t))
            env[t] = v
        for op in seg.ops:
            env[op.output] = eval_op(op, [env[i] for i in op.inputs])
        outs = []
        for t, rep in seg.outputs:
            v = env[t]
            outs.append(
                pack_activation(quantize_np(v, self.qexp[t], self.zero.get(t)), self.block) if rep == "q" else v
            )
        return outs

    def run(self, x: np.ndarray, host=None, vta=None, record: dict | None = None) -> np.ndarray:
        """Run the quantised network. `host(seg, args) -> outs` defaults to numpy; `vta(unit,
        layer, x_packed) -> out_packed` defaults to the numpy int reference. `record` collects
        every stage boundary tensor."""
        host = host or self.host_numpy
        env = {self.graph.input_name: np.asarray(x, dtype=np.float32)}
        for st in self.stages:
            if isinstance(st, HostSegment):
                outs = host(st, [env[t] for t, _ in st.inputs])
                for (t, _), v in zip(st.outputs, outs):
                    env[t] = v
            else:
                layer = self.layers[st.output]
                xin = env[st.input]
                if vta is None:
                    y = pack_activation(layer.reference(unpack_activation(xin, layer.in_channels)), self.block)
                else:
                    y = vta(st, layer, xin)
                env[st.output] = y
            if record is not None:
                for t in [o for o, _ in st.outputs] if isinstance(st, HostSegment) else [st.output]:
                    record[t] = env[t]
        return env[self.graph.output_name]


def _boundaries(graph: Graph, stages: list) -> tuple[list, set]:
    """Host segments with their boundary tensors, and the set of tensors stored quantised."""
    q_tensors = set()
    for st in stages:
        if isinstance(st, VTAUnit):
            q_tensors.add(st.input)
            q_tensors.add(st.output)

    def rep(t):
        return "q" if t in q_tensors else "f"

    # which stage consumes each tensor
    later_use: dict = {}
    for si, st in enumerate(stages):
        ins = [st.input] if isinstance(st, VTAUnit) else [i for op in st for i in op.inputs]
        for t in ins:
            later_use.setdefault(t, []).append(si)
    out_stages = []
    for si, st in enumerate(stages):
        if isinstance(st, VTAUnit):
            out_stages.append(st)
            continue
        if not st:  # the VTA layer after it reads the model input: quantise and pack it, nothing else
            t = stages[si + 1].input
            out_stages.append(
                HostSegment(len([s for s in out_stages if isinstance(s, HostSegment)]), [], [(t, "f")], [(t, "q")])
            )
            continue
        produced = {op.output for op in st}
        inputs = []
        for op in st:
            for t in op.inputs:
                if t not in produced and t not in [i for i, _ in inputs]:
                    inputs.append((t, rep(t)))
        outputs = []
        for op in st:
            t = op.output
            if t == graph.output_name or any(s > si for s in later_use.get(t, [])):
                outputs.append((t, rep(t)))
        out_stages.append(
            HostSegment(len([s for s in out_stages if isinstance(s, HostSegment)]), list(st), inputs, outputs)
        )
    return out_stages, q_tensors


def conv_layer(
    unit: VTAUnit,
    graph: Graph,
    branches: list | None = None,
    bias: np.ndarray | None = None,
    shift=8,
    relu: bool | None = None,
) -> ConvLayer:
    """The `ConvLayer` of a conv unit; without `branches` a shape-only one (zero weights), which
    is all the tiling search needs. `relu=None`: the graph's ReLU (clip at 0)."""
    if branches is None:
        branches = [Branch(np.zeros(op.attrs["weight"].shape, np.int8), op.attrs["pad"]) for op in unit.convs]
        bias = np.zeros(sum(b.weight.shape[0] for b in branches), np.int32)
    relus = {op.attrs["relu"] for op in unit.convs}
    if len(relus) != 1:
        raise TvmsqzError(f"{unit.name}: fused convolutions must all have (or all lack) a ReLU")
    _, c, h, w = graph.shapes[unit.input]
    return ConvLayer(
        unit.name,
        c,
        h,
        w,
        branches,
        bias,
        shift,
        relu=relus.pop() if relu is None else relu,
        stride=unit.convs[0].attrs["stride"],
    )


def unit_layer(unit: VTAUnit, graph: Graph, *, per_channel: bool = True):
    """Shape-only layer of any VTA unit (conv or max-pool), lowering to the same program shape
    as `quantize_graph`'s layer with the same options."""
    if unit.pool is not None:
        return pool_layer(unit.pool, graph, unit.nonneg)
    o = sum(op.attrs["weight"].shape[0] for op in unit.convs)
    return conv_layer(unit, graph, shift=np.full(o, 8) if per_channel else 8)


OFFSET = -128  # zero point of a VTA-produced ReLU output: codes -128..127 stand for 0..255


def zero_point_tensors(graph: Graph, stages: list) -> dict:
    """Tensors quantised with a zero point, and which kind:

    "centre" (per channel, calibrated): host-quantised tensors read on VTA only by convolutions
      without padding (the model input's im2col for conv1). Caffe preprocessing leaves photo
      values in [-124, 151]: one signed int8 range at step 1 cannot hold that, so without a zero
      point the input loses a bit (step 2); per channel each colour spans its own 255 steps.
    "offset" (-128): outputs of VTA convolutions with a ReLU whose readers are convolutions
      without padding, max-pools without overhang (their outputs the same, recursively) or the
      host. Such a ReLU output uses only [0, 127] of int8; with the offset it uses 0..255, a bit
      more precision, for free on VTA: the producer's bias takes -128 * 2**shift (the ReLU
      clip becomes the int8 clip) and the readers' biases take +128 * sum(w).

    A zero point folds exactly into a reading convolution's int32 bias (acc(q) = acc(x) +
    sum(w * z)) only where VTA's zero padding never enters: hence the no-padding conditions."""
    readers: dict = {}
    for st in stages:
        for t in [st.input] if isinstance(st, VTAUnit) else [t for t, _ in st.inputs]:
            readers.setdefault(t, []).append(st)
    units = {st.output: st for st in stages if isinstance(st, VTAUnit)}

    def conv_reader(st) -> bool:
        return isinstance(st, VTAUnit) and st.pool is None and all(op.attrs["pad"] == 0 for op in st.convs)

    def offset_ok(t: str) -> bool:
        for st in readers.get(t, []):
            if isinstance(st, HostSegment) or conv_reader(st):
                continue
            if st.pool is not None and not any(pool_layer(st.pool, graph, st.nonneg).padding) and offset_ok(st.output):
                continue
            return False
        return bool(readers.get(t))

    kinds = {}
    for st in stages:
        if isinstance(st, HostSegment):
            for t, rep in st.outputs:
                vta_readers = [r for r in readers.get(t, []) if isinstance(r, VTAUnit)]
                if rep == "q" and vta_readers and all(conv_reader(r) for r in vta_readers):
                    kinds[t] = "centre"
        elif st.pool is None and all(op.attrs["relu"] for op in st.convs) and offset_ok(st.output):
            kinds[st.output] = "offset"
        elif st.pool is not None and kinds.get(st.input) == "offset":
            kinds[st.output] = "offset"  # inherits its input's zero point, like its exponent
    return {t: k for t, k in kinds.items() if t in units or k == "centre"}


def correct_biases(qn: QuantNet, calibration: list) -> dict:
    """Empirical bias correction in place (see the module doc): run `calibration` through the
    quantised reference in execution order; before each VTA convolution is run, subtract from
    its int32 bias, per output channel, round(delta * 2**(a_in + w_o)) where delta = mean over
    the calibration pixels of (pre-activation on the quantised input with the int8 weights) -
    (fp32 pre-activation on the fp32 input). Returns {layer output: RMS of delta in units of the
    layer's output step 2**-a_out}."""
    g = qn.graph
    conv_units = [u for u in qn.vta_units() if u.pool is None]
    keep = {u.input for u in conv_units}
    fps = []
    for x in calibration:
        _, kept = run_fp32(g, x, keep=keep)
        kept.setdefault(g.input_name, np.asarray(x, np.float32))
        fps.append(kept)
    envs = [{g.input_name: np.asarray(x, np.float32)} for x in calibration]
    report = {}
    for st in qn.stages:
        if isinstance(st, HostSegment):
            for env in envs:
                for (t, _), v in zip(st.outputs, qn.host_numpy(st, [env[t] for t, _ in st.inputs])):
                    env[t] = v
            continue
        layer = qn.layers[st.output]
        if st.pool is None:
            a_in = qn.qexp[st.input]
            we = np.broadcast_to(np.asarray(qn.wexp[st.output], np.int64), (layer.out_channels,))
            delta = np.zeros(layer.out_channels)
            for env, fp in zip(envs, fps):
                xq = dequantize_np(unpack_activation(env[st.input], layer.in_channels), a_in, qn.zero.get(st.input))
                parts, o = [], 0
                for op, br in zip(st.convs, layer.branches):
                    n = br.weight.shape[0]
                    wq = br.weight.astype(np.float64) * 2.0 ** -we[o : o + n].reshape(-1, 1, 1, 1)
                    parts.append(
                        conv_mean_error(
                            wq,
                            op.attrs["weight"].astype(np.float64),
                            xq,
                            fp[st.input],
                            op.attrs["stride"],
                            op.attrs["pad"],
                        )
                    )
                    o += n
                delta += np.concatenate(parts) / len(envs)
            bias = corrected_bias(layer.bias, delta, a_in + we)
            if np.abs(bias).max() >= 2**31 - 2**16:
                raise TvmsqzError(f"{layer.name}: corrected bias overflows int32")
            layer.bias = bias.astype(np.int32)
            report[st.output] = float(np.sqrt(np.mean((delta * 2.0 ** qn.qexp[st.output]) ** 2)))
        for env in envs:
            env[st.output] = pack_activation(
                layer.reference(unpack_activation(env[st.input], layer.in_channels)), qn.block
            )
    return report


def quantize_graph(
    graph: Graph,
    calibration: list,
    *,
    progress=None,
    cfg=None,
    pools: bool = True,
    per_channel: bool = True,
    zero_points: bool = True,
    bias_correction: bool = True,
) -> QuantNet:
    """Calibrate on `calibration` (list of preprocessed (1,3,H,W) float32 inputs) and build the
    quantised network (`cfg`, `pools`: see `graph.partition`; `per_channel`: one weight
    exponent per output channel, see `weight_exponents`; `zero_points`: see
    `zero_point_tensors`; `bias_correction`: see `correct_biases`; the last three are switches
    for comparison)."""
    if not calibration:
        raise TvmsqzError("calibration needs at least one image")
    stages, q_tensors = _boundaries(graph, partition(graph, cfg=cfg, pools=pools))
    units = [s for s in stages if isinstance(s, VTAUnit)]
    if not units:
        raise TvmsqzError("no convolution of this model can run on VTA")
    inherited = {u.output: u.input for u in units if u.pool is not None}  # pool output -> its input
    # sorted: the subsamples come from one RNG, so the order must not depend on string hashing
    calibrated = sorted(q_tensors - set(inherited))
    zkind = zero_point_tensors(graph, stages) if zero_points else {}
    zp = {t for t, k in zkind.items() if k == "centre"}
    rng = np.random.default_rng(0)
    samples: dict = {t: [] for t in calibrated}
    chans: dict = {t: [] for t in zp}
    cmin: dict = {t: np.inf for t in zp}
    cmax: dict = {t: -np.inf for t in zp}
    amax: dict = {t: 0.0 for t in calibrated}
    per = MAX_SAMPLES // len(calibration)
    for n, x in enumerate(calibration):
        _, kept = run_fp32(graph, x, keep=set(calibrated) | {graph.input_name})
        kept.setdefault(graph.input_name, np.asarray(x, np.float32))
        for t in calibrated:
            arr = kept[t]
            v = arr.reshape(-1)
            amax[t] = max(amax[t], float(np.abs(v).max()))
            idx = np.arange(v.size) if v.size <= per else rng.choice(v.size, per, replace=False)
            samples[t].append(v[idx])
            if t in zp:
                cmin[t] = np.minimum(cmin[t], arr.min(axis=(0, 2, 3)))
                cmax[t] = np.maximum(cmax[t], arr.max(axis=(0, 2, 3)))
                chans[t].append((idx // (arr.shape[2] * arr.shape[3])) % arr.shape[1])
        if progress:
            progress(n + 1, len(calibration))
    qexp, zero = {}, {}
    for t in calibrated:
        allv = np.concatenate(samples[t]).astype(np.float64)
        if t in zp:
            lo_c, hi_c = cmin[t], cmax[t]
            src = graph.producers().get(t)
            if src is not None and src.kind == "im2col":  # one zero point per source channel, tiled over taps:
                c = graph.shapes[src.inputs[0]][1]  # the host may then quantise before the gather
                lo_c = np.tile(lo_c.reshape(-1, c).min(axis=0), len(lo_c) // c)
                hi_c = np.tile(hi_c.reshape(-1, c).max(axis=0), len(hi_c) // c)
            mid = (lo_c.astype(np.float64) + hi_c) / 2
            qexp[t] = choose_exponent_zp(allv, np.concatenate(chans[t]), mid)
            zero[t] = zero_point(mid, qexp[t])
        elif zkind.get(t) == "offset":
            qexp[t] = choose_exponent(allv, amax[t], 0, 127 - OFFSET)
            zero[t] = np.full(graph.shapes[t][1], OFFSET, np.int64)
        else:
            qexp[t] = choose_exponent(allv, amax[t], 0 if allv.min() >= 0 else -128)
    for u in units:  # in execution order, so a pool of a pool inherits the right exponent
        if u.pool is not None:
            qexp[u.output] = qexp[u.input]
            if u.input in zero:
                zero[u.output] = zero[u.input]
    layers, wexp = {}, {}
    for u in units:
        if u.pool is not None:
            layers[u.output] = pool_layer(u.pool, graph, u.nonneg)
            continue
        a_in, a_out = qexp[u.input], qexp[u.output]
        wmax = np.concatenate(
            [np.abs(op.attrs["weight"]).reshape(op.attrs["weight"].shape[0], -1).max(axis=1) for op in u.convs]
        )
        b = np.concatenate([op.attrs["bias"] for op in u.convs]).astype(np.float64)
        we = weight_exponents(wmax, b, a_in, per_channel)
        branches, o = [], 0
        for op in u.convs:
            n = op.attrs["weight"].shape[0]
            e = we[o : o + n].reshape(-1, 1, 1, 1)
            wq = np.clip(np.round(op.attrs["weight"] * 2.0**e), -127, 127).astype(np.int8)
            branches.append(Branch(wq, op.attrs["pad"]))
            o += n
        bias = np.round(b * 2.0 ** (a_in + we))
        if u.input in zero:  # acc sees q = x + z: take sum(w * z) back out of the bias
            z = zero[u.input].reshape(1, -1, 1, 1)
            bias -= np.concatenate([(br.weight.astype(np.int64) * z).sum(axis=(1, 2, 3)) for br in branches])
        shift = a_in + we - a_out
        relu = None
        if zkind.get(u.output) == "offset":  # + OFFSET after the shift, folded into the bias
            if shift.min() < -7:
                raise TvmsqzError(f"{u.name}: left shift too large to fold the output zero point")
            bias += OFFSET * 2.0**shift
            relu = False  # the ReLU clip at 0 is now the int8 clip at -128
        if np.abs(bias).max() >= 2**31 - 2**16:
            raise TvmsqzError(f"{u.name}: quantised bias overflows int32")
        layers[u.output] = conv_layer(
            u, graph, branches, bias.astype(np.int32), shift if per_channel else int(shift[0]), relu
        )
        wexp[u.output] = [int(v) for v in we] if per_channel else int(we[0])
    qn = QuantNet(
        graph,
        stages,
        qexp,
        layers,
        wexp,
        calibration={"images": len(calibration), "amax": {k: float(v) for k, v in amax.items()}},
        zero=zero,
        block=cfg.block if cfg is not None else 16,
    )
    if bias_correction:
        qn.calibration["bias_correction"] = correct_biases(qn, calibration)
    return qn
