"""More than one device or host: the tf.distribute strategy that train, kfold and finetune share.

``train.strategy`` chooses it (:func:`resolve_distribution`):

- ``auto``: ``MirroredStrategy`` over every local GPU when there are several, else one
  device (and ``mirrored`` over ``train.devices`` when those are given);
- ``one``: TensorFlow's default strategy, one device;
- ``mirrored``: ``MirroredStrategy`` over ``train.devices``, or every local GPU;
  ``CPU:0, CPU:1, ...`` split the CPU into logical devices, which is how the tests
  and the benchmark run two replicas on a machine without a GPU;
- ``multiworker``: ``MultiWorkerMirroredStrategy`` over the hosts of the standard
  ``TF_CONFIG`` environment variable, checked first (:func:`read_tf_config`) so a
  bad one is one line, not a gRPC traceback.

``train.batch_size`` is the batch of one replica: the input pipeline batches
``batch_size x replicas`` images (the global batch) and the strategy splits each
batch among the replicas, so one step on N replicas is one step on one device with
an N times larger batch. The learning rates are multiplied by the number of
replicas (linear scaling, Goyal et al. 2017) unless ``train.scale_lr`` is false.

Only the chief (the ``chief`` task, else worker 0) writes: checkpoints, history,
bundle.json and reports. The other workers keep the same bookkeeping in memory.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from mritumor.core.environment import import_tensorflow
from mritumor.core.errors import ConfigError, MritumorError
from mritumor.engine.callbacks import expected_end_of_data
from mritumor.engine.checkpoints import DISTRIBUTION_KEY

if TYPE_CHECKING:
    import tensorflow as tf

    from mritumor.config.schema import TrainSettings
else:
    tf = import_tensorflow()

TF_CONFIG = "TF_CONFIG"
#: Cluster roles a multi-worker run may have: every one of them trains.
TRAINING_ROLES = ("chief", "worker")
StrategyKind = Literal["one", "mirrored", "multiworker"]
_DEVICE_NAME = re.compile(r"^(?:.*device:|/)?(cpu|gpu):(\d+)$", re.IGNORECASE)


@dataclass(frozen=True)
class ClusterTask:
    """This process's place in a ``TF_CONFIG`` cluster."""

    role: str
    index: int
    cluster: Mapping[str, tuple[str, ...]]

    @property
    def workers(self) -> int:
        return sum(len(self.cluster.get(role, ())) for role in TRAINING_ROLES)

    @property
    def chief(self) -> bool:
        """The ``chief`` task, or worker 0 when the cluster names no chief (TensorFlow's rule)."""
        if "chief" in self.cluster:
            return self.role == "chief"
        return self.role == "worker" and self.index == 0

    @property
    def address(self) -> str:
        return self.cluster[self.role][self.index]


@dataclass(frozen=True)
class Distribution:
    """The strategy a fit runs under, and what follows from it."""

    kind: StrategyKind
    strategy: Any = field(repr=False)
    replicas: int = 1
    devices: tuple[str, ...] = ()
    task: ClusterTask | None = None

    @property
    def workers(self) -> int:
        return self.task.workers if self.task is not None else 1

    @property
    def chief(self) -> bool:
        """Whether this process writes the run (always, unless a non-chief worker)."""
        return self.task is None or self.task.chief

    def global_batch(self, per_replica: int) -> int:
        return per_replica * self.replicas

    def lr_scale(self, train: TrainSettings) -> float:
        return float(self.replicas) if train.scale_lr else 1.0

    def scope(self) -> Any:
        return self.strategy.scope()

    def prepared(self, dataset: tf.data.Dataset) -> tf.data.Dataset:
        """``dataset`` sharded by data across workers: every worker reads the same file list
        and keeps its part of each global batch, so class weights, MixUp and oversampling
        keep their meaning (the files are not TFRecords, which sharding by file needs)."""
        if self.kind != "multiworker":
            return dataset
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
        return dataset.with_options(options)

    def describe(self) -> str:
        """``2 replicas (mirrored: /device:CPU:0, /device:CPU:1)``, ``1 replica (one device)``."""
        count = f"{self.replicas} replica{'s' if self.replicas != 1 else ''}"
        if self.kind == "one":
            return f"{count} (one device)"
        if self.kind == "mirrored":
            return f"{count} (mirrored: {', '.join(self.devices)})"
        return f"{count} on {self.workers} worker{'s' if self.workers != 1 else ''} (multiworker)"

    def record(self, train: TrainSettings) -> dict[str, Any]:
        """What bundle.json keeps of it, under :data:`DISTRIBUTION_KEY`."""
        return {
            "strategy": self.kind,
            "replicas": self.replicas,
            "workers": self.workers,
            "per_replica_batch": train.batch_size,
            "global_batch": self.global_batch(train.batch_size),
            "lr_scale": self.lr_scale(train),
        }


