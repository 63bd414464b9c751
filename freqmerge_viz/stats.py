"""Statistics of what the toolkit shows: the uncertainty of an accuracy measured on n images.

Pure numpy; fractions in [0, 1] in, fractions out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from .errors import MissingKeysError, ParameterError


def binomial_se(accuracy: float | np.ndarray, n: int | np.ndarray) -> float | np.ndarray:
    """Standard error of an accuracy measured on `n` independent images: sqrt(p (1 − p) / n).

    Same units as `accuracy` (a fraction); NaN where n is 0.
    """
    p = np.asarray(accuracy, dtype=np.float64)
    count = np.asarray(n, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        se = np.sqrt(p * (1.0 - p) / count)
    se = np.where(count > 0, se, np.nan)
    return float(se) if se.ndim == 0 else se


def best_on_validation(means) -> int:
    """Index of the candidate with the highest validation mean (ties: the earlier candidate;
    NaN never wins unless every mean is NaN, then 0). The one rule by which every comparison,
    sweep and analysis of the toolkit chooses settings."""
    values = [float(m) for m in means]
    if not values:
        raise ValueError("no candidates to choose from")
    finite = [i for i, v in enumerate(values) if not math.isnan(v)]
    return max(finite, key=lambda i: (values[i], -i)) if finite else 0


def mean_se(accuracies, counts) -> float:
    """Standard error of the mean over tasks of per-task accuracies, each on its own `counts`
    images (tasks independent): sqrt(Σ se_t²) / T. A fraction; NaN (unknown) when any task's
    count is unknown (0 or None), since its own error is then unknown too."""
    counts = np.asarray([0 if c is None else c for c in np.atleast_1d(np.asarray(counts, dtype=object))],
                        dtype=np.float64)
    ses = np.atleast_1d(binomial_se(np.asarray(accuracies, dtype=np.float64), counts))
    if not len(ses) or not np.all(np.isfinite(ses)):
        return float("nan")
    return float(math.sqrt(np.sum(ses ** 2)) / len(ses))


def within_noise(values, ses) -> bool:
    """Whether every ±1 SE bar ``[v − se, v + se]`` overlaps every other (equivalently, one value
    lies inside all of them): a curve this flat shows no difference its sample can resolve.
    NaN standard errors count as 0; NaN values are ignored."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    s = np.nan_to_num(np.asarray(ses, dtype=np.float64).reshape(-1), nan=0.0)
    keep = np.isfinite(v)
    if not keep.any():
        return True
    v, s = v[keep], np.abs(s[keep])
    return bool(np.max(v - s) <= np.min(v + s) + 1e-12)


def mean_accuracy(accuracies: Mapping[str, float]) -> float:
    """Unweighted mean over tasks (ignores a ``"mean"`` entry)."""
    values = [v for k, v in accuracies.items() if k != "mean"]
    if not values:
        raise ParameterError("no accuracies to average")
    return float(sum(values) / len(values))


def normalized_accuracy(accuracies: Mapping[str, float], individual: Mapping[str, float]) -> dict[str, float]:
    """Per task ``accuracy / individual accuracy`` (the paper's normalised accuracy), plus
    ``"mean"``: the mean of the per-task ratios."""
    missing = [t for t in accuracies if t != "mean" and t not in individual]
    if missing:
        raise MissingKeysError(missing, where="the individual accuracies")
    zero = [t for t in accuracies if t != "mean" and not float(individual[t]) > 0]
    if zero:
        raise ParameterError(f"cannot normalise by an individual accuracy of 0 (tasks {zero})")
    out = {t: float(a) / float(individual[t]) for t, a in accuracies.items() if t != "mean"}
    out["mean"] = mean_accuracy(out)
    return out
