"""Security cases (issue 26): what a hostile or careless use must never get.

* `device serve` listens on loopback unless told otherwise, and warns when it is told;
* an edited manifest cannot make `package` run anything but the real toolchain;
* no archive extraction writes outside its folder (zip-slip);
* `package -o` never deletes files it did not make;
* no output replaces an input (CLI and both bundle runners);
* the Python runner loads nothing outside its bundle; outputs keep the umask and an old mode.

Real processes on real files throughout. The network tests use only loopback addresses, and a
network namespace the test makes (holding one documentation address, 192.0.2.1, that nothing
outside the namespace can see).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import psutil
import pytest
from conftest import REPO, assert_one_line_error, run_cli

from tvmsqz import bundle as B
from tvmsqz import device as D

SHAPE = (1, 3, 224, 224)


def assert_refusal(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """A runner's refusal: exit 2, exactly one line on stderr starting `error:`."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under `folder` with its bytes (to show that nothing changed)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------ device serve


def _serve(tracker: D.Proc, key: str, log: Path, *extra: str) -> D.Proc:
    """`tvmsqz device serve` as a user starts it (a real CLI process), registered with `tracker`."""
    port = D.free_port()
    with open(log, "wb") as fh:
        popen = subprocess.Popen(
            [sys.executable, "-m", "tvmsqz", "device", "serve", "--rpc-tracker", tracker.address]
            + ["--rpc-key", key, "--port", str(port), *extra],
            stdout=subprocess.DEVNULL,
            stderr=fh,
            cwd=REPO,
            start_new_session=True,
        )
    proc = D.Proc("server", popen.pid, popen.pid, "127.0.0.1", port, str(log), key=key, tracker=tracker.address)
    proc.popen = popen
    D.wait_registered([proc], timeout=180)
    return proc


def _listening(pid: int) -> set[tuple[str, int]]:
    """The TCP addresses the process group of `pid` listens on."""
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    conns = [c for p in procs for c in p.net_connections(kind="tcp")]
    return {(c.laddr.ip, c.laddr.port) for c in conns if c.status == psutil.CONN_LISTEN}


