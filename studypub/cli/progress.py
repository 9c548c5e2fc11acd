"""The progress display of the long commands (``backfill``, ``verify``): one line per target.

It starts with the first report, so that a refusal before any work (no database, no schema)
is the only line printed, and it stops whatever way the command ends.
"""

from __future__ import annotations

from types import TracebackType

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

from studypub.cli.common import console
from studypub.targets import Target


def _name() -> TextColumn:
    return TextColumn("[bold]{task.description:<13}")


class RateColumn(ProgressColumn):
    """Rows per second (rich's own speed column speaks of bytes)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} rows/s", style="progress.data.speed")


class TargetProgress:
    """A line per target; use as a context manager around the work, pass :meth:`report`."""

    def __init__(self, progress: Progress, *, enabled: bool = True) -> None:
        self._progress = progress
        self._enabled = enabled
        self._tasks: dict[str, TaskID] = {}

    @classmethod
    def bar(cls) -> TargetProgress:
        """A bar towards a known total: rows done, rate, time elapsed and left (backfill)."""
        return cls(
            Progress(
                _name(),
                BarColumn(),
                MofNCompleteColumn(),
                RateColumn(),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                console=console,
            )
        )

    @classmethod
    def spinner(cls, *, enabled: bool = True) -> TargetProgress:
        """Rows checked so far, with no total, gone when done (verify)."""
        return cls(
            Progress(
                SpinnerColumn(),
                _name(),
                TextColumn("{task.completed:,} rows checked"),
                TimeElapsedColumn(),
                console=console,
                transient=True,
            ),
            enabled=enabled,
        )

    def report(self, target: Target, done: int, total: int | None = None) -> None:
        """``done`` rows of ``target`` so far (of ``total``, when known)."""
        if not self._enabled:
            return
        if not self._tasks:
            self._progress.start()
        if target.name not in self._tasks:
            self._tasks[target.name] = self._progress.add_task(
                target.label, total=total, completed=done
            )
        self._progress.update(self._tasks[target.name], completed=done, total=total)

    def __enter__(self) -> TargetProgress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._tasks:
            self._progress.stop()
