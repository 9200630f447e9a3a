"""TVM RPC plumbing: the tracker (start, query), device sessions, and the device server.

The tracker is `python -m tvm.exec.rpc_tracker`, queried through `tvm.rpc`'s own client
(`connect_tracker` -> `TrackerSession`). That client retries a refused connection for 60 s and
never times out a reply, so every query here first probes the address (connect and magic
number, bounded) and then bounds the session's socket by a timeout: an unreachable tracker is
one `TvmsqzError("cannot reach RPC tracker at HOST:PORT: ...")` within a few seconds, never a
hang.

Devices run `rpc_server.py` beside this module (`serve`): TVM's RPC server plus a
`tvmsqz.device_info` function. A board without tvmsqz can run `python -m tvm.exec.rpc_server`
instead; it only lacks that function.

TVM's RPC has no authentication: whoever reaches a server (directly, or through a tracker that
hands out its address) can upload a shared object and load it, i.e. run code on the device. So
the server and the tracker listen on 127.0.0.1 unless a host is given, and a server on any other
address prints one warning saying so (`rpc_server.py`); docs/arm.md shows the safe set-ups.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from tvmsqz.errors import TvmsqzError

from .procs import Proc, log_tail, pick_port, spawn, state_dir, stop, stop_all

DEFAULT_TRACKER_PORT = 9190
DEFAULT_SERVER_PORT = 9090
#: Where servers and trackers listen unless told otherwise: this machine only.
DEFAULT_HOST = "127.0.0.1"
#: The device server script (standalone: also copied into the emulated aarch64 root).
SERVER_SCRIPT = Path(__file__).with_name("rpc_server.py")

_TRACKER_ERRORS = (OSError, RuntimeError, ValueError, struct.error)


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


def fmt_address(host_port: str) -> str:
    """`host_port` as HOST:PORT (the default port filled in) for messages; as given if malformed."""
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


def _probe(host: str, port: int, timeout: float) -> None:
    """Connect and exchange the tracker's magic number within `timeout` s, then hang up.

    `connect_tracker` cannot do this: it retries a refused connection for 60 s, and waits
    forever on a port that accepts but never answers.
    """
    from tvm.rpc import base

    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(struct.pack("<i", base.RPC_TRACKER_MAGIC))
        if struct.unpack("<i", base.recvall(sock, 4))[0] != base.RPC_TRACKER_MAGIC:
            raise ConnectionError("it answered, but it is not a TVM RPC tracker")


@contextlib.contextmanager
def _tracker(host_port: str, timeout: float) -> Iterator:
    """A `tvm.rpc.TrackerSession` whose replies time out after `timeout` s; closed on exit.

    Errors talking to the tracker, here or in the block, become one TvmsqzError.
    """
    from tvm import rpc

    host, port = parse_host_port(host_port)
    session = None
    try:
        _probe(host, port, timeout)
        session = rpc.connect_tracker(host, port)
        session._sock.settimeout(timeout)  # noqa: SLF001 - TrackerSession has no timeout of its own
        yield session
    except _TRACKER_ERRORS as err:
        raise TvmsqzError(f"cannot reach RPC tracker at {host}:{port}: {_why(err)}") from None
    finally:
        if session is not None:
            session.close()


def tracker_summary(host_port: str, timeout: float = 5.0) -> dict:
    """The tracker's summary: {"queue_info": {key: {"free", "pending"}}, "server_info": [...]}."""
    with _tracker(host_port, timeout) as session:
        return session.summary()


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
        where = fmt_address(host_port)
        raise TvmsqzError(
            f"no device is registered under key {key!r} at RPC tracker {where} "
            f"(keys registered: {', '.join(keys) if keys else 'none'}); start one with "
            f"`tvmsqz device serve --rpc-tracker {where} --rpc-key {key}` on the board"
        )
    return n


def rpc_session(tracker: str, key: str, timeout: float = 120.0, session_timeout: float = 0.0):
    """A remote session on a free device under `key` (`tvm.rpc.RPCSession`).

    Fails fast (TvmsqzError) when the tracker is down or no device is registered under `key`;
    waits up to `timeout` s for a device to be free. `session_timeout` (s, 0 = none) lets the
    server end the session after that long.
    """
    require_devices(tracker, key)
    with _tracker(tracker, timeout) as session:
        try:
            # One try: a retry would reconnect without our timeout and could wait forever.
            return session.request(key, priority=1, session_timeout=session_timeout, max_retry=1)
        except Exception as err:  # noqa: BLE001 - TrackerSession wraps everything in RuntimeError
            detail = str(err).split("last_error:", 1)[-1].strip()
    if detail == "timed out":
        raise TvmsqzError(
            f"no device under key {key!r} at {fmt_address(tracker)} became free within "
            f"{timeout:.0f} s (all busy or hung)"
        )
    lines = [ln for ln in detail.splitlines() if ln.strip()]
    raise TvmsqzError(
        f"cannot open a session with a device under key {key!r} at {fmt_address(tracker)}: "
        f"{lines[-1] if lines else 'no reason given'}"
    )


