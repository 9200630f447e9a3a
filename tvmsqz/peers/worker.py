"""One runtime, one fresh process: `python -m tvmsqz.peers.worker RUNTIME MODEL INPUTS.npy THREADS REPEAT OUT.json`.

RUNTIME is a name of `tvmsqz.peers.RUNNERS`; MODEL what that runtime's `prepare` returned;
INPUTS.npy the parity inputs stacked (K, N, C, H, W), the first of them the timed one. Writes
OUT.json (`runtime`, `threads`, `latency` {min, median, p90, mean, runs} in ms, `info`) and
OUT.npy (the K outputs concatenated along the batch axis). A failure prints one line
`error: ...` on stderr and exits 2, so the bench can say why a peer was skipped.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

USAGE = "python -m tvmsqz.peers.worker RUNTIME MODEL INPUTS.npy THREADS REPEAT OUT.json"


def main(argv: list[str]) -> int:
    if len(argv) != 6:
        print(f"error: usage: {USAGE}", file=sys.stderr)
        return 2
    runtime, model, inputs_path, threads_text, repeat_text, out_text = argv
    from .base import time_runs
    from .registry import RUNNERS, module

    try:
        threads, repeat, out = int(threads_text), int(repeat_text), Path(out_text)
        mod = module(runtime)
        os.environ.update(mod.environment(threads))  # before the runtime is imported: thread pools read them once
        inputs = np.load(inputs_path)
        session = mod.open(model, threads, **RUNNERS[runtime][1])
        outputs = np.concatenate([session.run(x) for x in inputs])  # also the first warm-up runs
        latency = time_runs(session.timer(inputs[0]), repeat)
    except Exception as exc:  # noqa: BLE001 - any failure is one line for the bench's `peers_skipped`
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        print(f"error: {runtime}: {(lines[-1] if lines else type(exc).__name__)[:400]}", file=sys.stderr)
        return 2
    np.save(out.with_suffix(".npy"), outputs)
    out.write_text(json.dumps({"runtime": runtime, "threads": threads, "latency": latency, "info": session.info}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
