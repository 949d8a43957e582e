"""``bundle.json``: what a model needs besides its weights, as one validated pydantic model.

Inference needs nothing but the run folder (the keras-hub preset idea: weights plus JSON
that says how to use them). :class:`Bundle` declares every key of ``bundle.json`` with its
type and bounds; every way a file can be unusable (not JSON, a key missing, a value of the
wrong type or out of range, a newer schema) is one :class:`~mritumor.run.layout.BundleError`
line that names the file, the key and what it must hold. Older schemas are migrated on
reading. Later commands change a run (``calibrate`` writes the temperature, ``threshold``
the operating point) through :func:`update_bundle`, whose every assignment is validated.
The JSON Schema of the file, ``Bundle.model_json_schema()``, is published in the docs.

This module imports no TensorFlow: reading a bundle, listing runs and choosing the
newest one stay fast.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.config import JsonDict
from pydantic_core import ErrorDetails

from mritumor import __version__
from mritumor.core.fsutil import atomic_write_text, json_safe
from mritumor.core.preprocessing import RESIZE_MODES, Channels, ImageSize, Preprocessing, ResizeMode
from mritumor.run.layout import BUNDLE_FILE, TRAIN_HINT, BundleError, RunLayout, parse_time
from mritumor.run.provenance import environment_versions, git_commit, utc_now

if TYPE_CHECKING:
    from mritumor.config.schema import Settings

SCHEMA_VERSION = 1
#: The oldest bundle schema this version still reads (older ones need migrating code).
MIN_SCHEMA_VERSION = 1
#: schema_version n -> a function that turns an n-bundle dict into an (n + 1)-bundle dict.
_MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {}
#: Keys a file must hold although a new Bundle fills them in.
_FILLED_IN_BY_NEW_BUNDLES = ("schema_version", "created")


@dataclass(frozen=True)
class Expected:
    """What a field must hold, in the words of its error: ``'channels' must be 1 or 3, got 4``."""

    text: str


def _iso_time(value: str) -> str:
    if parse_time(value) is None:
        raise ValueError("not an ISO 8601 time")
    return value


def _distinct(names: list[str]) -> list[str]:
    if len(set(names)) != len(names):
        raise ValueError("a class is repeated")
    return names


def _an_integer(value: Any) -> Any:
    """Literal[1, 3] takes ``true`` and ``3.0`` for 1 and 3 even in strict mode; a file may not."""
    if not _is_int(value):
        raise ValueError("not an integer")
    return value


def _required_in_files(schema: JsonDict) -> None:
    """The published schema requires what a file must hold (see :func:`_required_keys`)."""
    schema["required"] = list(_required_keys())


Text = Annotated[str, Field(pattern=r"\S"), Expected("a non-empty string")]
OptionalText = Annotated[str | None, Expected("a string or null")]
OptionalObject = Annotated[dict[str, Any] | None, Expected("an object or null")]


class Bundle(BaseModel):
    """What a model needs besides its weights: the contents of ``bundle.json``.

    Keys this version does not know are kept and written back unchanged, so an older
    mritumor that updates a newer bundle of the same schema loses nothing; new fields
    belong in ``extra`` until the schema version is raised. A file must hold every field
    without a default, and ``schema_version`` and ``created``.
    """

    model_config = ConfigDict(
        strict=True,
        extra="allow",
        validate_assignment=True,
        use_attribute_docstrings=True,
        json_schema_extra=_required_in_files,
    )

    schema_version: Annotated[int, Expected("an integer")] = SCHEMA_VERSION
    """The version of this format: a newer one is refused, an older one migrated on reading."""
    command: Text
    """The command that produced the run: ``train``, ``finetune``, ``kfold``, ..."""
    created: Annotated[str, AfterValidator(_iso_time), Expected("an ISO 8601 time")] = Field(
        default_factory=utc_now
    )
    """UTC ISO 8601 time the run started."""
    class_names: Annotated[
        list[Annotated[str, Field(min_length=1)]],
        Field(min_length=2),
        AfterValidator(_distinct),
        Expected("a list of at least 2 distinct, non-empty class names"),
    ]
    """Class names in the order of the model's outputs."""
    negative_class: Annotated[str, Expected("a string")]
    """The class whose complement is the tumour score ``1 - p(negative_class)``."""
    image_size: Annotated[ImageSize, Expected("a positive integer")]
    """Side of the square model input, in pixels."""
    channels: Annotated[Channels, BeforeValidator(_an_integer), Expected("1 or 3")]
    """1 for grayscale, 3 for RGB input."""
    resize: Annotated[ResizeMode, Expected(f"one of {', '.join(RESIZE_MODES)}")]
    """``plain`` (stretch to a square) or ``pad`` (keep the aspect ratio)."""
    backbone: Text
    """Canonical registry name (not an alias)."""
    temperature: Annotated[
        float, Field(gt=0, allow_inf_nan=False), Expected("a positive number")
    ] = 1.0
    """Temperature T of ``softmax(z / T)``; ``calibrate`` writes it."""
    temperature_source: OptionalObject = None
    """How T was fitted, e.g. ``{"split": "cal", "n": 123, "nll_before": .., "nll_after": ..}``."""
    threshold: Annotated[
        float | None, Field(ge=0, le=1), Expected("a number in [0, 1] or null")
    ] = None
    """Operating point on the calibrated tumour score; null until ``threshold`` runs."""
    threshold_info: OptionalObject = None
    """How the threshold was chosen: strategy, constraints, split."""
    dataset_fingerprint: Annotated[str, Expected("a string")] = ""
    """``sha256:<hex>`` over the files of every split, their labels and sizes."""
    versions: Annotated[
        dict[str, str], Expected("an object of package names and version strings")
    ] = Field(default_factory=environment_versions)
    """Versions of mritumor, TensorFlow, Keras, Python and NumPy that created the run."""
    git_commit: OptionalText = Field(default_factory=git_commit)
    """The commit of the working directory's git repository when the run was created."""
    parent: OptionalText = None
    """The parent run's directory (``finetune``)."""
    monitor: Text = "val_loss"
    """The metric that selected ``model.keras``."""
    best_epoch: Annotated[int | None, Field(ge=1), Expected("a positive integer or null")] = None
    """1-based epoch of ``model.keras``."""
    epochs_completed: Annotated[int, Field(ge=0), Expected("a non-negative integer")] = 0
    """Epochs trained so far; ``--resume`` continues after them."""
    extra: Annotated[dict[str, Any], Expected("an object")] = Field(default_factory=dict)
    """Forward-compatible additions, free-form."""

    @model_validator(mode="wrap")
    @classmethod
    def _one_line(
        cls, data: Any, handler: ModelWrapValidatorHandler[Bundle], info: ValidationInfo
    ) -> Bundle:
        """Every failure, of a new bundle, a file or an assignment, as one BundleError line."""
        source = (info.context or {}).get("source", "bundle")
        try:
            bundle = handler(data)
        except ValidationError as error:
            raise BundleError(_summary(source, error, data)) from None
        if bundle.negative_class not in bundle.class_names:
            raise BundleError(
                f"{source}: 'negative_class' {bundle.negative_class!r} is not one of "
                f"class_names {bundle.class_names}"
            )
        return bundle

    @property
    def negative_index(self) -> int:
        """Output index of :attr:`negative_class`."""
        return self.class_names.index(self.negative_class)

    @property
    def preprocessing(self) -> Preprocessing:
        """The input the model expects, as the input pipeline takes it."""
        return Preprocessing(image_size=self.image_size, channels=self.channels, resize=self.resize)

    def to_json(self) -> str:
        """``bundle.json`` text: strict JSON (non-finite numbers become null), indented."""
        return json.dumps(json_safe(self.model_dump()), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any, *, source: str = BUNDLE_FILE) -> Bundle:
        """Check, migrate and load a parsed bundle.json; ``source`` names it in errors."""
        if not isinstance(data, dict):
            raise BundleError(f"{source}: expected a JSON object, found {_json_type(data)}")
        data = _migrated(data, source)
        missing = [key for key in _required_keys() if key not in data]
        if missing:
            raise BundleError(
                f"{source} lacks required key(s) {', '.join(missing)}; "
                "the file is damaged or was not written by mritumor"
            )
        # Provenance a file lacks stays unknown rather than being taken from this process.
        known = {"versions": {}, "git_commit": None, **data}
        return cls.model_validate(known, context={"source": source})

    @classmethod
    def from_json(cls, text: str, *, source: str = BUNDLE_FILE) -> Bundle:
        """Parse ``bundle.json`` text; every problem is one :class:`BundleError` line."""
        restore = "restore it from a backup or re-run the command that wrote it"
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise BundleError(
                f"{source} is not valid JSON (line {error.lineno}, column {error.colno}: "
                f"{error.msg}); {restore}"
            ) from None
        except (ValueError, RecursionError) as error:  # a 5000-digit number, nesting too deep
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise BundleError(f"{source} cannot be read as JSON ({reason}); {restore}") from None
        return cls.from_dict(data, source=source)


