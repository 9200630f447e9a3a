"""The emulated aarch64 device: TVM RPC servers run by qemu-user in a chroot, for tests.

`scripts/setup_arm.sh` builds an aarch64 Debian root with TVM under the cache folder and
registers qemu-aarch64 with binfmt_misc; `start_emulated_server` copies `rpc_server.py` into
that root and runs it chrooted, so the host reaches it over TVM RPC like a real board. Its
timings are qemu-user timings and are labelled `emulated` everywhere: never ARM performance.

`emulate_start`/`emulate_stop`/`emulate_status` (`tvmsqz device emulate ...`) keep their
processes in a state file, so a `stop` in another process stops everything an earlier `start`
started; `emulated_devices` is the context-manager form for tests, which always cleans up and
leaves that state alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tvmsqz.errors import TvmsqzError
from tvmsqz.fsutil import atomic_write
from tvmsqz.paths import CACHE_DIR

from .procs import Proc, pick_port, spawn, state_dir, stop, stop_all
from .rpc import (
    DEFAULT_SERVER_PORT,
    DEFAULT_TRACKER_PORT,
    SERVER_SCRIPT,
    list_devices,
    parse_host_port,
    serve_command,
    start_tracker,
    wait_registered,
)

DEFAULT_EMU_KEY = "arm-emu"
#: Marks every output that comes from the emulator (qemu-user timings are not ARM timings).
EMULATED_NOTE = "emulated aarch64 device (qemu-user on this host): timings say nothing about ARM performance"
SETUP_HINT = "run scripts/setup_arm.sh (as root) first"
_SERVER_IN_ROOT = "/opt/tvmsqz/rpc_server.py"


def arm_root() -> Path:
    """The aarch64 root built by `scripts/setup_arm.sh` (`TVMSQZ_ARM_ROOT` overrides it)."""
    return Path(os.environ.get("TVMSQZ_ARM_ROOT", CACHE_DIR / "arm64-root"))


def bare_arm_root() -> Path:
    """The aarch64 root without TVM that `scripts/setup_arm.sh` builds (`TVMSQZ_ARM_BARE_ROOT`):
    where bundles prove they need nothing but themselves."""
    return Path(os.environ.get("TVMSQZ_ARM_BARE_ROOT", CACHE_DIR / "arm64-bare-root"))


def root_problem(root: Path, *, stamp: str, with_tvm: bool) -> str:
    """What keeps programs from running in an aarch64 root under qemu-user ("" when nothing does).

    `with_tvm`: the root must have the pip-installed TVM (the emulated RPC device), or must not
    have it (the bare root the bundles run in).
    """
    what = "emulated aarch64 root" if with_tvm else "TVM-less aarch64 root"
    if not (root / stamp).is_file() or not (root / "usr/bin/python3").exists():
        return f"no {what} at {root}"
    has_tvm = (root / "opt/tvm-site/tvm").is_dir()
    if with_tvm and not has_tvm:
        return f"TVM is not installed in the aarch64 root {root}"
    if not with_tvm and (root / "opt/tvm-site").exists():
        return f"{root} has TVM installed (opt/tvm-site): it is not a bare root"
    try:
        if not Path("/proc/sys/fs/binfmt_misc/qemu-aarch64").read_text().startswith("enabled"):
            return "qemu-aarch64 is disabled in binfmt_misc"
    except OSError:
        return "qemu-aarch64 is not registered in binfmt_misc"
    if os.geteuid() != 0:
        return "running in the aarch64 root needs root (chroot)"
    return ""


def emulator_problem(root: Path | None = None) -> str:
    """What keeps the emulated device from running here ("" when nothing does)."""
    return root_problem(Path(root) if root else arm_root(), stamp=".tvmsqz-stamp", with_tvm=True)


def bare_root_problem(root: Path | None = None) -> str:
    """What keeps bundles from running in the TVM-less aarch64 root ("" when nothing does)."""
    return root_problem(Path(root) if root else bare_arm_root(), stamp=".tvmsqz-bare-stamp", with_tvm=False)


def emulator_ready(root: Path | None = None) -> bool:
    """True when `scripts/setup_arm.sh` has built the root and qemu-aarch64 is registered."""
    return not emulator_problem(root)


def require_emulator(root: Path | None = None) -> Path:
    """The aarch64 root, or TvmsqzError saying how to set it up."""
    problem = emulator_problem(root)
    if problem:
        raise TvmsqzError(f"{problem}: {SETUP_HINT}")
    return Path(root) if root else arm_root()


def _install_server(root: Path) -> None:
    """Copy this package's `rpc_server.py` into the root (the root has TVM, not tvmsqz)."""
    target = root / _SERVER_IN_ROOT.lstrip("/")
    code = SERVER_SCRIPT.read_bytes()
    if target.is_file() and target.read_bytes() == code:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(target, code)


