"""Losses and optimisers from the train settings, checked against hand computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from mritumor.config.schema import TrainSettings
from mritumor.core.errors import ConfigError
from mritumor.engine.losses import make_loss, make_optimizer

# A 2 x 3 example: two samples, three classes.
LOGITS = np.array([[1.0, 2.0, 3.0], [0.5, -1.0, 0.0]], dtype=np.float32)
LABELS = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=np.float32)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def per_sample_ce(labels: np.ndarray, logits: np.ndarray) -> np.ndarray:
    return -(labels * np.log(softmax(logits.astype(np.float64)))).sum(axis=1)


def value(loss: object, labels: np.ndarray, logits: np.ndarray, **kwargs: object) -> float:
    return float(loss(labels, logits, **kwargs))  # type: ignore[operator]


def test_crossentropy_equals_softmax_ce_by_hand() -> None:
    loss = make_loss(TrainSettings(loss="crossentropy"), 3)
    # Row 1: logsumexp(1, 2, 3) - 3; row 2: logsumexp(0.5, -1, 0) - 0.5.
    row1 = math.log(math.exp(1) + math.exp(2) + math.exp(3)) - 3.0
    row2 = math.log(math.exp(0.5) + math.exp(-1) + math.exp(0)) - 0.5
    assert row1 == pytest.approx(0.4076059644)
    expected = (row1 + row2) / 2
    assert value(loss, LABELS, LOGITS) == pytest.approx(expected, rel=1e-6)
    assert value(loss, LABELS, LOGITS) == pytest.approx(per_sample_ce(LABELS, LOGITS).mean(), 1e-6)


def test_crossentropy_with_label_smoothing() -> None:
    smoothing = 0.1
    loss = make_loss(TrainSettings(loss="crossentropy", label_smoothing=smoothing), 3)
    smoothed = LABELS * (1 - smoothing) + smoothing / 3
    assert smoothed[0].tolist() == pytest.approx([1 / 30, 1 / 30, 28 / 30])
    expected = per_sample_ce(smoothed, LOGITS).mean()
    assert value(loss, LABELS, LOGITS) == pytest.approx(expected, rel=1e-6)
    assert expected > per_sample_ce(LABELS, LOGITS).mean()  # smoothing costs confident fits


def focal_by_hand(
    labels: np.ndarray, logits: np.ndarray, alpha: list[float], gamma: float
) -> np.ndarray:
    """``-sum_c alpha_c (1 - p_c)^gamma y_c log p_c`` per sample."""
    p = softmax(logits.astype(np.float64))
    return -(np.asarray(alpha) * (1 - p) ** gamma * labels * np.log(p)).sum(axis=1)


def test_focal_loss_matches_the_formula_with_alpha_and_gamma() -> None:
    alpha, gamma = [0.25, 0.5, 2.0], 2.0
    loss = make_loss(TrainSettings(loss="focal", focal_alpha=alpha, focal_gamma=gamma), 3)
    expected = focal_by_hand(LABELS, LOGITS, alpha, gamma)
    # Row 1 by hand: p_2 = 1 / (e^-2 + e^-1 + 1); alpha_2 = 2.0.
    p2 = 1 / (math.exp(-2) + math.exp(-1) + 1)
    assert expected[0] == pytest.approx(-2.0 * (1 - p2) ** 2 * math.log(p2))
    assert value(loss, LABELS, LOGITS) == pytest.approx(expected.mean(), rel=1e-5)


def test_focal_loss_with_gamma_zero_and_unit_alpha_is_crossentropy() -> None:
    focal = make_loss(TrainSettings(loss="focal", focal_gamma=0.0), 3)  # alpha defaults to 1
    ce = make_loss(TrainSettings(loss="crossentropy"), 3)
    assert value(focal, LABELS, LOGITS) == pytest.approx(value(ce, LABELS, LOGITS), rel=1e-5)


def test_focal_loss_honours_sample_weight() -> None:
    alpha, gamma = [0.25, 0.5, 2.0], 1.5
    loss = make_loss(TrainSettings(loss="focal", focal_alpha=alpha, focal_gamma=gamma), 3)
    per_sample = focal_by_hand(LABELS, LOGITS, alpha, gamma)
    weights = np.array([2.0, 0.5], dtype=np.float32)
    # Keras's sum_over_batch_size: sum_i w_i l_i / N (class weights average 1 over the data).
    expected = float((weights * per_sample).sum() / len(weights))
    assert value(loss, LABELS, LOGITS, sample_weight=weights) == pytest.approx(expected, rel=1e-5)
    zero_second = np.array([1.0, 0.0], dtype=np.float32)
    assert value(loss, LABELS, LOGITS, sample_weight=zero_second) == pytest.approx(
        per_sample[0] / 2, rel=1e-5
    )


def test_focal_alpha_of_the_wrong_length_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"focal_alpha has 2 values but there are 3 classes"):
        make_loss(TrainSettings(loss="focal", focal_alpha=[1.0, 2.0]), 3)
    # The same list is fine for two classes.
    make_loss(TrainSettings(loss="focal", focal_alpha=[1.0, 2.0]), 2)


def test_optimizer_types_and_weight_decay() -> None:
    import keras

    adamw = make_optimizer(
        TrainSettings(optimizer="adamw", weight_decay=3e-4, cosine_decay=False), 1e-3, 10, 2
    )
    assert type(adamw) is keras.optimizers.AdamW
    assert adamw.weight_decay == pytest.approx(3e-4)
    adam = make_optimizer(TrainSettings(optimizer="adam", cosine_decay=False), 1e-3, 10, 2)
    assert type(adam) is keras.optimizers.Adam  # not AdamW, which subclasses Adam
    sgd = make_optimizer(
        TrainSettings(optimizer="sgd", momentum=0.8, weight_decay=2e-4, cosine_decay=False),
        1e-2,
        10,
        2,
    )
    assert type(sgd) is keras.optimizers.SGD
    assert sgd.momentum == pytest.approx(0.8)
    assert sgd.weight_decay == pytest.approx(2e-4)
    no_decay = make_optimizer(
        TrainSettings(optimizer="sgd", weight_decay=0.0, cosine_decay=False), 1e-2, 10, 2
    )
    assert no_decay.weight_decay is None


def rate_at(optimizer: object, step: int) -> float:
    """The learning rate the optimizer uses when its step counter is ``step``."""
    optimizer.iterations.assign(step)  # type: ignore[attr-defined]
    return float(optimizer.learning_rate)  # type: ignore[attr-defined]


def test_cosine_schedule_warms_up_to_the_peak_and_decays_to_one_percent() -> None:
    peak, steps_per_epoch, epochs = 1e-3, 10, 3
    optimizer = make_optimizer(
        TrainSettings(cosine_decay=True, warmup_epochs=1), peak, steps_per_epoch, epochs
    )
    warmup, last = 1 * steps_per_epoch, steps_per_epoch * epochs
    assert rate_at(optimizer, 0) == pytest.approx(0.01 * peak, rel=1e-5)
    assert rate_at(optimizer, warmup // 2) == pytest.approx(
        0.01 * peak + (peak - 0.01 * peak) / 2, rel=1e-5
    )
    assert rate_at(optimizer, warmup) == pytest.approx(peak, rel=1e-5)
    # Half-way through the cosine: peak * ((1 - 0.01) * 0.5 + 0.01).
    assert rate_at(optimizer, (warmup + last) // 2) == pytest.approx(peak * 0.505, rel=1e-5)
    assert rate_at(optimizer, last - 1) > 0.01 * peak
    assert rate_at(optimizer, last) == pytest.approx(0.01 * peak, rel=1e-5)
    assert rate_at(optimizer, last + 50) == pytest.approx(0.01 * peak, rel=1e-5)
    # The schedule is the optimizer's own, so it is saved and restored with it.
    schedule = optimizer._learning_rate
    assert float(schedule(warmup)) == pytest.approx(peak, rel=1e-5)


def test_cosine_schedule_without_warmup_starts_at_the_peak() -> None:
    peak = 1e-4
    optimizer = make_optimizer(TrainSettings(cosine_decay=True, warmup_epochs=0), peak, 5, 2)
    assert rate_at(optimizer, 0) == pytest.approx(peak, rel=1e-5)
    assert rate_at(optimizer, 10) == pytest.approx(0.01 * peak, rel=1e-5)


def test_warmup_longer_than_the_stage_still_ends_at_the_peak_and_decays() -> None:
    # One epoch of 4 steps with warmup_epochs=3: warm-up is cut to 3 steps, one step decays.
    peak = 1e-3
    optimizer = make_optimizer(TrainSettings(cosine_decay=True, warmup_epochs=3), peak, 4, 1)
    assert rate_at(optimizer, 0) == pytest.approx(0.01 * peak, rel=1e-5)
    assert rate_at(optimizer, 3) == pytest.approx(peak, rel=1e-5)
    assert rate_at(optimizer, 4) == pytest.approx(0.01 * peak, rel=1e-5)


def test_without_cosine_decay_the_rate_is_constant() -> None:
    optimizer = make_optimizer(TrainSettings(cosine_decay=False), 2e-3, 10, 3)
    assert rate_at(optimizer, 0) == pytest.approx(2e-3)
    assert rate_at(optimizer, 25) == pytest.approx(2e-3)
    assert rate_at(optimizer, 1000) == pytest.approx(2e-3)
