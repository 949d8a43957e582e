"""Temperature scaling and calibration metrics (ECE, MCE, Brier score, NLL).

Temperature scaling (Guo et al., "On Calibration of Modern Neural Networks",
ICML 2017) divides the logits by one scalar T fitted on held-out data: T > 1
softens over-confident predictions, and the predicted class never changes.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mritumor.core.errors import UsageError
from mritumor.stats.metrics import as_labels, as_probabilities, require_same_length

FloatArray = NDArray[np.float64]

#: Probabilities are clipped here before the log so a confident mistake costs
#: about 27.6 nats instead of infinity.
PROBABILITY_FLOOR = 1e-12

#: Distance in log T from a search bound within which the optimum counts as at it.
_AT_BOUND_TOLERANCE = 1e-5


def _as_logits(logits: ArrayLike) -> FloatArray:
    array = np.asarray(logits, dtype=np.float64)
    if array.ndim != 2:
        raise UsageError(f"logits must be 2-D (samples x classes), got shape {array.shape}")
    if array.size == 0:
        raise UsageError("logits is empty")
    if not np.all(np.isfinite(array)):
        raise UsageError("logits hold NaN or infinite values")
    return array


def _check_temperature(temperature: float) -> None:
    if not (math.isfinite(temperature) and temperature > 0.0):
        raise UsageError(f"temperature must be a positive number, got {temperature}")


def _log_softmax(logits: FloatArray) -> FloatArray:
    """``z - logsumexp(z)`` per row, shifted by the row maximum so nothing overflows."""
    shifted: FloatArray = logits - logits.max(axis=1, keepdims=True)
    log_normaliser: FloatArray = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return shifted - log_normaliser


def softmax(logits: ArrayLike, temperature: float = 1.0) -> FloatArray:
    """Row-wise ``softmax(logits / temperature)``, stable for logits of any size."""
    _check_temperature(temperature)
    return np.exp(_log_softmax(_as_logits(logits) / temperature))


def tumour_score(probabilities: ArrayLike, negative_index: int) -> FloatArray:
    """``1 - p(no tumour)``: THE decision statistic, the same in every command.

    Thresholds, ROC curves and operating points on the tumour/no-tumour question
    all use this score, whatever the number of tumour classes.
    """
    probs = as_probabilities(probabilities)
    if not 0 <= negative_index < probs.shape[1]:
        raise UsageError(
            f"negative_index {negative_index} is not a column of {probs.shape[1]} classes"
        )
    return 1.0 - probs[:, negative_index]


def _checked_pair(
    probabilities: ArrayLike, labels: ArrayLike
) -> tuple[FloatArray, NDArray[np.int64]]:
    probs = as_probabilities(probabilities)
    label_array = as_labels(labels, probs.shape[1])
    require_same_length(probabilities=probs, labels=label_array)
    return probs, label_array


def negative_log_likelihood(probabilities: ArrayLike, labels: ArrayLike) -> float:
    """Mean ``-log p(true class)``, with probabilities clipped at :data:`PROBABILITY_FLOOR`."""
    probs, label_array = _checked_pair(probabilities, labels)
    true_class = probs[np.arange(len(label_array)), label_array]
    return float(-np.mean(np.log(np.clip(true_class, PROBABILITY_FLOOR, 1.0))))


def _mean_nll(logits: FloatArray, labels: NDArray[np.int64]) -> float:
    return float(-np.mean(_log_softmax(logits)[np.arange(len(labels)), labels]))


def logits_nll(logits: ArrayLike, labels: ArrayLike, temperature: float = 1.0) -> float:
    """Mean NLL of ``softmax(logits / temperature)`` from the log-softmax, no clipping."""
    _check_temperature(temperature)
    array = _as_logits(logits)
    label_array = as_labels(labels, array.shape[1])
    require_same_length(logits=array, labels=label_array)
    return _mean_nll(array / temperature, label_array)


@dataclass(frozen=True)
class TemperatureFit:
    """The fitted temperature and the NLL on the fitting set before and after it."""

    temperature: float
    nll_before: float
    """At T = 1."""
    nll_after: float
    """At ``temperature``; never above ``nll_before``."""
    iterations: int
    at_bound: bool
    """The optimum sits at a search bound, so the true optimum may lie beyond it."""


def fit_temperature(
    logits: ArrayLike, labels: ArrayLike, *, bounds: tuple[float, float] = (0.05, 20.0)
) -> TemperatureFit:
    """The T that minimises the NLL of ``softmax(logits / T)`` on ``(logits, labels)``.

    The NLL is convex in 1/T: per sample it is a log-sum-exp of a linear function
    of 1/T minus a linear function. It is therefore unimodal in tau = log T, so a
    bounded Brent search over tau, run until tau is known to 1e-8, finds the
    global minimum inside ``bounds`` (which must contain 1). The reference
    framework instead takes a fixed number of Adam steps, which can stop short.
    """
    array = _as_logits(logits)
    label_array = as_labels(labels, array.shape[1])
    require_same_length(logits=array, labels=label_array)
    return _minimise_over_log_t(lambda t: _mean_nll(array / t, label_array), bounds, grid=False)


def fit_temperature_binary(
    logits: ArrayLike,
    tumour: ArrayLike,
    negative_index: int,
    *,
    bounds: tuple[float, float] = (0.05, 20.0),
) -> TemperatureFit:
    """The T that minimises the binary NLL of the tumour score ``1 - softmax(z / T)[neg]``.

    For a yes/no set (a finetune run's ``ext_val``): only tumour / no tumour is
    known, so T is fitted to the decision statistic itself. This NLL is not
    convex in 1/T (its tumour term is a difference of two log-sum-exps), so the
    bounded search starts from the best of a grid of 41 points over log T.
    """
    array = _as_logits(logits)
    labels = as_labels(tumour, 2)
    require_same_length(logits=array, tumour=labels)
    if not 0 <= negative_index < array.shape[1]:
        raise UsageError(f"negative_index {negative_index} is not a column of the logits")
    return _minimise_over_log_t(
        lambda t: _binary_nll(array / t, labels, negative_index), bounds, grid=True
    )


def binary_probabilities(
    logits: ArrayLike, negative_index: int, temperature: float = 1.0
) -> FloatArray:
    """``(n, 2)`` columns [no tumour, tumour] of ``softmax(logits / T)``, for binary metrics."""
    probabilities = softmax(logits, temperature)
    score = tumour_score(probabilities, negative_index)
    return np.stack([1.0 - score, score], axis=1)


def _binary_nll(scaled: FloatArray, tumour: NDArray[np.int64], negative_index: int) -> float:
    from scipy.special import logsumexp

    total = logsumexp(scaled, axis=1)
    log_no_tumour = scaled[:, negative_index] - total
    log_tumour = logsumexp(np.delete(scaled, negative_index, axis=1), axis=1) - total
    return float(-np.mean(np.where(tumour == 1, log_tumour, log_no_tumour)))


def _minimise_over_log_t(
    objective: Callable[[float], float], bounds: tuple[float, float], *, grid: bool
) -> TemperatureFit:
    """Minimise ``objective(T)`` over tau = log T by a bounded Brent search to 1e-8.

    With ``grid`` the search runs between the neighbours of the best of 41
    grid points (for objectives that may have several local minima). The fit
    never ends worse than T = 1.
    """
    from scipy.optimize import minimize_scalar

    low, high = bounds
    if not 0.0 < low <= 1.0 <= high or low == high:
        raise UsageError(f"temperature bounds must satisfy 0 < low <= 1 <= high, got {bounds}")
    log_bounds = (math.log(low), math.log(high))
    search = log_bounds
    if grid:
        points = np.linspace(*log_bounds, 41)
        best = int(np.argmin([objective(math.exp(tau)) for tau in points]))
        search = (float(points[max(best - 1, 0)]), float(points[min(best + 1, 40)]))
    result = minimize_scalar(
        lambda tau: objective(math.exp(tau)),
        method="bounded",
        bounds=search,
        options={"xatol": 1e-8},
    )
    nll_before = objective(1.0)
    tau = float(result.x)
    nll_after = objective(math.exp(tau))
    if nll_after > nll_before:
        tau, nll_after = 0.0, nll_before
    return TemperatureFit(
        temperature=math.exp(tau),
        nll_before=nll_before,
        nll_after=nll_after,
        iterations=int(result.nit),
        at_bound=min(abs(tau - bound) for bound in log_bounds) < _AT_BOUND_TOLERANCE,
    )


@dataclass(frozen=True)
class ReliabilityBins:
    """Equal-width bins of the top-class probability (confidence), for a reliability diagram."""

    edges: FloatArray
    """``n_bins + 1`` edges from 0 to 1; bin i holds confidences in (edges[i], edges[i+1]]."""
    counts: NDArray[np.int64]
    accuracy: FloatArray
    """Share of correct top-class predictions per bin; NaN where the bin is empty."""
    confidence: FloatArray
    """Mean confidence per bin; NaN where the bin is empty."""


def reliability_bins(
    probabilities: ArrayLike, labels: ArrayLike, n_bins: int = 15
) -> ReliabilityBins:
    """Bin samples by confidence as in Guo et al.'s code: ``lower < confidence <= upper``.

    Confidences are never 0 (the top of k probabilities is at least 1/k), so every
    sample falls in a bin. The predicted class is the arg-max, the first one on ties.
    """
    if n_bins < 1:
        raise UsageError(f"n_bins must be at least 1, got {n_bins}")
    probs, label_array = _checked_pair(probabilities, labels)
    confidences = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == label_array).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bin_of = np.searchsorted(edges, confidences, side="left") - 1
    counts = np.bincount(bin_of, minlength=n_bins).astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(bin_of, weights=correct, minlength=n_bins) / counts
        confidence = np.bincount(bin_of, weights=confidences, minlength=n_bins) / counts
    return ReliabilityBins(edges, counts, accuracy, confidence)


def _bin_gaps(bins: ReliabilityBins) -> FloatArray:
    """``|accuracy - confidence|`` of the non-empty bins."""
    filled = bins.counts > 0
    return np.abs(bins.accuracy[filled] - bins.confidence[filled])


def expected_calibration_error(
    probabilities: ArrayLike, labels: ArrayLike, n_bins: int = 15
) -> float:
    """ECE (Guo et al. 2017): ``sum_b (n_b / N) |accuracy_b - confidence_b|``."""
    bins = reliability_bins(probabilities, labels, n_bins)
    filled = bins.counts > 0
    weights = bins.counts[filled] / bins.counts.sum()
    return float(np.sum(weights * _bin_gaps(bins)))


def maximum_calibration_error(
    probabilities: ArrayLike, labels: ArrayLike, n_bins: int = 15
) -> float:
    """MCE (Guo et al. 2017): the largest ``|accuracy_b - confidence_b|`` of a non-empty bin."""
    return float(_bin_gaps(reliability_bins(probabilities, labels, n_bins)).max())


def brier_score(probabilities: ArrayLike, labels: ArrayLike) -> float:
    """Multi-class Brier score: mean over samples of ``sum_k (p_k - [y = k])^2``, in [0, 2]."""
    probs, label_array = _checked_pair(probabilities, labels)
    one_hot = np.eye(probs.shape[1])[label_array]
    return float(np.mean(np.sum((probs - one_hot) ** 2, axis=1)))


def calibration_metrics(
    probabilities: ArrayLike, labels: ArrayLike, n_bins: int = 15
) -> dict[str, float]:
    """ECE, MCE, Brier score and NLL under the key names of the reference framework's
    ``calibration_metrics.json``."""
    return {
        "ECE": expected_calibration_error(probabilities, labels, n_bins),
        "MCE": maximum_calibration_error(probabilities, labels, n_bins),
        "BrierScore": brier_score(probabilities, labels),
        "NLL": negative_log_likelihood(probabilities, labels),
    }
