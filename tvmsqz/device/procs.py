"""Process groups this package starts (RPC trackers and servers): spawn, liveness, stop, ports.

Every process gets its own session (`setsid`), so its process group holds it and everything it
forks: an RPC server's session worker keeps listening if only the server dies, so `stop`
signals the whole group. Groups are looked up with psutil; a zombie (a member that exited
but was not reaped, common under a container's init) does not count as alive.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import psutil

from tvmsqz.errors import TvmsqzError
from tvmsqz.paths import CACHE_DIR

#: A group started elsewhere (read back from a state file) is only signalled if one of its
#: members runs one of these: its pgid may have been reused by an unrelated process since.
_MARKERS = ("tvm.exec.rpc_tracker", "tvm.exec.rpc_server", "rpc_server.py", "tvm.exec.popen_worker")


def state_dir() -> Path:
    """Where started processes log and `emulate start` keeps its state (`TVMSQZ_EMU_STATE`)."""
    return Path(os.environ.get("TVMSQZ_EMU_STATE", CACHE_DIR / "emulated"))


@dataclasses.dataclass
class Proc:
    """A process group this package started: a tracker or an RPC server."""

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
        return bool(group_members(self.pgid))


def group_members(pgid: int) -> list[psutil.Process]:
    """The live (non-zombie) processes of process group `pgid`."""
    out = []
    for p in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
    return out


def _is_ours(proc: Proc) -> bool:
    if proc.popen is not None:
        return True
    for member in group_members(proc.pgid):
        with contextlib.suppress(psutil.Error):
            if any(m in " ".join(member.cmdline()) for m in _MARKERS):
                return True
    return False


def _wait_gone(proc: Proc, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if proc.popen is not None:
            proc.popen.poll()  # reap our own child, or it stays a member as a zombie
        if not group_members(proc.pgid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def stop(proc: Proc, timeout: float = 5.0) -> None:
    """Stop `proc` and every process of its group: SIGTERM, then SIGKILL after `timeout`."""
    if proc.pgid > 1 and _is_ours(proc):
        for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pgid, sig)
            except ProcessLookupError:
                break
            if _wait_gone(proc, wait):
                break
    if proc.popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout=1.0)


def stop_all(procs: Sequence[Proc]) -> None:
    """`stop` each of `procs`, whatever fails (cleanup paths)."""
    for proc in procs:
        with contextlib.suppress(Exception):
            stop(proc)


def spawn(cmd: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    """Start `cmd` in a new session (its own process group), stdout and stderr appended to `log`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as f:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            close_fds=True,
        )


def log_tail(path: str | Path, lines: int = 8) -> str:
    """The last `lines` lines of a log on one line, for an error message."""
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


def pick_port(host: str, port: int | None, taken: Sequence[int] = ()) -> int:
    """`port` if it is free, else the next free one above it; a free ephemeral one for None/0."""
    if not port:
        return free_port(host)
    for p in range(port, port + 200):
        if p not in taken and _port_free(host, p):
            return p
    raise TvmsqzError(f"no free TCP port on {host} in {port}..{port + 199}")