def new_bundle(settings: Settings, command: str, **fields: Any) -> Bundle:
    """A bundle for a new run of ``command`` described by ``settings``.

    Fills the data and model fields from the settings (the backbone by its
    canonical name); like every new :class:`Bundle` it records the creation
    time, package versions and git commit. ``fields`` sets any other field
    (``parent=...``, ``dataset_fingerprint=...``).
    """
    from mritumor.models.registry import registry

    _reject_unknown_fields(fields)
    return Bundle(
        **{
            "command": command,
            "class_names": list(settings.data.class_names),
            "negative_class": settings.data.negative_class,
            **settings.data.preprocessing.model_dump(),
            "backbone": registry.get(settings.model.backbone).name,
            "monitor": settings.train.monitor,
            **fields,
        }
    )


def read_bundle(run_dir: Path) -> Bundle:
    """The bundle of ``run_dir``; a :class:`BundleError` line for every way it can be unusable."""
    bundle_file = _bundle_file(run_dir)
    try:
        text = bundle_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise BundleError(f"cannot read {bundle_file}: {error}") from None
    return Bundle.from_json(text, source=str(bundle_file))


def write_bundle(run_dir: Path, bundle: Bundle) -> Path:
    """Write ``run_dir/bundle.json`` atomically; returns its path."""
    text = bundle.to_json()
    path = RunLayout(run_dir).bundle
    atomic_write_text(path, text)
    return path


