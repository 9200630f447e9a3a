"""Writing user-visible files safely: atomic replacement, durable appends, one lock per folder.

Every file a user sees (artifact, manifest, database line, summary, report, output array) goes
through this module, so that a full disk, a kill or a second process never leaves a half-written
file where a good one stood, and never a temp file behind.

* `atomic_path(dest)`: a context manager yielding a temp path beside `dest`; on success the temp
  file is fsynced and renamed over `dest`, on any exception it is removed and `dest` is untouched.
* `atomic_write(dest, data)`: bytes or text through `atomic_path`.
* `append_line(path, line)`: one line appended with a single `write`, fsynced, and checked; a
  short write is cut back to the previous size, so a line is on disk whole or not at all.
* `folder_lock(folder)`: an exclusive lock (a `.lock` file, `filelock`) that a second process
  waits for, or is refused with a clear message.

OS errors become `TvmsqzError` (one line through the CLI) naming the file and the reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import TvmsqzError

LOCK_NAME = ".tvmsqz.lock"
#: Temp files and folders alive right now; `remove_live_temps` deletes them when a signal ends
#: the process (an exception raised by a signal handler can land inside TVM's C++ and be lost).
_LIVE: set[Path] = set()


def keep_temp(path: Path | str) -> None:
    """Register a temp file/folder made elsewhere (a builder's) for removal on SIGTERM."""
    _LIVE.add(Path(path))


def forget_temp(path: Path | str) -> None:
    _LIVE.discard(Path(path))


def remove_live_temps() -> None:
    """Delete every temp file/folder this process still holds (signal path: best effort)."""
    import shutil

    for path in list(_LIVE):
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
        _LIVE.discard(path)


@contextlib.contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    """A private temp folder, removed on every exit path (signals included, see the CLI)."""
    import shutil

    folder = Path(tempfile.mkdtemp(prefix=prefix))
    _LIVE.add(folder)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        _LIVE.discard(folder)


def os_error(path: Path | str, exc: OSError, action: str = "write") -> TvmsqzError:
    """A one-line user error for an OS error on `path` (disk full, permission, read-only...)."""
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    if exc.errno == errno.ENOSPC:
        reason = "no space left on device"
    return TvmsqzError(f"cannot {action} {path}: {reason}")


def export_error(path: Path | str, exc: Exception) -> TvmsqzError:
    """A one-line user error for a failed `export_library` (TVM reports the linker's output)."""
    text = str(exc)
    if "No space left" in text:
        return TvmsqzError(f"cannot write {path}: no space left on device")
    if "File too large" in text:
        return TvmsqzError(f"cannot write {path}: file too large for this file system or limit")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("Command line")]
    detail = next((line for line in lines[1:] if "error" in line.lower()), lines[-1] if lines else type(exc).__name__)
    return TvmsqzError(f"cannot write {path}: linking failed: {detail}")


@contextlib.contextmanager
def private_tempdir(beside: Path | str) -> Iterator[Path]:
    """A work folder beside `beside` (`.tvmsqz-work-XXXX/`), made the process's temp folder
    (`tempfile.tempdir` and `TMPDIR`, which TVM's `export_library` and the compiler it runs use)
    for the block: a full or missing system temp folder cannot fail the step, and the folder and
    everything in it (TVM's `lib0.o`, the linker's temp files) go on every exit path, SIGTERM
    included (`remove_live_temps`)."""
    import shutil

    folder = Path(beside).parent if str(Path(beside).parent) else Path(".")
    try:
        work = Path(tempfile.mkdtemp(prefix=".tvmsqz-work-", dir=folder))
    except OSError as exc:
        raise os_error(Path(beside), exc) from None
    _LIVE.add(work)
    saved_tempdir, saved_env = tempfile.tempdir, os.environ.get("TMPDIR")
    tempfile.tempdir = str(work)
    os.environ["TMPDIR"] = str(work)
    try:
        yield work
    finally:
        tempfile.tempdir = saved_tempdir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        shutil.rmtree(work, ignore_errors=True)
        _LIVE.discard(work)


def check_free_space(path: Path | str, need: int) -> None:
    """Refuse to write `path` when its folder has less than `need` bytes free: for writers that
    cannot fail cleanly there (LLVM's object writer exits the process on a full disk)."""
    import shutil

    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return  # a folder that cannot be asked is for the write itself to report
    if free < need:
        raise TvmsqzError(
            f"cannot write {path}: no space left on device ({free / 2**20:.1f} MiB free in {folder}, "
            f"about {need / 2**20:.0f} MiB needed)"
        )


