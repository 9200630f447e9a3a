"""Devices reached over TVM RPC: real boards, and an emulated aarch64 board for tests.

Three parts:

* **Tracker and servers.** `start_tracker` runs `python -m tvm.exec.rpc_tracker` on this host;
  `start_emulated_server` runs a TVM RPC server chrooted into the aarch64 root that
  `scripts/setup_arm.sh` builds, executed by qemu-user through binfmt_misc; `serve` runs the
  same server natively on a real board (`tvmsqz device serve`). Every process gets its own
  process group (`setsid`) and `stop` kills the whole group: the server's worker keeps
  listening if only the server dies. `emulate_start`/`emulate_stop`/`emulate_status` keep their
  processes in a state file under the cache folder, so a later `tvmsqz device emulate stop`
  in another process stops everything an earlier `start` started; `emulated_devices` is the
  context-manager form for tests, which always cleans up.

* **Remote execution.** `check_tracker` fails fast when a tracker is down; `rpc_session` asks
  the tracker for a free device; `run_remote` and `time_remote` upload an artifact, run it
  through the Relax VM and return its output or its timings. Timings from an emulated device
  carry `emulated: True`: they say nothing about ARM performance.

* **Cross builds and remote tuning.** `export_cross` writes a cross-linked shared library
  atomically; `make_rpc_runner_builder` gives MetaSchedule a builder that cross-links on this
  host (the devices need no compiler) and an `RPCRunner` bound to the tracker whose sessions
  time out, so a device that dies yields failed measurements instead of a hang.

Only the standard library is imported at module level; TVM is imported where it is used.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from tvmsqz.errors import TvmsqzError
from tvmsqz.paths import CACHE_DIR

# ------------------------------------------------------------------------------------ constants

DEFAULT_TRACKER_PORT = 9190
DEFAULT_SERVER_PORT = 9090
DEFAULT_EMU_KEY = "arm-emu"
#: Marks every output that comes from the emulator (qemu-user timings are not ARM timings).
EMULATED_NOTE = "emulated aarch64 device (qemu-user on this host): timings say nothing about ARM performance"

#: What the emulated device and the device server report through `tvmsqz.device_info`.
DEVICE_INFO_FUNC = "tvmsqz.device_info"

_SETUP_HINT = "run scripts/setup_arm.sh (as root) first"
_SERVER_IN_ROOT = "/opt/tvmsqz/rpc_server.py"
_ELF_MACHINES = {0x03: "x86", 0x28: "arm", 0x3E: "x86_64", 0xB7: "aarch64", 0xF3: "riscv"}


def arm_root() -> Path:
    """The aarch64 root built by `scripts/setup_arm.sh` (`TVMSQZ_ARM_ROOT` overrides it)."""
    return Path(os.environ.get("TVMSQZ_ARM_ROOT", CACHE_DIR / "arm64-root"))


def state_dir() -> Path:
    """Where `emulate start` keeps its state file and the logs of its processes."""
    return Path(os.environ.get("TVMSQZ_EMU_STATE", CACHE_DIR / "emulated"))


# ------------------------------------------------------------------------------------ processes


@dataclasses.dataclass
class Proc:
    """A process group this module started: a tracker or an RPC server."""

    role: str  # "tracker" | "server"
    pid: int
    pgid: int
    host: str
    port: int
    log: str
    key: str | None = None
    tracker: str | None = None
    emulated: bool = False
    started: float = dataclasses.field(default_factory=time.time)
    popen: subprocess.Popen | None = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def to_json(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "popen"}

    @classmethod
    def from_json(cls, d: dict) -> Proc:
        fields = {f.name for f in dataclasses.fields(cls)} - {"popen"}
        return cls(**{k: v for k, v in d.items() if k in fields})

    def alive(self) -> bool:
        """True while any process of its group is alive (zombies do not count)."""
        if self.popen is not None and self.popen.poll() is None:
            return True
        return bool(_group_members(self.pgid))


def _group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group `pgid`, from /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
        except OSError:
            continue
        # Fields after the ")" closing the command name: state ppid pgrp ...
        rest = stat[stat.rfind(")") + 2 :].split()
        if len(rest) >= 3 and rest[0] != "Z" and int(rest[2]) == pgid:
            out.append(int(entry))
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


_MARKERS = ("tvm.exec.rpc_tracker", "tvm.exec.rpc_server", "rpc_server.py", "tvm.exec.popen_worker")


def _group_is_ours(proc: Proc) -> bool:
    """Guard against pid reuse: only signal a group one of whose members runs TVM RPC code."""
    if proc.popen is not None:
        return True
    return any(any(m in _cmdline(pid) for m in _MARKERS) for pid in _group_members(proc.pgid))


def stop(proc: Proc, timeout: float = 5.0) -> None:
    """Stop `proc` and every process of its group: SIGTERM, then SIGKILL after `timeout`."""
    if proc.pgid <= 1:
        return
    if _group_is_ours(proc):
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 10.0)
            while time.monotonic() < deadline:
                if proc.popen is not None:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.popen.wait(timeout=0.05)
                if not _group_members(proc.pgid):
                    break
                time.sleep(0.05)
            else:
                continue
            break
    if proc.popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=1.0)


def _spawn(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # setsid: its own process group, stopped as a whole
            close_fds=True,
        )


def _log_tail(path: str | Path, lines: int = 8) -> str:
    try:
        text = Path(path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def _pick_port(host: str, port: int | None, taken: Sequence[int] = ()) -> int:
    """`port` if it is free, else the next free one above it; a free ephemeral one for None/0."""
    if not port:
        return free_port(host)
    for p in range(port, port + 200):
        if p not in taken and _port_free(host, p):
            return p
    raise TvmsqzError(f"no free TCP port on {host} in {port}..{port + 199}")


# ------------------------------------------------------------------------------------ tracker


def parse_host_port(value: str, default_port: int = DEFAULT_TRACKER_PORT) -> tuple[str, int]:
    """'HOST:PORT' (or 'HOST') -> (host, port); TvmsqzError on a malformed value."""
    if not value or not str(value).strip():
        raise TvmsqzError("empty tracker address: pass --rpc-tracker HOST:PORT")
    value = str(value).strip()
    host, sep, port = value.rpartition(":")
    if not sep:
        return value, default_port
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TvmsqzError(f"bad tracker address {value!r}: expected HOST:PORT, e.g. 127.0.0.1:9190")
    return host.strip("[]"), int(port)


def _tracker_call(host_port: str, request: list, timeout: float) -> Any:
    """One request/reply with the tracker on a fresh socket bounded by `timeout` seconds."""
    from tvm.rpc import base  # noqa: PLC0415

    host, port = parse_host_port(host_port)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        magic = struct.unpack("<i", base.recvall(sock, 4))[0]
        if magic != base.RPC_TRACKER_MAGIC:
            raise ConnectionError(f"{host}:{port} answered, but it is not a TVM RPC tracker")
        base.sendjson(sock, request)
        return base.recvjson(sock)


def tracker_summary(host_port: str, timeout: float = 5.0) -> dict:
    """The tracker's summary: {"queue_info": {key: {"free", "pending"}}, "server_info": [...]}."""
    from tvm.rpc import base  # noqa: PLC0415

    try:
        reply = _tracker_call(host_port, [base.TrackerCode.SUMMARY], timeout)
    except (OSError, ConnectionError, ValueError, struct.error) as err:
        raise TvmsqzError(f"cannot reach RPC tracker at {_fmt(host_port)}: {_why(err)}") from None
    if not isinstance(reply, list) or reply[0] != base.TrackerCode.SUCCESS:
        raise TvmsqzError(f"RPC tracker at {_fmt(host_port)} gave an invalid reply: {reply!r}")
    return reply[1]