def update_bundle(run_dir: Path, **changes: Any) -> Bundle:
    """Read the bundle, assign the given fields, and write it back atomically.

    ``update_bundle(run, temperature=1.7, temperature_source={...})``. An unknown
    field name or an invalid value raises before anything is written; a failure
    while writing leaves the old bundle.json in place.
    """
    _reject_unknown_fields(changes)
    if "schema_version" in changes:
        raise BundleError("schema_version is set by mritumor and cannot be changed")
    bundle = read_bundle(run_dir)
    for name, value in changes.items():
        setattr(bundle, name, value)  # validated: a bad value is one BundleError line
    write_bundle(run_dir, bundle)
    return bundle


def check_class_names(
    bundle: Bundle, class_names: Sequence[str], *, what: str = "the data"
) -> None:
    """Raise a :class:`BundleError` unless ``class_names`` equals the bundle's, in order.

    The model's outputs are positional: the same names in another order would
    silently mislabel every prediction.
    """
    expected, given = list(bundle.class_names), list(class_names)
    if expected == given:
        return
    if sorted(expected) == sorted(given) and len(expected) == len(given):
        raise BundleError(
            f"{what} lists the classes in the order {given}, but the model's outputs are "
            f"{expected}; set data.class_names to {expected}"
        )
    missing = [name for name in expected if name not in given]
    extra = [name for name in given if name not in expected]
    details = "; ".join(
        part
        for part in (
            f"missing {', '.join(missing)}" if missing else "",
            f"unknown to the model: {', '.join(extra)}" if extra else "",
        )
        if part
    )
    raise BundleError(
        f"{what} has classes {given} but the model was trained on {expected} ({details}); "
        "use data with the model's classes or train a new model"
    )