def fit_epochs(
    model: Any,
    distribution: Distribution,
    train: tf.data.Dataset,
    val: tf.data.Dataset,
    *,
    steps_per_epoch: int,
    initial_epoch: int,
    epochs: int,
    callbacks: list[Any],
) -> None:
    """``model.fit`` as training and finetune run it: on the strategy's sharded datasets, with
    no shuffle of Keras's own (the input pipelines shuffle, seeded), silent (the callbacks
    report), and without Keras's warning at the end of data of unknown length."""
    with expected_end_of_data():
        model.fit(
            distribution.prepared(train),
            steps_per_epoch=steps_per_epoch,
            validation_data=distribution.prepared(val),
            initial_epoch=initial_epoch,
            epochs=epochs,
            callbacks=callbacks,
            shuffle=False,
            verbose=0,
        )


_resolved: dict[tuple[str, tuple[str, ...]], Distribution] = {}


def resolve_distribution(train: TrainSettings) -> Distribution:
    """The distribution ``train.strategy`` and ``train.devices`` ask for.

    Made once per process and kept: TensorFlow lets a process configure its
    collective ops (multiworker) and split its CPU only before it first runs an op,
    and k-fold trains many folds in one process.
    """
    devices = tuple(train.devices or ())
    key = (train.strategy, devices)
    if key not in _resolved:
        _resolved[key] = _make_distribution(train.strategy, devices)
    return _resolved[key]


def _make_distribution(requested: str, devices: tuple[str, ...]) -> Distribution:
    if requested == "multiworker":
        if devices:
            raise ConfigError(
                "train.devices is for the mirrored strategy; multiworker uses every local GPU"
            )
        return _multiworker(read_tf_config(os.environ.get(TF_CONFIG)))
    if requested == "one":
        if devices:
            raise ConfigError("train.devices is for the mirrored strategy; set --strategy mirrored")
        return Distribution("one", tf.distribute.get_strategy())
    _warn_about_ignored_cluster(requested)
    gpus = tf.config.list_physical_devices("GPU")
    if requested == "auto" and not devices and len(gpus) < 2:
        return Distribution("one", tf.distribute.get_strategy())
    names = (
        _local_devices(devices) if devices else tuple(f"/device:GPU:{i}" for i in range(len(gpus)))
    )
    names = names or ("/device:CPU:0",)
    strategy = tf.distribute.MirroredStrategy(devices=list(names))
    return Distribution("mirrored", strategy, strategy.num_replicas_in_sync, names)


def _warn_about_ignored_cluster(requested: str) -> None:
    if os.environ.get(TF_CONFIG):
        warnings.warn(
            f"{TF_CONFIG} is set but train.strategy is {requested}: this process trains on its "
            "own; use --strategy multiworker to train with the cluster",
            UserWarning,
            stacklevel=4,
        )


def _local_devices(devices: tuple[str, ...]) -> tuple[str, ...]:
    """Canonical names of ``devices``; CPU:1 and up split the CPU into logical devices."""
    parsed = [_parse_device(name) for name in devices]
    gpus = len(tf.config.list_physical_devices("GPU"))
    for kind, index in parsed:
        if kind == "GPU" and index >= gpus:
            raise ConfigError(f"train.devices names GPU:{index}, but TensorFlow sees {gpus} GPU(s)")
    cpu_indices = [index for kind, index in parsed if kind == "CPU"]
    if cpu_indices:
        _split_cpu(max(cpu_indices) + 1)
    return tuple(f"/device:{kind}:{index}" for kind, index in parsed)


def _parse_device(name: str) -> tuple[str, int]:
    match = _DEVICE_NAME.match(name.strip())
    if match is None:
        raise ConfigError(f"train.devices: {name!r} is not a device name like GPU:0 or CPU:1")
    return match.group(1).upper(), int(match.group(2))


