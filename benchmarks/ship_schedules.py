"""Ship tuning runs as a target's databases: `schedules/<target>/<cpu>/` and the portable fallback.

    python benchmarks/ship_schedules.py --target x86-avx512 --cpu znver4 \
        --cpu-name "AMD EPYC (Zen 4, znver4), 2 cores, KVM" /work/tune/w11 /work/tune/w10 [--keep 8]
    python benchmarks/ship_schedules.py --target x86-avx512 --precision int8 --cpu znver5 ... (int8 folder)

Merges the runs (and the folder's current records, so kernels not re-tuned keep theirs) keeping
each workload's `keep` fastest records: what `compile` applies (the best) and what a warm start
re-measures (the best few), not the thousands of search records. The runs' summaries are kept
in `tuning_summary.json` with the CPU they were tuned on.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tvmsqz.database import check_database, merge_databases
from tvmsqz.targets import get_target


def only_models(db: Path, dest: Path, spec, models: list[str], keep: int, precision: str = "fp32") -> tuple[Path, int]:
    """The records of `db` that these models' tasks look up (MetaSchedule's own workload match):
    a kernel no default graph has (e.g. a variant tuned under another target setting) is not shipped."""
    from tvm.s_tir import meta_schedule as ms

    from tvmsqz.dot_intrin import register_intrinsics

    register_intrinsics()  # int8 records name the project's own tensor intrinsics

    from tvmsqz.database import RECORD_FILE, WORKLOAD_FILE
    from tvmsqz.frontend import load_model
    from tvmsqz.tuning.tasks import extract

    source = ms.database.JSONDatabase(path_workload=str(db / WORKLOAD_FILE), path_tuning_record=str(db / RECORD_FILE))
    dest.mkdir()
    out = ms.database.JSONDatabase(
        path_workload=str(dest / WORKLOAD_FILE), path_tuning_record=str(dest / RECORD_FILE), allow_missing=True
    )
    n, done = 0, set()
    for model in models:
        loaded = load_model(model, import_now=False)
        if precision == "int8":  # the int8 graph's kernels (default calibration: same workloads for any)
            from tvmsqz.quant.qdq import quantize_model

            loaded = quantize_model(loaded)
        tasks, _ = extract(loaded.mod, spec)
        for task in tasks:
            mod = task.dispatched[0]
            if not source.has_workload(mod):
                print(f"  {model}: {task.task_name} has no record", flush=True)
                continue
            workload = source.commit_workload(mod)
            target_workload = out.commit_workload(mod)
            key = str(target_workload.as_json()[0])  # the structural hash MetaSchedule matched
            if key in done:  # a kernel two models share
                continue
            done.add(key)
            for rec in source.get_top_k(workload, keep):
                out.commit_tuning_record(
                    ms.database.TuningRecord(rec.trace, target_workload, rec.run_secs, rec.target, rec.args_info)
                )
                n += 1
    return dest, n


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--target", default="x86-avx512")
    parser.add_argument("--cpu", required=True, help="LLVM CPU name of the tuning host (the folder name)")
    parser.add_argument("--cpu-name", required=True, help="human description recorded in the summary")
    parser.add_argument("--keep", type=int, default=8)
    parser.add_argument("--precision", default="fp32", choices=["fp32", "int8"], help="int8: the target's int8 section")
    parser.add_argument("--no-previous", action="store_true", help="drop the folder's current records")
    parser.add_argument(
        "--models", nargs="*", default=None, help="keep only the workloads these built-in models' default graphs tune"
    )
    args = parser.parse_args(argv)
    spec = get_target(args.target).for_precision(args.precision)
    portable = REPO / "schedules" / spec.schedules
    folder = portable / args.cpu
    sources = list(args.runs) + ([folder] if folder.is_dir() and not args.no_previous else [])
    with tempfile.TemporaryDirectory() as tmp:
        merged = Path(tmp) / "db"
        n = merge_databases(sources, merged, keep=args.keep)
        check_database(merged, spec)  # every record loads for this target
        if args.models:
            merged, n = only_models(merged, Path(tmp) / "used", spec, args.models, args.keep, args.precision)
        runs = []
        for run in args.runs:
            summary = json.loads((run / "tuning_summary.json").read_text())
            summary.pop("history", None)
            runs.append({**summary, "work_dir": str(run)})
        (merged / "tuning_summary.json").write_text(
            json.dumps(
                {
                    "tuned_on": {"cpu": args.cpu_name, "date": datetime.date.today().isoformat()},
                    "records_per_workload": args.keep,
                    "runs": runs,
                },
                indent=1,
            )
            + "\n"
        )
        for dest in (folder, portable):
            dest.mkdir(parents=True, exist_ok=True)
            for item in merged.iterdir():
                shutil.copy(item, dest / item.name)
    print(f"shipped {n} records ({args.keep} per workload at most) to {folder} and {portable}")


if __name__ == "__main__":
    main(sys.argv[1:])
