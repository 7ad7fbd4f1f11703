"""Progress of long commands for people: `clearline up`, `bench`, `chaos` and the sync bench.

On a terminal, a rich progress bar on stderr (what is done, the total, elapsed time and a status
text such as "sent 12000 committed 11800"); anywhere else (CI logs, pipes, files) only the plain
lines a command reports, one per step, because a redrawn bar is noise in a log. Never on stdout,
which carries results (`--json`). `enabled=False` silences it (the commands' `--json`).
"""

from __future__ import annotations

from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress


class Progress:
    """One task's progress: `update(completed=..., status=...)` or `advance()`, and `line(text)` for
    a step worth keeping in the log (printed above the bar on a terminal)."""

    def __init__(
        self,
        description: str,
        total: float | None,
        *,
        enabled: bool = True,
        console: Console | None = None,
        counted: bool = True,
    ) -> None:
        self._enabled = enabled
        self._console = console if console is not None else Console(stderr=True)
        self._bar: RichProgress | None = None
        self._task: TaskID | None = None
        if enabled and self._console.is_terminal:
            amount: Any = MofNCompleteColumn() if counted else TextColumn("{task.percentage:>3.0f}%")
            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                amount,
                TimeElapsedColumn(),
                TextColumn("{task.fields[status]}"),
                console=self._console,
            )
            self._task = self._bar.add_task(description, total=total, status="")

    @property
    def live(self) -> bool:
        """True when a bar is drawn (stderr is a terminal)."""
        return self._bar is not None

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.stop()

    def update(
        self, *, completed: float | None = None, advance: float | None = None, status: str = ""
    ) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, completed=completed, advance=advance, status=status)

    def advance(self, steps: float = 1.0) -> None:
        self.update(advance=steps)

    def line(self, text: str) -> None:
        if not self._enabled:
            return
        if self._bar is not None:
            self._bar.console.print(text, markup=False, highlight=False)
        else:
            self._console.print(text, markup=False, highlight=False, soft_wrap=True)
