"""Interference against performance (paper Fig. 2b): pairs of tasks, their amplitude variance
and the normalised accuracy of their merge, with correlations and bootstrap intervals.

:func:`correlation_with_ci` is a pure function over two arrays; :func:`pair_interference_table`
measures the pairs on the study.
"""

from __future__ import annotations

import itertools
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import EmptyInputError, ParameterError, check_positive_int
from ..methods import merge
from ..metrics import amplitude_variances
from ..progress import track
from .evaluation import (evaluate_per_task, image_counts, individual_accuracies, materialize, study_task_vectors,
                         study_tasks)


# --------------------------------------------------------------------------- pure statistics
def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n along the last axis, ties sharing their average rank (as Spearman needs)."""
    a = np.asarray(values, dtype=np.float64)
    n = a.shape[-1]
    flat = a.reshape(-1, n)
    out = np.empty_like(flat)
    rows = max(1, 4_000_000 // max(n * n, 1))
    for start in range(0, flat.shape[0], rows):
        block = flat[start:start + rows]
        below = (block[:, None, :] < block[:, :, None]).sum(axis=-1)
        equal = (block[:, None, :] == block[:, :, None]).sum(axis=-1)
        out[start:start + rows] = below + (equal + 1) / 2.0
    return out.reshape(a.shape)


def _pearson_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row pair of ``x[B, n]`` and ``y[B, n]``; NaN where a row is constant."""
    dx = x - x.mean(axis=-1, keepdims=True)
    dy = y - y.mean(axis=-1, keepdims=True)
    denominator = np.sqrt((dx * dx).sum(axis=-1) * (dy * dy).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (dx * dy).sum(axis=-1) / denominator
    return np.where(denominator > 0, np.clip(r, -1.0, 1.0), np.nan)


def correlation_with_ci(x, y, n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Pearson and Spearman correlation of paired samples with percentile bootstrap intervals.

    Pairs ``(x_i, y_i)`` are resampled with replacement `n_boot` times (numpy generator seeded
    with `seed`); the interval is the central `level` share of the resampled coefficients,
    ignoring resamples where either variable is constant. Spearman is Pearson of average ranks.
    The bootstrap treats the pairs as independent, which pairs of tasks sharing a task are not,
    so the interval is optimistic there. Returns ``n, pearson, pearson_low, pearson_high,
    spearman, spearman_low, spearman_high, level, n_boot, n_boot_valid, seed``.
    """
    xs = np.asarray(x, dtype=np.float64).reshape(-1)
    ys = np.asarray(y, dtype=np.float64).reshape(-1)
    if xs.shape != ys.shape:
        raise ParameterError(f"x and y must have the same length, got {xs.size} and {ys.size}")
    if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
        raise ParameterError("x and y must be finite (drop NaN pairs first)")
    if xs.size < 3:
        raise EmptyInputError(f"need at least 3 pairs for a correlation with an interval, got {xs.size}")
    n_boot = check_positive_int("n_boot", n_boot)
    if isinstance(level, bool) or not isinstance(level, (int, float)) or not 0 < level < 1:
        raise ParameterError(f"level must be a probability in (0, 1), got {level!r}")
    pearson = float(_pearson_rows(xs[None], ys[None])[0])
    spearman = float(_pearson_rows(average_ranks(xs)[None], average_ranks(ys)[None])[0])
    index = np.random.default_rng(seed).integers(0, xs.size, size=(n_boot, xs.size))
    bx, by = xs[index], ys[index]
    boot = {"pearson": _pearson_rows(bx, by), "spearman": _pearson_rows(average_ranks(bx), average_ranks(by))}
    valid = np.isfinite(boot["pearson"]) & np.isfinite(boot["spearman"])
    tail = 100.0 * (1.0 - level) / 2.0
    out = {"n": int(xs.size), "pearson": pearson, "spearman": spearman}
    for name, values in boot.items():
        kept = values[valid]
        low, high = np.percentile(kept, [tail, 100.0 - tail]) if kept.size else (np.nan, np.nan)
        out[f"{name}_low"], out[f"{name}_high"] = float(low), float(high)
    out.update({"level": float(level), "n_boot": n_boot, "n_boot_valid": int(valid.sum()), "seed": seed})
    return out


# --------------------------------------------------------------------------- pairs on the study
def task_pairs(tasks: Sequence[str], n_pairs: int | None = None, seed: int = 0) -> list[tuple[str, str]]:
    """All unordered pairs of `tasks` in order, or a seeded random subset of `n_pairs` of them."""
    pairs = list(itertools.combinations(tasks, 2))
    if n_pairs is None or n_pairs >= len(pairs):
        return pairs
    n_pairs = check_positive_int("n_pairs", n_pairs)
    chosen = np.sort(np.random.default_rng(seed).choice(len(pairs), size=n_pairs, replace=False))
    return [pairs[i] for i in chosen]


def pair_interference_table(study, *, tasks: Sequence[str] | None = None, n_pairs: int | None = None,
                            seed: int = 0, method: str = "task_arithmetic",
                            params: Mapping | None = None, split: str = "test",
                            limit: int | None = 300, progress: bool | None = False) -> pd.DataFrame:
    """One row per pair of tasks: interference of the pair's task vectors and how their merge does.

    ``amplitude_variance``: :func:`~freqmerge_viz.amplitude_variance` of the two task vectors
    (mean over matrices of the mean over bins of the across-task variance of ``|DFT|``, all
    bins); ``normalized_variance``: the same divided by the mean amplitude. ``accuracy_a`` /
    ``accuracy_b``: the merge (`method` with `params`; default task arithmetic at its registered
    scaling 0.3, fixed for every pair, not tuned) on each task; ``normalized_a/b``: divided by
    the fine-tuned model's accuracy on the same images; ``normalized_accuracy``: their mean.
    Accuracies (fractions) use the first `limit` images of `split` per task; ``n_images_a/b``
    say how many. `progress`: bars over the pairs, while merging them and while measuring their
    interference (:mod:`freqmerge_viz.progress`).
    """
    tasks = study_tasks(study, tasks)
    pairs = task_pairs(tasks, n_pairs, seed)
    if not pairs:
        raise EmptyInputError("need at least two tasks to form a pair")
    params = dict(params or {})
    vectors = {tv.name: tv for tv in study_task_vectors(study, sorted({t for p in pairs for t in p}, key=tasks.index))}
    states = [materialize(merge(method, study.pretrained, {a: study.finetuned[a], b: study.finetuned[b]}, **params))
              for a, b in track(pairs, "task pairs: merges", progress, unit="pair")]
    wanted = {t: [i for i, p in enumerate(pairs) if t in p] for t in tasks}
    measured = evaluate_per_task(study, {t: [states[i] for i in idx] for t, idx in wanted.items() if idx},
                                 split=split, limit=limit)
    accuracy = {(t, wanted[t][s]): a for t, s, a in zip(measured["task"], measured["state"], measured["accuracy"])}
    individual = individual_accuracies(study, [t for t in tasks if wanted[t]], split=split, limit=limit)
    counts = image_counts(study, tasks, split=split, limit=limit)
    rows = []
    for i, (a, b) in enumerate(track(pairs, "task pairs: interference", progress, unit="pair")):
        pair = [vectors[a], vectors[b]]
        measured_pair = amplitude_variances(pair, {"raw": {}, "normalized": {"normalize": True}}, device="cpu")
        variance, normalized_variance = measured_pair["raw"].mean, measured_pair["normalized"].mean
        acc_a, acc_b = float(accuracy[(a, i)]), float(accuracy[(b, i)])
        norm_a, norm_b = acc_a / individual[a], acc_b / individual[b]
        rows.append({"task_a": a, "task_b": b, "amplitude_variance": variance,
                     "normalized_variance": normalized_variance, "accuracy_a": acc_a, "accuracy_b": acc_b,
                     "individual_a": individual[a], "individual_b": individual[b],
                     "normalized_a": norm_a, "normalized_b": norm_b,
                     "normalized_accuracy": 0.5 * (norm_a + norm_b), "n_images_a": counts[a], "n_images_b": counts[b]})
    table = pd.DataFrame(rows)
    table.attrs.update({"method": method, "params": params, "split": split, "limit": limit})
    return table


def correlation_table(pairs: pd.DataFrame, x_columns: Sequence[str] = ("amplitude_variance", "normalized_variance"),
                      y_column: str = "normalized_accuracy", n_boot: int = 2000, seed: int = 0,
                      level: float = 0.95) -> pd.DataFrame:
    """:func:`correlation_with_ci` of `y_column` against each of `x_columns`, one row per x."""
    rows = [{"x": x, "y": y_column, **correlation_with_ci(pairs[x], pairs[y_column], n_boot, seed, level)}
            for x in x_columns]
    return pd.DataFrame(rows)
