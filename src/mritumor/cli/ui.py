"""Consoles, progress bars, tables and input warnings shared by all commands.

Results go to stdout, messages and progress to stderr, so output can be piped.
Rich falls back to plain, final-state rendering when stderr is not a terminal
(CI logs stay readable). ``rich.progress`` is imported when a bar is made:
``--help`` never needs it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mritumor.core.errors import UsageError

if TYPE_CHECKING:
    from rich.progress import Progress

    from mritumor.core.progress import ProgressCallback
    from mritumor.predict.inputs import Scans

console = Console()
err_console = Console(stderr=True)


@contextmanager
def progress_bar(description: str) -> Iterator[ProgressCallback]:
    """A rich progress bar on stderr, driven through the library's progress callback.

    The bar appears at the first report of progress, so a command that fails
    while still checking its input prints its one error line and nothing else.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    progress = Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
    )
    task = progress.add_task(description, total=None)

    def update(completed: int, total: int) -> None:
        if not progress.live.is_started:
            progress.start()
        progress.update(task, completed=completed, total=total)

    try:
        yield update
    finally:
        if progress.live.is_started:
            progress.stop()


def status_progress() -> Progress:
    """Bars with a count, the elapsed time and a free-text ``status`` field, on stderr."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=err_console,
    )


@contextmanager
def optional_progress(quiet: bool, description: str) -> Iterator[ProgressCallback | None]:
    """:func:`progress_bar`, or no callback at all with ``--quiet``."""
    if quiet:
        yield None
        return
    with progress_bar(description) as update:
        yield update


def image_inputs(paths: list[str]) -> Scans:
    """The images and volumes of ``paths``; a warning per spec that matched nothing, an error
    for none at all."""
    from mritumor.predict.inputs import gather_scans

    scans = gather_scans(paths)
    for spec in scans.missing:
        err_console.print(f"[yellow]warning:[/] no image matches {escape(spec)}", soft_wrap=True)
    if not scans.images and not scans.volumes:
        raise UsageError(
            f"no images found in {', '.join(paths)} (nor NIfTI volumes or DICOM series)"
        )
    return scans


def report_unreadable(failures: Mapping[str, str]) -> None:
    """List the inputs that were skipped because they could not be read."""
    if failures:
        err_console.print(f"[yellow]warning:[/] {len(failures)} unreadable image(s) skipped:")
        for path, reason in failures.items():
            err_console.print(f"  {escape(path)}: {escape(reason)}", soft_wrap=True)


def print_counts(title: str, counts: Mapping[str, Mapping[str, int]]) -> None:
    """Images per split and class; external yes/no sets get a table of their own."""
    internal = {split: per for split, per in counts.items() if "/" not in split}
    external = {split: per for split, per in counts.items() if "/" in split}
    for caption, rows in ((title, internal), ("External sets", external)):
        if rows:
            console.print(_counts_table(caption, rows))


def _counts_table(title: str, counts: Mapping[str, Mapping[str, int]]) -> Table:
    labels = list(dict.fromkeys(name for per_label in counts.values() for name in per_label))
    table = Table(title=title, title_justify="left")
    table.add_column("split", style="bold")
    for name in labels:
        table.add_column(name, justify="right")
    table.add_column("total", justify="right", style="bold")
    for split, per_label in counts.items():
        row = [per_label.get(name, 0) for name in labels]
        table.add_row(split, *(str(value) for value in row), str(sum(row)))
    return table
