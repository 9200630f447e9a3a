"""How long a tuning run may go on: a trial count, a wall-clock budget, or both (first one wins).

Pure Python and no TVM import: the CLI parses `--time-budget` here before anything slow, so a
bad value is a one-line error at once.
"""

from __future__ import annotations

import math
import re

from ..errors import TvmsqzError

#: `--trials` when neither it nor `--time-budget` is given.
DEFAULT_TRIALS = 64
#: The trial budget of a run bounded by time alone: never reached, the clock stops the run.
UNBOUNDED_TRIALS = 10**9
#: Wall seconds one trial costs on a small shared CPU (docs/tuning.md: 4.0 s/trial), used to size
#: batches and the warm start of a time-bounded run as a trial budget of that length would be.
SECONDS_PER_TRIAL = 4.0

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([smh]?)", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """Seconds in "90s", "30m", "1.5h" (a bare number is seconds); anything else is a TvmsqzError."""
    match = _DURATION.fullmatch(str(text).strip())
    seconds = float(match.group(1)) * _UNITS[match.group(2).lower()] if match else math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise TvmsqzError(f"--time-budget must be a positive duration like 90s, 30m or 1.5h, not {text!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """The short form of a budget for messages: 90 s, 30 min, 1.5 h."""
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    if seconds >= 60:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def resolve_trials(trials: int | None, time_budget: float | None) -> int:
    """The allocator's trial budget: `trials`, else unbounded under a time budget, else the default."""
    if trials is not None:
        if trials < 1:
            raise TvmsqzError("--trials must be at least 1")
        return trials
    if time_budget is not None and time_budget <= 0:
        raise TvmsqzError("--time-budget must be positive")
    return UNBOUNDED_TRIALS if time_budget is not None else DEFAULT_TRIALS


def sizing_trials(trials: int, time_budget: float | None) -> int:
    """The trial count that batch size and warm start are sized for.

    A run bounded by time alone would otherwise size for a billion trials (batches of 32,
    population 512: a minute a round on a small CPU, past a short budget before the first one
    ends); it is sized for the trials its budget buys at `SECONDS_PER_TRIAL` instead.
    """
    if time_budget is None:
        return trials
    return max(1, min(trials, int(time_budget / SECONDS_PER_TRIAL)))