def check_tracker(host_port: str, timeout: float = 3.0) -> None:
    """Raise `TvmsqzError("cannot reach RPC tracker at HOST:PORT: ...")` within ~`timeout` s."""
    tracker_summary(host_port, timeout=timeout)


def list_devices(host_port: str, key: str | None = None, timeout: float = 5.0) -> list[dict]:
    """Servers registered with the tracker: [{"key": KEY, "host": ..., "port": ...}], by key."""
    out = []
    for item in tracker_summary(host_port, timeout)["server_info"]:
        k = str(item.get("key", "")).split(":", 1)[-1]
        addr = item.get("addr") or [None, None]
        if key is None or k == key:
            out.append({"key": k, "host": addr[0], "port": addr[1]})
    return sorted(out, key=lambda d: (d["key"], str(d["host"]), d["port"] or 0))


def device_count(host_port: str, key: str, timeout: float = 5.0) -> int:
    """How many servers are registered under `key` (busy or free)."""
    return len(list_devices(host_port, key, timeout))


def require_devices(host_port: str, key: str, timeout: float = 5.0) -> int:
    """The number of devices under `key`; TvmsqzError naming the keys present when none is."""
    devices = list_devices(host_port, None, timeout)
    n = sum(1 for d in devices if d["key"] == key)
    if n == 0:
        keys = sorted({d["key"] for d in devices})
        present = ", ".join(keys) if keys else "none"
        raise TvmsqzError(
            f"no device is registered under key {key!r} at RPC tracker {_fmt(host_port)} "
            f"(keys registered: {present}); start one with `tvmsqz device serve --rpc-tracker "
            f"{_fmt(host_port)} --rpc-key {key}` on the board"
        )
    return n


def _fmt(host_port: str) -> str:
    try:
        host, port = parse_host_port(host_port)
    except TvmsqzError:
        return str(host_port)
    return f"{host}:{port}"


