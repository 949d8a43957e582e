"""Named recipes: a settings layer above the defaults that file, env and flags override."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from helpers import table_names
from mritumor.cli.main import app
from mritumor.config.loading import load_settings
from mritumor.config.recipes import RECIPES, get_recipe, recipe_names
from mritumor.config.schema import Settings, valid_keys
from mritumor.core.errors import ConfigError
from mritumor.models.registry import registry


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda recipe: recipe.name)
def test_every_recipe_resolves_and_sets_only_known_keys(recipe) -> None:
    assert set(recipe.settings) <= set(valid_keys())
    settings = load_settings(None, {"recipe": recipe.name}).settings
    assert settings.recipe == recipe.name
    for key, value in recipe.settings.items():
        section, _, field = key.partition(".")
        assert getattr(getattr(settings, section), field) == value, key
    registry.get(settings.model.backbone)  # a registered backbone
    # Random weights: ImageNet weights cannot be fetched offline, and need 3 channels.
    assert settings.model.weights == "none"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda recipe: recipe.name)
def test_no_recipe_fixes_a_precision(recipe) -> None:
    # bfloat16 is ten times slower on CPUs that emulate it: `auto` decides per machine.
    assert "train.precision" not in recipe.settings
    assert load_settings(None, {"recipe": recipe.name}).settings.train.precision == "auto"


def test_the_recipes_differ_in_what_they_cost() -> None:
    fast, best = get_recipe("cpu-fast"), get_recipe("cpu-best")
    assert fast.settings["train.epochs"] < best.settings["train.epochs"]


def test_file_env_and_flags_each_override_the_recipe(
    write_yaml, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = get_recipe("cpu-best")
    path = write_yaml("recipe: cpu-best\ntrain:\n  lr: 0.005\n")
    monkeypatch.setenv("MRITUMOR_TRAIN__BATCH_SIZE", "16")
    loaded = load_settings(path, {"train.epochs": 3})
    settings = loaded.settings
    assert settings.recipe == "cpu-best"
    assert settings.train.lr == 0.005  # file over recipe
    assert settings.train.batch_size == 16  # env over recipe and defaults
    assert settings.train.epochs == 3  # flag over recipe
    assert settings.model.backbone == recipe.settings["model.backbone"]  # recipe over default
    assert settings.train.weight_decay == recipe.settings["train.weight_decay"]
    assert loaded.origins["model.backbone"] == "recipe cpu-best"
    assert loaded.origins["train.lr"] == "file"
    assert loaded.origins["train.epochs"] == "flag"
    assert loaded.origins["recipe"] == "file"


def test_the_highest_source_names_the_recipe(write_yaml, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_yaml("recipe: cpu-best\n")
    monkeypatch.setenv("MRITUMOR_RECIPE", "cpu-fast")
    assert (
        load_settings(path).settings.train.epochs == get_recipe("cpu-fast").settings["train.epochs"]
    )
    flagged = load_settings(path, {"recipe": "cpu-best"}).settings
    assert flagged.train.epochs == get_recipe("cpu-best").settings["train.epochs"]


def test_recipe_null_turns_a_file_recipe_off(write_yaml) -> None:
    path = write_yaml("recipe: cpu-best\n")
    settings = load_settings(path, {"recipe": None}).settings
    assert settings.recipe is None
    assert settings.model.backbone == Settings().model.backbone


def test_recipe_names_are_case_insensitive() -> None:
    assert load_settings(None, {"recipe": "CPU-Fast"}).settings.recipe == "cpu-fast"


def test_an_unknown_recipe_is_one_error_naming_the_nearest() -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(None, {"recipe": "cpu-bst"})
    message = str(caught.value)
    assert "unknown recipe 'cpu-bst' (did you mean 'cpu-best'?)" in message
    assert all(name in message for name in recipe_names())


def test_recipes_list_shows_every_recipe(runner: CliRunner) -> None:
    result = runner.invoke(app, ["recipes", "list"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert table_names(result.stdout) == recipe_names()


def test_recipes_show_prints_a_config_file_with_the_same_settings(
    runner: CliRunner, tmp_path: Path
) -> None:
    result = runner.invoke(app, ["recipes", "show", "cpu-best"])
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("# recipe cpu-best: ")
    config = tmp_path / "from-recipe.yaml"
    config.write_text(result.stdout, encoding="utf-8")
    from_file = load_settings(config).settings.model_dump(exclude={"recipe"})
    from_recipe = load_settings(None, {"recipe": "cpu-best"}).settings.model_dump(
        exclude={"recipe"}
    )
    assert from_file == from_recipe
    assert "precision" not in yaml.safe_load(result.stdout)["train"]


def test_recipes_show_of_an_unknown_name_exits_2(runner: CliRunner) -> None:
    result = runner.invoke(app, ["recipes", "show", "gpu-best"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: unknown recipe 'gpu-best'")


def test_train_with_a_recipe_records_it_and_the_precision(
    runner: CliRunner, tmp_path: Path, cli_data_root: Path
) -> None:
    runs = tmp_path / "runs"
    result = runner.invoke(
        app,
        [
            "train",
            "--recipe",
            "cpu-fast",
            "--epochs",
            "1",
            "--image-size",
            "32",
            "--batch-size",
            "16",
            "--data",
            str(cli_data_root),
            "--name",
            "recipe run",
            "--set",
            f"paths.runs_dir={runs}",
        ],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    run = runs / "recipe run"
    bundle = json.loads((run / "bundle.json").read_text())
    assert bundle["backbone"] == get_recipe("cpu-fast").settings["model.backbone"]
    assert bundle["channels"] == 1
    assert bundle["extra"]["recipe"] == "cpu-fast"
    precision = bundle["extra"]["precision"]
    assert precision["requested"] == "auto"
    assert precision["policy"] in {"float32", "mixed_bfloat16", "mixed_float16"}
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["recipe"] == "cpu-fast"
    assert config["train"]["epochs"] == 1  # the flag won over the recipe's epochs
    assert f"precision {precision['policy']} (auto: {precision['reason']})" in result.output
