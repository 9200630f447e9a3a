"""int8 agreement with fp32 on the ImageNet-trained Deep Compression SqueezeNet 1.0, for tvmsqz
(its quantizer + compiled int8 kernels), ONNX Runtime int8 (`quantize_static`) and OpenVINO
int8 (NNCF), each calibrated on the same inputs.

    python benchmarks/int8_accuracy.py [--views 40] [--out benchmarks/results/int8/accuracy-dc.json]

Evaluation: `--views` crops/flips of each of `images.EVALUATION_PHOTOS` (4 object photos, so
160 inputs by default); calibration sets that share no source photo with them:
  objects   8 views of each of `images.CALIBRATION_PHOTOS` (3 other object photos)
  textures  the 12 `images.TEXTURE_PHOTOS` (textures, scenes, microscopy: a user without ImageNet)
Agreement is top-1 agreement and top-5 overlap with ONNX Runtime fp32 on the same inputs;
`qdq_import_vs_onnxruntime_int8`: ONNX Runtime's QDQ model compiled by tvmsqz against ONNX Runtime
running that same QDQ model (the QDQ import's parity). Only
accuracy here: latency is `tvmsqz bench --precision int8`'s job (each runtime in its own process).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import tvmsqz
from tvmsqz.benchmark import agreement
from tvmsqz.images import CALIBRATION_PHOTOS, EVALUATION_PHOTOS, TEXTURE_PHOTOS, photo_views
from tvmsqz.peers import Sources
from tvmsqz.quant.qdq import quantize_model


def _ort_runs(path: str, inputs: list) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x})[0] for x in inputs])


def _ov_runs(path: str, inputs: list) -> np.ndarray:
    import openvino as ov

    compiled = ov.Core().compile_model(path, "CPU")
    return np.concatenate([compiled(x)[0] for x in inputs])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="squeezenet1_0_dc")
    ap.add_argument("--views", type=int, default=40)
    ap.add_argument("--target", default="x86-avx512")
    ap.add_argument("--methods", default="mse,minmax,percentile,entropy")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks/results/int8/accuracy-dc.json")
    args = ap.parse_args()

    model = tvmsqz.load_model(args.model, import_now=False)
    conv, size = model.preprocess, int(model.input.shape[2])
    evaluation = [v for _, v in photo_views(EVALUATION_PHOTOS, args.views, conv, size)]
    sets = {
        "objects": [v for _, v in photo_views(CALIBRATION_PHOTOS, 8, conv, size, seed=1)],
        "textures": [v for _, v in photo_views(TEXTURE_PHOTOS, 1, conv, size)],
    }
    from onnx import save

    results: dict = {"model": args.model, "evaluation_inputs": len(evaluation), "target": args.target, "sets": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fp32_path = work / "fp32.onnx"
        save(model.onnx, fp32_path)
        reference = _ort_runs(str(fp32_path), evaluation)
        for set_name, calibration in sets.items():
            np.save(work / "cal.npy", np.stack(calibration))
            src = Sources(onnx=fp32_path, workdir=work, calibration=work / "cal.npy")
            row: dict = {"calibration_inputs": len(calibration)}
            for method in args.methods.split(","):
                quantized = quantize_model(model, calibration, method=method)
                art = tvmsqz.compile(quantized, args.target, tuning=False)
                ours = np.concatenate([art.run(x) for x in evaluation])
                row[f"tvmsqz_{method}"] = agreement(ours, reference)
                print(set_name, f"tvmsqz {method}", row[f"tvmsqz_{method}"], flush=True)
            from tvmsqz.peers import onnxruntime_int8, openvino_int8

            row["onnxruntime_int8"] = agreement(_ort_runs(onnxruntime_int8.prepare(src), evaluation), reference)
            print(set_name, "onnxruntime_int8", row["onnxruntime_int8"], flush=True)
            row["openvino_int8"] = agreement(_ov_runs(openvino_int8.prepare(src), evaluation), reference)
            print(set_name, "openvino_int8", row["openvino_int8"], flush=True)
            # QDQ import: ONNX Runtime's int8 model compiled by tvmsqz vs ONNX Runtime running it
            ort_qdq = onnxruntime_int8.prepare(src)
            art = tvmsqz.compile(tvmsqz.load_model(ort_qdq, name=f"{args.model}-ort-qdq"), args.target, tuning=False)
            imported = np.concatenate([art.run(x) for x in evaluation])
            row["qdq_import_vs_onnxruntime_int8"] = agreement(imported, _ort_runs(ort_qdq, evaluation))
            print(set_name, "qdq import", row["qdq_import_vs_onnxruntime_int8"], flush=True)
            results["sets"][set_name] = row
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