def _why(err: BaseException) -> str:
    if isinstance(err, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused (is `python -m tvm.exec.rpc_tracker` running there?)"
    if isinstance(err, socket.gaierror):
        return f"unknown host ({err.strerror})"
    return str(err) or type(err).__name__


def start_tracker(host: str = "127.0.0.1", port: int | None = DEFAULT_TRACKER_PORT, *,
                  timeout: float = 60.0, log_dir: Path | None = None) -> Proc:
    """Start `python -m tvm.exec.rpc_tracker` on `host:port` (the next free port if taken)."""
    port = _pick_port(host, port)
    log = (log_dir or state_dir() / "logs") / f"tracker-{port}.log"
    cmd = [sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", host,
           "--port", str(port), "--port-end", str(port + 1)]
    popen = _spawn(cmd, log)
    proc = Proc("tracker", popen.pid, popen.pid, host, port, str(log), popen=popen)
    deadline = time.monotonic() + timeout
    while True:
        try:
            check_tracker(proc.address, timeout=2.0)
            return proc
        except TvmsqzError as err:
            if popen.poll() is not None:
                stop(proc)
                raise TvmsqzError(f"RPC tracker on {proc.address} exited: {_log_tail(log)}") from None
            if time.monotonic() > deadline:
                stop(proc)
                raise TvmsqzError(f"RPC tracker on {proc.address} did not come up in {timeout:.0f} s: "
                                  f"{err}; log: {_log_tail(log)}") from None
        time.sleep(0.2)


# ------------------------------------------------------------------------------------ servers

# The RPC server, run by `python3 SCRIPT` inside the emulated root and by `tvmsqz device serve`
# on a board. It needs only TVM. It registers `tvmsqz.device_info` in the server's worker so the
# host can tell an emulated device from a real one.
_SERVER_SCRIPT = r'''
import argparse, json, logging, os, platform, sys


def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k.strip().lower() in ("model name", "hardware", "cpu part"):
                    return v.strip()
    except OSError:
        pass
    return platform.processor() or ""


def main():
    p = argparse.ArgumentParser(prog="tvmsqz device serve")
    p.add_argument("--host", default="0.0.0.0")
    p.add_argument("--port", type=int, default=9090)
    p.add_argument("--port-end", type=int, default=None)
    p.add_argument("--tracker", default=None, help="HOST:PORT of the RPC tracker")
    p.add_argument("--key", default="")
    p.add_argument("--custom-addr", default=None, help="address the tracker hands to clients")
    p.add_argument("--emulated", action="store_true")
    p.add_argument("--silent", action="store_true")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO)
    import tvm
    from tvm import rpc

    info = {"emulated": bool(a.emulated), "machine": platform.machine(), "cpu": _cpu_model(),
            "cores": os.cpu_count(), "tvm": tvm.__version__, "key": a.key,
            "python": platform.python_version()}
    if a.emulated:
        info["emulator"] = "qemu-user"

    def init(info=info):
        import json
        import tvm_ffi
        tvm_ffi.register_global_func(
            "tvmsqz.device_info", lambda: json.dumps(info), override=True)

    tracker = None
    if a.tracker:
        host, port = a.tracker.rsplit(":", 1)
        tracker = (host, int(port))
        if not a.key:
            sys.exit("tvmsqz device serve: --key is required with --tracker")
    port_end = a.port_end if a.port_end else a.port + 100
    try:
        # Serve from this process: `rpc.Server` would start a second Python (a PopenWorker) and
        # import TVM again, which doubles the start-up time under emulation.
        from tvm.rpc.server import PopenRPCServerState
    except ImportError:
        PopenRPCServerState = None
    if PopenRPCServerState is not None:
        init()
        state = PopenRPCServerState(a.host, a.port, port_end, is_proxy=False, tracker_addr=tracker,
                                    key=a.key, load_library=None, custom_addr=a.custom_addr,
                                    silent=a.silent)
        port, wait = state.port, state.thread.join
    else:
        server = rpc.Server(a.host, a.port, port_end, tracker_addr=tracker, key=a.key,
                            custom_addr=a.custom_addr, silent=a.silent, server_init_callback=init)
        port, wait = server.port, server.proc.join
    print("tvmsqz-rpc-server: serving on %s:%d key=%r tracker=%s emulated=%s machine=%s"
          % (a.host, port, a.key, a.tracker, a.emulated, info["machine"]), flush=True)
    try:
        wait()
    except KeyboardInterrupt:
        sys.stdout.flush()
        os._exit(0)  # the listening thread never returns; leave without waiting for it


main()
'''


def emulator_ready(root: Path | None = None) -> bool:
    """True when `scripts/setup_arm.sh` has built the root and qemu-aarch64 is registered."""
    return not _emulator_problem(root)


def _emulator_problem(root: Path | None = None) -> str:
    root = Path(root) if root else arm_root()
    if not (root / ".tvmsqz-stamp").is_file() or not (root / "usr/bin/python3").exists():
        return f"no emulated aarch64 root at {root}"
    if not (root / "opt/tvm-site/tvm").is_dir():
        return f"TVM is not installed in the aarch64 root {root}"
    binfmt = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    try:
        if not binfmt.read_text().startswith("enabled"):
            return "qemu-aarch64 is disabled in binfmt_misc"
    except OSError:
        return "qemu-aarch64 is not registered in binfmt_misc"
    if os.geteuid() != 0:
        return "the emulated device needs root (chroot)"
    return ""


def require_emulator(root: Path | None = None) -> Path:
    """The aarch64 root, or TvmsqzError saying how to set it up."""
    problem = _emulator_problem(root)
    if problem:
        raise TvmsqzError(f"{problem}: {_SETUP_HINT}")
    return Path(root) if root else arm_root()


def _install_server_script(root: Path) -> None:
    target = root / _SERVER_IN_ROOT.lstrip("/")
    if target.is_file() and target.read_text() == _SERVER_SCRIPT:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    tmp.write_text(_SERVER_SCRIPT)
    os.replace(tmp, target)


def start_emulated_server(tracker: str, key: str = DEFAULT_EMU_KEY, port: int | None = None, *,
                          root: Path | None = None, threads: int = 1, timeout: float = 240.0,
                          wait: bool = True, log_dir: Path | None = None) -> Proc:
    """Start a TVM RPC server chrooted into the aarch64 root under qemu-user.

    It listens on 127.0.0.1:`port` (the next free port if taken, a free one if None), registers
    with `tracker` under `key` and runs its kernels on `threads` threads. With `wait` it returns
    once the tracker lists it (an emulated `import tvm` takes 6-25 s) and raises TvmsqzError,
    with the end of its log, if it exits or does not register within `timeout` seconds.
    """
    root = require_emulator(root)
    _install_server_script(root)
    host = "127.0.0.1"
    port = _pick_port(host, port or None)
    thost, tport = parse_host_port(tracker)
    log = (log_dir or state_dir() / "logs") / f"server-{key}-{port}.log"
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/root",
        "LANG": "C.UTF-8",
        "PYTHONPATH": "/opt/tvm-site",
        "PYTHONUNBUFFERED": "1",
        "TVM_NUM_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
    }
    cmd = [shutil.which("chroot") or "/usr/sbin/chroot", str(root), "/usr/bin/python3",
           _SERVER_IN_ROOT, "--emulated", "--host", host, "--port", str(port),
           "--port-end", str(port + 1), "--tracker", f"{thost}:{tport}", "--key", key,
           "--custom-addr", host]
    popen = _spawn(cmd, log, env=env)
    proc = Proc("server", popen.pid, popen.pid, host, port, str(log), key=key,
                tracker=f"{thost}:{tport}", emulated=True, popen=popen)
    if wait:
        wait_registered([proc], timeout=timeout)
    return proc


