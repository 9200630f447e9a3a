"""MetaSchedule databases: find, validate and load them for a target.

A tuning database is MetaSchedule's JSON pair (`database_workload.json`,
`database_tuning_record.json`) in one folder, in MetaSchedule's own format (`tune.records` writes
it); other files there (`tuning_summary.json`, the tuning lock `.tvmsqz.lock`) are not read here.
Records are keyed by workload; the target they were tuned for is checked here (kind, CPU, triple,
architecture) so that a database tuned for another machine class is refused with a clear message
instead of silently producing slow or wrong code.

Which database `compile`/`bench` apply without `--database` (`choose_database`), first match:

1. the user's own tuning output (`user_tuning_dir`, where `tune` writes without `-o`), when it
   holds a valid database for the target: the user tuned on this machine, so it is said and used;
2. `schedules/<target>/<cpu>/`, a database tuned *on* this host's CPU model (`host_cpu_name`,
   LLVM's name: "znver4", "sapphirerapids"), when it exists and validates. It is tuned for the
   same portable target (`mcpu` stays e.g. x86-64-v4: records are keyed by target, so every
   database in the target's folder applies on every host of that class); the folder name is
   provenance and the lookup key, not another target;
3. the portable `schedules/<target>/` itself.

A candidate that exists but fails validation is passed over with a note, never applied.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from . import paths
from .errors import TvmsqzError
from .fsutil import atomic_write, os_error
from .spec import TargetSpec

WORKLOAD_FILE = "database_workload.json"
RECORD_FILE = "database_tuning_record.json"
# Target fields that change generated code; core counts only change thread counts.
_IDENTITY_KEYS = ("kind", "mcpu", "mtriple", "arch", "mattr", "mfloat-abi")


def median_run_s(values) -> float | None:
    """Median of a measurement's run times (s); None for none, or MetaSchedule's 1e10 failure marker."""
    values = sorted(float(v) for v in values or [])
    if not values:
        return None
    median = values[len(values) // 2]
    return median if 0 < median < 1e9 else None


def target_identity(config: dict) -> dict:
    """The part of a target that a schedule depends on."""
    return {k: config[k] for k in _IDENTITY_KEYS if k in config and config[k] not in (None, "", [])}


def has_database(path: Path) -> bool:
    return (path / WORKLOAD_FILE).is_file() and (path / RECORD_FILE).is_file()


def _read_lines(path: Path) -> list:
    """The JSON rows of one database file; a file that is not UTF-8 JSON lines (random bytes, a
    line nested past Python's recursion limit) is one `TvmsqzError` naming it and the line."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise os_error(path, exc, "read") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise TvmsqzError(f"database file {path} is corrupt (line {line} is not UTF-8 text)") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except (ValueError, RecursionError):
            raise TvmsqzError(f"database file {path} is corrupt (line {number} is not JSON)") from None
    return rows


def _is_workload(row) -> bool:
    """A MetaSchedule workload line: [structural hash, serialized module]."""
    return isinstance(row, list) and len(row) == 2 and isinstance(row[0], str) and isinstance(row[1], str)


def check_database(path: Path, spec: TargetSpec) -> int:
    """Validate a database folder against a target; returns the number of tuning records.

    Remembered per file state and target (a shipped record file is tens of MB of JSON, and the
    default-database choice and the build both ask)."""
    if not path.is_dir():
        raise TvmsqzError(f"no such database folder: {path}")
    if not has_database(path):
        raise TvmsqzError(f"{path} is not a tuning database (needs {WORKLOAD_FILE} and {RECORD_FILE})")
    folder, stamps = _file_stamps(path)
    key = (stamps, json.dumps(target_identity(spec.tvm_config or {}), sort_keys=True))
    cached = _CHECKED.get(folder)
    if cached is not None and cached[0] == key:
        if isinstance(cached[1], str):
            raise TvmsqzError(cached[1])
        return cached[1]
    try:
        count = _check_records(path, spec)
    except TvmsqzError as exc:
        _CHECKED[folder] = (key, str(exc))
        raise
    _CHECKED[folder] = (key, count)
    return count


def _check_records(path: Path, spec: TargetSpec) -> int:
    """`check_database`'s reading: every workload and record well formed, every record for `spec`."""
    workloads = _read_lines(path / WORKLOAD_FILE)
    records = _read_lines(path / RECORD_FILE)
    for number, row in enumerate(workloads, 1):
        if not _is_workload(row):
            raise TvmsqzError(f"database file {path / WORKLOAD_FILE} is corrupt (workload {number} is malformed)")
    want = target_identity(spec.tvm_config or {})
    for number, rec in enumerate(records, 1):
        if not (
            isinstance(rec, list)
            and len(rec) == 2
            and isinstance(rec[0], int)
            and not isinstance(rec[0], bool)
            and isinstance(rec[1], list)
            and len(rec[1]) >= 3
        ):
            raise TvmsqzError(f"database file {path / RECORD_FILE} is corrupt (record {number} is malformed)")
        if not 0 <= rec[0] < len(workloads):
            raise TvmsqzError(f"database {path} is corrupt (record {number} names a missing workload)")
        have = target_identity(rec[1][2] if isinstance(rec[1][2], dict) else {})
        if have != want:
            raise TvmsqzError(
                f"database {path} was tuned for target {json.dumps(have)}, not {spec.name} "
                f"{json.dumps(want)}; pick the matching --target or pass --no-tuning"
            )
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

    folder, stamps = _file_stamps(path)
    cached = _OPENED.get(folder)
    if cached is not None and cached[0] == stamps:  # read-only: one parse serves every caller
        if isinstance(cached[1], str):
            raise TvmsqzError(cached[1])
        return cached[1]
    from .dot_intrin import register_intrinsics

    register_intrinsics()  # int8 records tensorize with the project's own intrinsics
    try:
        database = ms.database.JSONDatabase(
            path_workload=str(path / WORKLOAD_FILE), path_tuning_record=str(path / RECORD_FILE), allow_missing=False
        )
    except Exception as exc:  # noqa: BLE001 - TVM raises its own error types for unparsable records
        why = f"database {path} could not be loaded: {str(exc).strip().splitlines()[-1]}"
        _OPENED[folder] = (stamps, why)
        raise TvmsqzError(why) from None
    _OPENED[folder] = (stamps, database)
    return database


#: folder -> (file stamps, the JSONDatabase parsed from them or why it could not be): the latest
#: parse of each folder.
_OPENED: dict[str, tuple] = {}


def _file_stamps(path: Path) -> tuple[str, tuple]:
    """(resolved folder, (mtime_ns, size) of its two files): what a cached check or parse of a
    database folder is keyed on, so an edited or appended file is read again."""
    files = [path / WORKLOAD_FILE, path / RECORD_FILE]
    return str(path.resolve()), tuple((f.stat().st_mtime_ns, f.stat().st_size) for f in files)


# ----------------------------------------------------------------------------- the default database

_CPU_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
#: folder -> ((file stamps, target identity), record count or why the folder is refused): the
#: latest check of each folder (`check_database`).
_CHECKED: dict[str, tuple] = {}


@dataclass(frozen=True)
class DatabaseChoice:
    """The database `compile`/`bench` apply without `--database`, where it comes from, and notes.

    `origin` is "user" (the user's own tuning output), "cpu" (shipped, tuned on this CPU model),
    "portable" (shipped, the target's folder) or "none"; `notes` say what was passed over, and
    why, or that the user's own output won over the shipped database.
    """

    path: Path | None
    origin: str
    notes: tuple[str, ...] = ()


def host_cpu_name() -> str | None:
    """LLVM's name of this host's CPU ("znver4", "sapphirerapids"): the per-CPU folder's name.

    `TVMSQZ_HOST_CPU` overrides it (to apply, or tune from, another CPU's database). None when
    LLVM only knows "generic" or TVM cannot say.
    """
    name = os.environ.get("TVMSQZ_HOST_CPU") or _llvm_host_cpu()
    return name if name and name != "generic" and _CPU_NAME.fullmatch(name) else None


@functools.lru_cache(maxsize=1)
def _llvm_host_cpu() -> str:
    try:
        from tvm.target.codegen import llvm_get_system_cpu

        return str(llvm_get_system_cpu())
    except Exception:  # noqa: BLE001 - a TVM without LLVM: no per-CPU database, not an error
        return ""


def user_tuning_dir(spec: TargetSpec) -> Path:
    """Where `tune` writes without `-o`: the user data folder, never the shipped schedules."""
    return paths.USER_SCHEDULES_DIR / (spec.schedules or spec.name)


def database_problem(path: Path, spec: TargetSpec, *, open_it: bool = False) -> str | None:
    """Why `path` cannot be applied for `spec` (None: it can); the checks remember each file state.

    With `open_it`, MetaSchedule also parses it (what the JSON check cannot see: a trace it
    cannot read): for the user's own folder, which every later compile would otherwise trip on."""
    if not has_database(path):
        return "no tuning database there"
    try:
        if not check_database(path, spec):
            return "it holds no record"
        if open_it:
            open_json_database(path)
    except TvmsqzError as exc:
        return str(exc)
    return None


def shipped_database(spec: TargetSpec) -> tuple[Path | None, list[str]]:
    """(the shipped database to use on this host, notes on what was passed over).

    The folder tuned on this host's CPU model (`schedules/<target>/<cpu>/`) when it exists and
    validates, else the portable `schedules/<target>/` when it holds a database, else None.
    """
    folder = spec.schedules_dir
    if folder is None or not folder.is_dir():
        return None, []
    notes = []
    # The CPU name costs a TVM import: ask only when some per-CPU database is shipped at all.
    if any(has_database(sub) for sub in folder.iterdir() if sub.is_dir()):
        cpu = host_cpu_name()
        per_cpu = folder / cpu if cpu else None
        if per_cpu is not None and per_cpu.is_dir():
            why = database_problem(per_cpu, spec)
            if why is None:
                return per_cpu, notes
            notes.append(f"passed over {per_cpu} (tuned on this CPU, {cpu}): {why}")
    return (folder if has_database(folder) else None), notes


def choose_database(spec: TargetSpec) -> DatabaseChoice:
    """The database `compile`/`bench` apply without `--database` (see the module docstring)."""
    notes: list[str] = []
    user = user_tuning_dir(spec)
    if has_database(user):
        why = database_problem(user, spec, open_it=True)
        if why is None:
            shipped, _ = shipped_database(spec)
            instead = f" over the shipped {shipped}" if shipped is not None else ""
            return DatabaseChoice(
                user,
                "user",
                (
                    f"tuning database: your own tuning output {user}, preferred{instead} "
                    f"(--database DIR applies another, --no-tuning none)",
                ),
            )
        notes.append(f"passed over your tuning output {user}: {why}")
    shipped, passed = shipped_database(spec)
    notes += passed
    if shipped is None:
        return DatabaseChoice(None, "none", tuple(notes))
    return DatabaseChoice(shipped, "portable" if shipped == spec.schedules_dir else "cpu", tuple(notes))


def default_database(spec: TargetSpec) -> Path | None:
    """The database `compile`/`bench` apply without `--database` (None: none applies)."""
    return choose_database(spec).path


def default_database_note(spec: TargetSpec) -> str | None:
    """What `compile`/`bench` say about the default choice beyond the folder they name, if anything."""
    notes = choose_database(spec).notes
    return "; ".join(notes) if notes else None


def merge_databases(sources: list[Path], dest: Path, *, keep: int | None = None) -> int:
    """Union of several databases (e.g. fused and unfused tuning runs) into `dest`.

    Workloads are matched by their serialized TensorIR, so a kernel tuned in two runs keeps the
    records of both. With `keep`, only each workload's `keep` fastest valid records are written:
    what compiling (the best one) and a warm start (the best few, re-measured) read, without
    the thousands of search records (a shipped database shrinks from megabytes to kilobytes).
    Returns the number of records written.
    """
    workloads: dict[str, int] = {}
    workload_lines: list[str] = []
    records: dict[int, list[tuple[float, str]]] = {}
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
                records.setdefault(mapping[rec[0]], []).append((_mean_run_secs(rec[1]), line))
    record_lines = []
    for index in sorted(records):
        rows = records[index]
        if keep is not None:
            rows = sorted((r for r in rows if r[0] < _INVALID_SECS), key=lambda r: r[0])[:keep]
        record_lines.extend(line for _, line in rows)
    dest.mkdir(parents=True, exist_ok=True)
    # Workloads first: a `dest` that is also the first source keeps its workloads on their lines,
    # so its old records stay valid until the new record file replaces them.
    for name, lines in ((WORKLOAD_FILE, workload_lines), (RECORD_FILE, record_lines)):
        atomic_write(dest / name, "".join(line + "\n" for line in lines))
    return len(record_lines)


#: MetaSchedule stores failed measurements as 1e10 seconds.
_INVALID_SECS = 1e9


def _mean_run_secs(record: list) -> float:
    """Mean measured seconds of a tuning record's payload [trace, run_secs, target, args]."""
    run_secs = record[1] if len(record) > 1 else None
    if not run_secs:
        return float("inf")
    return sum(float(v) for v in run_secs) / len(run_secs)
