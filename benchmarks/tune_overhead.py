"""Seconds per tuning trial with MetaSchedule's stock LocalBuilder vs tvmsqz's PersistentBuilder.

Tunes ONE SqueezeNet 1.1 convolution task (as `tvmsqz.tuning` extracts it) for a few trials with
MetaSchedule's own `tune_tasks` loop, once per builder, everything else equal (evolutionary
search, XGBoost, LocalRunner with the target's thread count). A timing proxy around the builder
reports how much of the wall time the builder took and how many candidates it failed.

    python benchmarks/tune_overhead.py                       # 16 trials, batches of 8
    python benchmarks/tune_overhead.py --builders persistent --trials 32 --json out.json

Expect, on a 2-core box: the stock builder starts 2 fresh workers per batch; each worker's first
build imports `tvm.s_tir.tensor_intrin` (tens of seconds), hits the 30 s build timeout and is
killed, so every candidate fails after ~30 s. The persistent builder pays the import once per
worker, in its initializer, with the `inspect.getmodule` fix (a few seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def pick_task(model: str, target: str, name: str | None):
    from tvmsqz.frontend import load_model
    from tvmsqz.targets import get_target
    from tvmsqz.tuning import extract, kernel_flops

    spec = get_target(target)
    tasks, _ = extract(load_model(model).mod, spec)
    convs = sorted((t for t in tasks if "conv2d" in t.task_name), key=lambda t: kernel_flops(t.dispatched[0]))
    if name:
        chosen = [t for t in tasks if t.task_name == name]
        if not chosen:
            raise SystemExit(f"no task {name!r}; tasks: {', '.join(t.task_name for t in tasks)}")
        return spec, chosen[0]
    return spec, convs[len(convs) // 2]  # the median convolution by FLOPs


def timed_builder(inner):
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.builder import PyBuilder

    @derived_object
    class Timed(PyBuilder):
        def __init__(self) -> None:
            super().__init__()
            self.batches: list[dict] = []

        def build(self, build_inputs):
            start = time.perf_counter()
            results = inner.build(build_inputs)
            self.batches.append(
                {
                    "n": len(build_inputs),
                    "seconds": round(time.perf_counter() - start, 2),
                    "failed": sum(r.error_msg is not None for r in results),
                }
            )
            return results

    return Timed()


def run_one(kind: str, spec, task, trials: int, batch: int, threads: int) -> dict:
    from tvm.s_tir import meta_schedule as ms

    from tvmsqz.builder import PersistentBuilder, make_local_runner

    if kind == "stock":
        inner = ms.builder.LocalBuilder(max_workers=threads)  # 30 s timeout, fresh pool per batch
    else:
        inner = PersistentBuilder(max_workers=threads, timeout_sec=30.0)
    builder = timed_builder(inner)
    runner = make_local_runner(threads)
    ctx = ms.TuneContext(
        mod=task.dispatched[0],
        target=spec.target,
        space_generator="post-order-apply",
        search_strategy="evolutionary",
        task_name=task.task_name,
        num_threads=threads,
        rand_state=1,
    )
    database = ms.database.MemoryDatabase()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tvmsqz-bench-") as work_dir:
        ms.tune_tasks(
            tasks=[ctx],
            task_weights=[1.0],
            work_dir=work_dir,
            max_trials_global=trials,
            num_trials_per_iter=batch,
            builder=builder,
            runner=runner,
            database=database,
            cost_model=ms.cost_model.XGBModel(num_tuning_cores=threads),
            task_scheduler="round-robin",
        )
    wall = time.perf_counter() - start
    records = database.get_all_tuning_records()
    valid = [
        min(float(s) for s in r.run_secs) for r in records if r.run_secs and min(float(s) for s in r.run_secs) < 1e9
    ]
    if hasattr(inner, "shutdown"):
        inner.shutdown()
    runner.pool.shutdown(wait=False)
    build_s = sum(b["seconds"] for b in builder.batches)
    return {
        "builder": kind,
        "trials": len(records),
        "valid": len(valid),
        "wall_s": round(wall, 1),
        "s_per_trial": round(wall / max(1, len(records)), 2),
        "build_s": round(build_s, 1),
        "build_s_per_trial": round(build_s / max(1, len(records)), 2),
        "batches": builder.batches,
        "best_us": round(min(valid) * 1e6, 1) if valid else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="squeezenet1_1")
    parser.add_argument("--target", default="x86")
    parser.add_argument("--task", default=None, help="task name (default: the median conv by FLOPs)")
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--builders", default="stock,persistent")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    from tvmsqz.builder import import_tensor_intrin
    from tvmsqz.quiet import quiet_python_logs
    from tvmsqz.targets import host_cores

    quiet_python_logs()
    threads = host_cores()
    os.environ.setdefault("TVM_NUM_THREADS", str(threads))
    import_tensor_intrin()
    spec, task = pick_task(args.model, args.target, args.task)
    print(
        f"task {task.task_name} of {args.model} for {spec.name}; {args.trials} trials in batches of "
        f"{args.batch}; {threads} cores; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    rows = []
    for kind in args.builders.split(","):
        row = run_one(kind.strip(), spec, task, args.trials, args.batch, threads)
        row["load_avg_after"] = round(os.getloadavg()[0], 1)
        rows.append(row)
        print(
            f"{row['builder']:>10}: {row['s_per_trial']:6.2f} s/trial ({row['wall_s']} s for {row['trials']} trials, "
            f"{row['valid']} valid), builder {row['build_s_per_trial']:.2f} s/trial, best "
            f"{row['best_us'] if row['best_us'] is not None else '-'} us; batches {row['batches']}",
            flush=True,
        )
    report = {
        "task": task.task_name,
        "model": args.model,
        "target": spec.name,
        "trials": args.trials,
        "batch": args.batch,
        "cores": threads,
        "host": platform.node(),
        "results": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
