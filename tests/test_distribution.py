"""Training on more than one device or host (``train.strategy``).

In this process: TF_CONFIG checks, the batch and learning-rate arithmetic, the
resume guard, and that bookkeeping without ``writes`` writes nothing. In
subprocesses, because TensorFlow splits the CPU and starts its collective ops only
before it first runs anything: a mirrored fit on two logical CPU devices, and a
two-worker MultiWorkerMirroredStrategy fit on 127.0.0.1, each compared with a
one-device fit of the same global batch. Trainings are tiny and never overlap.
"""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from helpers import make_bundle
from mritumor.cli.main import app
from mritumor.config.schema import TrainSettings
from mritumor.core.environment import ENV_PREFIX
from mritumor.core.errors import ConfigError
from mritumor.engine.checkpoints import DISTRIBUTION_KEY
from mritumor.engine.distribution import (
    ClusterTask,
    Distribution,
    check_same_global_batch,
    read_tf_config,
    resolve_distribution,
)
from mritumor.run.bundle import read_bundle
from mritumor.run.layout import HISTORY_FILE

PER_REPLICA_BATCH = 4
TINY_FLAGS = (
    "--backbone",
    "small_cnn",
    "--weights",
    "none",
    "--freeze-epochs",
    "1",
    "--epochs",
    "1",
    "--image-size",
    "32",
    "--precision",
    "float32",
    "--set",
    "model.dropout=0.0",
    "--set",
    "train.early_stopping_patience=0",
    "--set",
    "train.scale_lr=false",
    "-q",
)
SUBPROCESS_TIMEOUT_S = 240


def cluster(workers: int = 2, chief: bool = False) -> dict[str, Any]:
    roles: dict[str, Any] = {"worker": [f"127.0.0.1:{20000 + i}" for i in range(workers)]}
    if chief:
        roles["chief"] = ["127.0.0.1:19999"]
    return roles


def tf_config(role: str = "worker", index: int = 0, **cluster_args: Any) -> str:
    return json.dumps({"cluster": cluster(**cluster_args), "task": {"type": role, "index": index}})


# --------------------------------------------------------------------------- TF_CONFIG


def test_tf_config_names_the_task_and_its_chief() -> None:
    task = read_tf_config(tf_config("worker", 1))
    assert (task.role, task.index, task.workers, task.chief) == ("worker", 1, 2, False)
    assert task.address == "127.0.0.1:20001"
    assert read_tf_config(tf_config("worker", 0)).chief
    with_chief = read_tf_config(tf_config("chief", 0, chief=True))
    assert with_chief.chief and with_chief.workers == 3
    assert not read_tf_config(tf_config("worker", 0, chief=True)).chief


