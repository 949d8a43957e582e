"""The backbone registry: names, aliases, globs, entry-point plugins and weights."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import mritumor.models.registry
from helpers import table_names
from mritumor.cli.main import app
from mritumor.core.errors import BackboneError, OfflineError
from mritumor.models.registry import (
    BUILTIN_SOURCE,
    BackboneRegistry,
    PluginWarning,
    registry,
)

FAKE_PLUGIN = """\
    from mritumor.models.registry import register_backbone


    @register_backbone(
        "fakenet",
        aliases=("fake-net",),
        input_size=32,
        last_conv_layer="fake_conv",
        params=224,
        imagenet_weights=False,
        description="A one-layer test backbone.",
    )
    def build_fakenet(inputs, weights):
        import keras
        from keras import layers

        if weights is not None:
            raise ValueError("fakenet has no pretrained weights")
        x = layers.Conv2D(8, 3, strides=2, padding="same", name="fake_conv")(inputs)
        return keras.Model(inputs, x, name="fakenet")
"""

BROKEN_PLUGIN = """\
    import mritumor_dependency_that_is_not_installed  # noqa: F401
"""

CLASHING_PLUGIN = """\
    from mritumor.models.registry import register_backbone


    @register_backbone("B0", input_size=32, last_conv_layer="conv")
    def build_impostor(inputs, weights):
        raise AssertionError("the built-in b0 must win")
