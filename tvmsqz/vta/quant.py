"""Post-training int8 quantisation with power-of-two scales.

Every tensor that enters or leaves a VTA layer is int8 with a scale 2**-a (`a` = its exponent):
value = q * 2**-a. Weights of a VTA layer are int8 with scale 2**-wexp (one exponent per layer,
so the fused expand pair shares it), biases int32 with scale 2**-(a_in + wexp), and the output is

    q_out = clip((acc + bias + 2**(shift-1)) >> shift, lo, 127),  shift = a_in + wexp - a_out

with lo = 0 after a ReLU (-128 otherwise): requantisation is the ALU's shift and clip. The
activation exponents are calibrated on real images: for each tensor, the exponent that
minimises the mean squared quantisation error over the calibration activations (between "no
clipping" and 4 bits finer, so outliers may clip). The host quantises with
q = clip(floor(x * 2**a + 0.5), -128, 127), identically in numpy and in the TVM host code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from tvmsqz.errors import TvmsqzError

from .graph import Graph, VTAUnit, eval_op, partition, run_fp32
from .lower import Branch, ConvLayer, pack_activation, reference_conv, unpack_activation

MAX_SAMPLES = 400_000


def quantize_np(x: np.ndarray, a: int) -> np.ndarray:
    return np.clip(np.floor(x.astype(np.float32) * np.float32(2.0 ** a) + np.float32(0.5)), -128, 127).astype(np.int8)


def dequantize_np(q: np.ndarray, a: int) -> np.ndarray:
    return q.astype(np.float32) * np.float32(2.0 ** -a)


def choose_exponent(samples: np.ndarray, amax: float, lo: int = -128) -> int:
    if amax <= 0:
        return 0
    a0 = math.floor(math.log2(127.0 / amax))
    best, best_err = a0, None
    for a in range(a0, a0 + 5):
        q = np.clip(np.floor(samples * 2.0 ** a + 0.5), lo, 127) * 2.0 ** -a
        err = float(np.mean((q - samples) ** 2))
        if best_err is None or err < best_err:
            best, best_err = a, err
    return best


@dataclass
class HostSegment:
    index: int
    ops: list  # graph Ops
    inputs: list  # [(tensor, "q"|"f")]
    outputs: list


@dataclass
class QuantNet:
    graph: Graph
    stages: list  # HostSegment | VTAUnit
    qexp: dict  # tensor -> exponent
    layers: dict  # unit output tensor -> ConvLayer
    wexp: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)

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
                v = dequantize_np(unpack_activation(v, c), self.qexp[t])
            env[t] = v
        for op in seg.ops:
            env[op.output] = eval_op(op, [env[i] for i in op.inputs])
        outs = []
        for t, rep in seg.outputs:
            v = env[t]
            outs.append(pack_activation(quantize_np(v, self.qexp[t])) if rep == "q" else v)
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
                    c = layer.in_channels
                    y = pack_activation(reference_conv(layer, unpack_activation(xin, c)))
                else:
                    y = vta(st, layer, xin)
                env[st.output] = y
            if record is not None:
                for t in ([o for o, _ in st.outputs] if isinstance(st, HostSegment) else [st.output]):
                    record[t] = env[t]
        return env[self.graph.output_name]


def _boundaries(graph: Graph, stages: list) -> tuple[list, set]:
    """Host segments with their boundary tensors, and the set of tensors stored quantised."""
    q_tensors = set()
    for st in stages:
        if isinstance(st, VTAUnit):
            q_tensors.add(st.input)
            q_tensors.add(st.output)
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
        produced = {op.output for op in st}
        inputs = []
        for op in st:
            for t in op.inputs:
                if t not in produced and t not in [i for i, _ in inputs]:
                    inputs.append((t, "q" if t in q_tensors else "f"))
        outputs = []
        for op in st:
            t = op.output
            if t == graph.output_name or any(s > si for s in later_use.get(t, [])):
                outputs.append((t, "q" if t in q_tensors else "f"))
        out_stages.append(HostSegment(len([s for s in out_stages if isinstance(s, HostSegment)]), list(st),
                                      inputs, outputs))
    return out_stages, q_tensors


def quantize_graph(graph: Graph, calibration: list, *, progress=None) -> QuantNet:
    """Calibrate on `calibration` (list of preprocessed (1,3,H,W) float32 inputs) and build the
    quantised network."""
    if not calibration:
        raise TvmsqzError("calibration needs at least one image")
    stages, q_tensors = _boundaries(graph, partition(graph))
    units = [s for s in stages if isinstance(s, VTAUnit)]
    if not units:
        raise TvmsqzError("no convolution of this model can run on VTA")
    rng = np.random.default_rng(0)
    samples: dict = {t: [] for t in q_tensors}
    amax: dict = {t: 0.0 for t in q_tensors}
    for n, x in enumerate(calibration):
        _, kept = run_fp32(graph, x, keep=q_tensors | {graph.input_name})
        kept.setdefault(graph.input_name, np.asarray(x, np.float32))
        for t in q_tensors:
            v = kept[t].reshape(-1)
            amax[t] = max(amax[t], float(np.abs(v).max()))
            per = MAX_SAMPLES // len(calibration)
            samples[t].append(v if v.size <= per else rng.choice(v, per, replace=False))
        if progress:
            progress(n + 1, len(calibration))
    qexp = {}
    for t in q_tensors:
        allv = np.concatenate(samples[t]).astype(np.float64)
        qexp[t] = choose_exponent(allv, amax[t], 0 if allv.min() >= 0 else -128)
    layers, wexp = {}, {}
    for u in units:
        ws = [op.attrs["weight"] for op in u.convs]
        wmax = max(float(np.abs(w).max()) for w in ws)
        we = math.floor(math.log2(127.0 / wmax)) if wmax > 0 else 0
        a_in, a_out = qexp[u.input], qexp[u.output]
        branches, biases = [], []
        for op in u.convs:
            wq = np.clip(np.round(op.attrs["weight"] * 2.0 ** we), -127, 127).astype(np.int8)
            branches.append(Branch(wq, op.attrs["pad"]))
            biases.append(np.round(op.attrs["bias"].astype(np.float64) * 2.0 ** (a_in + we)))
        bias = np.concatenate(biases)
        if np.abs(bias).max() >= 2 ** 31 - 2 ** 16:
            raise TvmsqzError(f"{u.name}: quantised bias overflows int32")
        relus = {op.attrs["relu"] for op in u.convs}
        if len(relus) != 1:
            raise TvmsqzError(f"{u.name}: fused convolutions must all have (or all lack) a ReLU")
        _, c, h, w = graph.shapes[u.input]
        layers[u.output] = ConvLayer(u.name, c, h, w, branches, bias.astype(np.int32), a_in + we - a_out,
                                     relu=relus.pop(), stride=u.convs[0].attrs["stride"])
        wexp[u.output] = we
    return QuantNet(graph, stages, qexp, layers, wexp,
                    calibration={"images": len(calibration), "amax": {k: float(v) for k, v in amax.items()}})