def wait_registered(procs: Sequence[Proc], timeout: float = 240.0) -> None:
    """Wait until the tracker lists every server in `procs` (by key and port).

    On a server that exits or a timeout, stops all of `procs` and raises TvmsqzError.
    """
    deadline = time.monotonic() + timeout
    pending = list(procs)
    while pending:
        for proc in list(pending):
            if not proc.alive():
                _stop_all(procs)
                raise TvmsqzError(f"emulated device server on {proc.address} (key {proc.key!r}) "
                                  f"exited before registering: {_log_tail(proc.log)}")
        with contextlib.suppress(TvmsqzError):
            ports_by_key = {(d["key"], d["port"]) for d in list_devices(pending[0].tracker, None, 3.0)}
            pending = [p for p in pending if (p.key, p.port) not in ports_by_key]
        if not pending:
            return
        if time.monotonic() > deadline:
            _stop_all(procs)
            p = pending[0]
            raise TvmsqzError(f"emulated device server on {p.address} did not register with the "
                              f"tracker at {p.tracker} under key {p.key!r} within {timeout:.0f} s: "
                              f"{_log_tail(p.log)}")
        time.sleep(0.5)


def _stop_all(procs: Sequence[Proc]) -> None:
    for proc in procs:
        with contextlib.suppress(Exception):
            stop(proc)


def serve_command(tracker: str | None, key: str, host: str = "0.0.0.0",
                  port: int = DEFAULT_SERVER_PORT, port_end: int | None = None,
                  custom_addr: str | None = None, python: str | None = None) -> list[str]:
    """The command `serve` runs: this module's RPC server script under `python`."""
    cmd = [python or sys.executable, "-c", _SERVER_SCRIPT, "--host", host, "--port", str(port)]
    if port_end:
        cmd += ["--port-end", str(port_end)]
    if tracker:
        h, p = parse_host_port(tracker)
        cmd += ["--tracker", f"{h}:{p}"]
    if key:
        cmd += ["--key", key]
    if custom_addr:
        cmd += ["--custom-addr", custom_addr]
    return cmd


def serve(tracker: str | None, key: str, host: str = "0.0.0.0", port: int = DEFAULT_SERVER_PORT,
          port_end: int | None = None, custom_addr: str | None = None, check: bool = True) -> None:
    """`tvmsqz device serve`: run the RPC server on this board, in the foreground (never returns).

    Equivalent to `python3 -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY` (what a board
    without tvmsqz runs), plus the `tvmsqz.device_info` function. Replaces this process.
    """
    if tracker and not key:
        raise TvmsqzError("--rpc-key is required with --rpc-tracker (the key the host tunes with, e.g. rasp4)")
    if tracker and check:
        check_tracker(tracker, timeout=5.0)
    cmd = serve_command(tracker, key, host, port, port_end, custom_addr)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)


# ------------------------------------------------------------------------------------ emulate


def _state_file() -> Path:
    return state_dir() / "state.json"


def _read_state() -> dict | None:
    try:
        return json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return None


def _write_state(state: dict) -> None:
    path = _state_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".state.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    os.replace(tmp, path)


def _state_procs(state: dict) -> list[Proc]:
    return [Proc.from_json(d) for d in state.get("servers", [])] + (
        [Proc.from_json(state["tracker"])] if state.get("tracker") else [])


def emulate_start(n: int = 2, key: str = DEFAULT_EMU_KEY, tracker_port: int = DEFAULT_TRACKER_PORT,
                  server_port: int = DEFAULT_SERVER_PORT, *, count: int | None = None,
                  threads: int = 1, timeout: float = 240.0) -> dict:
    """`tvmsqz device emulate start`: a local tracker and `n` (or `count`) emulated servers.

    The tracker takes `tracker_port` or the next free port. Returns `emulate_status()`:
    {"running", "tracker": "127.0.0.1:PORT", "tracker_port", "key", "devices": [...],
    "emulated": True, "note"}. A running emulator is stopped first.
    """
    n = count if count is not None else n
    if n < 1:
        raise TvmsqzError("emulate start needs at least one device (-n 1)")
    root = require_emulator()
    old = _read_state()
    if old:
        emulate_stop()
    log_dir = state_dir() / "logs"
    if log_dir.is_dir():
        for f in log_dir.glob("*.log"):
            with contextlib.suppress(OSError):
                f.unlink()
    procs: list[Proc] = []
    try:
        tracker = start_tracker("127.0.0.1", tracker_port, log_dir=log_dir)
        procs.append(tracker)
        state = {"tracker": tracker.to_json(), "servers": [], "key": key, "root": str(root),
                 "emulated": True, "note": EMULATED_NOTE}
        _write_state(state)  # so that `stop` works even while servers are coming up
        taken: list[int] = [tracker.port]
        servers = []
        for _ in range(n):
            port = _pick_port("127.0.0.1", server_port, taken)
            taken.append(port)
            servers.append(start_emulated_server(tracker.address, key, port, root=root,
                                                 threads=threads, wait=False, log_dir=log_dir))
            procs.append(servers[-1])
            state["servers"] = [s.to_json() for s in servers]
            _write_state(state)
        wait_registered(servers, timeout=timeout)
    except BaseException:
        _stop_all(procs)
        with contextlib.suppress(OSError):
            _state_file().unlink()
        raise
    return emulate_status()


def emulate_stop() -> list[str]:
    """`tvmsqz device emulate stop`: stop everything `emulate start` started; what was stopped."""
    state = _read_state()
    stopped = []
    if state:
        for proc in _state_procs(state):
            was_alive = proc.alive()
            stop(proc)
            if was_alive:
                stopped.append(f"{proc.role} {proc.address} (pgid {proc.pgid})")
    with contextlib.suppress(OSError):
        _state_file().unlink()
    return stopped


def emulate_status() -> dict:
    """`tvmsqz device emulate status`: {"running": bool, "tracker", "key", "devices": [...]}."""
    state = _read_state()
    if not state:
        return {"running": False, "emulated": True, "tracker": None, "tracker_port": None,
                "key": None, "devices": [],
                "ready": emulator_ready(), "root": str(arm_root())}
    tracker = Proc.from_json(state["tracker"])
    servers = [Proc.from_json(d) for d in state.get("servers", [])]
    try:
        registered = {(d["key"], d["port"]) for d in list_devices(tracker.address, None, 3.0)}
        tracker_ok = True
    except TvmsqzError:
        registered, tracker_ok = set(), False
    devices = [{"address": s.address, "key": s.key, "pgid": s.pgid, "alive": s.alive(),
                "registered": (s.key, s.port) in registered, "log": s.log} for s in servers]
    return {
        "running": tracker_ok and any(d["registered"] for d in devices),
        "emulated": True,
        "note": EMULATED_NOTE,
        "tracker": tracker.address,
        "tracker_port": tracker.port,
        "tracker_alive": tracker_ok,
        "key": state.get("key"),
        "devices": devices,
        "root": state.get("root"),
    }


