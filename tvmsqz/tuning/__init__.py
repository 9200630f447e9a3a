"""MetaSchedule tuning with the XGBoost cost model: task selection, trial allocation, resume.

`tune_model(mod, spec, trials=, work_dir=, time_budget=, warm=, ...)` tunes every worthwhile
kernel of a model and leaves MetaSchedule's JSON database in `work_dir`. The package, one job a
module:

* `tasks`: which kernels are tuned (those with a reduction), as `compile_module` will see them.
* `allocator`: which task gets the next batch of trials (coverage first, then model time).
* `records`: the tuning folder on disk: open, validate, repair a cut last line, and commit each
  record durably (`fsutil.append_line`), in MetaSchedule's exact JSON-lines format.
* `signals`: Ctrl-C (the first finishes the batch, the second stops now) and `TuningInterrupted`.
* `budget`: `--time-budget` parsing, the trial budget (unbounded under a time budget alone) and
  the trial count batches are sized for.
* `shipped`: the warm start's source, the best records of a shipped database for the tuned
  kernels, read without loading the whole database.
* `progress`: the rich progress table / per-batch lines.
* `session`: `tune_model`: the folder lock, setup (backend builder and runner), warm start from
  earlier records (`--resume`) or from the shipped database (a new folder, unless `--cold`), the
  batch loop, the stop (trials, time budget, exhausted, Ctrl-C) and the summary.

A run holds the folder's lock (`fsutil.folder_lock`) from start to end: a second tune of the same
folder waits, then resumes from the first one's records. Every measured candidate is on disk
before it counts, so an interrupted, killed or disk-full run leaves a valid database; `--resume`
repairs a truncated last line, counts the trials already spent, trains the cost model on the
earlier records and seeds the search with them. A full disk stops the run with one line
(`error: cannot write ...: no space left on device`, exit 2 through the CLI).
"""

from __future__ import annotations

from .allocator import Allocator, TaskState, default_batch, default_population, estimated_model_ms
from .budget import DEFAULT_TRIALS, parse_duration
from .records import SUMMARY_FILE, TuningFolder, count_lines, repair_tail
from .session import rpc_settings, tune, tune_model
from .signals import TuningInterrupted
from .tasks import extract, kernel_flops, worth_tuning

__all__ = [
    "DEFAULT_TRIALS",
    "SUMMARY_FILE",
    "Allocator",
    "TaskState",
    "TuningFolder",
    "TuningInterrupted",
    "count_lines",
    "default_batch",
    "default_population",
    "estimated_model_ms",
    "extract",
    "kernel_flops",
    "parse_duration",
    "repair_tail",
    "rpc_settings",
    "tune",
    "tune_model",
    "worth_tuning",
]
