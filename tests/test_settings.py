"""Settings resolution: defaults < YAML file < MRITUMOR_* env < flags, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mritumor.config.loading import load_settings, parse_assignment
from mritumor.config.schema import Settings, env_var_name, valid_keys
from mritumor.core.classes import CLASS_NAMES
from mritumor.core.errors import ConfigError, UsageError

# --- defaults and precedence -------------------------------------------------------------


def test_defaults_without_any_source() -> None:
    loaded = load_settings()
    assert loaded.settings == Settings()
    assert loaded.settings.train.epochs == 30
    assert loaded.settings.seed == 42
    assert loaded.settings.data.class_names == list(CLASS_NAMES)
    assert loaded.config_file is None
    assert loaded.origins == {}


def test_file_overrides_defaults(write_yaml) -> None:
    path = write_yaml(
        """\
        seed: 7
        train:
          epochs: 5
        """
    )
    loaded = load_settings(path)
    assert loaded.settings.seed == 7
    assert loaded.settings.train.epochs == 5
    assert loaded.settings.train.batch_size == 32  # untouched default
    assert loaded.config_file == path
    assert loaded.origins == {"seed": "file", "train.epochs": "file"}


def test_env_overrides_file(write_yaml, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_yaml("train:\n  epochs: 5\n  batch_size: 8\n")
    monkeypatch.setenv("MRITUMOR_TRAIN__EPOCHS", "7")
    loaded = load_settings(path)
    assert loaded.settings.train.epochs == 7
    assert loaded.settings.train.batch_size == 8  # the file still applies to the other key
    assert loaded.origins == {
        "train.epochs": "env MRITUMOR_TRAIN__EPOCHS",
        "train.batch_size": "file",
    }


def test_flags_override_env_and_file(write_yaml, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_yaml("train:\n  epochs: 5\n  batch_size: 8\nseed: 1\n")
    monkeypatch.setenv("MRITUMOR_TRAIN__EPOCHS", "7")
    monkeypatch.setenv("MRITUMOR_SEED", "3")
    loaded = load_settings(path, {"train.epochs": 9})
    assert loaded.settings.train.epochs == 9
    assert loaded.settings.seed == 3
    assert loaded.settings.train.batch_size == 8
    assert loaded.origins == {
        "train.epochs": "flag",
        "seed": "env MRITUMOR_SEED",
        "train.batch_size": "file",
    }


def test_flags_override_defaults_without_file() -> None:
    loaded = load_settings(None, {"model.backbone": "small_cnn", "model.dropout": 0.5})
    assert loaded.settings.model.backbone == "small_cnn"
    assert loaded.settings.model.dropout == 0.5
    assert loaded.origins == {"model.backbone": "flag", "model.dropout": "flag"}


def test_env_var_names_derive_from_the_field_path() -> None:
    assert env_var_name("train.epochs") == "MRITUMOR_TRAIN__EPOCHS"
    assert env_var_name("seed") == "MRITUMOR_SEED"
    assert env_var_name("data.class_names") == "MRITUMOR_DATA__CLASS_NAMES"


def test_env_list_values_are_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRITUMOR_DATA__CLASS_NAMES", '["a","no_tumor"]')
    loaded = load_settings()
    assert loaded.settings.data.class_names == ["a", "no_tumor"]
    assert loaded.origins == {"data.class_names": "env MRITUMOR_DATA__CLASS_NAMES"}


def test_env_list_that_is_not_json_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRITUMOR_DATA__CLASS_NAMES", "a,no_tumor")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "list and mapping values in MRITUMOR_* variables are JSON" in message
    assert "MRITUMOR_DATA__CLASS_NAMES='[" in message
    assert "\n" not in message


def test_env_value_out_of_range_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRITUMOR_TRAIN__EPOCHS", "-2")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    message = str(caught.value)
    assert "'train.epochs'" in message
    assert "MRITUMOR_TRAIN__EPOCHS" in message


def test_control_variables_are_not_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRITUMOR_CONFIG", "/nonexistent.yaml")
    monkeypatch.setenv("MRITUMOR_DEBUG", "1")
    loaded = load_settings()
    assert loaded.settings == Settings()
    assert loaded.origins == {}


# --- the YAML file -----------------------------------------------------------------------


def test_empty_file_is_valid(write_yaml) -> None:
    path = write_yaml("")
    loaded = load_settings(path)
    assert loaded.settings == Settings()
    assert loaded.origins == {}


def test_comment_only_file_is_valid(write_yaml) -> None:
    path = write_yaml("# nothing set yet\n")
    assert load_settings(path).settings == Settings()


def test_section_with_every_key_deleted_is_valid(write_yaml) -> None:
    # The template says "Delete any key to use its default": deleting (or commenting out)
    # every key of a section leaves the bare header, which YAML reads as `train: null`.
    path = write_yaml(
        """\
        train:
          # epochs: 3
        seed: 1
        """
    )
    loaded = load_settings(path)
    assert loaded.settings.train == Settings().train
    assert loaded.settings.seed == 1


def test_file_that_is_a_list_is_rejected(write_yaml) -> None:
    path = write_yaml("- train\n- data\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(caught.value) == (
        f"{path}: expected a mapping of sections (data:, train:, ...), found a list"
    )


def test_invalid_yaml_names_the_line(write_yaml) -> None:
    path = write_yaml("seed: 1\ntrain:\n  epochs: 3\n bad: [\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: not valid YAML at line 4: ")
    assert "\n" not in message


def test_missing_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert str(caught.value) == (
        f"config file {path} does not exist (check --config or MRITUMOR_CONFIG)"
    )


def test_config_error_is_a_usage_error_with_exit_code_2() -> None:
    assert issubclass(ConfigError, UsageError)
    assert ConfigError.exit_code == 2


def test_unknown_section_suggests_the_nearest(write_yaml) -> None:
    path = write_yaml("trian: {}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert message == f"unknown key 'trian' in {path} (did you mean 'train'?)"
    assert "\n" not in message


def test_unknown_nested_key_suggests_the_nearest(write_yaml) -> None:
    path = write_yaml("train:\n  epochz: 3\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert (
        str(caught.value) == f"unknown key 'train.epochz' in {path} (did you mean 'train.epochs'?)"
    )


def test_out_of_range_value_names_key_and_file(write_yaml) -> None:
    path = write_yaml("train:\n  epochs: -1\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert message == (
        f"invalid value -1 for 'train.epochs' in {path}: Input should be greater than or equal to 1"
    )


def test_several_problems_are_counted_on_one_line(write_yaml) -> None:
    path = write_yaml("train:\n  epochs: -1\n  batch_size: 0\n  lr: -1\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    # the first problem in field order (batch_size is declared before epochs)
    assert message.startswith(f"invalid value 0 for 'train.batch_size' in {path}: ")
    assert message.endswith("(and 2 more problems)")
    assert "\n" not in message


# --- the environment ---------------------------------------------------------------------


def test_unknown_nested_env_var_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRITUMOR_TRAIN__EPOCHZ", "3")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        "unknown key 'train.epochz' (from env MRITUMOR_TRAIN__EPOCHZ) "
        "(did you mean 'train.epochs'?)"
    )


def test_unknown_top_level_env_var_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MRITUMOR_TRIAN__EPOCHS", "3")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == (
        "unknown environment variable MRITUMOR_TRIAN__EPOCHS "
        "(did you mean 'MRITUMOR_TRAIN__EPOCHS'?)"
    )


# --- cross-field validation --------------------------------------------------------------


def test_negative_class_must_be_a_class() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"data.negative_class": "healthy"})
    message = str(caught.value)
    assert "'data'" in message
    assert "(from flag)" in message
    assert "negative_class 'healthy' is not one of class_names" in message


def test_negative_class_checked_against_changed_class_names(monkeypatch) -> None:
    monkeypatch.setenv("MRITUMOR_DATA__CLASS_NAMES", '["tumour","healthy"]')
    with pytest.raises(ConfigError, match="negative_class 'no_tumor' is not one of"):
        load_settings()
    loaded = load_settings(None, {"data.negative_class": "healthy"})
    assert loaded.settings.data.class_names == ["tumour", "healthy"]
    assert loaded.settings.data.negative_class == "healthy"


def test_duplicate_class_names_are_rejected(write_yaml) -> None:
    path = write_yaml("data:\n  class_names: [a, no_tumor, a]\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    message = str(caught.value)
    assert "'data.class_names'" in message
    assert str(path) in message
    assert "class names must be unique; repeated: a" in message


@pytest.mark.parametrize(("val_size", "holdout_size"), [(0.5, 0.5), (0.7, 0.4)])
def test_finetune_splits_must_leave_training_data(val_size: float, holdout_size: float) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"finetune.val_size": val_size, "finetune.holdout_size": holdout_size})
    assert str(caught.value) == (
        "'finetune' (from flag): val_size + holdout_size must leave part of the "
        "external set to train on"
    )


def test_finetune_splits_just_below_one_are_accepted() -> None:
    loaded = load_settings(None, {"finetune.val_size": 0.4, "finetune.holdout_size": 0.5})
    assert loaded.settings.finetune.val_size == 0.4
    assert loaded.settings.finetune.holdout_size == 0.5


# --- helpers for flags -------------------------------------------------------------------


def test_parse_assignment_reads_values_as_yaml() -> None:
    key, value = parse_assignment("train.epochs=3")
    assert (key, value) == ("train.epochs", 3)
    assert type(value) is int
    assert parse_assignment("data.class_names=[a,b]") == ("data.class_names", ["a", "b"])
    assert parse_assignment("model.dropout=0.25") == ("model.dropout", 0.25)
    assert parse_assignment(" seed = 5") == ("seed", 5)
    assert parse_assignment("paths.data_dir=my data") == ("paths.data_dir", "my data")
    assert parse_assignment("model.weights=a=b.h5") == ("model.weights", "a=b.h5")


@pytest.mark.parametrize("text", ["train.epochs", "=3", "", "  =x"])
def test_parse_assignment_without_key_or_equals_sign(text: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_assignment(text)
    assert str(caught.value) == (
        f"--set expects KEY=VALUE, for example train.epochs=5; got {text!r}"
    )


def test_valid_keys_expand_sections() -> None:
    keys = valid_keys()
    assert "train.epochs" in keys
    assert "seed" in keys
    assert "data.class_names" in keys
    assert "finetune.holdout_size" in keys
    assert "train" not in keys  # sections are expanded, not listed
    assert len(keys) == len(set(keys))


# --- property ----------------------------------------------------------------------------


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    epochs=st.integers(min_value=1, max_value=10**6),
    batch_size=st.integers(min_value=1, max_value=4096),
    dropout=st.floats(min_value=0.0, max_value=1.0, exclude_max=True, allow_nan=False),
)
def test_file_values_round_trip(
    tmp_path: Path, epochs: int, batch_size: int, dropout: float
) -> None:
    path = tmp_path / "property.yaml"
    path.write_text(
        yaml.safe_dump(
            {"train": {"epochs": epochs, "batch_size": batch_size}, "model": {"dropout": dropout}}
        ),
        encoding="utf-8",
    )
    loaded = load_settings(path)
    assert loaded.settings.train.epochs == epochs
    assert loaded.settings.train.batch_size == batch_size
    assert loaded.settings.model.dropout == dropout
    assert loaded.origins == {
        "train.epochs": "file",
        "train.batch_size": "file",
        "model.dropout": "file",
    }


def test_a_config_of_shared_yaml_aliases_is_read_once_per_node(tmp_path: Path) -> None:
    """Twelve levels of ten aliases each: walking every path would take 10**12 steps."""
    lines = ["a0: &a0 [1]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 12)]
    path = tmp_path / "aliases.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="unknown key 'a0'"):
        load_settings(path)