def emulated_tracker() -> tuple[str, str] | None:
    """(tracker, key) of the emulator `emulate start` left running, or None."""
    st = emulate_status()
    return (st["tracker"], st["key"]) if st["running"] else None


@contextlib.contextmanager
def emulated_devices(n: int = 2, key: str = DEFAULT_EMU_KEY, *, threads: int = 1,
                     timeout: float = 240.0, log_dir: Path | None = None
                     ) -> Iterator[tuple[str, str]]:
    """A private tracker on a free port and `n` emulated servers; yields ("HOST:PORT", key).

    Everything is stopped on exit, also on errors and KeyboardInterrupt. Does not touch the
    state of `emulate start`, so it can run beside it. Use `emulated_devices_procs` when the
    caller needs the processes (e.g. a test that kills one server).
    """
    with _EmulatedDevices(n, key, threads=threads, timeout=timeout, log_dir=log_dir) as devs:
        yield devs.tracker.address, key


class _EmulatedDevices:
    def __init__(self, n: int, key: str, *, threads: int, timeout: float, log_dir: Path | None):
        self.n, self.key, self.threads, self.timeout = n, key, threads, timeout
        self._own_logs = log_dir is None  # a private log folder, removed on close
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="tvmsqz-emu-"))
        self.tracker: Proc | None = None
        self.servers: list[Proc] = []

    def __enter__(self) -> _EmulatedDevices:
        root = require_emulator()
        try:
            self.tracker = start_tracker("127.0.0.1", None, log_dir=self.log_dir)
            for _ in range(self.n):
                self.servers.append(start_emulated_server(
                    self.tracker.address, self.key, None, root=root, threads=self.threads,
                    wait=False, log_dir=self.log_dir))
            wait_registered(self.servers, timeout=self.timeout)
        except BaseException:
            self.close()
            raise
        return self

    def add_server(self) -> Proc:
        proc = start_emulated_server(self.tracker.address, self.key, None, threads=self.threads,
                                     timeout=self.timeout, log_dir=self.log_dir)
        self.servers.append(proc)
        return proc

    def close(self) -> None:
        _stop_all([*self.servers, *([self.tracker] if self.tracker else [])])
        if self._own_logs:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def __exit__(self, *exc) -> None:
        self.close()


def emulated_devices_procs(n: int = 2, key: str = DEFAULT_EMU_KEY, **kw) -> _EmulatedDevices:
    """Like `emulated_devices` but yields the object: `.tracker`, `.servers`, `.add_server()`."""
    return _EmulatedDevices(n, key, threads=kw.get("threads", 1), timeout=kw.get("timeout", 240.0),
                            log_dir=kw.get("log_dir"))


# ------------------------------------------------------------------------------------ sessions


def rpc_session(tracker: str, key: str, timeout: float = 120.0, session_timeout: float = 0.0):
    """A remote session on a free device under `key` (`tvm.rpc.RPCSession`).

    Fails fast (TvmsqzError) when the tracker is down or no device is registered under `key`;
    waits up to `timeout` s for a device to be free. `session_timeout` (s, 0 = none) lets the
    server end the session after that long.
    """
    require_devices(tracker, key)
    from tvm import rpc  # noqa: PLC0415
    from tvm.rpc import base  # noqa: PLC0415

    try:
        reply = _tracker_call(tracker, [base.TrackerCode.REQUEST, key, "", 1], timeout)
    except (socket.timeout, TimeoutError):
        raise TvmsqzError(f"no device under key {key!r} at {_fmt(tracker)} became free within "
                          f"{timeout:.0f} s (all busy or hung)") from None
    except (OSError, ValueError, struct.error) as err:
        raise TvmsqzError(f"cannot reach RPC tracker at {_fmt(tracker)}: {_why(err)}") from None
    if not isinstance(reply, list) or reply[0] != base.TrackerCode.SUCCESS:
        raise TvmsqzError(f"RPC tracker at {_fmt(tracker)} refused the request for {key!r}: {reply!r}")
    url, port, matchkey = reply[1]
    try:
        return rpc.connect(url, port, matchkey, session_timeout)
    except Exception as err:  # noqa: BLE001 - TVM raises RuntimeError/TVMError subclasses
        raise TvmsqzError(f"cannot open a session with device {url}:{port} ({key!r}): "
                          f"{str(err).strip().splitlines()[-1] if str(err).strip() else err}") from None


def device_info(remote, tracker: str | None = None, key: str | None = None) -> dict:
    """What the device says about itself; `emulated` is True only for this module's emulator."""
    info: dict = {}
    with contextlib.suppress(Exception):
        info = json.loads(remote.get_function(DEVICE_INFO_FUNC)())
    emulated = bool(info.get("emulated"))
    if not emulated and tracker and key:
        # A server started by `emulate start` that predates the info function.
        st = _read_state()
        if st and st.get("key") == key and _same_address(Proc.from_json(st["tracker"]).address, tracker):
            emulated = True
    info["emulated"] = emulated
    if emulated:
        info["note"] = EMULATED_NOTE
    return info


def _same_address(a: str, b: str) -> bool:
    ha, pa = parse_host_port(a)
    hb, pb = parse_host_port(b)
    local = {"127.0.0.1", "localhost", "0.0.0.0", "::1"}
    return pa == pb and (ha == hb or (ha in local and hb in local))


