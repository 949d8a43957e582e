"""The stages of a fit and the optimizer each is compiled with.

Stage ``frozen`` trains the head with the backbone frozen (its BatchNorm in
inference mode) at ``train.lr``; stage ``full`` trains the whole network at
``train.finetune_lr`` (or at ``train.lr`` when there was no frozen stage).
Each stage gets a fresh optimizer whose warm-up + cosine schedule spans that
stage.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from mritumor.core.environment import import_tensorflow

if not TYPE_CHECKING:
    import_tensorflow()  # quietly, before Keras imports it

import keras

from mritumor.engine.losses import make_loss, make_optimizer
from mritumor.models.classifier import set_backbone_trainable

if TYPE_CHECKING:
    from mritumor.config.schema import Settings, TrainSettings

StageName = Literal["frozen", "full"]


@dataclass(frozen=True)
class Stage:
    """Epochs ``[start, end)`` (0-based) trained with one optimizer and one trainable state."""

    name: StageName
    start: int
    end: int
    peak_lr: float

    @property
    def backbone_trainable(self) -> bool:
        return self.name == "full"


def plan_stages(train: TrainSettings) -> list[Stage]:
    """The frozen stage (if any) then the full stage (if any epochs remain)."""
    frozen_epochs = min(train.freeze_backbone_epochs, train.epochs)
    stages = []
    if frozen_epochs:
        stages.append(Stage("frozen", 0, frozen_epochs, train.lr))
    if frozen_epochs < train.epochs:
        full_lr = train.finetune_lr if frozen_epochs else train.lr
        stages.append(Stage("full", frozen_epochs, train.epochs, full_lr))
    return stages


def compile_for(
    stage: Stage, model: Any, settings: Settings, steps_per_epoch: int, *, lr_scale: float = 1.0
) -> None:
    """A fresh optimizer for the stage; its schedule spans the stage's remaining epochs.

    ``lr_scale`` multiplies the stage's peak rate (linear scaling with the replicas).
    """
    set_backbone_trainable(model, stage.backbone_trainable)
    model.compile(
        optimizer=make_optimizer(
            settings.train, stage.peak_lr * lr_scale, steps_per_epoch, stage.end - stage.start
        ),
        loss=make_loss(settings.train, len(settings.data.class_names)),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=settings.train.xla,
    )