def _split_cpu(count: int) -> None:
    """Make ``count`` logical CPU devices, unless there are that many already."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    have = len(tf.config.get_logical_device_configuration(cpu) or ()) or 1
    if count <= have:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * count
        )
    except RuntimeError:
        raise ConfigError(
            f"train.devices names CPU:{count - 1}, but TensorFlow had already started with "
            f"{have} CPU device(s); the CPU can be split only before it runs anything"
        ) from None


def read_tf_config(text: str | None) -> ClusterTask:
    """This process's task in ``TF_CONFIG``; a :class:`ConfigError` line for anything amiss.

    ``{"cluster": {"worker": ["host1:port", "host2:port"]}, "task": {"type": "worker",
    "index": 0}}``; a ``chief`` role may be listed too. Parameter servers and
    evaluators are other strategies' roles, and refused.
    """
    if not text:
        raise ConfigError(
            f"train.strategy multiworker needs the {TF_CONFIG} environment variable "
            '(e.g. {"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
            '"task": {"type": "worker", "index": 0}})'
        )
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{TF_CONFIG} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise ConfigError(f"{TF_CONFIG} must be a JSON object with 'cluster' and 'task'")
    cluster = _cluster(config.get("cluster"))
    task = config.get("task")
    if not isinstance(task, dict) or "type" not in task or "index" not in task:
        raise ConfigError(f'{TF_CONFIG} needs "task": {{"type": "worker", "index": N}}')
    role, index = task["type"], task["index"]
    if role not in cluster:
        raise ConfigError(
            f"{TF_CONFIG} task type {role!r} is not a role of its cluster "
            f"({', '.join(sorted(cluster))})"
        )
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < len(cluster[role]):
        raise ConfigError(
            f"{TF_CONFIG} task index {index!r} is out of range: the cluster has "
            f"{len(cluster[role])} {role} task(s), numbered from 0"
        )
    return ClusterTask(role, index, cluster)


def _cluster(value: object) -> dict[str, tuple[str, ...]]:
    if not isinstance(value, dict) or not value:
        raise ConfigError(f'{TF_CONFIG} needs "cluster": {{"worker": ["host:port", ...]}}')
    unsupported = sorted(set(value) - set(TRAINING_ROLES))
    if unsupported:
        raise ConfigError(
            f"{TF_CONFIG} lists {', '.join(unsupported)}: the multiworker strategy trains "
            f"with {' and '.join(TRAINING_ROLES)} tasks only"
        )
    cluster: dict[str, tuple[str, ...]] = {}
    for role, addresses in value.items():
        if (
            not isinstance(addresses, list)
            or not addresses
            or not all(isinstance(a, str) and re.fullmatch(r"\S+:\d+", a) for a in addresses)
        ):
            raise ConfigError(f'{TF_CONFIG} cluster role {role!r} must list "host:port" addresses')
        cluster[role] = tuple(addresses)
    if len(cluster.get("chief", ())) > 1:
        raise ConfigError(f"{TF_CONFIG} lists {len(cluster['chief'])} chiefs; a cluster has one")
    return cluster


def _multiworker(task: ClusterTask) -> Distribution:
    try:
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as error:
        raise MritumorError(
            f"cannot start the multiworker strategy: {error}; it must be made before "
            "TensorFlow runs anything in this process"
        ) from None
    except tf.errors.OpError as error:
        raise MritumorError(
            f"cannot start the multiworker strategy as {task.role} {task.index} "
            f"({task.address}): {error.message}; is the port free on this host?"
        ) from None
    _patch_keras_for_multiworker()
    return Distribution("multiworker", strategy, strategy.num_replicas_in_sync, task=task)


def _patch_keras_for_multiworker() -> None:
    """Two fixes that Keras 3's ``fit`` needs under ``MultiWorkerMirroredStrategy``.

    Keras 3 (3.15 and earlier) reduces a step's scalar logs with
    ``strategy.reduce("MEAN", v, axis=0)``, which fails on a scalar ("Invalid
    reduction dimension 0", tensorflow/tensorflow#72388), and reduces the first batch
    with an eager collective to learn its shapes, which multiworker cannot run.
    Here the logs are averaged over the replicas (``axis=None``) and the shapes are
    read from this worker's own part of the batch. Single-host strategies are
    untouched; the tests check a multiworker fit against a one-device fit.
    """
    from keras import tree
    from keras.src.backend.tensorflow import trainer

    if getattr(trainer, "_mritumor_multiworker", False):
        return
    reduce_per_replica = trainer.reduce_per_replica
    symbolic_build = trainer.TensorFlowTrainer._maybe_symbolic_build

    def reduce_logs(values: Any, strategy: Any, reduction: str) -> Any:
        if reduction in ("auto", "mean") and trainer._collective_all_reduce_multi_worker(strategy):
            return tree.map_structure(lambda v: strategy.reduce("MEAN", v, axis=None), values)
        return reduce_per_replica(values, strategy, reduction)

    def build_from_local_batch(model: Any, iterator: Any = None, data_batch: Any = None) -> Any:
        strategy = model.distribute_strategy
        if iterator is not None and trainer._collective_all_reduce_multi_worker(strategy):
            for _, _, batches in iterator:
                data_batch = tree.map_structure(
                    lambda v: strategy.experimental_local_results(v)[0], next(batches)
                )
                break
            iterator = None
        return symbolic_build(model, iterator=iterator, data_batch=data_batch)

    trainer.reduce_per_replica = reduce_logs
    trainer.TensorFlowTrainer._maybe_symbolic_build = build_from_local_batch
    trainer._mritumor_multiworker = True


def check_same_global_batch(bundle: Any, distribution: Distribution, train: TrainSettings) -> None:
    """A resumed run keeps its replicas: another count changes the global batch, hence the
    steps per epoch that its learning-rate schedule was laid out in, and the scaled rate.

    A run from before this record trained on one device.
    """
    recorded = bundle.extra.get(DISTRIBUTION_KEY) or {
        "replicas": 1,
        "global_batch": train.batch_size,
    }
    replicas, global_batch = recorded.get("replicas"), recorded.get("global_batch")
    if (replicas, global_batch) != (
        distribution.replicas,
        distribution.global_batch(train.batch_size),
    ):
        raise ConfigError(
            f"this run trained on {replicas} replica(s) with a global batch of {global_batch}, "
            f"but would resume on {distribution.describe()}, a global batch of "
            f"{distribution.global_batch(train.batch_size)}; resume with the same number of "
            "replicas (--strategy and --devices, or the same TF_CONFIG cluster)"
        )