@dataclasses.dataclass
class RemoteResult:
    """Outputs and timings of an artifact run on a device."""

    outputs: list  # np.ndarray per output
    times_ms: list[float]
    emulated: bool
    device: dict
    key: str
    tracker: str

    @property
    def output(self):
        return self.outputs[0]

    def timing(self) -> dict:
        """Timings as a dict with stable keys; `emulated: true` marks qemu-user figures."""
        import statistics  # noqa: PLC0415

        t = self.times_ms
        out = {
            "emulated": self.emulated,
            "device": self.device,
            "rpc_key": self.key,
            "rpc_tracker": self.tracker,
            "runs": len(t),
            "mean_ms": statistics.fmean(t) if t else None,
            "median_ms": statistics.median(t) if t else None,
            "min_ms": min(t) if t else None,
            "max_ms": max(t) if t else None,
            "times_ms": t,
        }
        if self.emulated:
            out["note"] = EMULATED_NOTE
        return out


def _remote_runs(so_path: str | Path, tracker: str, key: str, input_sets: list[list], *,
                 func: str, number: int, repeat: int, min_repeat_ms: int, timeout: float,
                 session_timeout: float, max_emulated_repeat: int | None = None):
    """One session: upload, run `func` on every input set, optionally time the first set.

    Returns (outputs per set, times in ms, device info).
    """
    import numpy as np  # noqa: PLC0415

    so_path = Path(so_path)
    if not so_path.is_file():
        raise TvmsqzError(f"no artifact at {so_path}")
    remote = rpc_session(tracker, key, timeout=timeout, session_timeout=session_timeout)
    import tvm  # noqa: PLC0415
    from tvm import relax  # noqa: PLC0415

    info = device_info(remote, tracker, key)
    if info["emulated"] and max_emulated_repeat is not None:
        repeat = min(repeat, max_emulated_repeat)
    name = f"tvmsqz-{os.getpid()}-{so_path.name}"
    try:
        remote.upload(str(so_path), name)
        dev = remote.cpu()
        vm = relax.VirtualMachine(remote.load_module(name), dev)
        outs, first_args = [], None
        for arrays in input_sets:
            args = [tvm.runtime.tensor(np.ascontiguousarray(a), dev) for a in arrays]
            first_args = first_args or args
            outs.append(_to_numpy_list(vm[func](*args)))
        times: list[float] = []
        if number > 0 and repeat > 0 and first_args:
            ftimer = vm.time_evaluator(func, dev, number=number, repeat=repeat,
                                       min_repeat_ms=min_repeat_ms)
            times = [float(t) * 1e3 for t in ftimer(*first_args).results]
        with contextlib.suppress(Exception):
            remote.remove(name)
    except TvmsqzError:
        raise
    except Exception as err:  # noqa: BLE001
        msg = [ln for ln in str(err).strip().splitlines() if ln.strip()]
        raise TvmsqzError(f"running {so_path.name} on device {key!r} at {_fmt(tracker)} failed: "
                          f"{msg[-1] if msg else type(err).__name__}") from None
    return outs, times, info


def remote_inference(so_path: str | Path, tracker: str, key: str, inputs, *, func: str = "main",
                     number: int = 0, repeat: int = 1, min_repeat_ms: int = 0,
                     timeout: float = 120.0, session_timeout: float = 600.0) -> RemoteResult:
    """Upload `so_path` to a device under `key`, run `func` on `inputs` (an array or a sequence
    of arrays), fetch its outputs and, when `number` > 0, time it with `repeat` x `number` runs.
    """
    import numpy as np  # noqa: PLC0415

    arrays = [inputs] if isinstance(inputs, np.ndarray) else list(inputs)
    outs, times, info = _remote_runs(so_path, tracker, key, [arrays], func=func, number=number,
                                     repeat=repeat, min_repeat_ms=min_repeat_ms, timeout=timeout,
                                     session_timeout=session_timeout)
    return RemoteResult(outs[0], times, info["emulated"], info, key, _fmt(tracker))


def remote_bench(so_path: str | Path, spec, tracker: str, key: str | None, inputs, *,
                 repeat: int = 50, func: str = "main", max_emulated_repeat: int = 5,
                 timeout: float = 120.0, session_timeout: float = 1800.0) -> dict:
    """`tvmsqz bench --rpc-tracker`: outputs for every input and latency, on one device.

    `spec` is the target (a `TargetSpec` or its dict); `key` defaults to its
    `rpc.default_key`. `inputs` is a list of input arrays (one batch each). Returns
    {"outputs": [first output per input], "latency": {"min", "median", "p90", "mean", "runs",
    "emulated", "device", ("note")}, "emulated": bool, "device": {...}}. Latency is `repeat`
    single timed runs (after one warm-up) of the first input; an emulated device runs at most
    `max_emulated_repeat` of them, since its timings mean nothing for ARM anyway.
    """
    import numpy as np  # noqa: PLC0415

    data = spec if isinstance(spec, dict) else (getattr(spec, "data", None) or {})
    name = data.get("name") or getattr(spec, "name", "?")
    key = key or (data.get("rpc") or {}).get("default_key")
    if not key:
        raise TvmsqzError(f"pass --rpc-key KEY: target {name} has no default RPC key")
    triple = str((data.get("tvm") or {}).get("mtriple", ""))
    want = "aarch64" if triple.startswith("aarch64") else "arm" if triple.startswith("arm") else None
    if want and elf_machine(so_path) != want:
        raise TvmsqzError(f"{Path(so_path).name} is a {elf_machine(so_path)} library, not {want} "
                          f"(compile it with --target {name})")
    sets = [[x] if isinstance(x, np.ndarray) else list(x) for x in inputs]
    outs, times, info = _remote_runs(so_path, tracker, key, sets, func=func, number=1,
                                     repeat=repeat, min_repeat_ms=0, timeout=timeout,
                                     session_timeout=session_timeout,
                                     max_emulated_repeat=max_emulated_repeat)
    ms_ = np.asarray(times, dtype=float)
    latency: dict[str, Any] = {"emulated": info["emulated"], "device": info}
    if ms_.size:
        latency.update(min=float(ms_.min()), median=float(np.median(ms_)),
                       p90=float(np.percentile(ms_, 90)), mean=float(ms_.mean()), runs=int(ms_.size))
    if info["emulated"]:
        latency["note"] = EMULATED_NOTE
    return {"outputs": [o[0] for o in outs], "latency": latency, "emulated": info["emulated"],
            "device": info, "rpc_key": key, "rpc_tracker": _fmt(tracker)}


