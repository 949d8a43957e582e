"""The volume side of ``mritumor data``: ``prepare`` of labelled volumes, ``synth --volumes``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rich.markup import escape

from mritumor.cli.ui import console, err_console, print_counts, progress_bar
from mritumor.core.errors import UsageError

if TYPE_CHECKING:
    from mritumor.config.schema import Settings


def prepare_volumes(source: Path, settings: Settings, force: bool) -> None:
    """``data prepare`` of labelled volumes: slices into the standard layout, split by case."""
    from mritumor.volumes.prepare import prepare_volumes
    from mritumor.volumes.slicing import SliceOptions

    with progress_bar(f"Slicing the volumes of {source.name}") as progress:
        summary = prepare_volumes(
            source,
            settings.paths.data_dir,
            options=SliceOptions.from_settings(settings.volumes),
            val_size=settings.data.val_size,
            seed=settings.seed,
            force=force,
            progress=progress,
        )
    print_counts(f"{summary.target} (slices of labelled volumes, split by case)", summary.counts)
    print_counts("Cases per split", summary.cases)
    console.print(
        f"Left out {summary.blank} blank slice(s) and {summary.lesion_free} slice(s) of tumour "
        "cases that show no lesion in their mask",
        soft_wrap=True,
    )
    if summary.unmasked:
        err_console.print(
            f"[yellow]warning:[/] {len(summary.unmasked)} tumour case(s) without a mask: every "
            "non-blank slice carries the case's class, though most do not show the tumour: "
            + ", ".join(summary.unmasked[:5])
            + (" ..." if len(summary.unmasked) > 5 else ""),
            soft_wrap=True,
        )
    for warning in summary.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)
    for path, reason in summary.unreadable:
        err_console.print(f"[yellow]warning:[/] left out {escape(str(path))}: {escape(reason)}")


def synth_volumes(
    settings: Settings, count: int, image_size: int, depth: int, lesion_scale: float, force: bool
) -> None:
    """``data synth --volumes``: phantom volumes per class, with masks."""
    from mritumor.volumes.synth import VolumeSynthConfig, write_phantom_volumes

    try:
        config = VolumeSynthConfig(
            count=count,
            image_size=image_size,
            depth=depth,
            seed=settings.seed,
            lesion_scale=lesion_scale,
            class_names=tuple(settings.data.class_names),
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    root = settings.paths.data_dir
    with progress_bar("Synthesising volumes") as progress:
        counts = write_phantom_volumes(root, config, force=force, progress=progress)
    print_counts(f"Phantom volumes in {root}", {"volumes": counts})
    console.print(
        f"{sum(counts.values())} volumes of {image_size}x{image_size}x{depth}, with masks; "
        f"`mritumor data prepare {root}` slices them into the standard layout",
        soft_wrap=True,
    )