def start_emulated_server(
    tracker: str,
    key: str = DEFAULT_EMU_KEY,
    port: int | None = None,
    *,
    root: Path | None = None,
    threads: int = 1,
    timeout: float = 240.0,
    wait: bool = True,
    log_dir: Path | None = None,
) -> Proc:
    """Start a TVM RPC server chrooted into the aarch64 root under qemu-user.

    It listens on 127.0.0.1:`port` (the next free port if taken, a free one if None), registers
    with `tracker` under `key` and runs its kernels on `threads` threads. With `wait` it returns
    once the tracker lists it (an emulated `import tvm` takes 6-25 s) and raises TvmsqzError,
    with the end of its log, if it exits or does not register within `timeout` seconds.
    """
    root = require_emulator(root)
    _install_server(root)
    host = "127.0.0.1"
    port = pick_port(host, port or None)
    tracker = "{}:{}".format(*parse_host_port(tracker))
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
    cmd = [
        shutil.which("chroot") or "/usr/sbin/chroot",
        str(root),
        *serve_command(
            tracker,
            key,
            host,
            port,
            port + 1,
            custom_addr=host,
            python="/usr/bin/python3",
            script=_SERVER_IN_ROOT,
            emulated=True,
        ),
    ]
    popen = spawn(cmd, log, env=env)
    proc = Proc(
        "server", popen.pid, popen.pid, host, port, str(log), key=key, tracker=tracker, emulated=True, popen=popen
    )
    if wait:
        wait_registered([proc], timeout=timeout)
    return proc


# ------------------------------------------------------------------------- emulate start/stop


def _state_file() -> Path:
    return state_dir() / "state.json"


_PROC = {
    "type": "object",
    "required": ["role", "pid", "pgid", "host", "port", "log"],
    "properties": {
        "role": {"enum": ["tracker", "server"]},
        # never 0, 1 or a negative group: `stop` signals the whole process group it names
        "pid": {"type": "integer", "minimum": 2, "maximum": 1 << 22},
        "pgid": {"type": "integer", "minimum": 2, "maximum": 1 << 22},
        "host": {"type": "string", "maxLength": 255},
        "port": {"type": "integer", "minimum": 1, "maximum": 65535},
        "log": {"type": "string", "maxLength": 4096},
        "key": {"type": ["string", "null"], "maxLength": 255},
        "tracker": {"type": ["string", "null"], "maxLength": 512},
        "emulated": {"type": "boolean"},
        "started": {"type": "number"},
    },
}
#: What `emulate start` writes to the state file; anything else is not ours to act on.
STATE_SCHEMA = {
    "type": "object",
    "required": ["tracker", "servers"],
    "properties": {
        "tracker": _PROC,
        "servers": {"type": "array", "items": _PROC, "maxItems": 1024},
        "key": {"type": ["string", "null"]},
        "root": {"type": "string"},
        "emulated": {"type": "boolean"},
        "note": {"type": "string"},
    },
}


def _read_state() -> dict | None:
    """The state `emulate start` wrote, validated (None when there is none). A state file that is
    not what it writes (edited, truncated, another program's) is one `TvmsqzError` naming it:
    its process groups are never signalled, and `emulate stop` removes it."""
    import jsonschema

    path = _state_file()
    try:
        state = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError, RecursionError):
        raise _bad_state(path, "not JSON") from None
    errors = list(jsonschema.Draft202012Validator(STATE_SCHEMA).iter_errors(state))
    if errors:
        err = min(errors, key=lambda e: len(e.absolute_path))
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        raise _bad_state(path, f"field {where!r}: {err.message[:200]}")
    own = os.getpgid(0)
    for proc in [state["tracker"], *state["servers"]]:
        if proc["pgid"] == own:
            raise _bad_state(path, f"pgid {proc['pgid']} is this process's own group")
    return state


def _bad_state(path: Path, why: str) -> TvmsqzError:
    return TvmsqzError(
        f"emulator state {path} is invalid ({why}); no process was signalled; `tvmsqz device emulate stop` removes it"
    )


def _write_state(state: dict) -> None:
    _state_file().parent.mkdir(parents=True, exist_ok=True)
    atomic_write(_state_file(), json.dumps(state, indent=2) + "\n")


