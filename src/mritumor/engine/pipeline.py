"""The whole chain in one call: check, train, calibrate, threshold, eval, finetune, infer, gradcam.

Used by ``mritumor pipeline`` on the user's data and by ``mritumor demo`` on
synthetic data. Steps run in order and stop at the first failure. Each step's
key is a hash of the settings it depends on and of the key of the step before
it; ``runs_dir/pipeline.json`` records the key of every step that finished, so a
second run skips the steps whose key and outputs are unchanged (``force``
reruns them all) and reruns everything after a changed one.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from mritumor.core.errors import ConfigError, MritumorError, UsageError
from mritumor.core.fsutil import atomic_write_json
from mritumor.run.layout import RunLayout
from mritumor.run.lock import renewed_run

if TYPE_CHECKING:
    from mritumor.config.schema import Settings
    from mritumor.engine.callbacks import TrainingObserver

STATE_FILE = "pipeline.json"
TRAIN_RUN = "pipeline-train"
FINETUNE_RUN = "pipeline-finetune"
EXAMPLES = 4
"""Test images that ``infer`` and ``gradcam`` are shown on."""
Status = Literal["ran", "skipped", "failed"]


@dataclass(frozen=True)
class Outcome:
    """What became of one step."""

    name: str
    status: Status
    seconds: float
    outputs: tuple[Path, ...] = ()


@dataclass
class PipelineResult:
    """Every step's outcome, and where the runs are."""

    outcomes: list[Outcome] = field(default_factory=list)
    train_run: Path | None = None
    finetune_run: Path | None = None
    report: Path | None = None
    """The final run's HTML report, the last step's output."""


class PipelineObserver(Protocol):
    """The CLI's display; ``training`` is handed to the train and finetune steps."""

    @property
    def training(self) -> TrainingObserver | None: ...

    def on_step_begin(self, name: str, index: int, total: int) -> None: ...

    def on_step_end(self, outcome: Outcome) -> None: ...


@dataclass(frozen=True)
class _Step:
    name: str
    sections: tuple[str, ...]
    """Settings sections the step depends on (besides the steps before it)."""
    run: Callable[[_Context], tuple[Path, ...]]


@dataclass
class _Context:
    settings: Settings
    observer: PipelineObserver | None
    train_run: Path
    finetune_run: Path

    @property
    def training_observer(self) -> TrainingObserver | None:
        return None if self.observer is None else self.observer.training


def run_pipeline(
    settings: Settings, *, force: bool = False, observer: PipelineObserver | None = None
) -> PipelineResult:
    """Run every step that is not up to date; raise on the first failure.

    On one host: the chain's evaluation steps and state file are not split among
    workers, so ``train.strategy: multiworker`` is refused (mirrored works).
    """
    if settings.train.strategy == "multiworker":
        raise ConfigError(
            "pipeline runs on one host: use --strategy mirrored for its GPUs, or run "
            "`mritumor train --strategy multiworker` and the later steps apart"
        )
    runs = settings.paths.runs_dir
    context = _Context(settings, observer, runs / TRAIN_RUN, runs / FINETUNE_RUN)
    steps = _steps(settings)
    state = {} if force else _read_state(runs)
    result = PipelineResult(train_run=context.train_run)
    previous = _data_stamp(settings)
    ran = False
    for index, step in enumerate(steps):
        key = _key(previous, step, settings)
        previous = key
        if observer is not None:
            observer.on_step_begin(step.name, index, len(steps))
        # Once a step has run, everything after it runs too: its inputs are new.
        outcome = _run_step(step, context, key, None if ran else state.get(step.name))
        ran = ran or outcome.status == "ran"
        result.outcomes.append(outcome)
        if observer is not None:
            observer.on_step_end(outcome)
        state[step.name] = {"key": key, "outputs": [str(p) for p in outcome.outputs]}
        _write_state(runs, state)
    if settings.finetune.external is not None:
        result.finetune_run = context.finetune_run
    result.report = RunLayout(_final_run(context)).report
    return result


def _run_step(step: _Step, context: _Context, key: str, done: dict[str, Any] | None) -> Outcome:
    if done is not None and done.get("key") == key and _outputs_exist(done.get("outputs", [])):
        return Outcome(step.name, "skipped", 0.0, tuple(Path(p) for p in done["outputs"]))
    started = time.perf_counter()
    try:
        outputs = step.run(context)
    except MritumorError as error:
        failed = MritumorError(f"pipeline step {step.name} failed: {error}")
        failed.exit_code = error.exit_code  # usage problems stay exit 2
        raise failed from error
    return Outcome(step.name, "ran", time.perf_counter() - started, outputs)


def _outputs_exist(outputs: Sequence[str]) -> bool:
    return bool(outputs) and all(Path(p).exists() for p in outputs)


