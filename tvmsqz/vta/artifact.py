"""Compile a model for the `vta` target, load the artifact, run and benchmark it.

Artifact = two files:
  OUTPUT            the host part: a TVM Relax library (`seg<i>` functions) for this CPU
  OUTPUT.vta.npz    the VTA part: per layer the encoded instruction stream (`insns_<i>`, (N, 2)
                    uint64 little-endian words = the 16-byte instructions a board's fetch unit
                    reads) and the constant DRAM image (`dram_<i>`: micro-ops, packed weights,
                    biases), plus `manifest` (JSON: stages, tensor layouts, quantisation
                    exponents, DRAM offsets, tilings, MAC counts, hardware config).
Both are written to temporary files and renamed into place.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from tvmsqz.artifact import ArtifactBase
from tvmsqz.errors import TvmsqzError
from tvmsqz.quant.calibrate import calibration_inputs, default_calibration

from .config import VTAConfig, load_config
from .graph import Graph, VTAUnit, from_onnx, host_reason, partition, prepare
from .lower import Tiling, TilingError, VTAProgram
from .quant import HostSegment, QuantNet, quantize_graph, unit_layer
from .tune import default_tiling_db, load_db, lookup, tune_layers

__all__ = [
    "FORMAT",
    "VTAModel",
    "bench_vta",
    "compile_vta",
    "default_calibration",
    "load_vta",
    "placement",
    "sidecar_path",
    "tune_vta",
]

FORMAT = "tvmsqz-vta-artifact/1"


def sidecar_path(artifact: Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.stem + ".vta.npz") if artifact.suffix else Path(str(artifact) + ".vta.npz")


# ---------------------------------------------------------------------------- model loading


def _load_model(source):
    """-> (onnx.ModelProto, ModelInfo | None, model name | None)."""
    import onnx

    if isinstance(source, onnx.ModelProto):
        return source, None, None
    from tvmsqz.models import load_onnx

    model, info = load_onnx(source)
    return model, info, (info.name if info is not None else str(source))


def _preprocess_for(info, graph: Graph) -> tuple[str, int]:
    size = graph.input_shape[2]
    if info is not None:
        return info.preprocess, size
    return ("caffe" if size == 227 else "torchvision"), size


def shape_layers(graph: Graph, cfg: VTAConfig | None = None, pools: bool = True) -> list:
    """Shape-only layers (zero weights) of every VTA unit, lowered as `compile_vta` lowers them
    (per-channel shifts): enough to tune tilings."""
    return [unit_layer(st, graph) for st in partition(graph, cfg=cfg, pools=pools) if isinstance(st, VTAUnit)]


def choose_tilings(layers: list, cfg: VTAConfig, tiling_db: Path | None | bool) -> tuple[list, list]:
    """Per layer the tiling and where it came from ("database" or "default"). `tiling_db`: a
    database path (a missing file has no records), None for `tune.default_tiling_db()`, or
    False for none (default tilings only). Records are keyed by the configuration."""
    if tiling_db is None:
        tiling_db = default_tiling_db()
    db = load_db(tiling_db) if tiling_db else {"records": {}}
    tilings, sources = [], []
    for L in layers:
        t = lookup(db, L, cfg)
        sources.append("database" if t is not None else "default")
        tilings.append(t if t is not None else L.default_tiling(cfg))
    return tilings, sources


# ---------------------------------------------------------------------------- compile


def placement(qn: QuantNet, pools: bool = True) -> list:
    """Where every graph op runs: the VTA layer (by index) or host segment, and for the host why."""
    rows = []
    vi = 0
    for st in qn.stages:
        if isinstance(st, HostSegment):
            for op in st.ops:
                rows.append(
                    {
                        "op": op.name or op.output,
                        "kind": op.kind,
                        "where": "host",
                        "segment": f"seg{st.index}",
                        "why": host_reason(op, pools=pools),
                    }
                )
            if not st.ops:
                rows.append(
                    {
                        "op": f"quantize {st.inputs[0][0]}",
                        "kind": "quantize",
                        "where": "host",
                        "segment": f"seg{st.index}",
                        "why": "the fp32 model input becomes int8 blocks",
                    }
                )
        else:
            L = qn.layers[st.output]
            for op in st.convs or [st.pool]:
                rows.append(
                    {
                        "op": op.name or op.output,
                        "kind": op.kind,
                        "where": "vta",
                        "layer": vi,
                        "vta_layer": st.name,
                        **({"im2col_of": op.attrs["im2col_of"]} if "im2col_of" in op.attrs else {}),
                    }
                )
            rows[-1]["layer_macs"] = L.macs
            vi += 1
    return rows


def compile_vta(
    onnx_model_or_name,
    output: Path,
    *,
    calibration_images=None,
    config=None,
    tiling_db: Path | None | bool = None,
    host_target=None,
    first_conv: str = "im2col",
    pools: bool = True,
    name: str | None = None,
    info=None,
    embed_fp32: bool | None = None,
) -> dict:
    """Quantise, partition and lower a model for VTA; write the `.so` and its `.vta.npz` sidecar;
    return a summary (the sidecar's own manifest is inside the sidecar).

    `config`: the hardware configuration (`load_config`'s sources; the VTA pipeline passes the
    target's data); `tiling_db`: see `choose_tilings`; `host_target`: the TVM target of the host
    segments (a `tvm.target.Target`, a `host.resolve_host` dict or a host target name; default
    `x86`). `onnx_model_or_name` is a built-in name, a model path or an `onnx.ModelProto`; with a
    ModelProto, `name`/`info` say what it is (the pipeline passes its `frontend.Model`'s), and
    the fp32 graph is embedded in the sidecar for `bench_vta` unless a name says where it is
    (`embed_fp32` overrides). `first_conv`: "im2col" (default; the first conv's windows gathered
    on the host, a 1x1 GEMM on VTA) or "pad" (its 3 channels zero-padded to a block on VTA: 49
    GEMM blocks per pixel instead of 10 at BLOCK 16). `pools=False` keeps the max-pools on the
    host (both for comparison)."""
    from .host import compile_host
    from .host import host_target as resolve_host_target

    t0 = time.time()
    output = Path(output)
    cfg = load_config(config)
    model, loaded_info, loaded_name = _load_model(onnx_model_or_name)
    info = info if info is not None else loaded_info
    name = name if name is not None else loaded_name
    graph = prepare(from_onnx(model), first_conv, cfg.block)
    convention, size = _preprocess_for(info, graph)
    qn = quantize_graph(graph, calibration_inputs(calibration_images, convention, size), cfg=cfg, pools=pools)
    units = qn.vta_units()
    layers = [qn.layers[u.output] for u in units]
    tilings, sources = choose_tilings(layers, cfg, tiling_db)
    programs = []
    for L, t in zip(layers, tilings):
        try:
            programs.append(L.lower(t, cfg))
        except TilingError:
            programs.append(L.lower(L.default_tiling(cfg), cfg))
    t_lower = time.time()
    target = (
        host_target
        if host_target is not None and not isinstance(host_target, (str, dict))
        else resolve_host_target(host_target)
    )
    lib = compile_host(qn, target)
    t_host = time.time()

    stage_list = []
    vi = 0
    for st in qn.stages:
        if isinstance(st, HostSegment):
            stage_list.append(
                {
                    "kind": "host",
                    "function": f"seg{st.index}",
                    "index": st.index,
                    "inputs": [list(x) for x in st.inputs],
                    "outputs": [list(x) for x in st.outputs],
                }
            )
        else:
            stage_list.append({"kind": "vta", "layer": vi, "input": st.input, "output": st.output})
            vi += 1
    macs_off, macs_total = qn.macs()
    layer_meta = []
    for i, (u, L, p, src) in enumerate(zip(units, layers, programs, sources)):
        meta = {
            "index": i,
            "name": L.name,
            "kind": L.kind,
            "input": u.input,
            "output": u.output,
            "convs": [op.name for op in u.convs],
            "in_channels": L.in_channels,
            "out_channels": L.out_channels,
            "in_shape": list(p.in_shape),
            "out_shape": list(p.out_shape),
            "inp_offset": p.inp_offset,
            "out_offset": p.out_offset,
            "dram_size": p.dram_size,
            "macs": p.macs,
            "tiling": p.tiling.to_json(),
            "tiling_source": src,
            "instructions": int(len(p.insns)),
            "uops": p.meta["uops"],
        }
        if L.kind == "conv":
            meta.update(
                shift=L.shifts.tolist() if L.uniform_shift is None else L.uniform_shift,
                relu=L.relu,
                weight_exponent=qn.wexp[u.output],
            )
        layer_meta.append(meta)
    manifest = {
        "format": FORMAT,
        "model": name,
        "input": {"name": graph.input_name, "shape": list(graph.input_shape), "preprocess": convention},
        "output": graph.output_name,
        "config": cfg.to_json(),
        "host_target": str(target),
        "stages": stage_list,
        "layers": layer_meta,
        "tensors": {
            t: {
                "shape": list(graph.shapes[t]),
                "exponent": qn.qexp.get(t),
                **({"zero_point": [int(v) for v in qn.zero[t]]} if t in qn.zero else {}),
            }
            for t in graph.shapes
        },
        "quantization": {
            "scheme": "int8, power-of-two scales: activations per tensor (zero points where they fold "
            "exactly), weights per output channel",
            "calibration_images": qn.calibration["images"],
            "bias_correction": "bias_correction" in qn.calibration,
        },
        "macs_offloaded": int(macs_off),
        "macs_total": int(macs_total),
        "mac_offload_share": macs_off / macs_total if macs_total else 0.0,
        "options": {"first_conv": first_conv, "pools": pools},
        "placement": placement(qn, pools),
        "note": "VTA part runs on tvmsqz's behavioural simulator; no FPGA board has run it",
    }
    arrays = {"manifest": np.frombuffer(json.dumps(manifest).encode(), dtype=np.uint8)}
    for i, p in enumerate(programs):
        arrays[f"insns_{i}"] = p.insns
        arrays[f"dram_{i}"] = p.dram_const
    if embed_fp32 if embed_fp32 is not None else name is None:
        arrays["fp32_onnx"] = np.frombuffer(model.SerializeToString(), dtype=np.uint8)

    from tvmsqz.fsutil import atomic_path, export_library

    with atomic_path(sidecar_path(output)) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
    export_library(lib, output)
    t_end = time.time()
    return {
        **{k: manifest[k] for k in ("format", "model", "macs_offloaded", "macs_total", "mac_offload_share", "note")},
        "input": {"name": graph.input_name, "shape": list(graph.input_shape), "dtype": "float32"},
        "artifact": str(output),
        "sidecar": str(sidecar_path(output)),
        "config": cfg.to_json(),
        "host_target": str(target),
        "vta_layers": len(programs),
        "host_segments": len(qn.host_segments()),
        "instructions": int(sum(len(p.insns) for p in programs)),
        "tilings": {L.name: {"tiling": t.to_json(), "source": s} for L, t, s in zip(layers, tilings, sources)},
        "seconds": {
            "quantize_and_lower": round(t_lower - t0, 2),
            "host_compile": round(t_host - t_lower, 2),
            "total": round(t_end - t0, 2),
        },
    }


# ---------------------------------------------------------------------------- load / run


class VTAModel(ArtifactBase):
    """A loaded VTA artifact (the `tvmsqz.artifact.Artifact` protocol): host library + VTA
    programs run on the simulator.

    `manifest` is the artifact's manifest (`<name>.so.json`: model, target, input, files); the
    sidecar's own manifest (stages, layers, tensors, quantisation, hardware config) is
    `vta_manifest`. An artifact written by `compile_vta` alone has no `.so.json`: `manifest` is
    then the input description taken from the sidecar."""

    def __init__(
        self,
        vta_manifest: dict,
        programs: list,
        host,
        fp32_onnx: bytes | None = None,
        *,
        path: Path | None = None,
        manifest: dict | None = None,
    ):
        self.vta_manifest = vta_manifest
        self.path = Path(path) if path is not None else Path("model.so")
        inp = vta_manifest["input"]
        self.manifest = (
            manifest
            if manifest is not None
            else {
                "model": vta_manifest.get("model"),
                "input": {"name": inp["name"], "shape": list(inp["shape"]), "dtype": "float32"},
            }
        )
        self.cfg = VTAConfig.from_json(vta_manifest["config"])
        self.programs = programs
        self.host = host
        self.fp32_onnx = fp32_onnx
        self._drams = [p.new_dram() for p in programs]
        self.last_stats: dict = {}

    def files(self) -> list[Path]:
        """The `.so` and its sidecar (listed in the manifest's "files" when there is one)."""
        listed = super().files()
        side = sidecar_path(self.path)
        return listed if side in listed else [*listed, side]

    def timer(self, x: np.ndarray):
        x = np.asarray(x, dtype=np.float32)
        return lambda: self.run(x)

    def profile(self, x: np.ndarray, repeat: int = 5) -> list[dict]:
        """Per layer, per inference: `time_us` (VTA layers: simulated cycles at the configured
        clock; host segments: measured wall time of the TVM code on this CPU), `calls`, where it
        ran, and for VTA layers the cycles; slowest first."""
        rows: dict[str, dict] = {}
        repeat = max(1, int(repeat))
        clock = self.cfg.cycles.clock_mhz  # cycles per microsecond
        for _ in range(repeat):
            self.run(x)
            for st in self.last_stats["stages"]:
                row = rows.setdefault(
                    st["name"],
                    {"name": st["name"], "time_us": 0.0, "calls": 0, "where": st["where"], "kind": st["kind"]},
                )
                if st["where"] == "vta":
                    row["time_us"] += st["cycles"] / clock
                    row["cycles"] = st["cycles"]
                else:
                    row["time_us"] += st["host_ms"] * 1e3
                row["calls"] += 1
        for row in rows.values():
            row["time_us"] /= repeat
            row["calls"] //= repeat
        return sorted(rows.values(), key=lambda r: -r["time_us"])

    def run(self, x: np.ndarray, record: dict | None = None) -> np.ndarray:
        """Run host segments (TVM) and VTA layers (simulator); `record`, if given, receives
        every stage's output tensors (packed int8 for VTA-side tensors)."""
        m = self.vta_manifest
        x = np.asarray(x, dtype=np.float32)
        if x.shape != self.input_shape:
            raise TvmsqzError(f"input shape {x.shape} does not match the model's {self.input_shape}")
        env = {m["input"]["name"]: x}
        per_layer = []
        host_s = sim_s = 0.0
        peak = self.cfg.batch * self.cfg.block * self.cfg.block  # MACs per GEMM micro-op iteration
        ops_of = {}
        for row in m.get("placement", []):
            ops_of.setdefault(row.get("segment"), []).append(row)
        for st in m["stages"]:
            t0 = time.time()
            if st["kind"] == "host":
                outs = self.host.call(st["function"], [env[t] for t, _ in st["inputs"]], len(st["outputs"]))
                for (t, _), v in zip(st["outputs"], outs):
                    env[t] = v
                    if record is not None:
                        record[t] = v
                dt = time.time() - t0
                host_s += dt
                rows = ops_of.get(st["function"], [])
                per_layer.append(
                    {
                        "name": st["function"],
                        "where": "host",
                        "kind": "+".join(r["kind"] for r in rows),
                        "ops": [r["op"] for r in rows],
                        "why": sorted({r["why"] for r in rows}),
                        "host_ms": round(1e3 * dt, 2),
                    }
                )
            else:
                i = st["layer"]
                p = self.programs[i]
                out, stats = p.run(env[st["input"]], self.cfg, self._drams[i])
                env[st["output"]] = out
                if record is not None:
                    record[st["output"]] = out
                dt = time.time() - t0
                sim_s += dt
                s = stats.as_dict()
                issued = s["gemm_uop_iters"] * peak
                per_layer.append(
                    {
                        "name": p.name,
                        "where": "vta",
                        "kind": m["layers"][i].get("kind", "conv"),
                        "cycles": s["cycles"],
                        "dram_bytes": s["dram_bytes"],
                        "macs": p.macs,
                        "macs_per_cycle": round(p.macs / max(1, s["cycles"]), 2),
                        "peak_macs_per_cycle": peak,
                        "peak_share": round(p.macs / max(1, s["cycles"]) / peak, 4),
                        "gemm_lane_use": round(p.macs / issued, 4) if issued else None,
                        "instructions": s["instructions"],
                        "gemm_uop_iters": s["gemm_uop_iters"],
                        "alu_uop_iters": s["alu_uop_iters"],
                        "tiling": p.tiling.to_json(),
                        "queue_busy_cycles": s["queue_busy_cycles"],
                        "sim_seconds": round(dt, 4),
                    }
                )
        vta_rows = [L for L in per_layer if L["where"] == "vta"]
        cycles = sum(L["cycles"] for L in vta_rows)
        self.last_stats = {
            "cycles": cycles,
            "simulated_ms": cycles / (self.cfg.cycles.clock_mhz * 1e3),
            "dram_bytes": sum(L["dram_bytes"] for L in vta_rows),
            "macs_offloaded": m["macs_offloaded"],
            "macs_total": m["macs_total"],
            "mac_offload_share": m["mac_offload_share"],
            "host_seconds": round(host_s, 4),
            "sim_seconds": round(sim_s, 4),
            "layers": vta_rows,
            "stages": per_layer,
            "estimate": True,
        }
        return env[m["output"]]

    __call__ = run


class _TVMHost:
    def __init__(self, lib):
        import tvm
        from tvm import relax

        self.tvm = tvm
        self.dev = tvm.cpu()
        self.vm = relax.VirtualMachine(lib, self.dev)

    def call(self, fn: str, args: list, n_out: int) -> list:
        tvm = self.tvm
        ins = [tvm.runtime.tensor(np.ascontiguousarray(a), self.dev) for a in args]
        res = self.vm[fn](*ins)
        return [res.numpy()] if n_out == 1 else [r.numpy() for r in res]


def load_vta(artifact: Path, manifest: dict | None = None) -> VTAModel:
    """Load `artifact` (host library) and its `.vta.npz` sidecar; `manifest` is the artifact's
    manifest (`runtime.load` verified the files against it)."""
    import tvm

    from tvmsqz.quiet import quiet_stderr

    artifact = Path(artifact)
    side = sidecar_path(artifact)
    if not artifact.is_file():
        raise TvmsqzError(f"no such artifact: {artifact}")
    if not side.is_file():
        raise TvmsqzError(f"{artifact} has no VTA sidecar {side.name}: was it compiled for --target vta?")
    with np.load(side) as z:
        vta_manifest = json.loads(bytes(z["manifest"]).decode())
        if vta_manifest.get("format") != FORMAT:
            raise TvmsqzError(f"{side} is not a {FORMAT} sidecar")
        programs = []
        for L in vta_manifest["layers"]:
            i = L["index"]
            programs.append(
                VTAProgram(
                    name=L["name"],
                    insns=z[f"insns_{i}"],
                    dram_const=z[f"dram_{i}"],
                    inp_offset=L["inp_offset"],
                    out_offset=L["out_offset"],
                    dram_size=L["dram_size"],
                    in_shape=tuple(L["in_shape"]),
                    out_shape=tuple(L["out_shape"]),
                    macs=L["macs"],
                    tiling=Tiling.from_json(L["tiling"]),
                )
            )
        fp32 = bytes(z["fp32_onnx"]) if "fp32_onnx" in z.files else None
    with quiet_stderr():
        lib = tvm.runtime.load_module(str(artifact))
    return VTAModel(vta_manifest, programs, _TVMHost(lib), fp32, path=artifact, manifest=manifest)


# ---------------------------------------------------------------------------- bench


def _fp32_session(model: VTAModel, fp32_model=None):
    import onnxruntime as ort

    if fp32_model is None:
        if model.fp32_onnx is not None:
            blob = model.fp32_onnx
        else:
            onnx_model, _, _ = _load_model(model.vta_manifest["model"])
            blob = onnx_model.SerializeToString()
    elif isinstance(fp32_model, (bytes, bytearray)):
        blob = bytes(fp32_model)
    else:
        onnx_model, _, _ = _load_model(fp32_model)
        blob = onnx_model.SerializeToString()
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    return ort.InferenceSession(blob, so, providers=["CPUExecutionProvider"])


def _kl(p: np.ndarray, q: np.ndarray) -> float | None:
    """KL(fp32 || int8) of two class distributions: how far the int8 model's probabilities are
    from fp32's over all classes, which top-1 (decided by near-ties on some photos) does not
    show. None when the outputs are not probability vectors."""
    p, q = p.astype(np.float64), q.astype(np.float64)
    if p.min() < 0 or q.min() < 0 or abs(p.sum() - 1) > 1e-3 or abs(q.sum() - 1) > 1e-3:
        return None
    return round(float(np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)))), 5)


def bench_vta(artifact, images=None, *, fp32_model=None) -> dict:
    """Run the artifact on real photos (default: `tvmsqz.images.sample_images()`) and compare
    with the fp32 model (ONNX Runtime): top-1 agreement, top-5 overlap, simulated cycles, DRAM
    bytes, share of MACs on VTA, per-layer statistics."""
    from tvmsqz.images import class_names, preprocess, sample_images

    model = artifact if isinstance(artifact, VTAModel) else load_vta(artifact)
    m = model.vta_manifest
    conv, size = m["input"]["preprocess"], m["input"]["shape"][2]
    if images is None:
        images = sample_images()
    named = []
    for k, im in enumerate(images):
        name, im = im if isinstance(im, tuple) else (f"image{k}", im)
        im = np.asarray(im)
        x = preprocess(im, conv, size) if im.dtype == np.uint8 and im.ndim == 3 else np.asarray(im, np.float32)
        named.append((name, x.reshape(model.input_shape)))
    if not named:
        raise TvmsqzError("bench needs at least one image")
    sess = _fp32_session(model, fp32_model)
    in_name = sess.get_inputs()[0].name
    try:
        names = class_names()
    except Exception:  # noqa: BLE001 # pragma: no cover - names are decoration
        names = None
    rows, agree, overlap = [], 0, 0.0
    stats = None
    wall = []
    for name, x in named:
        ref = sess.run(None, {in_name: x})[0].reshape(-1)
        t0 = time.time()
        y = model.run(x).reshape(-1)
        wall.append(time.time() - t0)
        stats = model.last_stats
        r5, y5 = list(np.argsort(-ref)[:5]), list(np.argsort(-y)[:5])
        agree += int(r5[0] == y5[0])
        overlap += len(set(r5) & set(y5)) / 5
        rows.append(
            {
                "image": name,
                "fp32_top1": int(r5[0]),
                "vta_top1": int(y5[0]),
                "fp32_label": names[r5[0]] if names and len(names) == len(ref) else None,
                "vta_label": names[y5[0]] if names and len(names) == len(y) else None,
                "top1_agrees": bool(r5[0] == y5[0]),
                "top5_overlap": len(set(r5) & set(y5)) / 5,
                "max_abs_diff": float(np.abs(ref - y).max()),
                "kl_vs_fp32": _kl(ref, y),
                "simulated_cycles": stats["cycles"],
                "simulated_ms": round(stats["simulated_ms"], 3),
                "host_ms": round(1e3 * stats["host_seconds"], 2),
                "simulator_wall_s": round(stats["sim_seconds"], 3),
            }
        )
    n = len(named)
    host_rows = [r for r in m.get("placement", []) if r["where"] == "host"]
    return {
        "target": "vta",
        "device": "tvmsqz VTA behavioural simulator (cycle estimate; no FPGA board has run this)",
        "model": m["model"],
        "images": n,
        "simulated_cycles": stats["cycles"],
        "simulated_ms_at_clock": round(stats["simulated_ms"], 3),
        "clock_mhz": model.cfg.cycles.clock_mhz,
        "dram_bytes": stats["dram_bytes"],
        "mac_offload_share": m["mac_offload_share"],
        "macs_offloaded": m["macs_offloaded"],
        "macs_total": m["macs_total"],
        "top1_agreement_vs_fp32": agree / n,
        "top5_overlap_vs_fp32": overlap / n,
        "mean_kl_vs_fp32": (
            round(float(np.mean([r["kl_vs_fp32"] for r in rows])), 5)
            if all(r["kl_vs_fp32"] is not None for r in rows)
            else None
        ),
        "per_image": rows,
        "per_layer": stats["stages"],
        "on_host": [{k: r[k] for k in ("op", "kind", "segment", "why")} for r in host_rows],
        "host_ms_per_image": round(float(np.mean([r["host_ms"] for r in rows])), 2),
        "host_note": "host ms: TVM-compiled host segments on this machine's CPU, not a board's ARM cores",
        "wall_seconds_per_image": {
            "mean": round(float(np.mean(wall)), 3),
            "host": stats["host_seconds"],
            "simulator": stats["sim_seconds"],
        },
    }


# ---------------------------------------------------------------------------- tune


def tune_vta(
    model,
    trials: int,
    output_db: Path,
    *,
    config=None,
    progress=None,
    seed: int = 0,
    first_conv: str = "im2col",
    pools: bool = True,
) -> dict:
    """Search tilings of every VTA layer of `model` (convolutions and max-pools; simulated
    cycles), saving to `output_db` (resumable: records already there seed the search and are
    kept). `first_conv`/`pools` as for `compile_vta`, so that the layers searched are the ones
    that compile lowers."""
    if int(trials) < 1:
        raise TvmsqzError("trials must be at least 1")
    cfg = load_config(config)
    onnx_model, _, _ = _load_model(model)
    graph = prepare(from_onnx(onnx_model), first_conv, cfg.block)
    layers = shape_layers(graph, cfg, pools)
    res = tune_layers(layers, cfg, int(trials), Path(output_db), progress=progress, seed=seed)
    db = load_db(Path(output_db))
    from .tune import record_key

    total_default = total_best = 0
    for L in layers:
        rec = db["records"][record_key(L, cfg)]
        total_default += rec["default_cycles"]
        total_best += rec["cycles"]
    res["model_cycles_default"] = total_default
    res["model_cycles_tuned"] = total_best
    res["speedup"] = round(total_default / total_best, 3) if total_best else None
    return res
