"""Where ``data prepare`` reads from: a folder, or a ``.zip`` unpacked beside the target.

The source is never modified: the target may not lie inside it, nor it inside the
splits the target would replace. A zip's members are checked before anything is
unpacked (no absolute paths, no ``..``), and unpacked into a hidden folder inside
the target so that they are moved into place, not copied twice.
"""

from __future__ import annotations

import re
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from mritumor.core.errors import UsageError
from mritumor.data.files import EXTERNAL_DIR, SPLITS
from mritumor.data.manifests import MANIFEST_DIR

Placement = Literal["symlink", "copy", "move"]


@dataclass(frozen=True)
class Source:
    """Where images are read from, the path the user named for them, and how they are placed."""

    folder: Path
    origin: Path
    placement: Placement

    def origin_of(self, path: Path) -> Path:
        return self.origin / path.relative_to(self.folder)


def existing_source(source: Path) -> Path:
    """``source`` resolved, when it is a folder or a ``.zip``; else a UsageError naming it."""
    source = source.expanduser()
    if not source.exists():
        raise UsageError(f"{source} does not exist")
    if not source.is_dir() and source.suffix.lower() != ".zip":
        raise UsageError(f"{source} is neither a folder nor a .zip file")
    return source.resolve()


def refuse_overlap(source: Path, target: Path) -> None:
    """Writing inside the source would modify it; replacing a split holding it would delete it."""
    if target == source or target.is_relative_to(source):
        raise UsageError(f"the target {target} is inside the source {source}; choose another")
    owned = [target / name for name in (*SPLITS, EXTERNAL_DIR, MANIFEST_DIR)]
    if any(source.is_relative_to(folder) for folder in owned):
        raise UsageError(f"the source {source} is inside the target's splits; move it out first")


def external_set_name(name: str | None, source: Path) -> str:
    """The folder name under ``external/`` for a yes/no set: ``name``, or one from the source's."""
    if name is None:
        derived = source.stem if source.suffix.lower() == ".zip" else source.name
        return re.sub(r"[^\w.-]+", "_", derived).strip("._") or "external"
    if not re.fullmatch(r"\w[\w.-]*", name):
        raise UsageError(f"external name {name!r} must be letters, digits, '_', '-' or '.'")
    return name


@contextmanager
def removed_on_failure(target: Path) -> Iterator[None]:
    """Leave no empty target folder behind when a run that created it fails."""
    existed = target.exists()
    try:
        yield
    except BaseException:
        if not existed and target.is_dir() and not any(target.iterdir()):
            target.rmdir()
        raise


@contextmanager
def opened_source(source: Path, target: Path, copy: bool) -> Iterator[Source]:
    """A folder to read ``source`` from: itself, or a zip's members unpacked."""
    if source.suffix.lower() != ".zip":
        yield Source(source, source, "copy" if copy else "symlink")
        return
    with _extracted_zip(source, target) as folder:
        yield Source(folder, source, "move")


@contextmanager
def _extracted_zip(archive: Path, target: Path) -> Iterator[Path]:
    """Unpack ``archive`` into a hidden folder inside ``target`` (so files move, not copy).

    Every member name is checked before anything is written: an absolute path or
    a ``..`` component (zip-slip) rejects the whole archive.
    """
    try:
        with zipfile.ZipFile(archive) as bundle:
            for member in bundle.namelist():
                _check_member(member, archive)
            target.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix=".unzip-", dir=target) as folder:
                bundle.extractall(folder)
                yield Path(folder)
    except zipfile.BadZipFile as error:
        raise UsageError(f"cannot read the zip {archive}: {error}") from None


def _check_member(member: str, archive: Path) -> None:
    name = member.replace("\\", "/")
    if name.startswith("/") or re.match(r"[A-Za-z]:", name) or ".." in name.split("/"):
        raise UsageError(
            f"refusing {archive}: member {member!r} would be written outside the target "
            "(absolute path or '..')"
        )
