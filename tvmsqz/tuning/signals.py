"""Ctrl-C during tuning: the first one finishes the batch under way, the second stops at once.

The tuning loop drives MetaSchedule from Python, but much of a batch runs inside C++ that calls
back into Python; a KeyboardInterrupt raised in such a callback comes back as `RuntimeError('')`.
So the first SIGINT only sets a flag the loop checks between batches (`StopRequest.count`), and
the loop ends with `Interrupted`, which `tune_model` turns into `TuningInterrupted`.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

from ..errors import TvmsqzError


class StopRequest:
    """First SIGINT: finish the batch, save it, stop. Second SIGINT: KeyboardInterrupt now.

    Installed only on the main thread (Python delivers signals there; a tune started from
    another thread keeps the default handler).
    """

    def __init__(self, on_first: Callable[[], None]) -> None:
        self.count = 0
        self._on_first = on_first
        self._previous = None
        self._installed = False

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGINT)
            signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)
            self._installed = False

    def _handle(self, signum, frame) -> None:
        self.count += 1
        if self.count == 1:
            self._on_first()
            return
        raise KeyboardInterrupt


class Interrupted(Exception):
    """The loop stopped between batches after a first Ctrl-C (internal to the tune package)."""


class TuningInterrupted(TvmsqzError):
    """Tuning stopped by Ctrl-C; the database is valid and `--resume` continues it.

    A `TvmsqzError` (one line, exit 2 through the CLI) rather than `KeyboardInterrupt`: typer
    turns a KeyboardInterrupt into a return value that `cli.main` does not pass to `sys.exit`,
    so the process would exit 0 as if tuning had finished.
    """

    def __init__(self, message: str, summary: dict) -> None:
        super().__init__(message)
        self.summary = summary
