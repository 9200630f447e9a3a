"""MetaSchedule databases: find, validate and load them for a target.

A tuning database is MetaSchedule's JSON pair (`database_workload.json`,
`database_tuning_record.json`) in one folder, in MetaSchedule's own format (`tune.records` writes
it); other files there (`tuning_summary.json`, the tuning lock `.tvmsqz.lock`) are not read here.
Records are keyed by workload; the target they were tuned for is checked here (kind, CPU, triple,
architecture) so that a database tuned for another machine class is refused with a clear message
instead of silently producing slow or wrong code.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import TvmsqzError
from .fsutil import atomic_write
from .spec import TargetSpec

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
# Target fields that change generated code; core counts only change thread counts.
_IDENTITY_KEYS = ("kind", "mcpu", "mtriple", "arch", "mattr", "mfloat-abi")


def target_identity(config: dict) -> dict:
    """The part of a target that a schedule depends on."""
    return {k: config[k] for k in _IDENTITY_KEYS if k in config and config[k] not in (None, "", [])}


def has_database(path: Path) -> bool:
    return (path / WORKLOAD_FILE).is_file() and (path / RECORD_FILE).is_file()


def _read_lines(path: Path) -> list:
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise TvmsqzError(f"database file {path} is corrupt (line {number} is not JSON)") from None
    return rows


def check_database(path: Path, spec: TargetSpec) -> int:
    """Validate a database folder against a target; returns the number of tuning records."""
    if not path.is_dir():
        raise TvmsqzError(f"no such database folder: {path}")
    if not has_database(path):
        raise TvmsqzError(f"{path} is not a tuning database (needs {WORKLOAD_FILE} and {RECORD_FILE})")
    workloads = _read_lines(path / WORKLOAD_FILE)
    records = _read_lines(path / RECORD_FILE)
    want = target_identity(spec.tvm_config or {})
    for number, rec in enumerate(records, 1):
        if not (isinstance(rec, list) and len(rec) == 2 and isinstance(rec[0], int)
                and isinstance(rec[1], list) and len(rec[1]) >= 3):
            raise TvmsqzError(f"database file {path / RECORD_FILE} is corrupt (record {number} is malformed)")
        if not 0 <= rec[0] < len(workloads):
            raise TvmsqzError(f"database {path} is corrupt (record {number} names a missing workload)")
        have = target_identity(rec[1][2] if isinstance(rec[1][2], dict) else {})
        if have != want:
            raise TvmsqzError(
                f"database {path} was tuned for target {json.dumps(have)}, not {spec.name} "
                f"{json.dumps(want)}; pick the matching --target or pass --no-tuning")
    return len(records)


def load_database(path: Path, spec: TargetSpec):
    """Open a validated database read-only (as a MetaSchedule `Database`)."""
    check_database(path, spec)
    return open_json_database(path)


def open_json_database(path: Path):
    """MetaSchedule's `JSONDatabase` over a folder that `check_database` accepted, read-only.

    Read-only by contract: nothing may commit to it (its C++ appends unchecked lines). It also
    catches what the JSON check cannot, a record whose trace MetaSchedule cannot parse.
    """
    from tvm.s_tir import meta_schedule as ms

    try:
        return ms.database.JSONDatabase(
            path_workload=str(path / WORKLOAD_FILE), path_tuning_record=str(path / RECORD_FILE),
            allow_missing=False)
    except Exception as exc:  # TVM raises its own error types for unparsable records
        raise TvmsqzError(f"database {path} could not be loaded: {str(exc).strip().splitlines()[-1]}") from None


def default_database(spec: TargetSpec) -> Path | None:
    """The shipped database for a target, when one exists."""
    folder = spec.schedules_dir
    return folder if folder is not None and has_database(folder) else None


def merge_databases(sources: list[Path], dest: Path) -> int:
    """Union of several databases (e.g. fused and unfused tuning runs) into `dest`.

    Workloads are matched by their serialized TensorIR, so a kernel tuned in two runs keeps the
    records of both; returns the number of records written.
    """
    workloads: dict[str, int] = {}
    workload_lines: list[str] = []
    record_lines: list[str] = []
    seen: set[str] = set()
    for src in sources:
        local = _read_lines(src / WORKLOAD_FILE)
        mapping = []
        for workload in local:
            key = json.dumps(workload, sort_keys=True)
            if key not in workloads:
                workloads[key] = len(workload_lines)
                workload_lines.append(json.dumps(workload))
            mapping.append(workloads[key])
        for rec in _read_lines(src / RECORD_FILE):
            line = json.dumps([mapping[rec[0]], rec[1]])
            if line not in seen:
                seen.add(line)
                record_lines.append(line)
    dest.mkdir(parents=True, exist_ok=True)
    # Workloads first: a `dest` that is also the first source keeps its workloads on their lines,
    # so its old records stay valid until the new record file replaces them.
    for name, lines in ((WORKLOAD_FILE, workload_lines), (RECORD_FILE, record_lines)):
        atomic_write(dest / name, "".join(line + "\n" for line in lines))
    return len(record_lines)
