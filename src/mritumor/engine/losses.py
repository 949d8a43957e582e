"""Losses and optimisers built from the train settings.

Both losses work on logits (the model outputs float32 logits) and honour
per-sample weights, which is how class weights and MixUp's soft labels reach
them from the input pipeline.
"""

from __future__ import annotations

from typing import Any

from mritumor.config.schema import TrainSettings
from mritumor.core.errors import ConfigError


def make_loss(train: TrainSettings, num_classes: int) -> Any:
    """Categorical cross-entropy, or focal loss ``-sum_c alpha_c (1 - p_c)^gamma y_c log p_c``.

    Keras's CategoricalFocalCrossentropy implements exactly that formula with
    a per-class ``alpha`` vector (checked against a hand computation in the
    tests); ``alpha`` defaults to 1 for every class, which leaves class
    balancing to the class weights.
    """
    import keras

    if train.loss == "crossentropy":
        return keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=train.label_smoothing
        )
    alpha = train.focal_alpha if train.focal_alpha is not None else [1.0] * num_classes
    if len(alpha) != num_classes:
        raise ConfigError(
            f"train.focal_alpha has {len(alpha)} values but there are {num_classes} classes"
        )
    return keras.losses.CategoricalFocalCrossentropy(
        alpha=list(alpha),
        gamma=train.focal_gamma,
        from_logits=True,
        label_smoothing=train.label_smoothing,
    )


def make_optimizer(train: TrainSettings, peak_lr: float, steps_per_epoch: int, epochs: int) -> Any:
    """AdamW, Adam or SGD; with cosine decay, a linear warm-up then a cosine over one stage.

    The schedule is a function of the optimizer's step counter, which is saved
    with the model, so a resumed run continues at the same point of the curve.
    """
    import keras

    learning_rate: Any = peak_lr
    if train.cosine_decay:
        steps = steps_per_epoch * epochs
        warmup = min(train.warmup_epochs * steps_per_epoch, steps - 1)
        learning_rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=peak_lr * 0.01 if warmup else peak_lr,
            decay_steps=max(steps - warmup, 1),
            alpha=0.01,
            warmup_target=peak_lr if warmup else None,
            warmup_steps=warmup,
        )
    if train.optimizer == "adamw":
        return keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=train.weight_decay)
    if train.optimizer == "adam":
        return keras.optimizers.Adam(learning_rate=learning_rate)
    return keras.optimizers.SGD(
        learning_rate=learning_rate,
        momentum=train.momentum,
        weight_decay=train.weight_decay or None,
    )