def _to_numpy_list(value) -> list:
    if hasattr(value, "numpy"):
        return [value.numpy()]
    out = []
    for item in value:
        out.extend(_to_numpy_list(item))
    return out


def run_remote(so_path: str | Path, tracker: str, key: str, x, *, func: str = "main",
               timeout: float = 120.0):
    """Run artifact `so_path` on a device under `key` with input(s) `x`; its first output."""
    return remote_inference(so_path, tracker, key, x, func=func, timeout=timeout).output


def time_remote(so_path: str | Path, tracker: str, key: str, x, *, number: int = 5,
                repeat: int = 3, min_repeat_ms: int = 0, func: str = "main",
                timeout: float = 120.0) -> dict:
    """Time artifact `so_path` on a device: `RemoteResult.timing()` (with `emulated`)."""
    return remote_inference(so_path, tracker, key, x, func=func, number=number, repeat=repeat,
                            min_repeat_ms=min_repeat_ms, timeout=timeout).timing()


# ------------------------------------------------------------------------------------ building


@contextlib.contextmanager
def _quiet_fd2() -> Iterator[None]:
    """Send fd 2 to /dev/null (TVM's C++ "Scope Saving/Loaded" lines) for the block."""
    try:
        from tvmsqz.quiet import quiet_stderr  # noqa: PLC0415
    except ImportError:
        quiet_stderr = None
    if quiet_stderr is not None:
        with quiet_stderr():
            yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def cross_compiler(cc: str | None):
    """`fcompile` for `export_library`: `tvm.support.cc.cross_compiler(cc)`; None for native."""
    if not cc:
        return None
    if shutil.which(cc) is None:
        raise TvmsqzError(f"cross compiler {cc} not found: {_SETUP_HINT}")
    from tvm.support import cc as _cc  # noqa: PLC0415

    return _cc.cross_compiler(cc)


def export_cross(ex, path: str | Path, cc: str | None) -> Path:
    """Export `ex` (from `tvm.compile`) as a shared library linked by `cc`, atomically.

    The library is written beside `path` under a temporary name and renamed into place, so a
    failed or interrupted export leaves no half-written file. TvmsqzError when `cc` is missing or
    the link fails.
    """
    path = Path(path)
    fcompile = cross_compiler(cc)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        with _quiet_fd2():
            ex.export_library(tmp, fcompile=fcompile) if fcompile else ex.export_library(tmp)
        os.replace(tmp, path)
    except Exception as err:  # noqa: BLE001
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(err, TvmsqzError):
            raise
        lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
        detail = next((ln for ln in lines if "error" in ln.lower()), lines[-1] if lines else "")
        raise TvmsqzError(f"linking {path.name} with {cc or 'the host compiler'} failed: {detail}") from None
    return path


