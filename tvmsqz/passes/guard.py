"""Which compiler pass is running, and TVM's internal errors as one line naming it.

A TVM `InternalError` raised deep inside a pass (a `Check failed` in ConvertLayout, a type error
in a legalization) says nothing a user can act on, and its Python traceback is 40 lines. A
`PassTracker` is a TVM pass instrument: it keeps the stack of passes running, so when one
raises, the error can name the innermost pass. `guard(phase)` turns any such failure into one
`InternalCompilerError` ("internal compiler error in ConvertLayout: ...") that the CLI prints
as its one `error:` line, exit 2; `TVMSQZ_VERBOSE=1` prints TVM's traceback as well.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from ..errors import TvmsqzError

#: The hint every internal compiler error ends with.
VERBOSE_HINT = "rerun with TVMSQZ_VERBOSE=1 for TVM's traceback"


def verbose() -> bool:
    """Whether the user asked for tracebacks (`TVMSQZ_VERBOSE=1`, or the older `TVMSQZ_DEBUG=1`)."""
    return any(os.environ.get(k, "") not in ("", "0") for k in ("TVMSQZ_VERBOSE", "TVMSQZ_DEBUG"))


class InternalCompilerError(TvmsqzError):
    """TVM failed inside a pass or phase: the message names it and gives TVM's first line."""

    def __init__(self, where: str, exc: BaseException) -> None:
        self.where = where
        self.detail = first_line(exc)
        super().__init__(f"internal compiler error in {where}: {self.detail} ({VERBOSE_HINT})")


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message that is not traceback noise."""
    for line in str(exc).splitlines():
        text = line.strip()
        if text and not text.startswith(("Traceback", "File ", "^")) and not text.endswith(":"):
            return text[:300]
    return type(exc).__name__


def pass_tracker():
    """A new TVM pass instrument that records the stack of running passes (`innermost`)."""
    from tvm import instrument

    @instrument.pass_instrument
    class PassTracker:
        def __init__(self) -> None:
            self.stack: list[str] = []
            self.failed: str | None = None  # the innermost pass of the last failure

        def enter_pass_ctx(self) -> None:
            self.stack.clear()

        def run_before_pass(self, mod, info) -> None:
            self.stack.append(str(info.name))
            self.failed = self.stack[-1]

        def run_after_pass(self, mod, info) -> None:
            if self.stack:
                self.stack.pop()
            self.failed = self.stack[-1] if self.stack else None

        @property
        def innermost(self) -> str | None:
            return self.failed

    return PassTracker()


class Tracker:
    """One compile's pass tracking: `context(...)` is a `PassContext` with the tracker attached,
    `guard(phase)` names the failing pass (else the phase) in an `InternalCompilerError`."""

    def __init__(self) -> None:
        self._instrument = pass_tracker()

    @property
    def innermost(self) -> str | None:
        return self._instrument.innermost

    def context(self, **kwargs):
        import tvm

        return tvm.transform.PassContext(instruments=[self._instrument], **kwargs)

    @contextlib.contextmanager
    def guard(self, phase: str, **context) -> Iterator[None]:
        self._instrument.failed = None
        try:
            with self.context(**context):
                yield
        except (TvmsqzError, KeyboardInterrupt, MemoryError, RecursionError):
            raise
        except Exception as exc:
            raise InternalCompilerError(self.where(phase), exc) from exc

    def where(self, phase: str) -> str:
        """The innermost pass that was running when TVM failed, else the phase's name."""
        inner = self.innermost
        return f"{inner} ({phase})" if inner and inner.lower() not in ("sequential", phase) else phase