def emulate_start(
    n: int = 2,
    key: str = DEFAULT_EMU_KEY,
    tracker_port: int = DEFAULT_TRACKER_PORT,
    server_port: int = DEFAULT_SERVER_PORT,
    *,
    count: int | None = None,
    threads: int = 1,
    timeout: float = 240.0,
) -> dict:
    """`tvmsqz device emulate start`: a local tracker and `n` (or `count`) emulated servers.

    The tracker takes `tracker_port` or the next free port. Returns `emulate_status()`:
    {"running", "tracker": "127.0.0.1:PORT", "tracker_port", "key", "devices": [...],
    "emulated": True, "note"}. A running emulator is stopped first.
    """
    n = count if count is not None else n
    if n < 1:
        raise TvmsqzError("emulate start needs at least one device (-n 1)")
    root = require_emulator()
    if _read_state():
        emulate_stop()
    log_dir = state_dir() / "logs"
    for f in log_dir.glob("*.log"):
        with contextlib.suppress(OSError):
            f.unlink()
    procs: list[Proc] = []
    try:
        tracker = start_tracker("127.0.0.1", tracker_port, log_dir=log_dir)
        procs.append(tracker)
        state = {
            "tracker": tracker.to_json(),
            "servers": [],
            "key": key,
            "root": str(root),
            "emulated": True,
            "note": EMULATED_NOTE,
        }
        _write_state(state)  # so that `stop` works even while servers are coming up
        for _ in range(n):
            port = pick_port("127.0.0.1", server_port, [p.port for p in procs])
            procs.append(
                start_emulated_server(
                    tracker.address, key, port, root=root, threads=threads, wait=False, log_dir=log_dir
                )
            )
            state["servers"] = [s.to_json() for s in procs[1:]]
            _write_state(state)
        wait_registered(procs[1:], timeout=timeout)
    except BaseException:
        stop_all(procs)
        with contextlib.suppress(OSError):
            _state_file().unlink()
        raise
    return emulate_status()


def emulate_stop() -> list[str]:
    """`tvmsqz device emulate stop`: stop everything `emulate start` started; what was stopped."""
    try:
        state = _read_state() or {}
    except TvmsqzError:
        with contextlib.suppress(OSError):  # not ours to act on: forget it, signal nothing
            _state_file().unlink()
        raise
    stopped = []
    procs = [Proc.from_json(d) for d in state.get("servers", [])]
    if state.get("tracker"):
        procs.append(Proc.from_json(state["tracker"]))
    for proc in procs:
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
        return {
            "running": False,
            "emulated": True,
            "tracker": None,
            "tracker_port": None,
            "key": None,
            "devices": [],
            "ready": emulator_ready(),
            "root": str(arm_root()),
        }
    tracker = Proc.from_json(state["tracker"])
    servers = [Proc.from_json(d) for d in state.get("servers", [])]
    try:
        registered = {(d["key"], d["port"]) for d in list_devices(tracker.address, None, 3.0)}
        tracker_ok = True
    except TvmsqzError:
        registered, tracker_ok = set(), False
    devices = [
        {
            "address": s.address,
            "key": s.key,
            "pgid": s.pgid,
            "alive": s.alive(),
            "registered": (s.key, s.port) in registered,
            "log": s.log,
        }
        for s in servers
    ]
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


# ------------------------------------------------------------------------- private devices


class EmulatedDevices:
    """A private tracker on a free port and `n` emulated servers, as a context manager.

    `.tracker` and `.servers` are the processes (a test may stop one); everything is stopped on
    exit, also on errors and KeyboardInterrupt.
    """

    def __init__(
        self,
        n: int = 2,
        key: str = DEFAULT_EMU_KEY,
        *,
        threads: int = 1,
        timeout: float = 240.0,
        log_dir: Path | None = None,
    ):
        self.n, self.key, self.threads, self.timeout = n, key, threads, timeout
        self._own_logs = log_dir is None  # a private log folder, removed on close
        self.log_dir = log_dir or Path(tempfile.mkdtemp(prefix="tvmsqz-emu-"))
        self.tracker: Proc | None = None
        self.servers: list[Proc] = []

    def __enter__(self) -> EmulatedDevices:
        root = require_emulator()
        try:
            self.tracker = start_tracker("127.0.0.1", None, log_dir=self.log_dir)
            for _ in range(self.n):
                self.servers.append(
                    start_emulated_server(
                        self.tracker.address,
                        self.key,
                        None,
                        root=root,
                        threads=self.threads,
                        wait=False,
                        log_dir=self.log_dir,
                    )
                )
            wait_registered(self.servers, timeout=self.timeout)
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        stop_all([*self.servers, *([self.tracker] if self.tracker else [])])
        if self._own_logs:
            shutil.rmtree(self.log_dir, ignore_errors=True)

    def __exit__(self, *exc) -> None:
        self.close()


#: `with emulated_devices_procs(2, key) as devs:` -> `devs.tracker`, `devs.servers`.
emulated_devices_procs = EmulatedDevices


@contextlib.contextmanager
def emulated_devices(
    n: int = 2, key: str = DEFAULT_EMU_KEY, *, threads: int = 1, timeout: float = 240.0, log_dir: Path | None = None
) -> Iterator[tuple[str, str]]:
    """`EmulatedDevices` yielding ("HOST:PORT", key) of its tracker; does not touch the state of
    `emulate start`, so it can run beside it."""
    with EmulatedDevices(n, key, threads=threads, timeout=timeout, log_dir=log_dir) as devs:
        yield devs.tracker.address, key
