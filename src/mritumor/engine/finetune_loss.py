"""The finetune loss: targets ``[one-hot class (K), is_external, is_tumour]`` and the masked
hybrid loss over them.

Each batch of a finetune run mixes external yes/no images with images replayed from the
parent's 4-class ``train`` split; the targets say which kind a row is, so one loss trains both:
binary cross-entropy on the tumour score for external rows, categorical cross-entropy for
replayed ones.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mritumor.core.environment import import_tensorflow

if TYPE_CHECKING:
    import tensorflow as tf
else:
    tf = import_tensorflow()

import keras


@keras.saving.register_keras_serializable(package="mritumor")
class HybridLoss(keras.losses.Loss):  # type: ignore[misc]
    """Masked hybrid loss over targets ``[one-hot class (K), is_external, is_tumour]``.

    Replayed 4-class images (``is_external = 0``) get categorical cross-entropy
    ``-log p_y``. External images get binary cross-entropy on the tumour score
    ``p_t = 1 - p_neg`` (the statistic inference thresholds), with the tumour
    images weighted by ``pos_weight``:
    ``-(pos_weight * t * log p_t + (1 - t) * log(1 - p_t))``. Both are computed
    from log-sum-exps of the logits, so they stay finite for confident outputs.
    """

    def __init__(
        self,
        negative_index: int,
        pos_weight: float = 1.0,
        name: str = "hybrid_loss",
        reduction: str = "sum_over_batch_size",
    ) -> None:
        super().__init__(name=name, reduction=reduction)
        self.negative_index = int(negative_index)
        self.pos_weight = float(pos_weight)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        logits = tf.cast(y_pred, tf.float32)
        targets = tf.cast(y_true, tf.float32)
        classes = logits.shape[-1]
        one_hot, external, tumour = (
            targets[:, :classes],
            targets[:, classes],
            targets[:, classes + 1],
        )
        log_total = tf.reduce_logsumexp(logits, axis=-1)
        log_probabilities = logits - log_total[:, None]
        crossentropy = -tf.reduce_sum(one_hot * log_probabilities, axis=-1)
        is_negative = tf.one_hot(self.negative_index, classes, dtype=tf.float32)
        log_tumour = tf.reduce_logsumexp(logits - 1e9 * is_negative, axis=-1) - log_total
        log_no_tumour = log_probabilities[:, self.negative_index]
        binary = -(self.pos_weight * tumour * log_tumour + (1.0 - tumour) * log_no_tumour)
        return external * binary + (1.0 - external) * crossentropy

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "negative_index": self.negative_index,
            "pos_weight": self.pos_weight,
        }


def hybrid_targets(labels: Any, classes: int, *, external: bool) -> Any:
    """Targets ``[one-hot (K), is_external, is_tumour]`` from class or binary labels (tensors)."""
    count = tf.shape(labels)[0]
    if external:
        one_hot = tf.zeros([count, classes], tf.float32)
        tumour = tf.cast(labels, tf.float32)
        flag = tf.ones([count], tf.float32)
    else:
        one_hot = tf.one_hot(labels, classes, dtype=tf.float32)
        tumour = tf.zeros([count], tf.float32)
        flag = tf.zeros([count], tf.float32)
    return tf.concat([one_hot, flag[:, None], tumour[:, None]], axis=1)
