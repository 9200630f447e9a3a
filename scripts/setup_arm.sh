#!/usr/bin/env bash
# Install everything tvmsqz needs for the ARM targets on an x86 Debian host (run as root):
#   1. the Debian cross toolchains (aarch64 and armhf) and qemu-user + binfmt_misc,
#   2. an aarch64 Debian root (mmdebstrap --variant=extract) cached between runs,
#   3. the pinned aarch64 TVM wheels installed into that root with the host's pip,
#   3b. a copy of that root without TVM (numpy only), where bundles are run (`tvmsqz package`),
# so that `tvmsqz device emulate start` can run a TVM RPC server under qemu-user.
#
# Idempotent: a rerun checks what is there and returns in about a second.
#
# Environment (all optional):
#   TVMSQZ_CACHE       cache folder (default ~/.cache/tvmsqz)
#   TVMSQZ_ARM_ROOT    the aarch64 root (default $TVMSQZ_CACHE/arm64-root)
#   TVMSQZ_ARM_BARE_ROOT  the TVM-less aarch64 root (default $TVMSQZ_CACHE/arm64-bare-root)
#   TVMSQZ_ARM_MIRROR  Debian mirror for the root (default: the one this machine's apt uses)
#   TVMSQZ_ARM_SUITE   Debian suite of the root (default bookworm, whose python3 is 3.11)
#   PYTHON             the host Python whose pip installs the wheels (default python3)
#   TVMSQZ_ARM_FORCE=1 rebuild the root even if its stamp is current
set -euo pipefail

TVM_PIN="apache-tvm==0.27.0.post1"
FFI_PIN="apache-tvm-ffi==0.1.14.post1"
EXTRA_PKGS=(psutil cloudpickle tornado)
APT_PKGS=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu g++-arm-linux-gnueabihf
          qemu-user-static binfmt-support mmdebstrap arch-test file)

CACHE="${TVMSQZ_CACHE:-$HOME/.cache/tvmsqz}"
ROOT="${TVMSQZ_ARM_ROOT:-$CACHE/arm64-root}"
SUITE="${TVMSQZ_ARM_SUITE:-bookworm}"
ROOT_PY="${TVMSQZ_ARM_PYTHON_VERSION:-3.11}"   # python3 of $SUITE; the wheels must match it
PY="${PYTHON:-python3}"
STAMP="$ROOT/.tvmsqz-stamp"
STAMP_WANT="v1 suite=$SUITE py=$ROOT_PY $TVM_PIN $FFI_PIN ${EXTRA_PKGS[*]}"

log() { printf 'setup_arm: %s\n' "$*" >&2; }
die() { printf 'setup_arm: error: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (apt-get, binfmt_misc and chroot need it)"
case "$(uname -m)" in
  x86_64|amd64) ;;
  *) log "warning: host is $(uname -m), this script is written for x86_64 hosts" ;;
esac

