"""Calibration honesty check for the VTA target's int8 quantisation (numpy quantised reference,
which the simulator matches bit-exactly).

    python benchmarks/vta_calibration.py        # -> benchmarks/results/vta_calibration.json

The shipped calibration set is the six bundled photos mirrored left-right, evaluated on the
photos as they are. Mirrored views are close to the evaluated ones, so this script also runs a
stricter split: leave-one-out, where the photo being evaluated contributes no view at all to
the calibration (5 mirrored photos calibrate, the 6th is evaluated; 6 quantisations). For both
splits and with bias correction off and on it records top-1 agreement, top-5 overlap and
KL(fp32 || int8) per photo against the fp32 numpy model of the same graph.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))


def compare(q, p) -> dict:
    q = np.asarray(q, np.float64).reshape(-1)
    p = np.asarray(p, np.float64).reshape(-1)
    return {
        "top1_agrees": bool(q.argmax() == p.argmax()),
        "fp32_top1": int(p.argmax()),
        "int8_top1": int(q.argmax()),
        "top5_overlap": len(set(np.argsort(-q)[:5]) & set(np.argsort(-p)[:5])) / 5,
        "kl": float(np.sum(p * (np.log(p + 1e-12) - np.log(q + 1e-12)))),
    }


def summary(rows: list) -> dict:
    return {
        "top1": f"{sum(r['top1_agrees'] for r in rows)}/{len(rows)}",
        "top5_overlap": round(float(np.mean([r["top5_overlap"] for r in rows])), 4),
        "mean_kl": round(float(np.mean([r["kl"] for r in rows])), 5),
        "per_image": rows,
    }


def main() -> None:
    from tvmsqz.images import preprocess, sample_images
    from tvmsqz.vta.artifact import _load_model, _preprocess_for, default_calibration
    from tvmsqz.vta.graph import from_onnx, prepare, run_fp32
    from tvmsqz.vta.quant import quantize_graph

    model, info, _ = _load_model("squeezenet1_0_dc")
    graph = prepare(from_onnx(model))
    conv, size = _preprocess_for(info, graph)
    cal = default_calibration(conv, size)
    imgs = sample_images()
    ev = [preprocess(im, conv, size) for _, im in imgs]
    fp = [run_fp32(graph, x)[0] for x in ev]
    out = {}
    for bc in (False, True):
        tag = "bias_correction" if bc else "no_bias_correction"
        qn = quantize_graph(graph, cal, bias_correction=bc)
        out[f"shipped_split/{tag}"] = summary(
            [{"image": n, **compare(qn.run(x), p)} for (n, _), x, p in zip(imgs, ev, fp)]
        )
        rows = []
        for i, ((n, _), x, p) in enumerate(zip(imgs, ev, fp)):
            qn = quantize_graph(graph, cal[:i] + cal[i + 1 :], bias_correction=bc)
            rows.append({"image": n, **compare(qn.run(x), p)})
        out[f"leave_one_out/{tag}"] = summary(rows)
        for k in (f"shipped_split/{tag}", f"leave_one_out/{tag}"):
            print(k, {a: b for a, b in out[k].items() if a != "per_image"}, flush=True)
    path = HERE / "results" / "vta_calibration.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print("wrote", path)


if __name__ == "__main__":
    main()
