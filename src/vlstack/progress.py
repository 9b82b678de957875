"""One progress-bar style for every long loop: count, status, elapsed time and ETA."""

from __future__ import annotations

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class _StatusColumn(ProgressColumn):
    """The task's optional `status` field, e.g. the current loss."""

    def render(self, task: Task) -> Text:
        return Text(str(task.fields.get("status", "")))


def progress_bar(transient: bool = False) -> Progress:
    """A rich Progress; `progress.update(task, status=...)` shows a short status."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _StatusColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        transient=transient,
    )