"""

WIDE = {"COLUMNS": "200"}


def _dummy_builder(inputs, weights):  # registered in isolated registries only
    return inputs


# --- names, aliases, globs ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("label", "name"),
    [
        ("EfficientNetV2-B0", "v2b0"),
        ("efficientnetv2b0", "v2b0"),
        ("V2B0", "v2b0"),
        ("EfficientNet-B3", "b3"),
        ("CNN", "small_cnn"),
        ("tiny", "small_cnn"),
        ("efficientnetv2-l", "v2l"),
    ],
)
def test_aliases_resolve_case_insensitively(label: str, name: str) -> None:
    assert registry.get(label).name == name


def test_unknown_name_suggests_the_nearest() -> None:
    with pytest.raises(BackboneError) as caught:
        registry.get("smal_cnn")
    assert str(caught.value) == (
        "unknown backbone 'smal_cnn' (did you mean 'small_cnn'?); "
        "`mritumor backbones list` shows them all"
    )


def test_unknown_name_without_a_near_match() -> None:
    with pytest.raises(BackboneError) as caught:
        registry.get("vgg16")
    assert "did you mean" not in str(caught.value)
    assert "unknown backbone 'vgg16'" in str(caught.value)


def test_specs_filter_by_glob() -> None:
    assert [spec.name for spec in registry.specs("*b3")] == ["b3", "v2b3"]
    assert [spec.name for spec in registry.specs("EFFICIENTNET-B0")] == ["b0"]
    assert registry.specs("nothing*") == []
    assert [spec.name for spec in registry.specs()] == registry.names()


def test_builtin_specs() -> None:
    assert registry.names()[0] == "small_cnn"
    spec = registry.get("v2b0")
    assert spec.aliases == ("efficientnetv2b0", "efficientnetv2-b0")
    assert spec.input_size == 224
    assert spec.last_conv_layer == "top_activation"
    assert spec.source == BUILTIN_SOURCE
    assert spec.description == "keras.applications.EfficientNetV2B0"
    small = registry.get("small_cnn")
    assert (small.input_size, small.last_conv_layer, small.params) == (128, "block4_relu", 98_160)
    assert "cnn" in registry.names(include_aliases=True)
    assert "cnn" not in registry.names()


def test_isolated_registry_registers_and_looks_up() -> None:
    isolated = BackboneRegistry(builtin_modules=())
    returned = isolated.register(
        "MyNet", aliases=("My-Net",), input_size=64, last_conv_layer="conv", params=10
    )(_dummy_builder)
    assert returned is _dummy_builder
    assert isolated.names() == ["mynet"]
    spec = isolated.get("MY-NET")
    assert spec.name == "mynet"
    assert spec.aliases == ("my-net",)
    assert spec.builder is _dummy_builder
    assert spec.source == __name__.split(".")[0]
    assert "small_cnn" not in isolated.names()
    assert isolated.build("mynet", "the-inputs", weights=None) == "the-inputs"


def test_isolated_registry_warns_on_a_clashing_alias() -> None:
    isolated = BackboneRegistry(builtin_modules=())
    isolated.register("one", aliases=("shared",), input_size=8, last_conv_layer="c")(_dummy_builder)
    with pytest.warns(PluginWarning, match=r"'two' .* clashes with 'shared'"):
        isolated.register("two", aliases=("shared",), input_size=8, last_conv_layer="c")(
            _dummy_builder
        )
    assert isolated.names() == ["one"]
    assert isolated.get("shared").name == "one"


# --- plugins through real entry points ---------------------------------------------------


def test_plugin_is_discovered_through_its_entry_point(fresh_registry, make_plugin) -> None:
    make_plugin("mritumor_fake_plugin", FAKE_PLUGIN)
    names = fresh_registry.names()
    # built-ins first (re-registered on the fresh registry), then the plugin
    assert names[0] == "small_cnn"
    assert names[-1] == "fakenet"
    assert set(names) >= {"small_cnn", "b0", "v2l"}
    spec = fresh_registry.get("Fake-Net")
    assert spec.name == "fakenet"
    assert spec.source == "mritumor-fake-plugin"
    assert spec.params == 224
    assert spec.imagenet_weights is False
    assert fresh_registry.get("b0").source == BUILTIN_SOURCE
    assert "mritumor_fake_plugin" in sys.modules


def test_plugin_backbone_builds(fresh_registry, make_plugin) -> None:
    import keras

    make_plugin("mritumor_fake_plugin", FAKE_PLUGIN)
    keras.backend.clear_session()
    model = fresh_registry.build("fakenet", keras.Input((32, 32, 3)), weights=None)
    assert tuple(model.output.shape) == (None, 16, 16, 8)
    assert model.count_params() == fresh_registry.get("fakenet").params
    assert isinstance(model.get_layer("fake_conv"), keras.layers.Conv2D)


def test_plugin_shows_in_the_cli(fresh_registry, make_plugin, runner: CliRunner) -> None:
    make_plugin("mritumor_fake_plugin", FAKE_PLUGIN)
    result = runner.invoke(app, ["backbones", "list"], env=WIDE)
    assert result.exit_code == 0, result.output
    names = table_names(result.stdout)
    assert "fakenet" in names
    assert "small_cnn" in names
    row = next(line for line in result.stdout.splitlines() if "│ fakenet " in line)
    assert "fake-net" in row
    assert "mritumor-fake-plugin" in row
    assert "32 px" in row

    only = runner.invoke(app, ["backbones", "list", "fake*"], env=WIDE)
    assert only.exit_code == 0, only.output
    assert table_names(only.stdout) == ["fakenet"]


def test_plugin_that_fails_to_import_is_skipped(fresh_registry, make_plugin) -> None:
    make_plugin("mritumor_fake_plugin", FAKE_PLUGIN)
    make_plugin(
        "mritumor_broken_plugin", BROKEN_PLUGIN, dist="mritumor-broken-plugin", entry_name="broken"
    )
    with pytest.warns(PluginWarning) as caught:
        names = fresh_registry.names()
    messages = [str(warning.message) for warning in caught]
    assert len(messages) == 1
    assert "backbone plugin 'broken' from mritumor-broken-plugin failed to load" in messages[0]
    assert "ModuleNotFoundError" in messages[0]
    assert "fakenet" in names
    assert "small_cnn" in names
    assert "v2b0" in names


def test_broken_plugin_does_not_break_the_cli(
    fresh_registry, make_plugin, runner: CliRunner
) -> None:
    make_plugin(
        "mritumor_broken_plugin", BROKEN_PLUGIN, dist="mritumor-broken-plugin", entry_name="broken"
    )
    with pytest.warns(PluginWarning, match="failed to load"):
        result = runner.invoke(app, ["backbones", "list"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert {"small_cnn", "b0", "v2l"} <= set(table_names(result.stdout))


def test_plugin_cannot_shadow_a_builtin(fresh_registry, make_plugin) -> None:
    make_plugin(
        "mritumor_clashing_plugin", CLASHING_PLUGIN, dist="mritumor-clash", entry_name="clash"
    )
    with pytest.warns(PluginWarning, match=r"backbone 'b0' from mritumor-clash clashes with"):
        spec = fresh_registry.get("b0")
    assert spec.source == BUILTIN_SOURCE
    assert spec.description == "keras.applications.EfficientNetB0"
    assert fresh_registry.names().count("b0") == 1


def test_fresh_registry_fixture_replaces_the_global_one(fresh_registry) -> None:
    assert mritumor.models.registry.registry is fresh_registry
    assert "small_cnn" in fresh_registry.names()
    # the re-import registered the built-ins on the fresh registry, not the original
    assert fresh_registry.get("small_cnn").builder is not registry.get("small_cnn").builder


def test_global_registry_is_unchanged_after_plugin_tests() -> None:
    assert mritumor.models.registry.registry is registry
    assert "fakenet" not in registry.names()
    small_cnn = importlib.import_module("mritumor.models.backbones.small_cnn")
    assert registry.get("small_cnn").builder is small_cnn.build_small_cnn


# --- weights -----------------------------------------------------------------------------


@pytest.mark.parametrize("weights", ["none", "None", None])
def test_build_without_weights(weights) -> None:
    import keras

    keras.backend.clear_session()
    model = registry.build("small_cnn", keras.Input((32, 32, 3)), weights=weights)
    assert tuple(model.output.shape) == (None, 4, 4, 128)
    assert model.name == "small_cnn"


def test_build_from_a_weights_file(tmp_path: Path) -> None:
    import keras
    import numpy as np

    keras.backend.clear_session()
    first = registry.build("small_cnn", keras.Input((32, 32, 3)), weights=None)
    path = tmp_path / "small cnn.weights.h5"
    first.save_weights(path)
    second = registry.build("small_cnn", keras.Input((32, 32, 3)), weights=path)
    for a, b in zip(first.get_weights(), second.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)
    third = registry.build("small_cnn", keras.Input((32, 32, 3)), weights=str(path))
    np.testing.assert_array_equal(first.get_weights()[0], third.get_weights()[0])


def test_missing_weights_file(tmp_path: Path) -> None:
    import keras

    path = tmp_path / "absent.weights.h5"
    with pytest.raises(BackboneError) as caught:
        registry.build("small_cnn", keras.Input((32, 32, 3)), weights=path)
    assert str(caught.value) == f"weights file {path} does not exist"


@pytest.mark.filterwarnings("ignore:Skipping nested container:UserWarning")
def test_weights_file_that_does_not_fit(tmp_path: Path) -> None:
    import keras

    keras.backend.clear_session()
    path = tmp_path / "gray.weights.h5"
    registry.build("small_cnn", keras.Input((32, 32, 1)), weights=None).save_weights(path)
    with pytest.raises(BackboneError, match=r"cannot load .*gray\.weights\.h5.* 'small_cnn'"):
        registry.build("small_cnn", keras.Input((32, 32, 3)), weights=path)


def test_imagenet_needs_three_channels() -> None:
    import keras

    with pytest.raises(BackboneError) as caught:
        registry.build("v2b0", keras.Input((32, 32, 1)), weights="imagenet")
    assert str(caught.value) == (
        "ImageNet weights need 3 input channels, got 1; "
        "set data.channels to 3 or model.weights to none"
    )


def test_failed_imagenet_download_is_an_offline_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import keras
    from keras.src.applications import efficientnet, efficientnet_v2
    from keras.src.utils import file_utils

    # The applications fetch weights through the module attribute, so patching it there
    # reaches them.
    assert efficientnet.file_utils is file_utils
    assert efficientnet_v2.file_utils is file_utils
    calls = []

    def no_network(*args, **kwargs):
        calls.append(kwargs.get("origin", args[1] if len(args) > 1 else None))
        raise Exception(
            "URL fetch failure on https://storage.googleapis.com/x.h5: None -- "
            "[Errno -3] Temporary failure in name resolution"
        )

    monkeypatch.setattr(file_utils, "get_file", no_network)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras home"))
    keras.backend.clear_session()
    with pytest.raises(OfflineError) as caught:
        registry.build("v2b0", keras.Input((32, 32, 3)), weights="imagenet")
    assert len(calls) == 1
    message = str(caught.value)
    assert message.startswith("could not download ImageNet weights for 'v2b0' (URL fetch failure")
    assert "(URL fetch failure on https://storage.googleapis.com/x.h5: None" in message
    # The offline alternatives are named: from scratch, a recipe, a local weights file.
    assert "--weights none" in message
    assert "--recipe cpu-fast" in message and "mritumor recipes list" in message
    assert "a local .weights.h5 file with --weights PATH" in message
    assert message.endswith(f"into {tmp_path / 'keras home' / 'models'}")
    assert "\n" not in message
    assert OfflineError.exit_code == 1


def test_other_build_errors_are_not_disguised_as_offline(monkeypatch) -> None:
    import keras
    from keras.src.utils import file_utils

    def broken(*args, **kwargs):
        raise RuntimeError("something else")

    monkeypatch.setattr(file_utils, "get_file", broken)
    keras.backend.clear_session()
    with pytest.raises(RuntimeError, match="something else"):
        registry.build("v2b0", keras.Input((32, 32, 3)), weights="imagenet")


def test_small_cnn_has_no_imagenet_weights() -> None:
    # The default model.weights is "imagenet": choosing small_cnn without changing it must
    # give a one-line BackboneError (exit 2) before anything is built, not a traceback.
    import keras

    assert registry.get("small_cnn").imagenet_weights is False
    assert registry.get("v2b0").imagenet_weights is True
    with pytest.raises(BackboneError) as caught:
        registry.build("small_cnn", keras.Input((32, 32, 3)), weights="imagenet")
    assert str(caught.value) == (
        "backbone 'small_cnn' has no ImageNet weights; set model.weights to none "
        "(or a .weights.h5 file)"
    )
    assert BackboneError.exit_code == 2


def test_plugin_without_imagenet_weights_is_refused_before_building() -> None:
    isolated = BackboneRegistry(builtin_modules=())
    calls = []

    def builder(inputs, weights):
        calls.append(weights)
        return inputs

    isolated.register("plain", input_size=8, last_conv_layer="c", imagenet_weights=False)(builder)
    with pytest.raises(BackboneError, match="'plain' has no ImageNet weights"):
        isolated.build("plain", object(), weights="ImageNet")
    assert calls == []
    assert isolated.build("plain", "x", weights="none") == "x"
    assert calls == [None]