def elf_machine(path: str | Path) -> str:
    """The machine of an ELF file from its header: "aarch64", "arm", "x86_64", ... ."""
    with open(path, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        raise TvmsqzError(f"{path} is not an ELF file")
    order = "<" if head[5] == 1 else ">"
    (machine,) = struct.unpack(order + "H", head[18:20])
    return _ELF_MACHINES.get(machine, f"0x{machine:x}")


def elf_info(path: str | Path) -> dict:
    """{"machine", "class" (32/64), "endian", "float_abi" (ARM: "hard"/"soft"/None)}."""
    with open(path, "rb") as f:
        head = f.read(52)
    machine = elf_machine(path)
    bits = 64 if head[4] == 2 else 32
    out = {"machine": machine, "class": bits, "endian": "little" if head[5] == 1 else "big",
           "float_abi": None}
    if machine == "arm" and bits == 32:
        order = "<" if head[5] == 1 else ">"
        (flags,) = struct.unpack(order + "I", head[36:40])
        out["float_abi"] = "hard" if flags & 0x400 else ("soft" if flags & 0x200 else None)
    return out


# ------------------------------------------------------------------------------------ MetaSchedule


def preload_tensor_intrin() -> float:
    """Import `tvm.s_tir.tensor_intrin` (ARM schedule rules need it) cheaply; seconds taken.

    `tvmsqz.builder.import_tensor_intrin`: ~25 s stock, a few seconds with its fast
    `inspect.getmodule` (restored afterwards).
    """
    from tvmsqz.builder import import_tensor_intrin  # noqa: PLC0415

    return import_tensor_intrin()


def _export_cross_worker(rt_mod, cc: str, out_dir: str | None = None) -> str:
    """MetaSchedule `f_export`: cross-link the candidate into a .so on the host, in a folder of
    its own (MetaSchedule's `remove_build_dir` removes the artifact's whole folder)."""
    from tvm.support import cc as _cc  # noqa: PLC0415

    path = os.path.join(tempfile.mkdtemp(prefix="c-", dir=out_dir), "tvm_tmp_mod.so")
    rt_mod.export_library(path, fcompile=_cc.cross_compiler(cc))
    return path


def _ms_create_session(rpc_config, request_timeout: float = 120.0):
    """RPCRunner `f_create_session`: fail fast when no device is left, never wait forever."""
    host_port = f"{rpc_config.tracker_host}:{rpc_config.tracker_port}"
    try:
        return rpc_session(host_port, rpc_config.tracker_key, timeout=request_timeout,
                           session_timeout=rpc_config.session_timeout_sec)
    except TvmsqzError as err:
        raise RuntimeError(str(err)) from None


def make_cross_builder(cc: str | None, *, max_workers: int | None = None,
                       timeout_sec: float = 300.0, max_uses: int | None = 200):
    """A MetaSchedule builder that builds candidates on this host and links them with `cc`.

    It is `tvmsqz.builder.PersistentBuilder` (one worker pool for the whole run, tensor
    intrinsics imported once per worker) whose export cross-links each candidate into its own
    folder under the builder's `out_dir`, so `remove_artifact`/`shutdown` clean up as usual. ARM
    builds are slow (66-95 s per batch of 4 measured here), hence the 300 s default timeout; a
    build over it becomes a failed candidate and its worker is replaced.
    """
    from tvmsqz.builder import PersistentBuilder  # noqa: PLC0415

    if cc:
        cross_compiler(cc)  # TvmsqzError now rather than failed candidates later
    n = max_workers or max(1, min(os.cpu_count() or 1, 4))
    builder = PersistentBuilder(max_workers=n, timeout_sec=timeout_sec, max_uses=max_uses)
    if cc:
        builder.f_export = functools.partial(_export_cross_worker, cc=cc, out_dir=builder.out_dir)
    return builder


def make_rpc_runner(tracker: str, key: str, n_parallel: int | None = None, *,
                    session_timeout: float = 60.0, request_timeout: float = 120.0,
                    number: int = 3, repeat: int = 1, min_repeat_ms: int = 50):
    """An `RPCRunner` that measures on every device under `key` in parallel.

    `n_parallel` defaults to the number of devices registered now. Each measurement runs in a
    worker bounded by session + request timeouts, so a device that dies or hangs gives a failed
    measurement; with no device left, sessions fail at once instead of waiting.
    """
    from tvm.s_tir.meta_schedule.runner import EvaluatorConfig, RPCConfig, RPCRunner  # noqa: PLC0415
    from tvm.support.popen_pool import PopenPoolExecutor  # noqa: PLC0415

    host, port = parse_host_port(tracker)
    n = n_parallel or require_devices(tracker, key)
    runner = RPCRunner(
        rpc_config=RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key,
                             session_timeout_sec=int(session_timeout)),
        evaluator_config=EvaluatorConfig(number=number, repeat=repeat,
                                         min_repeat_ms=min_repeat_ms),
        f_create_session=functools.partial(_ms_create_session, request_timeout=request_timeout),
        max_workers=n,
    )
    # The stock pool has no timeout: a hung device would hang tuning. Bound every measurement.
    runner.pool.shutdown()
    # Workers ignore SIGINT (a terminal's Ctrl-C reaches the whole group; the tuning loop decides).
    from tvmsqz.builder import runner_init  # noqa: PLC0415

    runner.pool = PopenPoolExecutor(max_workers=n, timeout=session_timeout + request_timeout + 30,
                                    initializer=functools.partial(runner_init, None))
    return runner


def make_rpc_runner_builder(tracker: str, key: str, cc: str | None, n_parallel: int | None = None,
                            *, build_timeout: float = 300.0, session_timeout: float = 60.0,
                            request_timeout: float = 120.0, build_workers: int | None = None,
                            number: int = 3, repeat: int = 1, min_repeat_ms: int = 50):
    """(builder, runner) for MetaSchedule tuning on devices behind an RPC tracker.

    Checks the tracker and the devices first (TvmsqzError when down or none under `key`). The
    builder cross-links with `cc` on this host; the runner measures on `n_parallel` devices at
    once (default: all registered under `key`).
    """
    check_tracker(tracker)
    n = n_parallel or require_devices(tracker, key)
    builder = make_cross_builder(cc, max_workers=build_workers, timeout_sec=build_timeout)
    runner = make_rpc_runner(tracker, key, n, session_timeout=session_timeout,
                             request_timeout=request_timeout, number=number, repeat=repeat,
                             min_repeat_ms=min_repeat_ms)
    return builder, runner


def make_device_watch(tracker: str, key: str, *, check_every: int = 1):
    """A MetaSchedule measure callback that stops tuning with TvmsqzError when the tracker is
    down or no device is left under `key` after a batch with failed measurements.

    Put it after the default callbacks so the batch's records are in the database first.
    TVM's FFI hands the error back to the tuning call as a RuntimeError with the same message;
    the callback keeps the original in `.error` so the caller can re-raise it:

        watch = make_device_watch(tracker, key)
        try:
            ms.tune_tir(..., measure_callbacks=ms.MeasureCallback.create("default") + [watch])
        except Exception:
            if watch.error is not None:
                raise watch.error from None
            raise
    """
    from tvm.ir.utils import derived_object  # noqa: PLC0415
    from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback  # noqa: PLC0415

    @derived_object
    class DeviceWatch(PyMeasureCallback):
        def __init__(self) -> None:
            super().__init__()
            self.batches = 0
            self.error: TvmsqzError | None = None

        def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
                  runner_results) -> None:
            self.batches += 1
            failed = any(r.error_msg for r in runner_results)
            if not failed or self.batches % check_every:
                return
            try:
                require_devices(tracker, key)
            except TvmsqzError as err:
                self.error = TvmsqzError(f"tuning stopped: {err}")
                raise self.error from None

    return DeviceWatch()


__all__ = [
    "DEFAULT_EMU_KEY", "EMULATED_NOTE", "Proc", "RemoteResult", "arm_root", "check_tracker",
    "cross_compiler", "device_count", "device_info", "elf_info", "elf_machine", "emulate_start",
    "emulate_status", "emulate_stop", "emulated_devices", "emulated_devices_procs",
    "emulated_tracker", "emulator_ready", "export_cross", "free_port", "list_devices",
    "make_cross_builder", "make_device_watch", "make_rpc_runner", "make_rpc_runner_builder",
    "parse_host_port", "preload_tensor_intrin", "remote_bench", "remote_inference",
    "require_devices", "require_emulator", "rpc_session", "run_remote", "serve", "serve_command",
    "start_emulated_server", "start_tracker", "state_dir", "stop", "time_remote",
    "tracker_summary", "wait_registered",
]
