"""One progress-bar style for every long loop: count, status, elapsed time and ETA."""

from __future__ import annotations

import time

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


LOG_INTERVAL = 30.0
"""Seconds between the lines of a bar written to a file or pipe."""


class _LoggedProgress(Progress):
    """A Progress for a file or pipe, where rich draws the bar only when its loop ends: a user tailing the log
    of a five-minute stage would see nothing until then. This one also prints the bars every `LOG_INTERVAL`
    seconds, as each task moves."""

    def __init__(self, *columns: ProgressColumn, **kwargs) -> None:
        super().__init__(*columns, **kwargs)
        self._printed_at = time.monotonic()

    def update(self, task_id, **kwargs) -> None:
        super().update(task_id, **kwargs)
        self._print_if_due()

    def advance(self, task_id, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._print_if_due()

    def _print_if_due(self) -> None:
        now = time.monotonic()  # a finished bar is drawn once more when the loop ends
        if self.live.is_started and not self.finished and now - self._printed_at >= LOG_INTERVAL:
            self._printed_at = now
            self.console.print(self.make_tasks_table(self.tasks))


def progress_bar(transient: bool = False) -> Progress:
    """A rich Progress; `progress.update(task, status=...)` shows a short status."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _StatusColumn(),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    console = get_console()
    if console.is_terminal:
        return Progress(*columns, transient=transient, console=console)
    return _LoggedProgress(*columns, transient=transient, console=Console(width=LOG_WIDTH))
