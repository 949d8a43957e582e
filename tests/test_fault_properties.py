"""Property tests: damaged bundle.json files and random settings fail in one line, or load.

Whatever a bundle.json holds (keys deleted, values of another type, random JSON,
a cut-off file, flipped or random bytes), :func:`mritumor.run.bundle.read_bundle`
either returns a usable bundle or raises a :class:`~mritumor.core.errors.MritumorError`
whose message is one line. Whatever a YAML file, the ``MRITUMOR_*`` environment
or the flags hold, :func:`mritumor.config.loading.load_settings` either resolves or
raises :class:`~mritumor.core.errors.ConfigError`. Anything else (a KeyError, a
TypeError, a RecursionError) would reach the user as a traceback.

Examples are few and derandomised (``max_examples`` small, no deadline), so the
module stays fast and a failure reproduces.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import string
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers import make_bundle
from mritumor.config.loading import load_settings
from mritumor.config.schema import env_var_name, valid_keys
from mritumor.config.yaml_file import template_yaml
from mritumor.core.environment import ENV_PREFIX
from mritumor.core.errors import ConfigError, MritumorError
from mritumor.run.bundle import Bundle, read_bundle
from mritumor.run.layout import BundleError, latest_run

FEW = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --------------------------------------------------------------------------- bundle.json

VALID_BUNDLE: dict[str, Any] = make_bundle(
    image_size=32,
    backbone="small_cnn",
    temperature=1.3,
    temperature_source={"split": "val", "n": 16},
    threshold=0.4,
    threshold_info={"strategy": "youden", "split": "val"},
    dataset_fingerprint="sha256:" + "0" * 64,
    versions={"mritumor": "0.1.0", "keras": "3.0"},
    best_epoch=1,
    epochs_completed=1,
    extra={"recipe": None, "best_value": 0.9},
).model_dump()
BUNDLE_KEYS = sorted(VALID_BUNDLE)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def mutated_bundles(draw: st.DrawFn) -> str:
    """The valid bundle with keys deleted, retyped, added, or nested values replaced."""
    data = copy.deepcopy(VALID_BUNDLE)
    for _ in range(draw(st.integers(1, 4))):
        operation = draw(st.sampled_from(["delete", "retype", "add", "nested"]))
        if operation == "delete" and data:
            del data[draw(st.sampled_from(sorted(data)))]
        elif operation == "retype":
            data[draw(st.sampled_from(BUNDLE_KEYS))] = draw(json_values)
        elif operation == "add":
            data[draw(st.text(max_size=10))] = draw(json_values)
        else:
            holder = draw(st.sampled_from(["class_names", "versions", "extra", "threshold_info"]))
            value = data.get(holder)
            if isinstance(value, list) and value:
                value[draw(st.integers(0, len(value) - 1))] = draw(json_values)
            elif isinstance(value, dict):
                value[draw(st.text(max_size=8))] = draw(json_values)
    return json.dumps(data, indent=draw(st.sampled_from([None, 2])))


@st.composite
def damaged_bytes(draw: st.DrawFn) -> bytes:
    """The valid bundle's bytes cut short, with bytes flipped, or spliced with random bytes."""
    data = bytearray(json.dumps(VALID_BUNDLE, indent=2).encode("utf-8"))
    operation = draw(st.sampled_from(["cut", "flip", "splice"]))
    if operation == "cut":
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    if operation == "flip":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        return bytes(data)
    at = draw(st.integers(0, len(data)))
    return bytes(data[:at]) + draw(st.binary(min_size=1, max_size=40)) + bytes(data[at:])


def write_bundle_file(root: Path, content: str | bytes) -> Path:
    run = root / "runs" / "train-1"
    run.mkdir(parents=True, exist_ok=True)
    raw = content.encode("utf-8") if isinstance(content, str) else content
    (run / "bundle.json").write_bytes(raw)
    return run


def assert_usable_or_one_line(run: Path) -> None:
    """read_bundle returns a bundle that writes and reads back, or one line of MritumorError."""
    try:
        bundle = read_bundle(run)
    except MritumorError as error:
        message = str(error)
        assert message.strip(), "an empty message"
        assert "\n" not in message and "\r" not in message, message
        assert isinstance(error, BundleError), type(error)
    else:
        again = Bundle.from_json(bundle.to_json())
        assert again.class_names == bundle.class_names
        assert again.negative_index == bundle.negative_index
    # Choosing the newest run never fails on a damaged bundle: using it reports the damage.
    assert latest_run(run.parent) == run


@FEW
@given(text=mutated_bundles())
def test_mutated_bundle_json(tmp_path: Path, text: str) -> None:
    assert_usable_or_one_line(write_bundle_file(tmp_path, text))


@FEW
@given(value=json_values)
def test_bundle_json_holding_any_json_value(tmp_path: Path, value: Any) -> None:
    assert_usable_or_one_line(write_bundle_file(tmp_path, json.dumps(value)))


@FEW
@given(content=damaged_bytes())
def test_bundle_json_cut_flipped_or_spliced(tmp_path: Path, content: bytes) -> None:
    assert_usable_or_one_line(write_bundle_file(tmp_path, content))


@FEW
@given(content=st.binary(max_size=200))
def test_bundle_json_of_random_bytes(tmp_path: Path, content: bytes) -> None:
    assert_usable_or_one_line(write_bundle_file(tmp_path, content))


def _with_temperature(text: str) -> str:
    return json.dumps(VALID_BUNDLE).replace('"temperature": 1.3', f'"temperature": {text}')


