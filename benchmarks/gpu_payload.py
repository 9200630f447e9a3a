"""Build the payload that `benchmarks/gpu_bundle_bench.py` measures on a GPU machine without TVM.

On a machine with TVM and nvcc (no GPU needed):

    python benchmarks/gpu_payload.py --out PAYLOAD [--target cuda-sm90]

1. compiles SqueezeNet 1.1 and 1.0 for the CUDA target at batch 1 and 64 (`tvmsqz compile`),
   plus variants: SqueezeNet 1.1 batch 1 without the CUDA graph (`TVMSQZ_CUDA_GRAPH=0`), and
   both models with each Fire module's expand pair left unfused (`--no-fuse`: dlight's Matmul
   rule for every conv instead of tvmsqz's FusedConv rule);
2. packages each into a runtime-only bundle (`tvmsqz package`: libtvm_runtime.so,
   libtvm_runtime_cuda.so, libcudart, libtvm_ffi.so, the Python runner) and packs them into one
   `bundles.tar.xz` (the artifacts of one model share their weights, the bundles their
   libraries: xz with a 64 MiB window stores each once);
3. writes `references.npz`: the parity inputs' photos and the torch float32 outputs on this
   machine's CPU, and `payload.json`: the jobs, the versions and each model's weight digest;
4. copies `gpu_bundle_bench.py`, `tvmsqz/bundle/pyrunner.py` (its seeded inputs and statistics),
   `tvmsqz/models/squeezenet.py` (the torch models, seeded as here) and `device_run.sh` (the one
   command to run there) beside them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from gpu_bundle_bench import parity_batches

MODELS = ["squeezenet1_1", "squeezenet1_0"]
BATCHES = [1, 64]

DEVICE_RUN = r"""#!/bin/bash
# One device call: unpack the bundles, run the benchmark, leave results in $OUT.
set -o pipefail
P="$(cd "$(dirname "$0")" && pwd)"
export PYTHONUNBUFFERED=1
OUT="${OUT:-/tmp/gpu-bench-out}"
W=/tmp/gpu-payload
mkdir -p "$OUT" "$W"
{
  nvidia-smi || true
  cp "$P"/payload.json "$P"/references.npz "$P"/squeezenet.py "$P"/gpu_bundle_bench.py "$P"/pyrunner.py "$W"/
  python3 -c "import tarfile,sys; t=tarfile.open(sys.argv[1]); t.extractall(sys.argv[2], filter='data')" \
      "$P"/bundles.tar.xz "$W" || exit 3
  timeout "${BENCH_TIMEOUT:-420}" python3 "$W"/gpu_bundle_bench.py --payload "$W" --out "$OUT" \
      --deadline "${BENCH_DEADLINE:-300}" "$@"
} 2>&1 | tee "$OUT/log.txt"
"""


def sh(cmd: list[str], env: dict | None = None) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}, cwd=ROOT)


def weights_digest(net) -> str:
    digest = hashlib.sha256()
    for k, v in net.state_dict().items():
        digest.update(k.encode())
        digest.update(v.detach().cpu().numpy().astype("<f4").tobytes())
    return digest.hexdigest()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--target", default="cuda-sm90")
    p.add_argument(
        "--artifacts",
        type=Path,
        default=Path("/tmp/gpu-artifacts"),
        help="where the .so files are built (reused if there)",
    )
    p.add_argument("--models", nargs="+", default=MODELS)
    p.add_argument(
        "--no-variants",
        action="store_true",
        help="skip the SqueezeNet 1.1 variants (no CUDA graph at batch 1; Fire pairs unfused)",
    )
    args = p.parse_args()

    import torch
    import tvm

    from tvmsqz import __version__
    from tvmsqz.backends.cuda import find_nvcc, nvcc_version
    from tvmsqz.bundle import build_bundle
    from tvmsqz.images import preprocess, sample_images
    from tvmsqz.models import get_model_info, torch_model

    args.artifacts.mkdir(parents=True, exist_ok=True)
    out = args.out
    if out.exists():
        shutil.rmtree(out)
    (out / "bundles").mkdir(parents=True)
    jobs = []
    for model in args.models:
        for batch in BATCHES:
            # variant -> (environment, extra compile flags)
            variants = {"graph": ({}, ["--fuse"])}  # as measured on the H200 (fused was the default then)
            if not args.no_variants:
                if batch == 1 and model == "squeezenet1_1":
                    variants["nograph"] = ({"TVMSQZ_CUDA_GRAPH": "0"}, [])
                variants["unfused"] = ({}, ["--no-fuse"])
            bundles = {}
            for variant, (env, flags) in variants.items():
                name = f"{model}-b{batch}" + ("" if variant == "graph" else f"-{variant}")
                so = args.artifacts / f"{name}.so"
                if not so.is_file():
                    sh(
                        [
                            sys.executable,
                            "-m",
                            "tvmsqz",
                            "compile",
                            model,
                            "--target",
                            args.target,
                            "--batch",
                            str(batch),
                            *flags,
                            "-o",
                            str(so),
                        ],
                        env,
                    )
                build_bundle(so, out / "bundles" / name)
                bundles[variant] = name
            jobs.append({"model": model, "batch": batch, "bundles": bundles, "tuned": "untuned"})

    # one copy of each runtime library: hard links (tar stores the others as links)
    first: dict[str, Path] = {}
    for lib in sorted((out / "bundles").glob("*/lib/*")):
        if lib.name in first:
            lib.unlink()
            os.link(first[lib.name], lib)
        else:
            first[lib.name] = lib
    print("packing bundles.tar.xz", flush=True)
    with lzma.open(out / "bundles.tar.xz", "wb", preset=9) as xz:
        with tarfile.open(fileobj=xz, mode="w") as tar:
            tar.add(out / "bundles", arcname="bundles")
    shutil.rmtree(out / "bundles")

    # references: this machine's torch fp32 on the CPU, for the inputs the device will make
    photos = []
    for model in args.models[:1]:
        convention = get_model_info(model).preprocess
        photos = [preprocess(img, convention, 224)[0] for _, img in sample_images()]
    refs = {"photos": np.stack(photos).astype(np.float32)} if photos else {}
    digests = {}
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    for model in args.models:
        net = torch_model(model)
        digests[model] = weights_digest(net)
        for batch in BATCHES:
            _, xs = parity_batches(batch, refs.get("photos"))
            with torch.inference_mode():
                refs[f"{model}-b{batch}"] = np.concatenate([net(torch.from_numpy(x)).numpy() for x in xs])
    np.savez_compressed(out / "references.npz", **refs)

    nvcc = find_nvcc()
    payload = {
        "jobs": jobs,
        "target": args.target,
        "weights_sha256": digests,
        "built_with": {
            "tvm": tvm.__version__,
            "tvmsqz": __version__,
            "torch": torch.__version__,
            "nvcc": nvcc_version(nvcc) if nvcc else None,
            "python": sys.version.split()[0],
        },
    }
    (out / "payload.json").write_text(json.dumps(payload, indent=2) + "\n")
    shutil.copyfile(HERE / "gpu_bundle_bench.py", out / "gpu_bundle_bench.py")
    shutil.copyfile(ROOT / "tvmsqz" / "bundle" / "pyrunner.py", out / "pyrunner.py")
    shutil.copyfile(ROOT / "tvmsqz" / "models" / "squeezenet.py", out / "squeezenet.py")
    (out / "device_run.sh").write_text(DEVICE_RUN)
    (out / "device_run.sh").chmod(0o755)
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"payload {out}: {total / 1e6:.1f} MB")
    for f in sorted(out.iterdir()):
        print(f"  {f.name}: {f.stat().st_size / 1e6:.2f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