@pytest.mark.parametrize(
    ("text", "phrase"),
    [
        (None, "needs the TF_CONFIG environment variable"),
        ("{cluster", "TF_CONFIG is not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"task": {"type": "worker", "index": 0}}', 'needs "cluster"'),
        (json.dumps({"cluster": cluster()}), 'needs "task"'),
        (tf_config("evaluator", 0), "task type 'evaluator' is not a role"),
        (tf_config("worker", 2), "task index 2 is out of range: the cluster has 2 worker"),
        (tf_config("worker", -1), "task index -1 is out of range"),
        (
            json.dumps({"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {}}),
            "lists ps: the multiworker strategy trains with chief and worker tasks only",
        ),
        (
            json.dumps({"cluster": {"worker": ["no-port"]}, "task": {}}),
            'must list "host:port" addresses',
        ),
    ],
)
def test_a_bad_tf_config_is_one_config_error(text: str | None, phrase: str) -> None:
    with pytest.raises(ConfigError) as caught:
        read_tf_config(text)
    assert phrase in str(caught.value)
    assert "\n" not in str(caught.value)


def test_train_with_a_bad_tf_config_exits_2_in_one_line_and_makes_no_run(
    cli_data_root: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    result = CliRunner().invoke(
        app,
        [
            "train",
            *TINY_FLAGS,
            "--strategy",
            "multiworker",
            "--data",
            str(cli_data_root),
            "--set",
            f"paths.runs_dir={runs}",
        ],
        env={"TF_CONFIG": '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker"}}'},
    )
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: TF_CONFIG needs")
    assert len(result.output.strip().splitlines()) == 1
    assert not runs.exists()


# --------------------------------------------------------------------------- arithmetic


def test_global_batch_and_linear_lr_scaling() -> None:
    two = Distribution("mirrored", strategy=None, replicas=2, devices=("/device:GPU:0", "/d:1"))
    assert two.global_batch(32) == 64
    assert two.lr_scale(TrainSettings()) == 2.0
    assert two.lr_scale(TrainSettings(scale_lr=False)) == 1.0
    assert two.record(TrainSettings(batch_size=16)) == {
        "strategy": "mirrored",
        "replicas": 2,
        "workers": 1,
        "per_replica_batch": 16,
        "global_batch": 32,
        "lr_scale": 2.0,
    }
    assert two.describe() == "2 replicas (mirrored: /device:GPU:0, /d:1)"
    assert Distribution("one", strategy=None).describe() == "1 replica (one device)"
    worker = Distribution(
        "multiworker", strategy=None, replicas=4, task=read_tf_config(tf_config("worker", 1))
    )
    assert (worker.workers, worker.chief) == (2, False)
    assert worker.describe() == "4 replicas on 2 workers (multiworker)"


def test_one_and_auto_without_gpus_train_on_one_device() -> None:
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has GPUs")
    for strategy in ("one", "auto"):
        chosen = resolve_distribution(TrainSettings(strategy=strategy))
        assert (chosen.kind, chosen.replicas, chosen.chief) == ("one", 1, True)


@pytest.mark.parametrize(
    ("train", "phrase"),
    [
        ({"strategy": "one", "devices": ["CPU:0"]}, "train.devices is for the mirrored strategy"),
        ({"strategy": "mirrored", "devices": ["TPU:0"]}, "'TPU:0' is not a device name"),
        ({"strategy": "mirrored", "devices": ["GPU:7"]}, "names GPU:7, but TensorFlow sees"),
        ({"strategy": "mirrored", "devices": ["CPU:0", "CPU:5"]}, "already started with"),
    ],
)
def test_bad_devices_are_one_config_error(train: dict[str, Any], phrase: str) -> None:
    import tensorflow as tf

    tf.constant(1.0)  # TensorFlow has started: the CPU can no longer be split
    with pytest.raises(ConfigError, match=phrase):
        resolve_distribution(TrainSettings(**train))


def test_devices_listed_twice_are_refused() -> None:
    with pytest.raises(ValueError, match="lists a device twice"):
        TrainSettings(devices=["GPU:0", "GPU:0"])


def test_a_run_resumes_only_on_as_many_replicas() -> None:
    train = TrainSettings(batch_size=8)
    two = Distribution("mirrored", strategy=None, replicas=2)
    one = Distribution("one", strategy=None)
    recorded = make_bundle(extra={DISTRIBUTION_KEY: two.record(train)})
    check_same_global_batch(recorded, two, train)
    with pytest.raises(ConfigError, match=r"trained on 2 replica.* global batch of 16.* of 8"):
        check_same_global_batch(recorded, one, train)
    before_distribution = make_bundle(extra={})
    check_same_global_batch(before_distribution, one, train)
    with pytest.raises(ConfigError, match="trained on 1 replica"):
        check_same_global_batch(before_distribution, two, train)


def test_bookkeeping_of_a_non_chief_writes_nothing(tmp_path: Path) -> None:
    import keras

    from mritumor.config.schema import Settings
    from mritumor.engine.checkpoints import Bookkeeping
    from mritumor.engine.precision import PrecisionChoice

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    book = Bookkeeping(tmp_path, "val_loss", resume=False, writes=False, bundle=make_bundle())
    book.record_runtime(
        Settings(), PrecisionChoice("float32", "auto", "test"), {"strategy": "multiworker"}
    )
    book.end_epoch(model, 0, {"loss": 1.0, "val_loss": 0.5})
    book.save_last(model)
    assert list(tmp_path.iterdir()) == []
    assert book.bundle.epochs_completed == 1
    assert book.bundle.extra[DISTRIBUTION_KEY] == {"strategy": "multiworker"}
    assert (book.best_epoch, book.best_value) == (1, 0.5)


# --------------------------------------------------------------------------- real fits


def child_environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith(ENV_PREFIX)}
    env.pop("TF_CONFIG", None)
    env.update(TF_CPP_MIN_LOG_LEVEL="3", COLUMNS="200", PYTHONUNBUFFERED="1", **extra)
    return env


def run_to_the_end(command: list[str]) -> subprocess.CompletedProcess[str]:
    """``command`` in a child process, which must succeed."""
    completed = subprocess.run(  # noqa: PLW1510
        command,
        capture_output=True,
        text=True,
        env=child_environment(),
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert completed.returncode == 0, completed.stderr
    return completed


def train_command(data: Path, runs: Path, batch: int, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "mritumor",
        "train",
        *TINY_FLAGS,
        "--batch-size",
        str(batch),
        "--data",
        str(data),
        "--set",
        f"paths.runs_dir={runs}",
        *extra,
    ]


def first_epoch(run_dir: Path) -> dict[str, float]:
    with (run_dir / HISTORY_FILE).open(newline="", encoding="utf-8") as handle:
        row = next(csv.DictReader(handle))
    return {key: float(row[key]) for key in ("loss", "val_loss")}


#: Two replicas against one device on the same fixed batches: the same sums in another order.
STEP_TOLERANCE = 1e-5
#: Two replicas against one device through the whole command: the strategy's copy of the
#: input pipeline draws its shuffle and augmentation seeds anew, so the batches come in
#: another (equally random) order, and a first epoch of 4 steps ends a little apart.
EPOCH_TOLERANCE = 0.01

SAME_STEPS = """
import sys
import numpy as np
from mritumor.config.schema import Settings
from mritumor.engine.distribution import resolve_distribution
from mritumor.engine.stages import compile_for, plan_stages
from mritumor.models.classifier import build_classifier
import keras

def fit(train):
    distribution = resolve_distribution(train)
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (32, 32, 32, 3)).astype("float32")
    labels = np.eye(4, dtype="float32")[np.arange(32) % 4]
    weights = np.linspace(0.5, 2.0, 32).astype("float32")  # as class weights arrive
    settings = Settings(
        model={"backbone": "small_cnn", "weights": "none", "dropout": 0.0},
        data={"image_size": 32},
        train=train.model_copy(update={"freeze_backbone_epochs": 0, "epochs": 2, "lr": 0.01}),
    )
    keras.utils.set_random_seed(0)
    with distribution.scope():
        model = build_classifier(settings)
        compile_for(plan_stages(settings.train)[0], model, settings, 4,
                    lr_scale=distribution.lr_scale(settings.train))
    # No BatchNorm in training mode: each replica would normalise its own half batch.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    history = model.fit(images, labels, sample_weight=weights, batch_size=8, epochs=2,
                        shuffle=False, verbose=0)
    return history.history["loss"]

from mritumor.config.schema import TrainSettings
mirrored = fit(TrainSettings(strategy="mirrored", devices=["CPU:0", "CPU:1"], batch_size=4,
                             scale_lr=False))
one = fit(TrainSettings(strategy="one", batch_size=8))
print(repr((one, mirrored)))
"""


@pytest.mark.slow
def test_two_replicas_take_the_same_steps_as_one_device() -> None:
    """Fixed batches of 8: one device, and two logical CPUs with 4 images each."""
    completed = run_to_the_end([sys.executable, "-c", SAME_STEPS])
    one, mirrored = eval(completed.stdout.strip().splitlines()[-1])
    assert one[-1] < one[0]  # it learnt something: the comparison is not of two ln(4)s
    assert mirrored == pytest.approx(one, abs=STEP_TOLERANCE)


@pytest.fixture(scope="module")
def one_device_run(cli_data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The reference: one device, a batch of two replicas' worth."""
    runs = tmp_path_factory.mktemp("one device")
    command = train_command(cli_data_root, runs, 2 * PER_REPLICA_BATCH, "--name", "one")
    run_to_the_end(command)
    return runs / "one"


@pytest.mark.slow
def test_mirrored_on_two_logical_cpus_matches_one_device(
    cli_data_root: Path, one_device_run: Path, tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    command = train_command(
        cli_data_root,
        runs,
        PER_REPLICA_BATCH,
        "--strategy",
        "mirrored",
        "--devices",
        "CPU:0,CPU:1",
        "--name",
        "mirrored",
    )
    completed = run_to_the_end(command)
    assert "2 replicas (mirrored: /device:CPU:0, /device:CPU:1)" in completed.stdout
    run = runs / "mirrored"
    assert first_epoch(run) == pytest.approx(first_epoch(one_device_run), abs=EPOCH_TOLERANCE)
    assert read_bundle(run).extra[DISTRIBUTION_KEY] == {
        "strategy": "mirrored",
        "replicas": 2,
        "workers": 1,
        "per_replica_batch": PER_REPLICA_BATCH,
        "global_batch": 2 * PER_REPLICA_BATCH,
        "lr_scale": 1.0,
    }


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def run_two_workers(commands: list[list[str]], work: Path) -> list[tuple[int, str, str]]:
    """Both workers of a fresh 127.0.0.1 cluster; killed together if either hangs."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(2)]
    processes = []
    for index, command in enumerate(commands):
        config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        env = child_environment(TF_CONFIG=json.dumps(config))
        processes.append(
            subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=env,
                cwd=work,
            )
        )
    try:
        outputs = [process.communicate(timeout=SUBPROCESS_TIMEOUT_S) for process in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return [(p.returncode, out, err) for p, (out, err) in zip(processes, outputs, strict=True)]


@pytest.mark.slow
def test_two_workers_train_one_run_written_by_the_chief_and_resume_it(
    cli_data_root: Path, one_device_run: Path, tmp_path: Path
) -> None:
    shared, private = tmp_path / "shared runs", tmp_path / "worker runs"
    flags = ("--strategy", "multiworker", "--name", "mw")
    chief, worker = run_two_workers(
        [
            train_command(cli_data_root, shared, PER_REPLICA_BATCH, *flags),
            train_command(cli_data_root, private, PER_REPLICA_BATCH, *flags),
        ],
        tmp_path,
    )
    assert chief[0] == 0 and worker[0] == 0, chief[2] + worker[2]
    assert "2 replicas on 2 workers (multiworker)" in chief[1]
    assert "this worker's part is done" in worker[1]
    assert not private.exists()  # the worker made and wrote no run of its own
    run = shared / "mw"
    bundle = read_bundle(run)
    assert bundle.epochs_completed == 1
    assert bundle.extra[DISTRIBUTION_KEY]["workers"] == 2
    assert first_epoch(run) == pytest.approx(first_epoch(one_device_run), abs=EPOCH_TOLERANCE)

    resume = ("--resume", str(run), "--epochs", "2", "--strategy", "multiworker", "-q")
    command = [sys.executable, "-m", "mritumor", "train", *resume]
    chief, worker = run_two_workers([command, command], tmp_path)
    assert chief[0] == 0 and worker[0] == 0, chief[2] + worker[2]
    assert "this worker's part is done" in worker[1]
    assert read_bundle(run).epochs_completed == 2
    with (run / HISTORY_FILE).open(newline="", encoding="utf-8") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2"]


def test_cluster_task_address_is_its_own() -> None:
    task = ClusterTask("chief", 0, {"chief": ("h:1",), "worker": ("h:2",)})
    assert task.address == "h:1"
