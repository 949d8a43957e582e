"""Shared fixtures: a clean MRITUMOR_* environment, a CLI runner, YAML files, plugins,
and the factories of shared test data.

The factories (no TensorFlow is imported until a run is built):

- ``synthetic_data`` (session): a synthetic data root per SynthConfig, written once and
  shared by every test that asks for the same config; read-only, ``.copy(target, config)``
  gives a writable one. ``cli_data_root`` is the tiny one most training tests use.
- ``built_run`` (session): ``helpers.build_run`` once per (data root, dropout, seed), read-only.
- ``run_copy`` (per test): a writable copy of a run under ``tmp_path``.
- a bundle: ``helpers.make_bundle(**changes)``, a plain function, so that module-level
  constants and parametrize lists can use it too.

After each test module, the shared data roots and runs are checked unchanged: a test that
writes into one fails at the module's teardown, naming the files.
"""

from __future__ import annotations

import os
import shutil
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mritumor.models.backbones
import mritumor.models.registry
from helpers import CLI_DATA, BuiltRuns, SharedFolders, SyntheticData
from mritumor.core.environment import ENV_PREFIX


@pytest.fixture(autouse=True)
def _clean_mritumor_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No MRITUMOR_* variable from the developer's shell may leak into a test."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


@pytest.fixture(autouse=True)
def _float32_policy_afterwards() -> Iterator[None]:
    """``train.precision: auto`` may pick mixed_bfloat16 on this CPU: never let it leak.

    Keras's global policy outlives the test that set it; later tests build float32 models.
    """
    yield
    keras = sys.modules.get("keras")
    if keras is not None:
        keras.mixed_precision.set_global_policy("float32")


# --------------------------------------------------------------------------- shared data


@pytest.fixture(scope="session")
def _shared_folders() -> SharedFolders:
    return SharedFolders()


@pytest.fixture(autouse=True, scope="module")
def _shared_folders_unchanged(_shared_folders: SharedFolders) -> Iterator[None]:
    """No test module may write into a shared data root or run: they are not copies."""
    yield
    problems = _shared_folders.changes()
    if problems:
        pytest.fail("shared read-only folders were written to:\n" + "\n".join(problems))


@pytest.fixture(scope="session")
def synthetic_data(
    tmp_path_factory: pytest.TempPathFactory, _shared_folders: SharedFolders
) -> SyntheticData:
    """``synthetic_data(config)`` or ``synthetic_data(train=2, ..., seed=4)``: a data root
    written once per SynthConfig in the session (under a folder with a space in its name).

    Read-only, shared with every module that asks for the same config: write into
    ``synthetic_data.copy(target, config)`` instead. ``synthetic_data.summary(config)``
    is what ``write_synthetic_dataset`` returned.
    """
    return SyntheticData(tmp_path_factory.mktemp, _shared_folders)


@pytest.fixture(scope="session")
def cli_data_root(synthetic_data: SyntheticData) -> Path:
    """The tiny standard layout (``helpers.CLI_DATA``: 8/4/4 images per class, 48 px) the
    command-line and training tests train on. Read-only: copy what a test changes."""
    return synthetic_data(**CLI_DATA)


@pytest.fixture(scope="session")
def built_run(
    tmp_path_factory: pytest.TempPathFactory, _shared_folders: SharedFolders
) -> BuiltRuns:
    """``built_run(data_root, dropout=0.0, seed=1)``: a run folder as ``train`` leaves it,
    holding an untrained 32-px small_cnn (``helpers.build_run``), built once per
    (data root, dropout, seed) in the session. Read-only: ``run_copy`` it to change it."""
    return BuiltRuns(tmp_path_factory.mktemp, _shared_folders)


@pytest.fixture
def run_copy(tmp_path: Path) -> Callable[..., Path]:
    """``run_copy(run, "my runs/train-1")``: a writable copy of ``run`` at ``tmp_path / name``
    (default ``run``); the name may hold folders and spaces."""

    def copy(run: Path, name: str = "run") -> Path:
        return Path(shutil.copytree(run, tmp_path / name))

    return copy


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def write_yaml(tmp_path: Path) -> Callable[..., Path]:
    """Write YAML text (dedented) to a file under tmp_path and return its path."""

    def write(text: str, name: str = "config.yaml") -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> mritumor.models.registry.BackboneRegistry:
    """A new global registry that loads built-ins and entry points from scratch.

    Built-in modules and plugins register through the module-level
    ``mritumor.models.registry.register_backbone``, so that name (and ``registry``, which
    the CLI imports) is pointed at the new instance, and the built-in modules are
    dropped from ``sys.modules`` so that importing them registers them again.
    Everything is restored afterwards.
    """
    fresh = mritumor.models.registry.BackboneRegistry()
    monkeypatch.setattr(mritumor.models.registry, "registry", fresh)
    monkeypatch.setattr(mritumor.models.registry, "register_backbone", fresh.register)
    monkeypatch.setattr(mritumor.models.registry, "get_backbone", fresh.get)
    monkeypatch.setattr(mritumor.models.registry, "build_backbone", fresh.build)
    for module in mritumor.models.registry.BUILTIN_MODULES:
        monkeypatch.delitem(sys.modules, module, raising=False)
        attribute = module.rsplit(".", 1)[-1]
        if hasattr(mritumor.models.backbones, attribute):
            monkeypatch.setattr(
                mritumor.models.backbones, attribute, getattr(mritumor.models.backbones, attribute)
            )
    return fresh


@pytest.fixture
def make_plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Path]]:
    """Install a fake distribution with a ``mritumor.backbones`` entry point.

    Creates ``<site>/<dist>-<version>.dist-info/{METADATA,entry_points.txt}`` and
    ``<site>/<module>.py``, and puts ``<site>`` on sys.path, so that
    ``importlib.metadata.entry_points()`` really discovers it.
    """
    modules: list[str] = []

    def make(
        module: str,
        source: str,
        *,
        dist: str = "mritumor-fake-plugin",
        entry_name: str = "fakenet",
        version: str = "1.0",
    ) -> Path:
        site = tmp_path / f"site-{module}"
        info = site / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n", encoding="utf-8"
        )
        (info / "entry_points.txt").write_text(
            f"[mritumor.backbones]\n{entry_name} = {module}\n", encoding="utf-8"
        )
        (site / f"{module}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        assert module not in sys.modules
        modules.append(module)
        monkeypatch.syspath_prepend(str(site))
        return site

    yield make
    for module in modules:
        sys.modules.pop(module, None)


def pytest_configure(config: pytest.Config) -> None:
    # Third-party noise from Keras' TensorFlow backend under NumPy 2; not ours to fix.
    config.addinivalue_line(
        "filterwarnings",
        "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning",
    )
