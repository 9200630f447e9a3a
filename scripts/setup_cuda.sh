#!/usr/bin/env bash
# Make sure tvmsqz can compile CUDA device code on this machine (no GPU needed):
#   * an nvcc already on PATH (or under CUDA_HOME / CUDA_PATH): nothing to do;
#   * otherwise pip-install NVIDIA's nvcc wheel into the Python that runs tvmsqz. It brings
#     what nvcc needs to turn a TVM kernel into a fatbin: nvidia-cuda-crt and
#     nvidia-cuda-runtime (headers: cuda.h, cuda_fp16.h, crt/...) and nvidia-nvvm (cicc,
#     libdevice). Its nvcc lives inside site-packages, on no PATH; tvmsqz finds it there
#     (tvmsqz/backends/cuda/nvcc.py: PATH, then this package, then CUDA_HOME / CUDA_PATH);
# then compile a tiny kernel with it to prove it works (a host C++ compiler is needed too).
#
# Idempotent: a rerun with the wheel installed takes a few seconds and downloads nothing.
#
# Environment (all optional):
#   PYTHON                   the Python that runs tvmsqz (default python3); its pip installs the wheel
#   TVMSQZ_NVCC_PIP          the requirement to install (default "nvidia-cuda-nvcc>=13,<14")
#   TVMSQZ_CUDA_SKIP_CHECK=1 skip the test compile
set -euo pipefail

PY="${PYTHON:-python3}"
REQUIREMENT="${TVMSQZ_NVCC_PIP:-nvidia-cuda-nvcc>=13,<14}"

log() { printf 'setup_cuda: %s\n' "$*" >&2; }
die() { printf 'setup_cuda: error: %s\n' "$*" >&2; exit 1; }

for candidate in "$(command -v nvcc || true)" "${CUDA_HOME:+$CUDA_HOME/bin/nvcc}" "${CUDA_PATH:+$CUDA_PATH/bin/nvcc}"; do
  if [ -n "$candidate" ] && [ -x "$candidate" ]; then
    log "nvcc found at $candidate: nothing to install"
    exit 0
  fi
done

"$PY" -m pip --version >/dev/null 2>&1 || die "$PY has no pip: set PYTHON to the Python that runs tvmsqz"
log "no nvcc on PATH: installing $REQUIREMENT with $PY's pip"
"$PY" -m pip install -qq --root-user-action=ignore --disable-pip-version-check "$REQUIREMENT"

NVCC=$("$PY" - <<'PYCODE'
import importlib.metadata as md
dist = md.distribution("nvidia-cuda-nvcc")
print(next(dist.locate_file(f) for f in dist.files or () if f.parts[-2:] == ("bin", "nvcc")))
PYCODE
) || die "the nvidia-cuda-nvcc wheel installed no bin/nvcc"
[ -x "$NVCC" ] || die "$NVCC is not executable"

if [ "${TVMSQZ_CUDA_SKIP_CHECK:-0}" != 1 ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  printf '%s\n' '#include <cuda.h>' \
    'extern "C" __global__ void scale(float* x) { x[threadIdx.x] *= 2.0f; }' > "$tmp/k.cu"
  out=$("$NVCC" --fatbin -O3 -gencode 'arch=compute_80,code=[sm_80,compute_80]' -o "$tmp/k.fatbin" "$tmp/k.cu" 2>&1) \
    || die "$NVCC cannot compile a test kernel (is a host C++ compiler, g++, installed?): $(printf '%s' "$out" | grep -i -m1 error || printf '%s' "$out" | tail -n1)"
  [ -s "$tmp/k.fatbin" ] || die "$NVCC wrote no fatbin"
fi
log "ready: $("$NVCC" --version | grep -o 'release [0-9.]*') at $NVCC (tvmsqz finds it there)"
