"""mritumor.config.yaml_file (template and resolved YAML) and the `mritumor` CLI: config,
backbones."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from helpers import table_names
from mritumor import __version__
from mritumor.cli.main import app
from mritumor.config.loading import load_settings
from mritumor.config.schema import Settings, valid_keys
from mritumor.config.yaml_file import TEMPLATE_HEADER, resolved_yaml, settings_yaml, template_yaml

WIDE = {"COLUMNS": "200"}
DEFAULTS = Settings().model_dump(mode="json")
LEAF_LINE = re.compile(r"^(?P<indent>\s*)(?P<key>[a-z_0-9]+): (?P<value>\S.*)$")
ALL_BACKBONES = {
    "small_cnn",
    *(f"b{i}" for i in range(8)),
    "v2b0",
    "v2b1",
    "v2b2",
    "v2b3",
    "v2s",
    "v2m",
    "v2l",
}
V2_BACKBONES = {"v2b0", "v2b1", "v2b2", "v2b3", "v2s", "v2m", "v2l"}


def assert_one_error_line(result, *fragments: str) -> str:
    """Exit 2, nothing on stdout, one `error:` line on stderr containing the fragments."""
    assert result.exit_code == 2, result.output
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith("error: ")
    for fragment in fragments:
        assert fragment in line
    assert "Traceback" not in result.output
    return line


# --- config/yaml_file.py ----------------------------------------------------------------


def test_template_parses_to_the_defaults() -> None:
    assert yaml.safe_load(template_yaml()) == DEFAULTS


def test_template_starts_with_the_header() -> None:
    assert template_yaml().startswith(TEMPLATE_HEADER)


def test_template_comments_every_leaf_key() -> None:
    lines = template_yaml().splitlines()
    leaves = 0
    for index, line in enumerate(lines):
        if LEAF_LINE.match(line):
            leaves += 1
            previous = lines[index - 1].strip()
            assert previous.startswith("# "), f"no comment before {line!r}"
            assert len(previous) > 4
    assert leaves == len(valid_keys())


def test_template_comments_every_section() -> None:
    lines = template_yaml().splitlines()
    sections = [i for i, line in enumerate(lines) if re.fullmatch(r"[a-z_]+:", line)]
    assert (
        len(sections) == len(Settings.model_fields) - 2
    )  # every section; seed, recipe are scalars
    for index in sections:
        assert lines[index - 1].startswith("# ")


def test_resolved_yaml_marks_explicit_keys(write_yaml, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_yaml("train:\n  epochs: 5\ndata:\n  class_names: [a, no_tumor]\n")
    monkeypatch.setenv("MRITUMOR_SEED", "3")
    loaded = load_settings(path, {"train.batch_size": 4})
    text = resolved_yaml(loaded)
    lines = text.splitlines()
    assert "seed: 3  # from env MRITUMOR_SEED" in lines
    assert f"  epochs: 5  # from file {path}" in lines
    assert f"  class_names: [a, no_tumor]  # from file {path}" in lines
    assert "  batch_size: 4  # from flag" in lines
    assert sum("# from" in line for line in lines) == 4
    assert "  epochs: 10" in lines  # finetune.epochs, not set, no comment
    assert yaml.safe_load(text) == loaded.settings.model_dump(mode="json")


def test_resolved_yaml_without_explicit_keys_has_no_comments() -> None:
    text = resolved_yaml(load_settings())
    assert "#" not in text
    assert yaml.safe_load(text) == DEFAULTS


@pytest.mark.parametrize(
    "value",
    ["data #1", "on", "null", "a: b", "with space", "~", "1e3", "[x]", "-", "x\ny", "ü"],
)
def test_resolved_yaml_quotes_awkward_strings(value: str) -> None:
    loaded = load_settings(None, {"paths.data_dir": value, "model.weights": value})
    parsed = yaml.safe_load(resolved_yaml(loaded))
    assert parsed["paths"]["data_dir"] == value
    assert parsed["model"]["weights"] == value


def test_settings_yaml_round_trips() -> None:
    settings = load_settings(None, {"train.epochs": 3, "train.focal_alpha": [1.0, 2.0]}).settings
    text = settings_yaml(settings)
    assert "#" not in text
    assert Settings.model_validate(yaml.safe_load(text)) == settings


# --- root app ----------------------------------------------------------------------------


def test_help_lists_the_command_groups(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--help"], env=WIDE)
    assert result.exit_code == 0
    assert "config" in result.stdout
    assert "backbones" in result.stdout
    assert "--config" in result.stdout
    assert "MRITUMOR_CONFIG" in result.stdout


def test_short_help_option(runner: CliRunner) -> None:
    result = runner.invoke(app, ["-h"], env=WIDE)
    assert result.exit_code == 0
    assert "backbones" in result.stdout


def test_version(runner: CliRunner) -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"mritumor {__version__}\n"


# --- config show -------------------------------------------------------------------------


def test_config_show_prints_the_defaults(runner: CliRunner) -> None:
    result = runner.invoke(app, ["config", "show"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0] == (
        f"# mritumor {__version__} resolved settings (config file: none)"
    )
    assert yaml.safe_load(result.stdout) == DEFAULTS
    assert "# from" not in result.stdout
    assert result.stderr == ""


def test_config_show_marks_env_values(runner: CliRunner) -> None:
    result = runner.invoke(app, ["config", "show"], env={"MRITUMOR_TRAIN__EPOCHS": "3"})
    assert result.exit_code == 0, result.output
    assert "  epochs: 3  # from env MRITUMOR_TRAIN__EPOCHS" in result.stdout.splitlines()
    parsed = yaml.safe_load(result.stdout)
    assert parsed["train"]["epochs"] == 3
    assert parsed["finetune"]["epochs"] == 10


def test_config_show_marks_flag_values(runner: CliRunner) -> None:
    result = runner.invoke(app, ["config", "show", "--set", "train.epochs=7"])
    assert result.exit_code == 0, result.output
    assert "  epochs: 7  # from flag" in result.stdout.splitlines()
    assert yaml.safe_load(result.stdout)["train"]["epochs"] == 7


def test_config_show_repeated_set(runner: CliRunner) -> None:
    result = runner.invoke(
        app,
        ["config", "show", "--set", "train.epochs=7", "--set", "data.class_names=[x, no_tumor]"],
    )
    assert result.exit_code == 0, result.output
    parsed = yaml.safe_load(result.stdout)
    assert parsed["train"]["epochs"] == 7
    assert parsed["data"]["class_names"] == ["x", "no_tumor"]


def test_config_show_flag_beats_env_and_file(runner: CliRunner, write_yaml) -> None:
    path = write_yaml("train:\n  epochs: 5\n")
    result = runner.invoke(
        app,
        ["--config", str(path), "config", "show", "--set", "train.epochs=9"],
        env={"MRITUMOR_TRAIN__EPOCHS": "7"},
    )
    assert result.exit_code == 0, result.output
    assert "  epochs: 9  # from flag" in result.stdout.splitlines()


def test_config_show_set_null_overrides_the_file(runner: CliRunner, write_yaml) -> None:
    # An explicit `--set KEY=null` is a value the user gave; it must not be dropped
    # as if the flag had not been passed.
    path = write_yaml("inference:\n  threshold: 0.4\n")
    result = runner.invoke(
        app, ["--config", str(path), "config", "show", "--set", "inference.threshold=null"]
    )
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["inference"]["threshold"] is None
    assert "  threshold: null  # from flag" in result.stdout.splitlines()


def test_config_show_set_without_equals_sign(runner: CliRunner) -> None:
    result = runner.invoke(app, ["config", "show", "--set", "train.epochs"])
    assert_one_error_line(result, "--set expects KEY=VALUE", "'train.epochs'")


def test_config_show_env_error_is_one_line(runner: CliRunner) -> None:
    result = runner.invoke(app, ["config", "show"], env={"MRITUMOR_TRIAN__EPOCHS": "3"})
    assert_one_error_line(
        result, "unknown environment variable MRITUMOR_TRIAN__EPOCHS", "MRITUMOR_TRAIN__EPOCHS"
    )


# --- config init -------------------------------------------------------------------------


def test_config_init_then_show(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    result = runner.invoke(app, ["config", "init", str(path)], env=WIDE)
    assert result.exit_code == 0, result.output
    assert "Wrote" in result.stdout
    assert path.read_text(encoding="utf-8") == template_yaml()

    shown = runner.invoke(app, ["--config", str(path), "config", "show"])
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.splitlines()[0].endswith(f"(config file: {path})")
    assert yaml.safe_load(shown.stdout) == DEFAULTS
    # every key is set explicitly by the template file
    assert f"  epochs: 30  # from file {path}" in shown.stdout.splitlines()


def test_config_init_creates_missing_parent_folders(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "x.yaml"
    result = runner.invoke(app, ["config", "init", str(path)])
    assert result.exit_code == 0, result.output
    assert path.read_text(encoding="utf-8") == template_yaml()
    assert [p.name for p in path.parent.iterdir()] == ["x.yaml"]  # no temp file left


def test_config_init_refuses_to_overwrite(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("seed: 1\n", encoding="utf-8")
    result = runner.invoke(app, ["config", "init", str(path)])
    assert_one_error_line(result, str(path), "already exists", "--force")
    assert path.read_text(encoding="utf-8") == "seed: 1\n"


def test_config_init_force_overwrites(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("seed: 1\n", encoding="utf-8")
    result = runner.invoke(app, ["config", "init", str(path), "--force"])
    assert result.exit_code == 0, result.output
    assert path.read_text(encoding="utf-8") == template_yaml()


def test_config_init_refuses_a_directory(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(app, ["config", "init", str(tmp_path)])
    assert_one_error_line(result, "is a directory")
    assert list(tmp_path.iterdir()) == []


# --- --config errors and sources ---------------------------------------------------------


def test_unknown_section_is_one_error_line(runner: CliRunner, write_yaml) -> None:
    path = write_yaml("trian: {}\n", name="bad.yaml")
    result = runner.invoke(app, ["--config", str(path), "config", "show"])
    line = assert_one_error_line(result, "'trian'", "did you mean 'train'", "bad.yaml")
    assert line == f"error: unknown key 'trian' in {path} (did you mean 'train'?)"


def test_out_of_range_is_one_error_line(runner: CliRunner, write_yaml) -> None:
    path = write_yaml("train:\n  epochs: -1\n", name="bad.yaml")
    result = runner.invoke(app, ["--config", str(path), "config", "show"])
    assert_one_error_line(result, "'train.epochs'", "bad.yaml", "-1")


def test_missing_config_file_is_one_error_line(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    result = runner.invoke(app, ["--config", str(path), "config", "show"])
    assert_one_error_line(result, str(path), "does not exist")


def test_config_path_with_spaces(runner: CliRunner, write_yaml) -> None:
    path = write_yaml("train:\n  epochs: 4\n", name="my configs/run 1.yaml")
    result = runner.invoke(app, ["--config", str(path), "config", "show"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].endswith(f"(config file: {path})")
    assert f"  epochs: 4  # from file {path}" in result.stdout.splitlines()
    assert yaml.safe_load(result.stdout)["train"]["epochs"] == 4


def test_short_config_option(runner: CliRunner, write_yaml) -> None:
    path = write_yaml("seed: 11\n")
    result = runner.invoke(app, ["-c", str(path), "config", "show"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["seed"] == 11


def test_config_env_var_works_like_the_option(runner: CliRunner, write_yaml) -> None:
    path = write_yaml("train:\n  epochs: 4\n", name="env config.yaml")
    result = runner.invoke(app, ["config", "show"], env={"MRITUMOR_CONFIG": str(path)})
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[0].endswith(f"(config file: {path})")
    assert f"  epochs: 4  # from file {path}" in result.stdout.splitlines()


def test_config_option_beats_config_env_var(runner: CliRunner, write_yaml) -> None:
    env_path = write_yaml("seed: 1\n", name="env.yaml")
    flag_path = write_yaml("seed: 2\n", name="flag.yaml")
    result = runner.invoke(
        app, ["--config", str(flag_path), "config", "show"], env={"MRITUMOR_CONFIG": str(env_path)}
    )
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.stdout)["seed"] == 2


def test_debug_adds_the_traceback_and_keeps_the_exit_code(runner: CliRunner, write_yaml) -> None:
    path = write_yaml("trian: {}\n", name="bad.yaml")
    result = runner.invoke(app, ["--debug", "--config", str(path), "config", "show"])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "Traceback" in result.stderr
    assert "load_settings" in result.stderr  # the frames of the library call
    lines = result.stderr.strip().splitlines()
    assert "ConfigError: unknown key 'trian'" in result.stderr  # rich may wrap this line
    assert lines[-1] == f"error: unknown key 'trian' in {path} (did you mean 'train'?)"


def test_debug_env_var_adds_the_traceback(runner: CliRunner, write_yaml) -> None:
    path = write_yaml("trian: {}\n", name="bad.yaml")
    result = runner.invoke(
        app, ["--config", str(path), "config", "show"], env={"MRITUMOR_DEBUG": "1"}
    )
    assert result.exit_code == 2
    assert "Traceback" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: unknown key 'trian'")


def test_without_debug_there_is_no_traceback(runner: CliRunner, write_yaml) -> None:
    path = write_yaml("trian: {}\n", name="bad.yaml")
    result = runner.invoke(app, ["--config", str(path), "config", "show"])
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.stderr
    assert "ConfigError" not in result.stderr


# --- backbones list ----------------------------------------------------------------------


def test_backbones_list_shows_every_builtin(runner: CliRunner) -> None:
    result = runner.invoke(app, ["backbones", "list"], env=WIDE)
    assert result.exit_code == 0, result.output
    names = table_names(result.stdout)
    assert set(names) >= ALL_BACKBONES
    assert len(names) == len(set(names))
    row = next(line for line in result.stdout.splitlines() if "│ v2b0 " in line)
    assert "efficientnetv2-b0" in row
    assert "224 px" in row
    assert "5.92 M" in row
    assert "built-in" in row
    row = next(line for line in result.stdout.splitlines() if "│ small_cnn " in line)
    assert "cnn, tiny" in row
    assert "0.10 M" in row


def test_backbones_list_filters_by_glob(runner: CliRunner) -> None:
    result = runner.invoke(app, ["backbones", "list", "v2*"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert set(table_names(result.stdout)) == V2_BACKBONES


def test_backbones_list_glob_matches_aliases(runner: CliRunner) -> None:
    result = runner.invoke(app, ["backbones", "list", "efficientnet-b?"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert set(table_names(result.stdout)) == {f"b{i}" for i in range(8)}


def test_backbones_list_no_match_exits_1(runner: CliRunner) -> None:
    result = runner.invoke(app, ["backbones", "list", "vgg*"], env=WIDE)
    assert result.exit_code == 1
    assert "No backbone matches 'vgg*'." in result.output
    assert "│" not in result.output
