"""The backbone registry.

Built-in backbones and third-party ones register the same way::

    from mritumor.models.registry import register_backbone

    @register_backbone("mynet", aliases=("my-net",), input_size=224, last_conv_layer="top_activation")
    def build_mynet(inputs, weights):
        import keras
        ...
        return keras.Model(inputs, feature_map)

A third-party package exposes the module that holds such decorated builders in
the entry-point group ``mritumor.backbones``. Entry points load lazily, on the
first lookup or listing, and one that fails to import is reported as a warning
and skipped. Registering imports no TensorFlow: builders import Keras inside
their bodies, so listing and shell completion stay fast.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any, Protocol

from mritumor.core.errors import BackboneError, OfflineError

ENTRY_POINT_GROUP = "mritumor.backbones"
BUILTIN_SOURCE = "built-in"
BUILTIN_MODULES = (
    "mritumor.models.backbones.small_cnn",
    "mritumor.models.backbones.resnet",
    "mritumor.models.backbones.efficientnet",
)


class BackboneBuilder(Protocol):
    """Builds a backbone on the given Keras input tensor.

    ``weights`` is ``"imagenet"`` or ``None``; loading a weights file is the
    registry's job. The returned ``keras.Model`` must take ``inputs`` as its
    input tensor (not wrap it in a nested model), so that the classifier built
    on its output is one flat graph whose conv layers Grad-CAM can reach.
    """

    def __call__(self, inputs: Any, weights: str | None) -> Any: ...


class PluginWarning(UserWarning):
    """A backbone plugin failed to load or clashed with a registered name."""


@dataclass(frozen=True)
class BackboneSpec:
    """What the registry knows about one backbone."""

    name: str
    builder: BackboneBuilder
    aliases: tuple[str, ...]
    input_size: int
    last_conv_layer: str
    """The layer Grad-CAM explains by default: the last convolutional feature map,
    taken after its normalisation and activation (Keras's Grad-CAM example uses
    EfficientNet's ``top_activation``)."""
    params: int | None
    """Parameters of the backbone without a classification head, if declared."""
    imagenet_weights: bool
    """Whether the builder can load ImageNet weights."""
    source: str
    """``built-in`` or the name of the distribution that provides the plugin."""
    description: str = ""


class BackboneRegistry:
    """Backbones by name and alias; built-ins and plugins load on first use."""

    def __init__(self, builtin_modules: tuple[str, ...] = BUILTIN_MODULES) -> None:
        self._specs: dict[str, BackboneSpec] = {}
        self._aliases: dict[str, str] = {}
        self._builtin_modules = builtin_modules
        self._loaded = False
        self._loading_source: str | None = None

    def register(
        self,
        name: str,
        *,
        aliases: tuple[str, ...] = (),
        input_size: int,
        last_conv_layer: str,
        params: int | None = None,
        imagenet_weights: bool = True,
        description: str = "",
    ) -> Callable[[BackboneBuilder], BackboneBuilder]:
        """Decorator that records ``builder`` under ``name`` and ``aliases``."""

        def decorator(builder: BackboneBuilder) -> BackboneBuilder:
            module = getattr(builder, "__module__", "") or ""
            if module not in self._builtin_modules:
                self._ensure_loaded()  # built-ins first, so a plugin can never shadow one
            spec = BackboneSpec(
                name=name.lower(),
                builder=builder,
                aliases=tuple(alias.lower() for alias in aliases),
                input_size=input_size,
                last_conv_layer=last_conv_layer,
                params=params,
                imagenet_weights=imagenet_weights,
                source=self._loading_source or _source_of_module(module),
                description=description,
            )
            self._add(spec)
            return builder

        return decorator

    def get(self, name: str) -> BackboneSpec:
        """The spec for a name or alias (case-insensitive), or a BackboneError with a hint."""
        self._ensure_loaded()
        key = name.lower()
        canonical = self._aliases.get(key, key)
        if canonical in self._specs:
            return self._specs[canonical]
        close = difflib.get_close_matches(key, self.names(include_aliases=True), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise BackboneError(
            f"unknown backbone {name!r}{hint}; `mritumor backbones list` shows them all"
        )

    def specs(self, pattern: str | None = None) -> list[BackboneSpec]:
        """Specs in registration order, filtered by a glob over names and aliases."""
        self._ensure_loaded()
        specs = list(self._specs.values())
        if pattern:
            glob = pattern.lower()
            specs = [
                spec
                for spec in specs
                if any(fnmatch.fnmatchcase(label, glob) for label in (spec.name, *spec.aliases))
            ]
        return specs

    def names(self, include_aliases: bool = False) -> list[str]:
        self._ensure_loaded()
        names = list(self._specs)
        return [*names, *self._aliases] if include_aliases else names

    def build(self, name: str, inputs: Any, weights: str | Path | None = "imagenet") -> Any:
        """Build the backbone on ``inputs``: ``imagenet``, ``none``/None, or a weights file."""
        from mritumor.core.environment import import_tensorflow

        spec = self.get(name)
        import_tensorflow()
        choice = _weights_choice(weights)
        if choice == "file":
            path = Path(str(weights))
            if not path.is_file():
                raise BackboneError(f"weights file {path} does not exist")
            model = spec.builder(inputs, None)
            try:
                model.load_weights(path)
            except (ValueError, OSError) as error:
                raise BackboneError(
                    f"cannot load {path} into backbone {spec.name!r}: {error}"
                ) from None
            return model
        if choice == "imagenet":
            if not spec.imagenet_weights:
                raise BackboneError(
                    f"backbone {spec.name!r} has no ImageNet weights; set model.weights to none "
                    "(or a .weights.h5 file)"
                )
            channels = inputs.shape[-1]
            if channels != 3:
                raise BackboneError(
                    f"ImageNet weights need 3 input channels, got {channels}; "
                    "set data.channels to 3 or model.weights to none"
                )
            with _offline_message(spec.name):
                return spec.builder(inputs, "imagenet")
        return spec.builder(inputs, None)

    def _add(self, spec: BackboneSpec) -> None:
        taken = [label for label in (spec.name, *spec.aliases) if self._owner(label)]
        if taken:
            owners = ", ".join(f"{label!r} ({self._owner(label)})" for label in taken)
            message = f"backbone {spec.name!r} from {spec.source} clashes with {owners}"
            if spec.source == BUILTIN_SOURCE:
                raise BackboneError(message)
            warnings.warn(f"{message}; skipped", PluginWarning, stacklevel=3)
            return
        self._specs[spec.name] = spec
        for alias in spec.aliases:
            self._aliases[alias] = spec.name

    def _owner(self, label: str) -> str | None:
        canonical = self._aliases.get(label, label)
        spec = self._specs.get(canonical)
        return spec.source if spec else None

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for module in self._builtin_modules:
            importlib.import_module(module)
        for entry_point in entry_points(group=ENTRY_POINT_GROUP):
            self._load_plugin(entry_point)

    def _load_plugin(self, entry_point: EntryPoint) -> None:
        source = entry_point.dist.name if entry_point.dist else entry_point.value
        with self._registering_as(source):
            try:
                loaded = entry_point.load()
                if callable(loaded) and not isinstance(loaded, type):
                    loaded(self)
            except Exception as error:  # a broken plugin must never break the CLI
                warnings.warn(
                    f"backbone plugin {entry_point.name!r} from {source} failed to load "
                    f"({type(error).__name__}: {error}); skipped",
                    PluginWarning,
                    stacklevel=2,
                )

    @contextmanager
    def _registering_as(self, source: str) -> Iterator[None]:
        self._loading_source = source
        try:
            yield
        finally:
            self._loading_source = None


def _source_of_module(module: str) -> str:
    top = module.split(".", maxsplit=1)[0]
    return BUILTIN_SOURCE if top == "mritumor" else top


def _weights_choice(weights: str | Path | None) -> str:
    if weights is None or str(weights).lower() == "none":
        return "none"
    if str(weights).lower() == "imagenet":
        return "imagenet"
    return "file"


@contextmanager
def _offline_message(name: str) -> Iterator[None]:
    """Turn a failed ImageNet download into advice instead of a traceback."""
    try:
        yield
    except Exception as error:
        text = str(error)
        if "fetch failure" not in text and not isinstance(error, (OSError, ConnectionError)):
            raise
        cache = Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"
        raise OfflineError(
            f"could not download ImageNet weights for {name!r} ({text.splitlines()[0]}); "
            f"offline, train from scratch with --weights none or a recipe "
            f"(--recipe cpu-fast, `mritumor recipes list`), give a local .weights.h5 file "
            f"with --weights PATH, or copy Keras's weights file into {cache}"
        ) from None


registry = BackboneRegistry()
register_backbone = registry.register
get_backbone = registry.get
build_backbone = registry.build
