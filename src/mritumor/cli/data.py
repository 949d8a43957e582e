"""``mritumor data``: fetch, prepare, synthesise and check datasets in the standard layout."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table

from mritumor.cli.state import SetOption, resolve_settings
from mritumor.cli.ui import console, err_console, print_counts, progress_bar
from mritumor.core.errors import UsageError

if TYPE_CHECKING:
    from mritumor.config.schema import Settings
    from mritumor.data.check.analysis import CheckReport
    from mritumor.data.prepare.plan import PrepareSummary

app = typer.Typer(
    help="Get data into the standard layout and check it: fetch, prepare, synth, check.",
    no_args_is_help=True,
)

#: Leaking pairs listed on screen; all of them are in the CSV beside the report.
LEAKS_SHOWN = 20

OutOption = Annotated[
    Path | None,
    typer.Option("--out", "-o", help="Root of the standard layout [default: paths.data_dir]."),
]
ForceOption = Annotated[
    bool, typer.Option("--force", help="Replace the splits being written if they hold files.")
]
SeedOption = Annotated[
    int | None,
    typer.Option(help="Seed of the random draws: carved splits, phantoms [default: seed]."),
]
ValSizeOption = Annotated[
    float | None,
    typer.Option(
        help="Share of train carved into val when the source has none [default: data.val_size]."
    ),
]
GroupDuplicatesOption = Annotated[
    bool,
    typer.Option(
        "--group-duplicates/--no-group-duplicates",
        help="Keep exact and near duplicates in one split when carving; "
        "--no-group-duplicates carves file by file (copies may then straddle train and val).",
    ),
]
CopyOption = Annotated[
    bool, typer.Option("--copy", help="Copy files instead of symlinking them into the layout.")
]


def _complete_dataset(incomplete: str) -> list[tuple[str, str]]:
    from mritumor.data.prepare.fetch import KAGGLE_DATASETS

    return [
        (name, dataset.description)
        for name, dataset in KAGGLE_DATASETS.items()
        if name.startswith(incomplete.lower())
    ]


@app.command("fetch")
def fetch(
    ctx: typer.Context,
    datasets: Annotated[
        list[str],
        typer.Argument(
            help="Kaggle datasets: masoud, navoneel, sartaj.", autocompletion=_complete_dataset
        ),
    ],
    out: OutOption = None,
    version: Annotated[
        int | None, typer.Option("--version", help="Pin a dataset version (one dataset only).")
    ] = None,
    copy: CopyOption = False,
    val_size: ValSizeOption = None,
    seed: SeedOption = None,
    force: ForceOption = False,
    group_duplicates: GroupDuplicatesOption = True,
    assignments: SetOption = None,
) -> None:
    """Download Kaggle datasets with kagglehub and prepare them into the standard layout.

    Without a network, a copy already in the kagglehub cache is used, and the
    version it holds is reported. navoneel lands in external/navoneel.
    """
    from mritumor.data.prepare.fetch import fetch as fetch_dataset
    from mritumor.data.prepare.fetch import kaggle_dataset

    if version is not None and len(datasets) > 1:
        raise UsageError("--version pins one dataset; fetch the datasets one at a time")
    for name in datasets:
        kaggle_dataset(name)  # reject an unknown name before downloading anything
    settings = _settings(ctx, out, val_size, seed, assignments)
    for name in datasets:
        with progress_bar(f"Preparing {name}") as progress:
            result = fetch_dataset(
                name,
                settings.paths.data_dir,
                version=version,
                copy=copy,
                val_size=settings.data.val_size,
                seed=settings.seed,
                force=force,
                group_duplicates=group_duplicates,
                progress=progress,
            )
        origin = "the kagglehub cache (offline)" if result.from_cache else "Kaggle"
        shown = f"version {result.version}" if result.version is not None else "the latest version"
        err_console.print(f"{result.dataset.handle}: {shown}, from {origin}", soft_wrap=True)
        _report_prepared(result.summary)


@app.command("prepare")
def prepare(
    ctx: typer.Context,
    source: Annotated[Path, typer.Argument(help="A downloaded folder or .zip (never modified).")],
    out: OutOption = None,
    name: Annotated[
        str | None,
        typer.Option(help="Folder name under external/ for a yes/no set [default: the source's]."),
    ] = None,
    copy: CopyOption = False,
    val_size: ValSizeOption = None,
    seed: SeedOption = None,
    force: ForceOption = False,
    group_duplicates: GroupDuplicatesOption = True,
    assignments: SetOption = None,
) -> None:
    """Normalise a local folder or .zip (Kaggle layouts, split/class, class-only, yes/no trees),
    or slice a folder of labelled volumes (<class>/<case>.nii.gz) with case-grouped splits.

    Class folders are mapped case-insensitively (notumor, "no tumor" -> no_tumor;
    glioma_tumor -> glioma; ...). Every image is read first: files that are not
    usable images (unreadable, over the pixel limit, under 32 px) are left out and
    listed. A stratified, seeded val split is carved when the source has none, with
    duplicate images kept in one split; file lists are written to manifests/<split>.csv.
    """
    from mritumor.cli.data_volumes import prepare_volumes
    from mritumor.data.prepare.plan import prepare as prepare_dataset
    from mritumor.volumes.prepare import holds_volumes

    settings = _settings(ctx, out, val_size, seed, assignments)
    if holds_volumes(source):
        _refuse_given(
            ctx, ("name", "copy", "group_duplicates"), "apply to images; volumes are sliced"
        )
        prepare_volumes(source, settings, force)
        return
    with progress_bar(f"Preparing {source.name}") as progress:
        summary = prepare_dataset(
            source,
            settings.paths.data_dir,
            copy=copy,
            val_size=settings.data.val_size,
            seed=settings.seed,
            force=force,
            external_name=name,
            group_duplicates=group_duplicates,
            progress=progress,
        )
    _report_prepared(summary)


@app.command("synth")
def synth(
    ctx: typer.Context,
    out: OutOption = None,
    train: Annotated[int, typer.Option(min=0, help="Train images per class.")] = 200,
    val: Annotated[int, typer.Option(min=0, help="Val images per class.")] = 40,
    test: Annotated[int, typer.Option(min=0, help="Test images per class.")] = 60,
    image_size: Annotated[int, typer.Option(help="Nominal image side in pixels.")] = 256,
    external: Annotated[
        int, typer.Option(min=0, help="Images per yes/no label of a shifted external domain.")
    ] = 0,
    external_name: Annotated[str, typer.Option(help="Folder name under external/.")] = "synthetic",
    lesion_scale: Annotated[
        float,
        typer.Option(help="Lesion size factor, 0.25-3; above 1 makes the data easier to learn."),
    ] = 1.0,
    volumes: Annotated[
        int,
        typer.Option(
            min=0,
            help="Write this many phantom volumes per class (NIfTI, with lesion masks) "
            "instead of 2-D images.",
        ),
    ] = 0,
    depth: Annotated[int, typer.Option(help="Axial sections per volume, with --volumes.")] = 48,
    seed: SeedOption = None,
    workers: Annotated[int | None, typer.Option(min=1, help="Processes [default: CPUs].")] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a previous synthetic dataset in --out.")
    ] = False,
    assignments: SetOption = None,
) -> None:
    """Generate synthetic axial MRI slices with lesion masks (offline, deterministic by seed).

    Glioma, meningioma, pituitary and no-tumour phantoms in the standard layout,
    masks under masks/, and with --external a yes/no set in another domain. With
    --volumes N: N phantom volumes per class as <out>/<class>/<class>-<k>.nii.gz, each
    with its <k>_mask.nii.gz, the labelled-volume layout `data prepare` reads (needs
    the volumes extra).
    """
    from mritumor.cli.data_volumes import synth_volumes
    from mritumor.data.synth.writer import SynthConfig, write_synthetic_dataset

    settings = _settings(ctx, out, None, seed, assignments)
    if volumes:
        _refuse_given(
            ctx,
            ("train", "val", "test", "external", "external_name"),
            "apply to 2-D datasets; --volumes writes volumes per class only",
        )
        synth_volumes(settings, volumes, image_size, depth, lesion_scale, force)
        return
    _refuse_given(ctx, ("depth",), "applies to --volumes only")
    try:
        config = SynthConfig(
            train=train,
            val=val,
            test=test,
            image_size=image_size,
            seed=settings.seed,
            class_names=tuple(settings.data.class_names),
            external=external,
            external_name=external_name,
            lesion_scale=lesion_scale,
        )
    except ValueError as error:
        raise UsageError(str(error)) from None
    with progress_bar("Synthesising") as progress:
        summary = write_synthetic_dataset(
            settings.paths.data_dir, config, workers=workers, progress=progress, force=force
        )
    counts = dict(summary.counts)
    if summary.external:
        counts[f"external/{external_name}"] = summary.external
    print_counts(f"Synthetic dataset in {summary.root}", counts)
    console.print(f"{summary.total} images and masks in {summary.seconds:.1f} s", soft_wrap=True)


def _refuse_given(ctx: typer.Context, names: Sequence[str], why: str) -> None:
    """Options given on the command line that would do nothing here: one line, not ignored."""
    given = [
        f"--{name.replace('_', '-')}"
        for name in names
        # By name: Typer ships its own copy of click, with its own ParameterSource enum.
        if getattr(ctx.get_parameter_source(name), "name", None) == "COMMANDLINE"
    ]
    if given:
        raise UsageError(f"{', '.join(given)} {why}")


@app.command("check")
def check(
    ctx: typer.Context,
    root: Annotated[
        Path | None, typer.Argument(help="Dataset root [default: paths.data_dir].")
    ] = None,
    radius: Annotated[
        int | None,
        typer.Option(
            min=0,
            max=64,
            help="pHash Hamming distance within which two images are compared in detail [default: 8].",
        ),
    ] = None,
    min_similarity: Annotated[
        float | None,
        typer.Option(
            min=-1.0,
            max=1.0,
            help="Detail similarity (correlation) that confirms a near duplicate [default: 0.97].",
        ),
    ] = None,
    report: Annotated[
        Path | None, typer.Option(help="Where to write the JSON report [default: ROOT/check.json].")
    ] = None,
    fix: Annotated[
        bool,
        typer.Option(
            "--fix",
            help="Move leaking val/test/external copies into ROOT/quarantine (never deletes).",
        ),
    ] = False,
    strict: Annotated[
        bool,
        typer.Option("--strict", help="Exit 1 when leakage or unusable files are found."),
    ] = False,
    workers: Annotated[int | None, typer.Option(min=1, help="Processes [default: CPUs].")] = None,
    assignments: SetOption = None,
) -> None:
    """Find unusable files, exact and near duplicates, label conflicts, leakage and imbalance.

    A duplicate across splits is leakage: the first pairs are listed, all of them
    written to <report>-leaks.csv beside the JSON report, and with --fix the copy in val,
    test or external is moved to a quarantine folder (undo log in quarantine/moves.json).
    """
    from mritumor.data.check.analysis import check_dataset
    from mritumor.data.check.quarantine import quarantine_leaks
    from mritumor.data.check.report import leaks_path, write_leaks, write_report
    from mritumor.data.duplicates.groups import DEFAULT_RADIUS, MIN_SIMILARITY

    settings = _settings(ctx, root, None, None, assignments)
    data_root = settings.paths.data_dir
    with progress_bar("Hashing") as progress:
        result = check_dataset(
            data_root,
            radius=DEFAULT_RADIUS if radius is None else radius,
            min_similarity=MIN_SIMILARITY if min_similarity is None else min_similarity,
            workers=workers,
            progress=progress,
            negative_class=settings.data.negative_class,
        )
    report_path = report if report is not None else data_root / "check.json"
    write_report(result, report_path)
    write_leaks(result, leaks_path(report_path))
    _render_check(result, leaks_path(report_path))
    console.print(f"Report: {report_path}", soft_wrap=True)
    if fix and result.has_leakage:
        moves = quarantine_leaks(result, data_root)
        console.print(
            f"Moved {len(moves)} leaking file(s) to quarantine; the log is "
            f"{data_root / 'quarantine' / 'moves.json'}",
            soft_wrap=True,
        )
    if strict and (result.problems or (result.has_leakage and not fix)):
        raise typer.Exit(1)


def _settings(
    ctx: typer.Context,
    data_dir: Path | None,
    val_size: float | None,
    seed: int | None,
    assignments: list[str] | None,
) -> Settings:
    flags = {"paths.data_dir": data_dir, "data.val_size": val_size, "seed": seed}
    return resolve_settings(ctx, flags, assignments or ()).settings


def _report_prepared(summary: PrepareSummary) -> None:
    mode = "symlinks" if summary.linked else "copies"
    print_counts(f"{summary.target} ({summary.kind} layout, {mode})", summary.counts)
    if summary.carved:
        console.print(f"Carved from train: {', '.join(summary.carved)} (stratified, seeded)")
    grouping = summary.grouping
    if summary.carved and grouping is None:
        console.print(
            "Duplicates were not grouped: copies of one scan may straddle the carved splits "
            f"(find them with `mritumor data check {summary.target}`)",
            soft_wrap=True,
        )
    if grouping is not None:
        console.print(
            f"Kept {grouping.kept_together} duplicate group(s) ({grouping.grouped_images} "
            f"images) whole in one split; hashed {grouping.hashed} images in "
            f"{grouping.seconds:.1f} s",
            soft_wrap=True,
        )
        conflicts = grouping.label_conflicts
        if conflicts:
            shown = "; ".join(", ".join(str(path) for path in group) for group in conflicts[:3])
            more = f" and {len(conflicts) - 3} more" if len(conflicts) > 3 else ""
            console.print(
                f"Label conflicts (one image under several classes), kept in train: "
                f"{len(conflicts)} group(s): {shown}{more}",
                soft_wrap=True,
            )
        if grouping.cross_split_groups:
            console.print(
                f"{grouping.cross_split_groups} duplicate group(s) span the splits the source "
                f"gave (such as Training and Testing): `mritumor data check {summary.target} "
                "--fix` moves the copies out of val and test",
                soft_wrap=True,
            )
    if summary.duplicates:
        shown = ", ".join(str(path) for path in summary.duplicates)
        console.print(f"Left out duplicate copies of the tree: {shown}", soft_wrap=True)
    if summary.skipped:
        first = ", ".join(str(path) for path in summary.skipped[:5])
        more = f" and {len(summary.skipped) - 5} more" if len(summary.skipped) > 5 else ""
        console.print(
            f"Skipped {len(summary.skipped)} non-image file(s): {first}{more}", soft_wrap=True
        )
    _warn_about_prepared(summary)


def _warn_about_prepared(summary: PrepareSummary) -> None:
    """Every image file left out, with why, and every split short of a class, on stderr."""
    if summary.left_out:
        err_console.print(
            f"[yellow]warning:[/] left out {len(summary.left_out)} file(s) that are not usable "
            "images:",
            soft_wrap=True,
        )
        for entry in summary.left_out:
            err_console.print(
                f"  {escape(str(entry.path))}: {entry.kind}: {escape(entry.reason)}",
                soft_wrap=True,
            )
    for warning in summary.warnings:
        err_console.print(f"[yellow]warning:[/] {escape(warning)}", soft_wrap=True)


def _render_check(report: CheckReport, leaks_file: Path) -> None:
    print_counts(f"Usable images in {report.root}", report.class_counts)
    if report.problems:
        _print_rows(
            f"Unusable files: {len(report.problems)}",
            ("kind", "file", "detail"),
            [(p.kind, _relative(report, p.path), p.message) for p in report.problems],
        )
    if report.leaks:
        kinds = Counter(leak.kind for leak in report.leaks)
        shown = report.leaks[:LEAKS_SHOWN]
        _print_rows(
            f"Leakage: {len(report.leaks)} pair(s) of the same image in two splits "
            f"({kinds['exact']} exact, {kinds['near']} near)"
            + (f"; the first {len(shown)}" if len(shown) < len(report.leaks) else ""),
            ("kind", "distance", "similarity", "kept", "leaking copy"),
            [
                (
                    leak.kind,
                    str(leak.distance),
                    f"{leak.similarity:.3f}",
                    _relative(report, leak.a.path),
                    _relative(report, leak.b.path),
                )
                for leak in shown
            ],
        )
        console.print(f"All {len(report.leaks)} leaking pair(s): {leaks_file}", soft_wrap=True)
    lines = [
        f"exact duplicate groups: {len(report.exact_groups)}",
        f"near duplicate groups: {len(report.near_groups)}",
        f"label conflicts: {len(report.label_conflicts)}",
        f"leaking pairs: {len(report.leaks)}",
        "imbalance (largest/smallest class): "
        + ", ".join(f"{split} {ratio:.2f}" for split, ratio in report.imbalance_ratios.items()),
        "modes: " + ", ".join(f"{mode} {count}" for mode, count in report.modes.items()),
    ]
    console.print("\n".join(lines), soft_wrap=True)


def _relative(report: CheckReport, path: Path) -> str:
    return path.relative_to(report.root).as_posix()


def _print_rows(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A table on a terminal; elsewhere (a pipe, a log) tab-separated lines, paths never cut."""
    if not console.is_terminal:  # written as they are: rich would turn the tabs into spaces
        lines = [title, *("\t".join(row) for row in (columns, *rows))]
        console.file.write("\n".join(lines) + "\n")
        return
    table = Table(title=escape(title), title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(escape(cell) for cell in row))
    console.print(table)