def _refused(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


def test_device_serve_listens_on_loopback_only_by_default(tmp_path):
    """No --host: the socket is bound to 127.0.0.1, another loopback address of this machine
    (127.0.0.2, which a 0.0.0.0 server would answer on) is refused, and no warning is printed;
    the server still works through the tracker."""
    tracker = D.start_tracker(log_dir=tmp_path)
    server = None
    try:
        assert _listening(tracker.pid) == {("127.0.0.1", tracker.port)}
        server = _serve(tracker, "sec-loopback", tmp_path / "serve.log")
        assert _listening(server.pid) == {("127.0.0.1", server.port)}
        assert _refused("127.0.0.2", server.port)
        assert _refused("127.0.0.2", tracker.port)
        remote = D.rpc_session(tracker.address, "sec-loopback", timeout=60)
        assert D.device_info(remote)["key"] == "sec-loopback"
    finally:
        if server is not None:
            D.stop(server)
        D.stop(tracker)
    assert "warning:" not in (tmp_path / "serve.log").read_text()


_NAMESPACE_CHECK = textwrap.dedent(
    """
    import json, socket, subprocess, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])
    from test_security import _listening, _refused, _serve
    from tvmsqz import device as D

    for cmd in ("ip link set lo up", "ip addr add 192.0.2.1/32 dev lo"):
        subprocess.run(cmd.split(), check=True)
    logs = Path(sys.argv[1])
    tracker = D.start_tracker(log_dir=logs)
    out = {}
    try:
        default = _serve(tracker, "ns-default", logs / "default.log")
        exposed = _serve(tracker, "ns-exposed", logs / "exposed.log", "--host", "0.0.0.0")
        out["default_listen"] = sorted(_listening(default.pid))
        out["default_refused"] = _refused("192.0.2.1", default.port)
        out["exposed_refused"] = _refused("192.0.2.1", exposed.port)
        for proc in (default, exposed):
            D.stop(proc)
    finally:
        D.stop(tracker)
    out["default_log"] = (logs / "default.log").read_text()
    out["exposed_log"] = (logs / "exposed.log").read_text()
    print(json.dumps(out))
    """
)


def test_device_serve_is_unreachable_from_another_address_in_a_network_namespace(tmp_path):
    """In a network namespace of its own with a second, non-loopback address (192.0.2.1): the
    default server refuses that address, and a server told `--host 0.0.0.0` answers on it (so
    the check can tell) and prints the one warning."""
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare or "unshare", "-rn", "true"], capture_output=True) if unshare else None
    if probe is None or probe.returncode != 0:
        pytest.skip("cannot make a network namespace here (unshare -rn); the 127.0.0.2 test above still ran")
    script = tmp_path / "ns_check.py"
    script.write_text(_NAMESPACE_CHECK)
    proc = subprocess.run(
        [unshare, "-rn", sys.executable, str(script), str(tmp_path), str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [tuple(a)[0] for a in out["default_listen"]] == ["127.0.0.1"], out["default_listen"]
    assert out["default_refused"] is True
    assert out["exposed_refused"] is False
    assert "warning:" not in out["default_log"]
    warnings = [ln for ln in out["exposed_log"].splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 1, out["exposed_log"]
    assert "0.0.0.0" in warnings[0] and "no authentication" in warnings[0] and "run code" in warnings[0]


# ------------------------------------------------------------------------------ package


def _artifact_copy(x86_so: Path, folder: Path) -> tuple[Path, dict]:
    folder.mkdir()
    so = folder / x86_so.name
    shutil.copyfile(x86_so, so)
    shutil.copyfile(x86_so.with_name(x86_so.name + ".json"), so.with_name(so.name + ".json"))
    return so, json.loads(so.with_name(so.name + ".json").read_text())


def test_package_never_runs_a_compiler_named_by_the_manifest(x86_so, tmp_path):
    """`target.cc` pointing at a script (that would leave a marker) is never run: the compiler
    comes from the target data and the artifact's ELF machine; the bundled manifest's sha256 is
    recorded in bundle.json and printed."""
    marker = tmp_path / "PWNED"
    evil = tmp_path / "not-a-compiler"
    evil.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    evil.chmod(0o755)
    so, manifest = _artifact_copy(x86_so, tmp_path / "m")
    for name in ("x86-avx2", "../../not/a/target", str(tmp_path / "evil.json")):
        manifest["target"] = {**manifest["target"], "cc": str(evil), "name": name}
        text = json.dumps(manifest)
        so.with_name(so.name + ".json").write_text(text)
        out = tmp_path / f"b-{len(name)}"
        proc = run_cli("package", str(so), "-o", str(out), env={"CXX": ""})
        assert not marker.exists(), f"package ran the manifest's compiler (target name {name!r})"
        bundle = json.loads((out / "bundle.json").read_text())
        assert bundle["built_with"]["cc"] == "c++", bundle["built_with"]
        digest = hashlib.sha256(text.encode()).hexdigest()
        assert bundle["model"]["manifest_sha256"] == digest
        assert f"manifest sha256 {digest}" in proc.stdout
    # a shipped target of another machine: the manifest does not describe this artifact
    manifest["target"] = {**manifest["target"], "cc": str(evil), "name": "arm"}
    so.with_name(so.name + ".json").write_text(json.dumps(manifest))
    proc = run_cli("package", str(so), "-o", str(tmp_path / "b-arm"), check=False)
    assert_one_line_error(proc, "x86_64 library", "does not describe this artifact")
    assert not marker.exists() and not (tmp_path / "b-arm").exists()


def test_manifest_files_outside_the_artifact_folder_are_refused(x86_so, tmp_path):
    so, manifest = _artifact_copy(x86_so, tmp_path / "m")
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the bundle")
    entry = {"bytes": secret.stat().st_size, "sha256": hashlib.sha256(secret.read_bytes()).hexdigest()}
    for name in ("../secret.txt", str(secret)):
        manifest["files"] = [{"file": name, **entry}]
        so.with_name(so.name + ".json").write_text(json.dumps(manifest))
        proc = run_cli("package", str(so), "-o", str(tmp_path / "b"), check=False)
        assert_one_line_error(proc, "is not a file name beside the artifact")
        assert not (tmp_path / "b").exists()


def _wheel_pair(folder: Path, evil: zipfile.ZipInfo, payload: bytes) -> None:
    """A pair of x86-64 wheels as `--runtime-from` finds them; the ffi one holds `evil`."""
    folder.mkdir()
    tvm = folder / "apache_tvm-0.27.0.post1-py3-none-manylinux_2_28_x86_64.whl"
    ffi = folder / "apache_tvm_ffi-0.1.14.post1-cp311-cp311-manylinux_2_28_x86_64.whl"
    with zipfile.ZipFile(tvm, "w") as zf:
        zf.writestr("tvm/lib/libtvm_runtime.so", b"\x7fELF not really")
        zf.writestr("apache_tvm-0.27.0.post1.dist-info/METADATA", "Name: apache-tvm\n")
    with zipfile.ZipFile(ffi, "w") as zf:
        zf.writestr("tvm_ffi/lib/libtvm_ffi.so", b"\x7fELF not really")
        zf.writestr("tvm_ffi/include/tvm/ffi/c_api.h", "/* header */\n")
        zf.writestr(evil, payload)


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "link"])
def test_wheel_extraction_refuses_entries_leaving_its_folder(kind, x86_so, tmp_path):
    """Zip-slip: a wheel entry with `..`, an absolute path or a symbolic link is refused as a
    whole, in one line; nothing is written outside the cache (nor inside it, for that wheel)."""
    escape = tmp_path / "escaped"
    cache = tmp_path / "cache"
    if kind == "dotdot":
        depth = len((cache / "bundle/wheel-runtimes/x/tvm_ffi/include").relative_to(tmp_path).parts)
        info, payload = zipfile.ZipInfo("tvm_ffi/include/" + "../" * depth + "escaped"), b"owned"
    elif kind == "absolute":
        info, payload = zipfile.ZipInfo(str(escape)), b"owned"
    else:
        info, payload = zipfile.ZipInfo("tvm_ffi/include/tvm/ffi/link.h"), str(escape).encode()
        info.external_attr = (stat.S_IFLNK | 0o777) << 16
    _wheel_pair(tmp_path / "wheels", info, payload)
    proc = run_cli(
        "package",
        str(x86_so),
        "-o",
        str(tmp_path / "b"),
        "--runtime-from",
        str(tmp_path / "wheels"),
        env={"TVMSQZ_CACHE": str(cache), "TVMSQZ_WHEELS": ""},
        check=False,
    )
    assert_one_line_error(proc, "unsafe entry")
    assert not escape.exists() and not escape.is_symlink()
    assert not [p for p in cache.rglob("*") if p.is_symlink()]
    assert not (tmp_path / "b").exists()


def test_an_unsafe_wheel_in_a_cache_does_not_block_package(x86_so, tmp_path):
    """Wheels found in caches (`$TVMSQZ_WHEELS`) are not the user's choice: an unsafe or broken
    pair is passed over (and extracts nothing), and the installed runtime makes the bundle."""
    escape = tmp_path / "escaped"
    _wheel_pair(tmp_path / "wheels", zipfile.ZipInfo(str(escape)), b"owned")
    cache = tmp_path / "cache"
    run_cli(
        "package",
        str(x86_so),
        "-o",
        str(tmp_path / "b"),
        env={"TVMSQZ_CACHE": str(cache), "TVMSQZ_WHEELS": str(tmp_path / "wheels")},
    )
    assert json.loads((tmp_path / "b" / "bundle.json").read_text())["runtime"]["source"]
    assert not escape.exists()


def test_package_never_deletes_the_users_files(x86_so, x86_bundle, tmp_path):
    """`-o home` where home holds a bundle.json plus the user's files: refused, every file kept;
    a folder holding only a bundle it made is still replaced."""
    home = tmp_path / "home"
    shutil.copytree(x86_bundle, home)
    (home / "thesis.txt").write_text("four years of work")
    (home / "photos").mkdir()
    (home / "photos/cat.jpg").write_bytes(b"\xff\xd8 a cat")
    (home / "model/notes.md").write_text("mine too")
    before = _tree(home)
    proc = run_cli("package", str(x86_so), "-o", str(home), check=False)
    assert_one_line_error(proc, "not part of the bundle", "thesis.txt")
    assert _tree(home) == before
    # a hand-made bundle.json beside the user's files does not make the folder a bundle
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "bundle.json").write_text(json.dumps({"format": B.FORMAT, "files": []}))
    (mine / "thesis.txt").write_text("draft")
    before = _tree(mine)
    assert_one_line_error(run_cli("package", str(x86_so), "-o", str(mine), check=False), "thesis.txt")
    assert _tree(mine) == before
    # --tar never replaces an archive that is not this bundle's
    fresh = tmp_path / "fresh"
    (tmp_path / "fresh.tar.gz").write_bytes(b"my own backup")
    proc = run_cli("package", str(x86_so), "-o", str(fresh), "--tar", check=False)
    assert_one_line_error(proc, "fresh.tar.gz exists and is not a bundle archive")
    assert (tmp_path / "fresh.tar.gz").read_bytes() == b"my own backup" and not fresh.exists()
    # the bundle alone is replaced, as before (and its own archive too)
    clean = tmp_path / "clean"
    shutil.copytree(x86_bundle, clean)
    run_cli("package", str(x86_so), "-o", str(clean), "--tar")
    run_cli("package", str(x86_so), "-o", str(clean), "--tar")
    assert (clean / "bundle.json").is_file() and (tmp_path / "clean.tar.gz").is_file()


