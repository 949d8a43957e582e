"""Kaggle downloads and their offline fallback (mritumor.data.prepare.fetch); kagglehub is always faked."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import kagglehub
import pytest
import requests
from kagglehub.exceptions import KaggleApiHTTPError, UnauthenticatedError

from fixtures_kaggle import build_masoud, build_navoneel
from mritumor.core.errors import MritumorError, OfflineError, UsageError
from mritumor.data.prepare.fetch import (
    KAGGLE_DATASETS,
    CachedDatasetWarning,
    cached_versions,
    fetch,
    kagglehub_cache_dir,
)

MASOUD = KAGGLE_DATASETS["masoud"].handle


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty kagglehub cache, so that no test sees the developer's."""
    root = tmp_path / "kagglehub"
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(root))
    return root


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch, cache: Path) -> list[str]:
    """Handles asked of kagglehub; by default every download fails as with no network."""
    asked: list[str] = []

    def offline(handle: str) -> str:
        asked.append(handle)
        raise requests.ConnectionError("Failed to resolve 'api.kaggle.com'")

    monkeypatch.setattr(kagglehub, "dataset_download", offline)
    return asked


def serve(monkeypatch: pytest.MonkeyPatch, asked: list[str], answer: Callable[[str], str]) -> None:
    def download(handle: str) -> str:
        asked.append(handle)
        return answer(handle)

    monkeypatch.setattr(kagglehub, "dataset_download", download)


def cache_version(cache: Path, handle: str, version: int, *, complete: bool = True) -> Path:
    """Lay out a download the way kagglehub's cache does."""
    folder = build_masoud(cache / "datasets" / handle / "versions" / str(version))
    if complete:
        (cache / "datasets" / handle / f"{version}.complete").touch()
    return folder


def http_error(status: int) -> KaggleApiHTTPError:
    response = requests.Response()
    response.status_code = status
    return KaggleApiHTTPError(f"{status} Client Error.", response=response)


def test_fetch_downloads_then_prepares(
    monkeypatch: pytest.MonkeyPatch, downloads: list[str], cache: Path, tmp_path: Path
) -> None:
    folder = cache_version(cache, MASOUD, 3)
    serve(monkeypatch, downloads, lambda _: str(folder))
    result = fetch("masoud", tmp_path / "data")
    assert downloads == [MASOUD]
    assert (result.path, result.version, result.from_cache) == (folder, 3, False)
    assert result.summary.kind == "split_class"
    assert set(result.summary.counts) == {"train", "val", "test"}


def test_a_pinned_version_is_asked_for(
    monkeypatch: pytest.MonkeyPatch, downloads: list[str], tmp_path: Path
) -> None:
    serve(monkeypatch, downloads, lambda _: str(build_masoud(tmp_path / "elsewhere")))
    result = fetch("masoud", tmp_path / "data", version=2)
    assert downloads == [f"{MASOUD}/versions/2"]
    assert result.version == 2


def test_navoneel_lands_in_external(
    monkeypatch: pytest.MonkeyPatch, downloads: list[str], tmp_path: Path
) -> None:
    serve(monkeypatch, downloads, lambda _: str(build_navoneel(tmp_path / "download")))
    result = fetch("navoneel", tmp_path / "data")
    assert list(result.summary.counts) == ["external/navoneel"]
    assert result.version is None


def test_offline_falls_back_to_the_newest_cached_version(
    downloads: list[str], cache: Path, tmp_path: Path
) -> None:
    cache_version(cache, MASOUD, 1)
    newest = cache_version(cache, MASOUD, 2)
    cache_version(cache, MASOUD, 5, complete=False)
    with pytest.warns(CachedDatasetWarning, match="cannot reach Kaggle.*version 2"):
        result = fetch("masoud", tmp_path / "data")
    assert (result.path, result.version, result.from_cache) == (newest, 2, True)
    assert result.summary.total > 0


def test_offline_with_a_pinned_version_uses_only_that_version(
    downloads: list[str], cache: Path, tmp_path: Path
) -> None:
    cache_version(cache, MASOUD, 1)
    cache_version(cache, MASOUD, 2)
    with pytest.warns(CachedDatasetWarning):
        assert fetch("masoud", tmp_path / "data", version=1).version == 1
    with pytest.raises(OfflineError, match=r"version 4 of .*has only versions 1, 2"):
        fetch("masoud", tmp_path / "other", version=4)


def test_offline_without_cache_explains_the_manual_route(
    downloads: list[str], tmp_path: Path
) -> None:
    with pytest.raises(OfflineError) as error:
        fetch("sartaj", tmp_path / "data")
    message = str(error.value)
    assert "cannot reach Kaggle" in message
    assert "https://www.kaggle.com/datasets/sartajbhuvaji/brain-tumor-classification-mri" in message
    assert "mritumor data prepare" in message
    assert "\n" not in message
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("failure", [http_error(401), http_error(403), UnauthenticatedError()])
def test_missing_credentials_are_explained(
    monkeypatch: pytest.MonkeyPatch, downloads: list[str], tmp_path: Path, failure: Exception
) -> None:
    def refuse(handle: str) -> str:
        raise failure

    monkeypatch.setattr(kagglehub, "dataset_download", refuse)
    with pytest.raises(MritumorError, match=r"credentials.*KAGGLE_USERNAME.*by hand") as error:
        fetch("masoud", tmp_path / "data")
    assert not isinstance(error.value, OfflineError)


def test_unknown_version_is_reported(
    monkeypatch: pytest.MonkeyPatch, downloads: list[str], tmp_path: Path
) -> None:
    def missing(handle: str) -> str:
        raise http_error(404)

    monkeypatch.setattr(kagglehub, "dataset_download", missing)
    with pytest.raises(MritumorError, match="no such dataset or version"):
        fetch("masoud", tmp_path / "data", version=99)


def test_other_failures_keep_their_traceback(
    monkeypatch: pytest.MonkeyPatch, downloads: list[str], tmp_path: Path
) -> None:
    def broken(handle: str) -> str:
        raise ValueError("bug")

    monkeypatch.setattr(kagglehub, "dataset_download", broken)
    with pytest.raises(ValueError, match="bug"):
        fetch("masoud", tmp_path / "data")


def test_a_changed_upstream_layout_is_reported(
    monkeypatch: pytest.MonkeyPatch, downloads: list[str], tmp_path: Path
) -> None:
    serve(monkeypatch, downloads, lambda _: str(build_navoneel(tmp_path / "download")))
    with pytest.raises(MritumorError, match=r"no longer has the expected layout.*--version"):
        fetch("masoud", tmp_path / "data")


def test_unknown_dataset_lists_the_known_ones(downloads: list[str], tmp_path: Path) -> None:
    with pytest.raises(
        UsageError, match=r"unknown dataset 'br35h'; known: masoud.*navoneel.*sartaj"
    ):
        fetch("br35h", tmp_path / "data")
    assert downloads == []


def test_version_must_be_positive(downloads: list[str], tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="positive"):
        fetch("masoud", tmp_path / "data", version=0)


def test_cache_location(monkeypatch: pytest.MonkeyPatch, cache: Path) -> None:
    assert kagglehub_cache_dir() == cache
    cache_version(cache, MASOUD, 7)
    assert list(cached_versions(MASOUD)) == [7]
    monkeypatch.delenv("KAGGLEHUB_CACHE")
    assert kagglehub_cache_dir() == Path.home() / ".cache" / "kagglehub"