@pytest.mark.parametrize(
    "content",
    [
        pytest.param("[" * 100_000, id="brackets-nested-100000-deep"),
        pytest.param(_with_temperature("1" + "0" * 400), id="temperature-integer-beyond-float"),
        pytest.param(_with_temperature("1" * 5000), id="integer-of-5000-digits"),
    ],
)
def test_pathological_bundle_json(tmp_path: Path, content: str) -> None:
    """Hand-picked damage that random generation rarely reaches."""
    assert_usable_or_one_line(write_bundle_file(tmp_path, content))


# --------------------------------------------------------------------------- settings

KEYS = valid_keys()
SECTIONS = sorted({key.split(".")[0] for key in KEYS if "." in key})
key_names = st.sampled_from([*KEYS, *SECTIONS]) | st.text(
    alphabet=string.ascii_lowercase + "_.", min_size=1, max_size=16
)
yaml_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**9), 10**9)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(["small_cnn", "pad", "plain", "none", "auto", "cpu-fast", "glioma"])
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(key_names, children, max_size=3)
    ),
    max_leaves=8,
)
flat_settings = st.dictionaries(key_names, yaml_values, max_size=5)


def nested(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys as YAML sections; a later key that clashes with an earlier one replaces it."""
    document: dict[str, Any] = {}
    for dotted, value in flat.items():
        *parents, leaf = dotted.split(".")
        node = document
        for part in parents:
            child = node.get(part)
            if not isinstance(child, dict):
                child = node[part] = {}
            node = child
        node[leaf] = value
    return document


def assert_resolves_or_config_error(
    config_file: Path | None = None, overrides: Mapping[str, Any] | None = None
) -> None:
    try:
        load_settings(config_file, overrides)
    except ConfigError as error:
        message = str(error)
        assert message.strip() and "\n" not in message, message


@contextlib.contextmanager
def environment(variables: Mapping[str, str]) -> Iterator[None]:
    """``MRITUMOR_*`` variables set for the block, and only those."""
    saved = {name: value for name, value in os.environ.items() if name.startswith(ENV_PREFIX)}
    for name in saved:
        del os.environ[name]
    os.environ.update(variables)
    try:
        yield
    finally:
        for name in [name for name in os.environ if name.startswith(ENV_PREFIX)]:
            del os.environ[name]
        os.environ.update(saved)


@FEW
@given(flat=flat_settings)
def test_random_yaml_documents(tmp_path: Path, flat: dict[str, Any]) -> None:
    path = tmp_path / "random.yaml"
    path.write_text(yaml.safe_dump(nested(flat), allow_unicode=True), encoding="utf-8")
    assert_resolves_or_config_error(path)


@st.composite
def mutated_templates(draw: st.DrawFn) -> str:
    """``mritumor config init``'s template with lines deleted, repeated, re-indented or edited."""
    lines = template_yaml().splitlines()
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(lines) - 1))
        operation = draw(st.sampled_from(["delete", "repeat", "indent", "edit", "insert"]))
        if operation == "delete":
            del lines[at]
        elif operation == "repeat":
            lines.insert(at, lines[at])
        elif operation == "indent":
            lines[at] = " " * draw(st.integers(1, 5)) + lines[at].lstrip()
        elif operation == "edit":
            key, _, _ = lines[at].partition(":")
            lines[at] = f"{key}: {draw(st.text(max_size=12))}"
        else:
            lines.insert(at, draw(st.text(max_size=30)))
        if not lines:
            break
    return "\n".join(lines) + "\n"


@FEW
@given(text=mutated_templates())
def test_mutated_config_templates(tmp_path: Path, text: str) -> None:
    path = tmp_path / "mritumor.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    assert_resolves_or_config_error(path)


@FEW
@given(text=st.text(max_size=120))
def test_random_text_as_yaml(tmp_path: Path, text: str) -> None:
    path = tmp_path / "random.yaml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    assert_resolves_or_config_error(path)


@FEW
@given(flat=flat_settings)
def test_random_key_value_overrides(flat: dict[str, Any]) -> None:
    assert_resolves_or_config_error(None, flat)


env_names = st.sampled_from(
    [env_var_name(key) for key in KEYS] + [ENV_PREFIX + section.upper() for section in SECTIONS]
) | st.text(alphabet=string.ascii_uppercase + string.digits + "_", min_size=1, max_size=14).map(
    lambda tail: ENV_PREFIX + tail
)
env_values = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    max_size=20,
) | json_values.map(json.dumps)


@FEW
@given(variables=st.dictionaries(env_names, env_values, max_size=4))
def test_random_environment(variables: dict[str, str]) -> None:
    with environment(variables):
        assert_resolves_or_config_error()


@pytest.mark.parametrize(
    ("text", "overrides"),
    [
        pytest.param("train: &a {epochs: *a}\n", None, id="yaml-alias-to-itself"),
        pytest.param("seed: " + "[" * 10_000, None, id="yaml-brackets-10000-deep"),
        pytest.param(None, {"_env_prefix": 3}, id="override-named-like-a-pydantic-option"),
    ],
)
def test_pathological_settings(
    tmp_path: Path, text: str | None, overrides: dict[str, Any] | None
) -> None:
    """Hand-picked inputs that random generation rarely reaches."""
    path = None
    if text is not None:
        path = tmp_path / "mritumor.yaml"
        path.write_text(text, encoding="utf-8")
    assert_resolves_or_config_error(path, overrides)
