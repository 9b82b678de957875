"""One progress-bar style for every long loop: count, status, elapsed time and ETA."""

from __future__ import annotations

from rich import get_console
from rich.console import Console
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


LOG_WIDTH = 140
"""Columns of a bar written to a file or pipe (rich's default there is 80, which wraps the status into lines)."""


def progress_bar(transient: bool = False) -> Progress:
    """A rich Progress; `progress.update(task, status=...)` shows a short status."""
    console = get_console()
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        _StatusColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        transient=transient,
        console=console if console.is_terminal else Console(width=LOG_WIDTH),
    )