def write_config(run_dir: Path, settings: Settings) -> Path:
    """Write the resolved settings to ``run_dir/config.yaml``; usable again as ``--config``."""
    from mritumor.config.yaml_file import settings_yaml

    header = (
        f"# The resolved settings of this run, written by mritumor {__version__}.\n"
        "# Pass this file to --config to repeat the run.\n"
    )
    path = RunLayout(run_dir).config
    atomic_write_text(path, header + settings_yaml(settings))
    return path


def _summary(source: str, error: ValidationError, data: Any) -> str:
    """``<source>: <the first problem> (and N more)``, one problem per field."""
    problems: dict[str, str] = {}
    for details in error.errors(include_url=False):
        field = str(details["loc"][0]) if details["loc"] else ""
        problems.setdefault(field, _problem(field, details, data))
    first, *others = problems.values()
    more = f" (and {len(others)} more)" if others else ""
    return f"{source}: {first}{more}"


def _problem(field: str, details: ErrorDetails, data: Any) -> str:
    """``'<field>' must be <what the field expects>, got <the value>``."""
    if field not in Bundle.model_fields:
        return details["msg"]
    expected = next(
        item.text for item in Bundle.model_fields[field].metadata if isinstance(item, Expected)
    )
    # The whole value of the field, not the list item or union member that failed.
    value = data[field] if isinstance(data, Mapping) and field in data else details["input"]
    return f"{field!r} must be {expected}, got {value!r}"


def _required_keys() -> list[str]:
    """Every field without a default, and the two that a new Bundle fills in."""
    return [
        name
        for name, field in Bundle.model_fields.items()
        if field.is_required() or name in _FILLED_IN_BY_NEW_BUNDLES
    ]


def _reject_unknown_fields(changes: Mapping[str, Any]) -> None:
    names = sorted(Bundle.model_fields)
    for key in changes:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise BundleError(f"unknown bundle field {key!r}{hint}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _migrated(data: dict[str, Any], source: str) -> dict[str, Any]:
    """``data`` brought to :data:`SCHEMA_VERSION`, or a BundleError saying why it cannot be."""
    if "schema_version" not in data:
        raise BundleError(
            f"{source} lacks required key(s) schema_version; "
            "the file is damaged or was not written by mritumor"
        )
    version = data["schema_version"]
    if not _is_int(version):
        raise BundleError(f"{source}: 'schema_version' must be an integer, got {version!r}")
    if version > SCHEMA_VERSION:
        raise BundleError(
            f"{source} was made by a newer mritumor (bundle schema {version}; this mritumor "
            f"{__version__} reads up to {SCHEMA_VERSION}); upgrade: pip install -U mritumor"
        )
    if version < MIN_SCHEMA_VERSION:
        raise BundleError(
            f"{source} has bundle schema {version}, which this mritumor {__version__} no longer "
            f"supports (oldest {MIN_SCHEMA_VERSION}); re-run the command that made it, or use "
            "the older mritumor that wrote it"
        )
    for step in range(version, SCHEMA_VERSION):
        data = _MIGRATIONS[step](dict(data))
        data["schema_version"] = step + 1
    return data


def _bundle_file(run_dir: Path) -> Path:
    if not run_dir.exists():
        raise BundleError(f"run directory {run_dir} does not exist; {TRAIN_HINT}, or check --run")
    if not run_dir.is_dir():
        raise BundleError(f"{run_dir} is not a directory; --run takes a run directory")
    layout = RunLayout(run_dir)
    if not layout.bundle.is_file():
        interrupted = (
            " (it holds a model but no bundle.json: was the run interrupted?)"
            if layout.last.exists() or layout.model.exists()
            else ""
        )
        raise BundleError(
            f"{run_dir} is not a mritumor run directory: it has no {BUNDLE_FILE}{interrupted}; "
            "pass --run with a folder such as runs/train-1"
        )
    return layout.bundle


def _json_type(value: Any) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return kinds.get(type(value), "a number")