# ---------------------------------------------------------------- 1. packages
missing=()
for p in "${APT_PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ "${#missing[@]}" -gt 0 ]; then
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  log "packages: all present"
fi
for tool in aarch64-linux-gnu-g++ arm-linux-gnueabihf-g++ qemu-aarch64-static mmdebstrap file; do
  command -v "$tool" >/dev/null || die "$tool not found after installing packages"
done

# ---------------------------------------------------------------- 2. binfmt_misc
# The RPC server re-executes python3 for its worker, so qemu must be registered with the
# kernel (binfmt_misc, with the F flag of qemu-user-static) rather than run by hand.
BINFMT=/proc/sys/fs/binfmt_misc
if [ ! -e "$BINFMT/register" ]; then
  log "mounting binfmt_misc"
  mount -t binfmt_misc binfmt_misc "$BINFMT" \
    || die "cannot mount binfmt_misc on $BINFMT (a container needs --privileged or a host with qemu-user-static registered)"
fi
if [ ! -e "$BINFMT/qemu-aarch64" ] || ! grep -q '^enabled' "$BINFMT/qemu-aarch64"; then
  log "enabling qemu-aarch64 in binfmt_misc"
  update-binfmts --enable qemu-aarch64 || true
fi
grep -q '^enabled' "$BINFMT/qemu-aarch64" 2>/dev/null \
  || die "qemu-aarch64 is not registered in $BINFMT (update-binfmts --enable qemu-aarch64 failed)"

# ---------------------------------------------------------------- 3. aarch64 root
mirror_from_apt() {
  # The first Debian main-archive URI this machine's apt sources use (deb822 or one-line).
  local f uri
  for f in /etc/apt/sources.list.d/*.sources /etc/apt/sources.list /etc/apt/sources.list.d/*.list; do
    [ -r "$f" ] || continue
    case "$f" in
      *.sources) uri=$(awk 'tolower($1)=="uris:" {for (i=2;i<=NF;i++) print $i}' "$f") ;;
      *) uri=$(awk '$1=="deb" {for (i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; break}}' "$f") ;;
    esac
    uri=$(printf '%s\n' "$uri" | grep -E '/debian/?$' | grep -v -- '-security' | head -n1 || true)
    if [ -n "$uri" ]; then printf '%s\n' "${uri%/}"; return 0; fi
  done
  printf '%s\n' "http://deb.debian.org/debian"
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_WANT" ] && [ "${TVMSQZ_ARM_FORCE:-0}" != 1 ] \
   && [ -x "$ROOT/usr/bin/python3" ] && [ -d "$ROOT/opt/tvm-site/tvm" ]; then
  log "aarch64 root: $ROOT is current"
else
  MIRROR="${TVMSQZ_ARM_MIRROR:-$(mirror_from_apt)}"
  mkdir -p "$(dirname "$ROOT")"
  TMPROOT="$ROOT.tmp.$$"
  rm -rf "$TMPROOT"
  trap 'rm -rf "$TMPROOT"' EXIT
  log "building aarch64 root ($SUITE from $MIRROR) in $ROOT"
  mmdebstrap --arch=arm64 --variant=extract --include=python3,libstdc++6 --quiet \
    "$SUITE" "$TMPROOT" "$MIRROR"
  mkdir -p "$TMPROOT/tmp" && chmod 1777 "$TMPROOT/tmp"
  [ -x "$TMPROOT/usr/bin/python3" ] || die "the root has no /usr/bin/python3"

  log "installing $TVM_PIN $FFI_PIN ${EXTRA_PKGS[*]} (aarch64 wheels) into the root"
  "$PY" -m pip --version >/dev/null 2>&1 \
    || die "$PY has no pip: set PYTHON to the Python that runs tvmsqz (its pip installs the wheels)"
  "$PY" -m pip install -qq --root-user-action=ignore --disable-pip-version-check --no-warn-script-location \
    --only-binary=:all: \
    --platform manylinux_2_28_aarch64 --platform manylinux2014_aarch64 \
    --platform manylinux_2_17_aarch64 \
    --python-version "$ROOT_PY" --implementation cp --abi "cp${ROOT_PY/./}" --abi abi3 --abi none \
    --target "$TMPROOT/opt/tvm-site" \
    "$TVM_PIN" "$FFI_PIN" "${EXTRA_PKGS[@]}"
  [ -d "$TMPROOT/opt/tvm-site/tvm" ] || die "pip did not install tvm into the root"
  rt=$(find "$TMPROOT/opt/tvm-site/tvm" -name 'libtvm_runtime.so' -print -quit)
  [ -n "$rt" ] && file -b "$rt" | grep -q 'ARM aarch64' \
    || die "the TVM runtime in the root is not an aarch64 library (${rt:-missing})"

  printf '%s\n' "$STAMP_WANT" > "$TMPROOT/.tvmsqz-stamp"
  # Swap in atomically; an old root (and any server still running in it) is moved aside first.
  if [ -e "$ROOT" ]; then
    rm -rf "$ROOT.old"
    mv "$ROOT" "$ROOT.old"
  fi
  mv "$TMPROOT" "$ROOT"
  trap - EXIT
  rm -rf "$ROOT.old"
fi

# ---------------------------------------------------------------- 3b. TVM-less aarch64 root
# Where bundles (`tvmsqz package`) are run to prove that a device needs no TVM: a copy of the
# Debian part of the root above (no /opt/tvm-site, so no TVM and no pip package), plus the
# aarch64 numpy the Python runner needs, copied from the wheels installed above into Debian's
# dist-packages. ~150 MB, ~2 s; rebuilt when the main root's stamp changes.
BARE="${TVMSQZ_ARM_BARE_ROOT:-$CACHE/arm64-bare-root}"
BARE_STAMP_WANT="bare-v1 $(cat "$STAMP")"
if [ -f "$BARE/.tvmsqz-bare-stamp" ] && [ "$(cat "$BARE/.tvmsqz-bare-stamp")" = "$BARE_STAMP_WANT" ] \
   && [ "${TVMSQZ_ARM_FORCE:-0}" != 1 ] && [ -x "$BARE/usr/bin/python3" ] && [ ! -e "$BARE/opt/tvm-site" ]; then
  log "TVM-less aarch64 root: $BARE is current"
else
  log "building the TVM-less aarch64 root in $BARE"
  TMPBARE="$BARE.tmp.$$"
  rm -rf "$TMPBARE"
  trap 'rm -rf "$TMPBARE"' EXIT
  mkdir -p "$TMPBARE"
  (cd "$ROOT" && tar --exclude=./opt/tvm-site --exclude=./.tvmsqz-stamp --exclude='./tmp/*' -cf - .) \
    | (cd "$TMPBARE" && tar -xf -)
  DIST="$TMPBARE/usr/lib/python3/dist-packages"
  mkdir -p "$DIST"
  for item in "$ROOT"/opt/tvm-site/numpy "$ROOT"/opt/tvm-site/numpy.libs "$ROOT"/opt/tvm-site/numpy-*.dist-info; do
    [ -e "$item" ] && cp -a "$item" "$DIST/"
  done
  [ -d "$DIST/numpy" ] || die "no aarch64 numpy in $ROOT/opt/tvm-site to copy into the TVM-less root"
  mkdir -p "$TMPBARE/tmp" && chmod 1777 "$TMPBARE/tmp"
  printf '%s\n' "$BARE_STAMP_WANT" > "$TMPBARE/.tvmsqz-bare-stamp"
  rm -rf "$BARE.old"
  [ -e "$BARE" ] && mv "$BARE" "$BARE.old"
  mv "$TMPBARE" "$BARE"
  trap - EXIT
  rm -rf "$BARE.old"
fi

# ---------------------------------------------------------------- 4. smoke check
if [ "${TVMSQZ_ARM_SKIP_CHECK:-0}" != 1 ]; then
  # A pure exec check (no `import tvm`: that takes 6-8 s under qemu).
  out=$(chroot "$ROOT" /usr/bin/python3 -c 'import platform; print(platform.machine())' 2>&1) \
    || die "cannot run the aarch64 python3 in $ROOT: $out"
  [ "$out" = "aarch64" ] || die "the chrooted python3 reports '$out', expected aarch64"
  # The TVM-less root: numpy imports, tvm must not.
  out=$(chroot "$BARE" /usr/bin/python3 -c 'import numpy
try:
    import tvm
    print("tvm importable")
except ImportError:
    print("ok")' 2>&1) || die "cannot run python3 + numpy in $BARE: $out"
  [ "$out" = "ok" ] || die "the TVM-less root $BARE is not TVM-less: $out"
fi
log "ready: aarch64 root $ROOT (emulated device: tvmsqz device emulate start), TVM-less root $BARE (bundles)"
