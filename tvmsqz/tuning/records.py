"""The tuning folder: MetaSchedule's two JSON-lines files, written durably from Python, and the summary.

Why the records are not written by MetaSchedule's `JSONDatabase`: its C++ appends every line
through an unchecked `std::ofstream`, so a full disk (or a file size limit) silently drops or
cuts records while the run goes on and exits 0. Here every line goes through
`fsutil.append_line` (one write, fsync, checked, cut back on a short write): a record counts only
once it is on disk, and an OSError stops the run with a one-line `TvmsqzError`, the files valid.
The search itself works on an in-memory database (`session`); this module owns the disk.

The files stay in the exact format `JSONDatabase` reads (and writes itself), so every reader
(`database.load_database`, `compile --database`, MetaSchedule's own tools) is unchanged:

* `database_workload.json`: one line per workload, `["<structural hash>", "<base64 IRModule>"]`
  (`Workload.as_json()`); a record names its workload by line number, from 0.
* `database_tuning_record.json`: one line per measured candidate, `[workload_index, record]`
  where record is `TuningRecord.as_json()`: `[trace, run_secs, target, args_info]`.
* Each line is the text MetaSchedule's C++ `JSONDumps` makes of the same value (`json_line`
  mirrors it token for token: compact, map keys sorted, 20-digit floats, flags as 0/1, an
  `IndexMap` as its JSON graph string), so a line is the same whoever wrote it.
* No blank line: MetaSchedule's loader parses every line, a blank one included.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from ..database import RECORD_FILE, WORKLOAD_FILE, check_database, open_json_database
from ..errors import TvmsqzError
from ..fsutil import append_line, atomic_write, os_error
from ..spec import TargetSpec

SUMMARY_FILE = "tuning_summary.json"
#: What a failed build or run is recorded as (MetaSchedule's marker); also replaces inf/nan.
FAILED_RUN_S = 1e10


def repair_tail(path: Path) -> str | None:
    """Make a JSON-lines file appendable again after a killed writer; returns what was done.

    A writer killed mid-line leaves a last line without its newline. If that line is valid JSON
    only the newline is missing (added); otherwise the partial line is dropped. A complete bad
    line (one that ends with a newline) is corruption, not truncation: it is left for
    `database.check_database` to report.
    """
    if not path.is_file():
        return None
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return None
    head, sep, last = data.rpartition(b"\n")
    try:
        json.loads(last)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested past the recursion limit
        try:
            with open(path, "r+b") as handle:
                handle.truncate(len(head) + len(sep))
                os.fsync(handle.fileno())
        except OSError as exc:
            raise os_error(path, exc, "repair") from None
        return f"dropped a truncated last line ({len(last)} bytes) from {path.name}"
    append_line(path, "")  # the newline only: `append_line` adds it to an empty line
    return f"added the missing final newline to {path.name}"


def count_lines(path: Path) -> int:
    """Non-blank lines of a JSON-lines file (0 when it does not exist)."""
    if not path.is_file():
        return 0
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())


def _dump(obj: Any, out: list[str]) -> None:
    """Append the JSON text of one MetaSchedule JSON value, token for token as `JSONDumps` does.

    The value is the raw FFI one (`*AsJSON` before Python's conversion, which loses the
    difference between a bool flag written 1/0 and a bool `IntImm` written true/false, and
    cannot convert an `IndexMap` at all).
    """
    import tvm_ffi
    from tvm.tirx import FloatImm, IndexMap, IntImm

    if obj is None:
        out.append("null")
    elif isinstance(obj, bool):  # a plain FFI bool: JSONDumps casts it to an integer IntImm
        out.append("1" if obj else "0")
    elif isinstance(obj, int):
        out.append(str(obj))
    elif isinstance(obj, float):
        out.append(_float(obj))
    elif isinstance(obj, str):
        out.append(json.dumps(obj, ensure_ascii=False))  # MetaSchedule's loader has no \u escapes
    elif isinstance(obj, IntImm):
        if str(obj.ty) == "bool":
            out.append("true" if obj.value else "false")
        else:
            out.append(str(int(obj.value)))
    elif isinstance(obj, FloatImm):
        out.append(_float(float(obj.value)))
    elif isinstance(obj, (list, tuple, tvm_ffi.Array)):
        out.append("[")
        for i, item in enumerate(obj):
            if i:
                out.append(",")
            _dump(item, out)
        out.append("]")
    elif isinstance(obj, (dict, tvm_ffi.Map)):
        out.append("{")
        for i, key in enumerate(sorted(obj.keys(), key=str)):
            if i:
                out.append(",")
            out.append(json.dumps(str(key), ensure_ascii=False) + ":")
            _dump(obj[key], out)
        out.append("}")
    elif isinstance(obj, IndexMap):  # a layout rewrite in a trace: its FFI JSON graph, as a string
        import tvm

        graph = tvm_ffi.get_global_func("ffi.ToJSONGraph")(obj, {"tvm_version": tvm.__version__})
        out.append(json.dumps(tvm_ffi.get_global_func("ffi.json.Stringify")(graph, 2), ensure_ascii=False))
    else:
        raise TypeError(f"cannot write {type(obj).__name__} into a tuning database")


def _float(value: float) -> str:
    """`std::setprecision(20)`, MetaSchedule's float format; inf/nan (not JSON) as a failed run."""
    return "%.20g" % (value if math.isfinite(value) else FAILED_RUN_S)


def json_line(obj: Any) -> str:
    """One database line, as MetaSchedule's `JSONDumps` writes it (compact, map keys sorted)."""
    out: list[str] = []
    _dump(obj, out)
    return "".join(out)