def start_tracker(
    host: str = DEFAULT_HOST,
    port: int | None = DEFAULT_TRACKER_PORT,
    *,
    timeout: float = 60.0,
    log_dir: Path | None = None,
) -> Proc:
    """Start `python -m tvm.exec.rpc_tracker` on `host:port` (the next free port if taken)."""
    port = pick_port(host, port)
    log = (log_dir or state_dir() / "logs") / f"tracker-{port}.log"
    popen = spawn(
        [
            sys.executable,
            "-m",
            "tvm.exec.rpc_tracker",
            "--host",
            host,
            "--port",
            str(port),
            "--port-end",
            str(port + 1),
        ],
        log,
    )
    proc = Proc("tracker", popen.pid, popen.pid, host, port, str(log), popen=popen)
    deadline = time.monotonic() + timeout
    while True:
        try:
            check_tracker(proc.address, timeout=2.0)
            return proc
        except TvmsqzError as err:
            if popen.poll() is not None:
                stop(proc)
                raise TvmsqzError(f"RPC tracker on {proc.address} exited: {log_tail(log)}") from None
            if time.monotonic() > deadline:
                stop(proc)
                raise TvmsqzError(
                    f"RPC tracker on {proc.address} did not come up in {timeout:.0f} s: {err}; log: {log_tail(log)}"
                ) from None
        time.sleep(0.2)


def wait_registered(procs: Sequence[Proc], timeout: float = 240.0) -> None:
    """Wait until the tracker lists every server in `procs` (by key and port).

    On a server that exits or a timeout, stops all of `procs` and raises TvmsqzError.
    """
    deadline = time.monotonic() + timeout
    pending = list(procs)
    while pending:
        for proc in pending:
            if not proc.alive():
                stop_all(procs)
                raise TvmsqzError(
                    f"RPC server on {proc.address} (key {proc.key!r}) exited before registering: {log_tail(proc.log)}"
                )
        with contextlib.suppress(TvmsqzError):
            registered = {(d["key"], d["port"]) for d in list_devices(pending[0].tracker, None, 3.0)}
            pending = [p for p in pending if (p.key, p.port) not in registered]
        if not pending:
            return
        if time.monotonic() > deadline:
            stop_all(procs)
            p = pending[0]
            raise TvmsqzError(
                f"RPC server on {p.address} did not register with the tracker at "
                f"{p.tracker} under key {p.key!r} within {timeout:.0f} s: {log_tail(p.log)}"
            )
        time.sleep(0.5)


def serve_command(
    tracker: str | None,
    key: str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_SERVER_PORT,
    port_end: int | None = None,
    custom_addr: str | None = None,
    python: str | None = None,
    script: str | Path = SERVER_SCRIPT,
    emulated: bool = False,
) -> list[str]:
    """The command that runs the device server `script` under `python` (default: this one)."""
    cmd = [python or sys.executable, str(script), "--host", host, "--port", str(port)]
    if port_end:
        cmd += ["--port-end", str(port_end)]
    if tracker:
        cmd += ["--tracker", fmt_address(tracker)]
    if key:
        cmd += ["--key", key]
    if custom_addr:
        cmd += ["--custom-addr", custom_addr]
    if emulated:
        cmd.append("--emulated")
    return cmd


def loopback_tracker_note(tracker: str | None, host: str, custom_addr: str | None) -> str | None:
    """A server on loopback that registers with a tracker on another machine is told its address
    is 127.0.0.1: clients would time out. One warning line naming both ways out; None otherwise."""
    from .rpc_server import is_loopback

    if not tracker or custom_addr or not is_loopback(host):
        return None
    try:
        tracker_host, _ = parse_host_port(tracker)
    except TvmsqzError:
        return None
    if is_loopback(tracker_host):
        return None
    return (
        f"warning: this server listens on {host} only, but the tracker {fmt_address(tracker)} is on another "
        "machine: its clients cannot reach this board. Tunnel the port over SSH and pass --custom-addr 127.0.0.1 "
        "(docs/arm.md), or on a trusted network pass --host with this board's address"
    )


def serve(
    tracker: str | None,
    key: str,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_SERVER_PORT,
    port_end: int | None = None,
    custom_addr: str | None = None,
    check: bool = True,
) -> None:
    """`tvmsqz device serve`: run the RPC server on this board, in the foreground (never returns).

    `python3 -m tvm.exec.rpc_server --tracker HOST:PORT --key KEY` (what a board without tvmsqz
    runs) plus the `tvmsqz.device_info` function. Replaces this process. It listens on `host`
    (default 127.0.0.1, this machine only); on any other address the server prints one warning
    that anyone reaching the port can run code here (TVM RPC has no authentication).
    """
    if tracker and not key:
        raise TvmsqzError("--rpc-key is required with --rpc-tracker (the key the host tunes with, e.g. rasp4)")
    if tracker and check:
        check_tracker(tracker, timeout=5.0)
    note = loopback_tracker_note(tracker, host, custom_addr)
    if note:
        print(note, file=sys.stderr)
    if custom_addr and port_end is None:
        port_end = port + 1  # a tunnel forwards one port: never move to another
    cmd = serve_command(tracker, key, host, port, port_end, custom_addr)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(cmd[0], cmd)