# ------------------------------------------------------------------------------ outputs and inputs


def test_compile_refuses_an_output_that_is_its_target_file(tmp_path):
    """`compile x --target ./t.json -o t.json`, and an output whose manifest would be t.json."""
    target = tmp_path / "t.json"
    shutil.copyfile(REPO / "targets/x86-avx2.json", target)
    before = target.read_bytes()
    for out in ("t.json", "t"):  # `-o t` writes its manifest to t.json
        proc = run_cli("compile", "squeezenet1_1", "--target", "./t.json", "-o", out, cwd=tmp_path, check=False)
        assert_one_line_error(proc, "is also an input")
        assert target.read_bytes() == before
    proc = run_cli("bench", "squeezenet1_1", "--target", "./t.json", "--json", "t.json", cwd=tmp_path, check=False)
    assert_one_line_error(proc, "is also an input")
    assert target.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["t.json"]


@pytest.mark.parametrize("runner", B.RUNNERS)
def test_runners_refuse_an_output_that_is_an_input(runner, x86_bundle, tmp_path):
    x = np.random.default_rng(5).standard_normal(SHAPE).astype("float32")
    np.save(tmp_path / "x.npy", x)
    before = (tmp_path / "x.npy").read_bytes()
    os.link(tmp_path / "x.npy", tmp_path / "hard.npy")
    for out in ("x.npy", "./x.npy", "hard.npy"):
        proc = B.run_bundle(x86_bundle, ["--input", tmp_path / "x.npy", "-o", f"{tmp_path}/{out}"], runner=runner)
        assert_refusal(proc, "is the input")
        assert (tmp_path / "x.npy").read_bytes() == before
    files = _tree(x86_bundle)
    for rel in ("bundle.json", B.PY_RUNNER, "share/labels.txt"):
        assert_refusal(B.run_bundle(x86_bundle, ["-o", x86_bundle / rel], runner=runner), "is the bundle's")
    assert _tree(x86_bundle) == files
    assert not list(tmp_path.glob("*.tmp.*"))