def export_library(module, path: Path | str, **kwargs) -> None:
    """`module.export_library(path, **kwargs)` atomically, with TVM's log quiet and a failed link
    (disk full, missing cross compiler) as one line; used by every backend's export. TVM's
    object files and the linker's temp files live in a private folder beside `path` (see
    `private_tempdir`), never in the system temp folder."""
    from .quiet import quiet_stderr

    with atomic_path(path) as tmp, private_tempdir(path):
        try:
            with quiet_stderr():
                module.export_library(str(tmp), **kwargs)
        except RuntimeError as exc:
            raise export_error(path, exc) from None
        except OSError as exc:
            raise os_error(path, exc) from None


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def current_umask() -> int:
    """This process's umask, read without changing it where /proc says it (Linux 4.7+)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)  # elsewhere: the classic read-by-setting (and restore at once)
    os.umask(mask)
    return mask


def _new_mode(dest: Path) -> int:
    """The permission bits a replaced file keeps (an existing `dest`'s own), or those a new file
    gets from the umask, as `open()` would create it: never wider than the user asked for."""
    try:
        return dest.stat().st_mode & 0o777  # permissions only: never setuid/setgid/sticky onto new bytes
    except OSError:
        return 0o666 & ~current_umask()


@contextlib.contextmanager
def atomic_path(dest: Path | str, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temp path beside `dest`; rename it over `dest` only if the block succeeds.

    The temp name keeps `dest`'s suffix (TVM's `export_library` picks its linker by suffix).
    The result has the mode of the file it replaces, or for a new file the umask's (0644 under
    the usual 022, 0600 under 077), never the temp file's 0600 nor a fixed 0644.
    """
    dest = Path(dest)
    folder = dest.parent if str(dest.parent) else Path(".")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=suffix or dest.suffix or ".tmp", dir=folder)
        os.close(fd)
    except OSError as exc:
        raise os_error(dest, exc) from None
    tmp = Path(tmp_name)
    _LIVE.add(tmp)
    try:
        yield tmp
        if not tmp.is_file() or tmp.stat().st_size == 0 and dest.suffix in (".so", ".npy", ".npz"):
            raise TvmsqzError(f"cannot write {dest}: nothing was written")
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, _new_mode(dest))
        os.replace(tmp, dest)
        _fsync_dir(folder)
    except OSError as exc:
        raise os_error(dest, exc) from None
    finally:
        _LIVE.discard(tmp)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write(dest: Path | str, data: bytes | str) -> None:
    """Replace `dest` with `data` atomically (the old file survives any failure)."""
    raw = data.encode() if isinstance(data, str) else data
    with atomic_path(dest) as tmp:
        try:
            with open(tmp, "wb") as fh:
                fh.write(raw)
                fh.flush()
        except OSError as exc:
            raise os_error(dest, exc) from None


def append_line(path: Path | str, line: str) -> None:
    """Append one line durably: written whole with fsync, or cut back and reported."""
    path = Path(path)
    raw = (line.rstrip("\n") + "\n").encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as exc:
        raise os_error(path, exc) from None
    try:
        size = os.fstat(fd).st_size
        try:
            written = os.write(fd, raw)
            if written != len(raw):
                raise OSError(errno.ENOSPC, "short write")
            os.fsync(fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, size)
            raise os_error(path, exc) from None
    finally:
        os.close(fd)


@contextlib.contextmanager
def folder_lock(folder: Path | str, *, wait: bool = True, on_wait=None) -> Iterator[None]:
    """Hold an exclusive lock on `folder` (created if missing) for the block.

    With `wait`, a second holder blocks until the first is done (`on_wait()` is called once
    first, to say so); without, it is refused with a one-line error.
    """
    import filelock

    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise os_error(folder, exc, "create") from None
    lock = filelock.FileLock(str(folder / LOCK_NAME))
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        if not wait:
            raise TvmsqzError(f"{folder} is in use by another tvmsqz process (lock {folder / LOCK_NAME})") from None
        if on_wait is not None:
            on_wait()
        lock.acquire()
    except OSError as exc:
        raise os_error(folder / LOCK_NAME, exc, "lock") from None
    try:
        yield
    finally:
        lock.release()
