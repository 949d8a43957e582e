"""Downloading the public Kaggle brain-MRI sets with kagglehub, then preparing them.

kagglehub asks Kaggle for the current version even when a copy is cached, so
without network (or with credentials Kaggle refuses) an unpinned download fails
although the files are on disk. :func:`fetch` then falls back to the newest
complete copy in the kagglehub cache and warns which version it used.

The cache layout (kagglehub ``cache.py``): ``$KAGGLEHUB_CACHE`` (default
``~/.cache/kagglehub``) ``/datasets/<owner>/<name>/versions/<N>/`` holds version
N, complete once ``/datasets/<owner>/<name>/<N>.complete`` exists.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from mritumor.core.errors import MritumorError, OfflineError, UsageError
from mritumor.core.progress import ProgressCallback
from mritumor.data.files import EXTERNAL_DIR
from mritumor.data.layout import LayoutKind, detect_layout
from mritumor.data.prepare.plan import PrepareSummary, prepare

CACHE_ENV_VAR = "KAGGLEHUB_CACHE"
_HTTP_UNAUTHORIZED = frozenset({401, 403})
_HTTP_NOT_FOUND = 404


class CachedDatasetWarning(UserWarning):
    """Kaggle could not be asked, so a copy from the kagglehub cache was used."""


@dataclass(frozen=True)
class KaggleDataset:
    """A Kaggle dataset :func:`fetch` knows, and the layout it must have once downloaded."""

    name: str
    handle: str
    kind: LayoutKind
    splits: frozenset[str]
    description: str

    @property
    def url(self) -> str:
        return f"https://www.kaggle.com/datasets/{self.handle}"


KAGGLE_DATASETS: dict[str, KaggleDataset] = {
    dataset.name: dataset
    for dataset in (
        KaggleDataset(
            "masoud",
            "masoudnickparvar/brain-tumor-mri-dataset",
            "split_class",
            frozenset({"train", "test"}),
            "7023 images in 4 classes: Training/ (5712) -> train + val, Testing/ (1311) -> test",
        ),
        KaggleDataset(
            "navoneel",
            "navoneel/brain-mri-images-for-brain-tumor-detection",
            "binary",
            frozenset({EXTERNAL_DIR}),
            "253 images, tumour yes/ (155) and no/ (98) -> external/navoneel",
        ),
        KaggleDataset(
            "sartaj",
            "sartajbhuvaji/brain-tumor-classification-mri",
            "split_class",
            frozenset({"train", "test"}),
            "3264 images in 4 classes: Training/ -> train + val, Testing/ -> test",
        ),
    )
}


@dataclass(frozen=True)
class FetchResult:
    """What :func:`fetch` did: ``from_cache`` is True when Kaggle was unreachable."""

    dataset: KaggleDataset
    path: Path
    version: int | None
    from_cache: bool
    summary: PrepareSummary


@dataclass(frozen=True)
class _Download:
    path: Path
    version: int | None
    from_cache: bool


def fetch(
    name: str,
    target: Path,
    *,
    version: int | None = None,
    copy: bool = False,
    val_size: float = 0.15,
    seed: int = 42,
    force: bool = False,
    group_duplicates: bool = True,
    progress: ProgressCallback | None = None,
) -> FetchResult:
    """Download the Kaggle dataset ``name`` (a key of :data:`KAGGLE_DATASETS`) and prepare it.

    ``version`` pins a dataset version (default: Kaggle's current one). The
    other arguments go to :func:`~mritumor.data.prepare.plan.prepare`; a yes/no set
    lands in ``external/<name>``. Without ``copy`` the prepared files are
    symlinks into the kagglehub cache.
    """
    dataset = kaggle_dataset(name)
    if version is not None and version < 1:
        raise UsageError(f"a dataset version is a positive number, got {version}")
    download = _download(dataset, version)
    _check_layout(dataset, download.path)
    summary = prepare(
        download.path,
        target,
        copy=copy,
        val_size=val_size,
        seed=seed,
        force=force,
        group_duplicates=group_duplicates,
        external_name=dataset.name,
        progress=progress,
    )
    return FetchResult(dataset, download.path, download.version, download.from_cache, summary)


def kaggle_dataset(name: str) -> KaggleDataset:
    """The registry entry for ``name``, or a :class:`UsageError` listing the known ones."""
    try:
        return KAGGLE_DATASETS[name.casefold()]
    except KeyError:
        known = ", ".join(f"{key} ({d.handle})" for key, d in KAGGLE_DATASETS.items())
        raise UsageError(f"unknown dataset {name!r}; known: {known}") from None


def kagglehub_cache_dir() -> Path:
    """The kagglehub cache root: ``$KAGGLEHUB_CACHE``, else ``~/.cache/kagglehub``."""
    return Path(os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "kagglehub")


def cached_versions(handle: str) -> dict[int, Path]:
    """The complete copies of the dataset ``owner/name`` in the kagglehub cache, by version."""
    base = kagglehub_cache_dir() / "datasets" / handle
    versions = base / "versions"
    if not versions.is_dir():
        return {}
    return {
        int(folder.name): folder
        for folder in versions.iterdir()
        if folder.name.isdigit() and folder.is_dir() and (base / f"{folder.name}.complete").exists()
    }


class _Failure(NamedTuple):
    """Why kagglehub gave nothing, as a phrase, and the error to raise when no cache helps."""

    reason: str
    error_type: type[MritumorError]


def _download(dataset: KaggleDataset, version: int | None) -> _Download:
    import kagglehub

    handle = dataset.handle if version is None else f"{dataset.handle}/versions/{version}"
    try:
        path = Path(kagglehub.dataset_download(handle))
    except Exception as error:
        failure = _explain(error)
        if failure is None:
            raise
        return _cached_copy(dataset, version, failure)
    return _Download(path, version or _version_in(path), from_cache=False)


def _explain(error: Exception) -> _Failure | None:
    """A kagglehub failure the user can act on (network, credentials, HTTP); None for a bug."""
    import requests
    from kagglehub.exceptions import UnauthenticatedError

    if isinstance(error, (requests.ConnectionError, requests.Timeout)):
        return _Failure("cannot reach Kaggle", OfflineError)
    response = error.response if isinstance(error, requests.HTTPError) else None
    status = response.status_code if response is not None else None
    if isinstance(error, UnauthenticatedError) or status in _HTTP_UNAUTHORIZED:
        return _Failure(
            "Kaggle refused the request (missing or wrong credentials: set KAGGLE_API_TOKEN, "
            "or KAGGLE_USERNAME and KAGGLE_KEY, or save ~/.kaggle/kaggle.json from "
            "kaggle.com > Settings > API)",
            MritumorError,
        )
    if status == _HTTP_NOT_FOUND:
        return _Failure("Kaggle has no such dataset or version", MritumorError)
    if status is not None:
        return _Failure(f"Kaggle answered HTTP {status}", MritumorError)
    return None


def _cached_copy(dataset: KaggleDataset, version: int | None, failure: _Failure) -> _Download:
    """The pinned version, else the newest one, from the kagglehub cache; the failure if none."""
    cached = cached_versions(dataset.handle)
    usable = [v for v in cached if version is None or v == version]
    wanted = dataset.handle if version is None else f"version {version} of {dataset.handle}"
    if not usable:
        found = f"only versions {', '.join(map(str, sorted(cached)))}" if cached else "no copy"
        raise failure.error_type(
            f"{failure.reason} for {wanted}, and the kagglehub cache ({kagglehub_cache_dir()}) "
            f"has {found}; download it by hand from {dataset.url}, "
            "then run `mritumor data prepare <folder-or-zip>`"
        )
    chosen = max(usable)
    warnings.warn(
        f"{failure.reason} for {wanted}; using version {chosen} from the kagglehub cache "
        f"({cached[chosen]})",
        CachedDatasetWarning,
        stacklevel=4,
    )
    return _Download(cached[chosen], chosen, from_cache=True)


def _version_in(path: Path) -> int | None:
    """kagglehub returns ``.../versions/<N>`` for a cached download."""
    return int(path.name) if path.parent.name == "versions" and path.name.isdigit() else None


def _check_layout(dataset: KaggleDataset, path: Path) -> None:
    """A download that no longer looks as expected is an upstream change, not a user error."""
    try:
        layout = detect_layout(path)
    except UsageError as error:
        problem = str(error)
    else:
        if layout.kind == dataset.kind and dataset.splits <= layout.splits:
            return
        found = ", ".join(sorted(layout.splits))
        problem = f"found a {layout.kind} layout with {found} in {path}"
    raise MritumorError(
        f"{dataset.handle} no longer has the expected layout ({problem}); pin an earlier "
        "--version, or arrange the files as <split>/<class>/ and run `mritumor data prepare`"
    )