def workload_line(workload) -> str:
    """The workload file's line for a MetaSchedule `Workload`."""
    import tvm_ffi

    return json_line(tvm_ffi.get_global_func("s_tir.meta_schedule.WorkloadAsJSON")(workload))


def record_line(workload_index: int, record) -> str:
    """The record file's line for a `TuningRecord` of the workload on line `workload_index`."""
    import tvm_ffi

    return json_line([workload_index, tvm_ffi.get_global_func("s_tir.meta_schedule.TuningRecordAsJSON")(record)])


def trace_key(trace) -> str:
    """A schedule's identity that survives the database: its trace as the record file holds it.

    The search's own key, the structural hash of the scheduled module, does not: the JSON
    format writes an annotation's bool as 1, so a trace read back from disk replays to a module
    with `layout_rewrite_preproc: 1` where the search's has `True` (another hash, the same
    schedule). Both keys are kept (`session.Session.seen`), so neither kind of repeat is measured.
    """
    import tvm_ffi

    return json_line(tvm_ffi.get_global_func("s_tir.schedule.TraceAsJSON")(trace, False))


def check_folder_path(work_dir: Path) -> None:
    """Refuse a tuning folder path that names a file, before the folder lock creates anything."""
    if work_dir.exists() and not work_dir.is_dir():
        raise TvmsqzError(f"database folder {work_dir} is a file; pass -o DIR")


class TuningFolder:
    """One tuning folder on disk, opened for a tuning run (under its folder lock).

    `records` counts the record lines on disk and grows only when a line reached the disk;
    `earlier` is the read-only MetaSchedule database of the records already there (None when
    there are none), kept only until the session has warm-started from it (`release_earlier`).
    """

    def __init__(self, path: Path, spec: TargetSpec) -> None:
        self.path = path
        self.spec = spec
        self.records = 0
        self.repairs: list[str] = []
        self.earlier = None
        self._workload_lines: list[str] | None = None

    @property
    def workload_file(self) -> Path:
        return self.path / WORKLOAD_FILE

    @property
    def record_file(self) -> Path:
        return self.path / RECORD_FILE

    @classmethod
    def open(cls, path: Path, spec: TargetSpec, resume: bool) -> TuningFolder:
        """Check the folder before any slow work: refuse, repair, validate and load it.

        Refused: records without `resume`, a corrupt database (`check_database`: a line that is
        not JSON, a malformed record, a missing workload), one tuned for another target, or one
        whose records MetaSchedule cannot load (a trace edited into nonsense). Every refusal is
        a one-line `TvmsqzError`.
        """
        folder = cls(path, spec)
        check_folder_path(path)
        records = count_lines(folder.record_file)
        if records and not resume:
            raise TvmsqzError(
                f"{path} already holds a tuning database ({records} records); pass --resume to "
                f"continue it, or choose another -o folder"
            )
        folder.repairs = [r for r in (repair_tail(folder.workload_file), repair_tail(folder.record_file)) if r]
        if folder.record_file.is_file() and count_lines(folder.record_file):
            folder.records = check_database(path, spec)  # TvmsqzError: corrupt, or another target
            folder.earlier = open_json_database(path)  # TvmsqzError: records MetaSchedule cannot load
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TvmsqzError(f"cannot create database folder {path}: {exc.strerror}") from None
        if not os.access(path, os.W_OK):
            raise TvmsqzError(f"database folder {path} is not writable")
        return folder

    def release_earlier(self) -> None:
        """Drop the loaded earlier records (a shipped database holds tens of MB of traces)."""
        self.earlier = None

    # -- workloads ------------------------------------------------------------------------------

    def _lines(self) -> list[str]:
        """The workload file's lines, read once; index i is the workload that records name as i."""
        if self._workload_lines is None:
            text = self.workload_file.read_text() if self.workload_file.is_file() else ""
            self._workload_lines = text.split("\n")[:-1] if text else []
        return self._workload_lines

    def workload_index(self, workload) -> int:
        """The line number of `workload` (a MetaSchedule `Workload`), appended if it is new.

        The usual match is the same line text. A workload the earlier database knows under a
        different text (serialized by another TVM version, say) is found by structural equality,
        so its new records join its old ones instead of a second copy of the workload.
        """
        from tvm.s_tir.meta_schedule.database import Workload

        line = workload_line(workload)
        lines = self._lines()
        if line in lines:
            return lines.index(line)
        if self.earlier is not None and self.earlier.has_workload(workload.mod):
            from tvm_ffi import structural_equal

            for index, text in enumerate(lines):
                try:
                    known = Workload.from_json(json.loads(text))
                except Exception:  # noqa: BLE001 - a line MetaSchedule did not load either
                    continue
                if structural_equal(known.mod, workload.mod):
                    return index
        append_line(self.workload_file, line)  # TvmsqzError (disk full, ...): nothing half-written
        lines.append(line)
        return len(lines) - 1

    # -- records --------------------------------------------------------------------------------

    def commit_record(self, workload_index: int, record) -> None:
        """Append one `TuningRecord` durably; counted only once the whole line is on disk."""
        append_line(self.record_file, record_line(workload_index, record))
        self.records += 1

    # -- summary --------------------------------------------------------------------------------

    def read_summary(self) -> dict:
        """The previous session's summary (tuning curve, wall time), {} when absent or unreadable."""
        try:
            data = json.loads((self.path / SUMMARY_FILE).read_text())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}

    def write_summary(self, summary: dict) -> None:
        """Replace the summary atomically (a full disk keeps the previous one whole)."""
        atomic_write(self.path / SUMMARY_FILE, json.dumps(summary, indent=1) + "\n")
