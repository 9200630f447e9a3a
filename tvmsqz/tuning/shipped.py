"""The warm start's source: the best records of a shipped database for the kernels being tuned.

Read straight from the JSON lines instead of through MetaSchedule's `JSONDatabase`: that one
parses every trace of every workload (the shipped x86 database, 1861 records: 48 s on a loaded
2-core box), where a warm start needs a few records of the workloads it tunes. Here a workload
matches by its structural hash (the line's first field, as MetaSchedule keys it), confirmed by
structural equality; only the record lines of matching workloads are parsed, and only the
chosen few become `TuningRecord`s.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..database import RECORD_FILE, WORKLOAD_FILE, target_identity
from ..fsutil import os_error
from .allocator import median_run_s

#: Most shipped records re-measured per task (the best by shipped run time).
MAX_PER_TASK = 3


@dataclass
class ShippedRecord:
    """One shipped record, rebuilt on the tuning run's own workload, and its shipped run time."""

    record: object  # a MetaSchedule `TuningRecord` (workload: the session's in-memory one)
    shipped_s: float  # median run time on the machine that tuned the shipped database


def per_task(trials: int, n_tasks: int) -> int:
    """Records re-measured per task: at most half the budget in all, 1 to `MAX_PER_TASK`.

    The re-measurements are trials of the run and the search needs the rest (64 trials for 18
    kernels: one each; 600: three each). One each is the floor: it is the task's coverage too.
    """
    return max(1, min(MAX_PER_TASK, trials // (2 * max(1, n_tasks))))


def _matching_lines(folder: Path, workloads: list) -> dict[int, list[int]]:
    """Workload line number in `folder` -> the indices of `workloads` that are that kernel."""
    from tvm.s_tir.meta_schedule.database import Workload
    from tvm_ffi import structural_equal

    wanted: dict[str, list[int]] = {}
    for i, workload in enumerate(workloads):
        wanted.setdefault(str(workload.as_json()[0]), []).append(i)
    found: dict[int, list[int]] = {}
    path = folder / WORKLOAD_FILE
    try:
        with open(path) as handle:
            lines = [line for line in handle if line.strip()]  # as `check_database` numbers them
    except OSError as exc:
        raise os_error(path, exc, "read") from None
    for number, line in enumerate(lines):
        row = json.loads(line)
        tasks = wanted.get(str(row[0]))
        if not tasks:
            continue
        known = Workload.from_json(row)  # the hash matched; equality rules out a collision
        same = [i for i in tasks if structural_equal(known.mod, workloads[i].mod)]
        if same:
            found[number] = same
    return found


def best_records(folder: Path, workloads: list, spec, limit: int) -> list[list[ShippedRecord]]:
    """Per task, the `limit` fastest valid records of `folder` for its workload (fastest first).

    `workloads` are the session's in-memory `Workload`s, one per task; the records are rebuilt
    on them, so they commit into the session's database as its own. Records tuned for another
    target identity, failed ones and repeats of a trace are left out. `folder` has passed
    `check_database` (the caller's job).
    """
    from tvm.s_tir.meta_schedule.database import TuningRecord

    matches = _matching_lines(folder, workloads)
    best: list[list[tuple[float, list]]] = [[] for _ in workloads]
    if not matches:
        return [[] for _ in workloads]
    want = target_identity(spec.tvm_config or {})
    path = folder / RECORD_FILE
    try:
        with open(path) as handle:
            for line in handle:
                head = line[1 : line.find(",")].strip()  # "[<workload line>, [...]]": peek, parse on a match
                if not head.isdigit() or int(head) not in matches:
                    continue
                number, rec = json.loads(line)
                try:
                    run_s = median_run_s(rec[1] if isinstance(rec[1], list) else [])
                except (TypeError, ValueError):  # run times that are not numbers: not a record to trust
                    continue
                if run_s is None or target_identity(rec[2] if isinstance(rec[2], dict) else {}) != want:
                    continue
                for i in matches[number]:
                    best[i].append((run_s, rec))
    except OSError as exc:
        raise os_error(path, exc, "read") from None
    chosen: list[list[ShippedRecord]] = []
    for i, rows in enumerate(best):
        picked, traces = [], set()
        for run_s, rec in sorted(rows, key=lambda row: row[0]):
            trace_key = json.dumps(rec[0], sort_keys=True)
            if trace_key in traces:
                continue
            try:
                record = TuningRecord.from_json(rec, workloads[i])
            except Exception:  # noqa: BLE001 - a trace this TVM cannot parse: not a candidate
                continue
            traces.add(trace_key)
            picked.append(ShippedRecord(record, run_s))
            if len(picked) == limit:
                break
        chosen.append(picked)
    return chosen