def _key(previous: str, step: _Step, settings: Settings) -> str:
    relevant = {section: settings.model_dump(mode="json")[section] for section in step.sections}
    text = json.dumps([previous, step.name, relevant], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _data_stamp(settings: Settings) -> str:
    """A hash of every file's path, size and modification time under the data root and the
    external set, so that added, removed or changed images rerun the chain."""
    digest = hashlib.sha256()
    roots = [settings.paths.data_dir, settings.finetune.external]
    for root in (r for r in roots if r is not None and r.is_dir()):
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            if any(part in _DERIVED for part in path.relative_to(root).parts):
                continue
            stat = path.stat()
            digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


_DERIVED = frozenset({"check.json", "check-leaks.csv", "quarantine"})
"""Files `data check` writes under the data root: not inputs."""


def _read_state(runs: Path) -> dict[str, Any]:
    path = runs / STATE_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_state(runs: Path, state: dict[str, Any]) -> None:
    atomic_write_json(runs / STATE_FILE, state)


# --------------------------------------------------------------------------- the steps


_DATA = ("data", "paths", "seed")
_TRAINING = (*_DATA, "augment", "model", "train")


def _steps(settings: Settings) -> list[_Step]:
    steps = [
        _Step("check", _DATA, _check),
        _Step("train", _TRAINING, _train),
        _Step("calibrate", ("calibration", "inference"), _calibrate(TRAIN_RUN)),
        _Step("threshold", ("threshold", "inference"), _threshold(TRAIN_RUN)),
        _Step("eval", ("evaluation", "calibration", "inference"), _evaluate(TRAIN_RUN, None)),
    ]
    if settings.finetune.external is not None:
        steps += [
            _Step("finetune", ("finetune", "threshold"), _finetune),
            _Step("finetune calibrate", ("calibration", "inference"), _calibrate(FINETUNE_RUN)),
            _Step("finetune threshold", ("threshold", "inference"), _threshold(FINETUNE_RUN)),
            _Step(
                "finetune eval",
                ("evaluation", "calibration", "inference"),
                _evaluate(FINETUNE_RUN, "ext_holdout"),
            ),
        ]
    steps += [
        _Step("infer", ("inference",), _infer),
        _Step("gradcam", ("inference",), _gradcam),
        _Step("report", (), _report),
    ]
    return steps


def _check(context: _Context) -> tuple[Path, ...]:
    from mritumor.data.check.analysis import check_dataset
    from mritumor.data.check.report import write_report

    root = context.settings.paths.data_dir
    report = check_dataset(root, negative_class=context.settings.data.negative_class)
    path = root / "check.json"
    write_report(report, path)
    if report.problems or report.has_leakage:
        raise UsageError(
            f"{len(report.problems)} unusable file(s) and {len(report.leaks)} leaking pair(s) "
            f"in {root}; see {path}, or run `mritumor data check {root} --fix`"
        )
    return (path,)


def _train(context: _Context) -> tuple[Path, ...]:
    from mritumor.engine.training import train

    with renewed_run(context.train_run, "pipeline") as run_dir:
        result = train(context.settings, run_dir, observer=context.training_observer)
    if result.interrupted:
        raise MritumorError(f"training was interrupted; the state is in {run_dir}")
    return (RunLayout(run_dir).model,)


def _calibrate(run_name: str) -> Callable[[_Context], tuple[Path, ...]]:
    def step(context: _Context) -> tuple[Path, ...]:
        from mritumor.evaluation.calibrate import calibrate
        from mritumor.evaluation.reports import CALIBRATION_METRICS_FILE
        from mritumor.predict.predictor import Predictor

        report = calibrate(
            Predictor(context.settings.paths.runs_dir / run_name), context.settings, None
        )
        return (report.report_dir / CALIBRATION_METRICS_FILE,)

    return step


def _threshold(run_name: str) -> Callable[[_Context], tuple[Path, ...]]:
    def step(context: _Context) -> tuple[Path, ...]:
        from mritumor.evaluation.operating_point import choose_operating_point
        from mritumor.evaluation.reports import THRESHOLD_FILE
        from mritumor.predict.predictor import Predictor

        predictor = Predictor(context.settings.paths.runs_dir / run_name)
        report = choose_operating_point(predictor, context.settings, None)
        return (report.report_dir / THRESHOLD_FILE,)

    return step


def _evaluate(run_name: str, split: str | None) -> Callable[[_Context], tuple[Path, ...]]:
    def step(context: _Context) -> tuple[Path, ...]:
        from mritumor.evaluation.evaluate import evaluate
        from mritumor.evaluation.reports import SUMMARY_FILE
        from mritumor.predict.predictor import Predictor

        predictor = Predictor(context.settings.paths.runs_dir / run_name)
        report = evaluate(predictor, context.settings, split)
        return (report.report_dir / SUMMARY_FILE,)

    return step


def _finetune(context: _Context) -> tuple[Path, ...]:
    from mritumor.engine.finetune import finetune
    from mritumor.evaluation.reports import FINETUNE_REPORT_FILE

    with renewed_run(context.finetune_run, "pipeline") as run_dir:
        result = finetune(
            context.settings, context.train_run, run_dir, observer=context.training_observer
        )
    if result.interrupted:
        raise MritumorError(f"fine-tuning was interrupted; the state is in {run_dir}")
    return (RunLayout(run_dir).reports / FINETUNE_REPORT_FILE,)


def _examples(context: _Context) -> list[Path]:
    from mritumor.run.splits import read_split

    test = read_split(context.train_run, "test", context.settings.data.class_names)
    step = max(len(test) // EXAMPLES, 1)
    return list(test.paths[::step][:EXAMPLES])


def _final_run(context: _Context) -> Path:
    return context.finetune_run if context.settings.finetune.external else context.train_run


def _infer(context: _Context) -> tuple[Path, ...]:
    from mritumor.predict.ensemble import InferOptions, infer, load_members
    from mritumor.predict.inputs import ImageInput

    run_dir = _final_run(context)
    inputs = [ImageInput(path) for path in _examples(context)]
    options = context.settings.inference
    predictions = infer(
        load_members([run_dir]),
        inputs,
        InferOptions(
            batch_size=options.batch_size,
            tta=options.tta_samples,
            mc_samples=options.mc_dropout_samples,
            seed=context.settings.seed,
            threshold=options.threshold,
            band=options.triage_band,
            max_disagreement=options.max_disagreement,
        ),
    )
    path = RunLayout(run_dir).reports / "example_predictions.json"
    atomic_write_json(
        path, {"threshold": predictions.threshold, "predictions": predictions.records()}
    )
    return (path,)


def _gradcam(context: _Context) -> tuple[Path, ...]:
    from mritumor.predict.explanations import write_panels
    from mritumor.predict.inputs import ImageInput
    from mritumor.predict.predictor import Predictor

    run_dir = _final_run(context)
    inputs = [ImageInput(path) for path in _examples(context)]
    panels = write_panels(Predictor(run_dir), inputs, RunLayout(run_dir).gradcam)
    return tuple(panels.written)


def _report(context: _Context) -> tuple[Path, ...]:
    """The HTML report and MODEL_CARD.md of every run the pipeline wrote, the final run's
    report first."""
    from mritumor.report import write_model_card, write_report

    runs = [_final_run(context)]
    if runs[0] != context.train_run:
        runs.append(context.train_run)
    outputs: list[Path] = []
    for run_dir in runs:
        outputs += [write_report(run_dir), write_model_card(run_dir)]
    return tuple(outputs)


# --------------------------------------------------------------------------- the demo


def demo_settings(base: Settings, out: Path, *, quick: bool = False) -> tuple[Settings, Any]:
    """Settings and a synthetic dataset for ``mritumor demo`` in ``out``.

    CPU-friendly: the small CNN from scratch at 64 px on lesions scaled 2.5x
    (see ``docs/data/synth.md``); ``quick`` shrinks everything for the tests.
    """
    from mritumor.config.loading import load_settings
    from mritumor.data.synth.writer import SynthConfig

    size = 32 if quick else 64
    values: dict[str, Any] = {
        "seed": base.seed,
        "paths": {"data_dir": out / "data", "runs_dir": out / "runs", "cache_dir": out / "cache"},
        "data": {"image_size": size},
        "model": {"backbone": "small_cnn", "weights": "none", "pooling": "max"},
        "augment": {"rotation": 0.0, "zoom": 0.0},
        "train": {
            "epochs": 2 if quick else 20,
            "freeze_backbone_epochs": 0,
            "batch_size": 16,
            "lr": 0.003,
            "precision": "float32",
            "early_stopping_patience": 30,
        },
        "evaluation": {"bootstrap_samples": 50 if quick else 1000},
        # F2 (recall weighted): always attainable, unlike a fixed recall target on a small val.
        "threshold": {"strategy": "max_fbeta", "bootstrap_samples": 50 if quick else 1000},
        "finetune": {
            "external": out / "data" / "external" / "synthetic",
            "epochs": 1 if quick else 12,
            "lr": 0.001,
        },
    }
    synth = SynthConfig(
        train=6 if quick else 60,
        val=4 if quick else 15,
        test=4 if quick else 15,
        image_size=size,
        lesion_scale=2.5,
        seed=base.seed,
        external=10 if quick else 150,
    )
    return load_settings(None, values).settings, synth
