"""Tuning progress on a rich console: a live table on a terminal, one line per batch elsewhere.

A log file or CI has no cursor to redraw a table with, so there each batch prints one line
(trials so far / budget, kernel, trials added, best latency, estimated model latency, seconds)
and the table comes once at the end; `benchmarks/tuning_curve.py` parses those lines.
"""

from __future__ import annotations

import time

from .allocator import TaskState, estimated_model_ms


def allocation_line(tasks: list[TaskState]) -> str:
    """Where this run's trials went, by reason: "trials of this run: 412 by expected gain, ..."."""
    by_reason: dict[str, int] = {}
    for task in tasks:
        for reason, n in task.picks.items():
            by_reason[reason] = by_reason.get(reason, 0) + n
    if not by_reason:
        return "trials of this run: none"
    minor = sum(t.new_trials for t in tasks if t.minor)
    parts = [f"{n} {reason}" for reason, n in sorted(by_reason.items(), key=lambda kv: -kv[1])]
    return f"trials of this run: {', '.join(parts)}; {minor} on minor kernels (pools, means, transforms)"


class Progress:
    """Progress on a rich console: a live table on a terminal, one line per batch otherwise."""

    def __init__(
        self, console, tasks: list[TaskState], budget: int | str, start: float, *, time_budget: float | None = None
    ) -> None:
        """`console` None: silent; `budget` is the trial count the lines show progress against
        ("inf" for a run bounded by time alone); `time_budget` (s) is shown beside the elapsed time."""
        self.console = console
        self.tasks = tasks
        self.budget = budget
        self.start = start
        self.time_budget = time_budget
        self.status = ""
        self.live = None
        if console is not None and console.is_terminal:
            from rich.live import Live

            self.live = Live(self._render(), console=console, refresh_per_second=2, transient=False)
            self.live.start()

    def note(self, text: str) -> None:
        """A message (rich markup) that must not tear the live table: printed above it."""
        if self.console is None:
            return
        if self.live is not None:
            self.live.console.print(text, highlight=False)
        else:
            self.console.print(text, highlight=False, soft_wrap=True)

    def phase(self, text: str) -> None:
        """What runs now (search, build, measure), shown on the live table's status line only."""
        self.status = text
        if self.live is not None:
            self.live.update(self._render(), refresh=True)

    def batch_done(self, index: int, n: int, n_valid: int, seconds: float) -> None:
        """Redraw the table, or (no terminal) print the batch's one line."""
        if self.console is None:
            return
        if self.live is not None:
            self.status = ""
            self.live.update(self._render(), refresh=True)
            return
        task = self.tasks[index]
        spent = sum(t.trials for t in self.tasks)
        est = estimated_model_ms(self.tasks)
        best = f"{task.best_s * 1e6:9.1f} us" if task.best_s is not None else "   no valid"
        self.console.print(
            f"[{spent:>5}/{self.budget}] {task.name:<38.38} +{n:<2} ({n_valid} ok) best {best}"
            f"  model est {f'{est:.3f} ms' if est is not None else '   --   '}"
            f"  {seconds:5.1f} s  {time.perf_counter() - self.start:6.0f} s",
            highlight=False,
            soft_wrap=True,
        )

    def stop(self) -> None:
        """Leave the final table on screen (also in a log, where no live table was drawn)."""
        if self.live is not None:
            self.status = ""
            self.live.update(self._render(), refresh=True)
            self.live.stop()
            self.live = None
        elif self.console is not None and any(t.trials for t in self.tasks):
            self.status = ""
            width = self.console.width  # not a terminal: 80 columns would cut kernel names
            self.console.width = max(width, 200)
            try:
                self.console.print(self._render(), highlight=False)
            finally:
                self.console.width = width

    def _render(self):
        from rich.console import Group
        from rich.table import Table

        est = estimated_model_ms(self.tasks)
        total = sum(t.model_s for t in self.tasks if t.covered) or 1.0
        table = Table(box=None, pad_edge=False, show_edge=False)
        for col, justify in (
            ("kernel", "left"),
            ("calls", "right"),
            ("MFLOP", "right"),
            ("trials", "right"),
            ("this run", "right"),
            ("best us", "right"),
            ("GFLOP/s", "right"),
            ("time share", "right"),
            ("why (last allocation)", "left"),
        ):
            table.add_column(col, justify=justify, no_wrap=True)
        for task in self.tasks:
            if task.best_s is not None:
                best = f"{task.best_s * 1e6:.1f}"
                speed = f"{task.flops / task.best_s / 1e9:.1f}" if task.flops else "-"
                share = f"{100 * task.model_s / total:.1f}%"
            else:
                best = "failed" if task.exhausted else "-"
                speed = share = "-"
            table.add_row(
                task.name,
                str(task.calls),
                f"{task.flops / 1e6:.1f}",
                str(task.trials),
                str(task.new_trials),
                best,
                speed,
                share,
                task.reason,
            )
        spent = sum(t.trials for t in self.tasks)
        elapsed = time.perf_counter() - self.start
        line = (
            f"trials {spent}/{self.budget}  |  estimated model latency "
            f"{f'{est:.3f} ms' if est is not None else '--'}  |  {elapsed:.0f} s"
            + (f" of {self.time_budget:.0f} s" if self.time_budget is not None else "")
        )
        if self.status:
            line += f"  |  {self.status}"
        return Group(table, line, allocation_line(self.tasks))
