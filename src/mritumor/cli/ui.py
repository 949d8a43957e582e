"""Consoles, progress bars and tables shared by all commands.

Results go to stdout, messages and progress to stderr, so output can be piped.
Rich falls back to plain, final-state rendering when stderr is not a terminal
(CI logs stay readable).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.console import Console

if TYPE_CHECKING:
    from rich.table import Table

    from mritumor.progress import ProgressCallback

console = Console()
err_console = Console(stderr=True)


@contextmanager
def progress_bar(description: str) -> Iterator[ProgressCallback]:
    """A rich progress bar on stderr, driven through the library's progress callback."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console) as progress:
        task = progress.add_task(description, total=None)

        def update(completed: int, total: int) -> None:
            progress.update(task, completed=completed, total=total)

        yield update


def counts_table(title: str, counts: Mapping[str, Mapping[str, int]]) -> Table:
    """Images per split (rows) and class (columns), with totals."""
    from rich.table import Table

    classes = sorted({name for per_class in counts.values() for name in per_class})
    table = Table(title=title, title_justify="left")
    table.add_column("split", style="bold")
    for name in classes:
        table.add_column(name, justify="right")
    table.add_column("total", justify="right", style="bold")
    for split, per_class in counts.items():
        row = [per_class.get(name, 0) for name in classes]
        table.add_row(split, *(str(value) for value in row), str(sum(row)))
    return table