@pytest.mark.parametrize("runner", B.RUNNERS)
def test_runners_refuse_a_model_file_outside_the_bundle(runner, x86_bundle, tmp_path):
    """bundle.json naming a model outside the bundle (absolute, `..`), even with a matching
    sha256 listed: refused before anything is loaded."""
    bundle = tmp_path / "b"
    shutil.copytree(x86_bundle, bundle)
    manifest = json.loads((bundle / "bundle.json").read_text())
    outside = tmp_path / "outside.so"
    shutil.copyfile(bundle / manifest["model"]["file"], outside)
    entry = next(e for e in manifest["files"] if e["file"] == manifest["model"]["file"])
    for name in (str(outside), "../outside.so"):
        edited = {**manifest, "model": {**manifest["model"], "file": name}, "files": [*manifest["files"], {**entry}]}
        edited["files"][-1]["file"] = name
        (bundle / "bundle.json").write_text(json.dumps(edited))
        assert_refusal(B.run_bundle(bundle, ["--repeat", "1"], runner=runner), "outside the bundle", name)
    # a link inside the bundle that leads out is refused too
    (bundle / "model/link.so").symlink_to(outside)
    edited = {**manifest, "model": {**manifest["model"], "file": "model/link.so"}}
    edited["files"] = [*manifest["files"], {**entry, "file": "model/link.so"}]
    (bundle / "bundle.json").write_text(json.dumps(edited))
    assert_refusal(B.run_bundle(bundle, ["--repeat", "1"], runner=runner), "outside the bundle")


def test_outputs_keep_the_umask_and_an_existing_files_mode(x86_so, tmp_path):
    """Under umask 077 a new output is 0600 (not 0644); a replaced 0640 file stays 0640."""

    def run_under(umask: str, out: Path) -> None:
        cmd = f"umask {umask} && exec {sys.executable} -m tvmsqz run {x86_so} -o {out}"
        proc = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True, cwd=REPO, timeout=600)
        assert proc.returncode == 0, proc.stderr

    run_under("077", tmp_path / "private.npy")
    assert stat.S_IMODE((tmp_path / "private.npy").stat().st_mode) == 0o600
    kept = tmp_path / "kept.npy"
    kept.write_bytes(b"old")
    kept.chmod(0o640)
    run_under("022", kept)
    assert stat.S_IMODE(kept.stat().st_mode) == 0o640 and np.load(kept).shape[-1] == 1000
    run_under("022", tmp_path / "shared.npy")
    assert stat.S_IMODE((tmp_path / "shared.npy").stat().st_mode) == 0o644


def test_a_replaced_file_never_keeps_setuid_bits(tmp_path):
    """The mode an atomic write keeps is the permission bits only: new bytes under an old setuid
    or setgid bit would be a program that runs as its owner."""
    from tvmsqz.fsutil import atomic_write

    target = tmp_path / "tool"
    target.write_text("old")
    target.chmod(0o6755)
    atomic_write(target, "new")
    assert stat.S_IMODE(target.stat().st_mode) == 0o755 and target.read_text() == "new"
