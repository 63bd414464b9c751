"""The Fourier and the singular view of interference side by side: per matrix and method, per layer,
and over pairs of tasks against the accuracy of their merge.

Fourier measure: :func:`~freqmerge_viz.amplitude_variance` (the paper's Table 1 measure, across-task
variance of the DFT amplitude, units of ``|F|²``) and the same over the mean amplitude
(``normalized_variance``, units of ``|F|``). Singular measures (:mod:`freqmerge_viz.singular`): TSV's
``sti`` (weight units) and ``sti_normalized`` (1 for identical tasks), the mean pairwise
``overlap`` of the tasks' top-k singular subspaces (0 to 1), Iso-C's subspace alignment ratio
``alignment`` of each task against the merged matrix (0 to 1, averaged over tasks; the merged
matrix is the sum of the per-task-transformed matrices) and the merged spectrum's ``isotropy``.
High interference should mean low merged accuracy: a useful interference measure correlates
negatively with it, ``alignment`` positively.
"""

from __future__ import annotations

import itertools
import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..backend import as_compute_tensor
from ..errors import EmptyInputError, ParameterError, check_positive_int
from ..keys import Patterns
from ..methods import method_transform
from ..metrics import amplitude_variance, key_gram
from ..progress import track
from ..scopes import depth_fractions, is_attention, is_embedding, is_mlp, layer_position
from ..singular import key_singular, pair_means, pair_singular_interference, singular_row
from ..spectral import matrix_stack
from ..taskvector import TaskVectors, common_keys, stack_key
from .correlation import _pearson_rows, average_ranks, correlation_table, pair_interference_table
from .evaluation import study_task_vectors
from .table1 import MethodSetting, as_setting

FOURIER = ("amplitude_variance", "normalized_variance")
"""The Fourier columns: amplitude variance over all bins, and over the mean amplitude."""
SINGULAR = ("sti", "sti_normalized", "overlap", "chance_overlap", "alignment", "merged_isotropy", "effective_rank",
            "energy_top_k")
"""The singular columns (:data:`freqmerge_viz.singular.SINGULAR_COLUMNS`, less the ranks k)."""
DEFAULT_VIEWS = (MethodSetting("TA", "task_arithmetic"), MethodSetting("TIES", "ties"), MethodSetting("FR", "fr"))
"""The methods whose per-task step the side-by-side table measures by default (registered defaults)."""
SINGULAR_PAIR_COLUMNS = ("sti", "sti_normalized", "overlap", "alignment")
"""The singular columns :func:`pair_singular_table` adds (per-pair means over the matrices)."""
PAIR_MEASURES = ("normalized_variance", "sti_normalized", "overlap", "alignment")
"""The measures the pair analysis correlates with the merged accuracy by default: the Fourier
measure as in Fig. 2b (over the mean amplitude) and the three singular ones."""


def part_of(key: str, ndim: int) -> str:
    """``attention``, ``mlp``, ``embedding`` or ``other`` (:mod:`freqmerge_viz.scopes`)."""
    if is_attention(key, ndim):
        return "attention"
    if is_mlp(key, ndim):
        return "mlp"
    return "embedding" if is_embedding(key, ndim) else "other"


def role_of(key: str) -> str:
    """A matrix's name within its layer (``attn.qkv`` for ``blocks.0.attn.qkv.weight``), or the key
    outside numbered layers."""
    position = layer_position(key)
    if position is None:
        return key
    inner = key[len(position[0]) + len(str(position[1])) + 2:]
    for suffix in (".weight", ".bias"):
        if inner.endswith(suffix):
            return inner[:-len(suffix)]
    return inner


def key_measures(stack: torch.Tensor, key: str, k: int | None = None, one_d: str = "skip") -> dict | None:
    """The Fourier and singular measures of one key's (transformed) ``stack [K, *shape]``, or None
    when it is not a matrix. The Fourier pair comes from :func:`~freqmerge_viz.amplitude_variance`
    of the stack (which copies it once), the singular ones from
    :func:`~freqmerge_viz.singular.key_singular`."""
    matrices = matrix_stack(stack, one_d)
    if matrices is None:
        return None
    fourier = amplitude_variance([{key: task} for task in stack], one_d=one_d, device=stack.device).per_matrix.iloc[0]
    variance, mean_amplitude = float(fourier["variance"]), float(fourier["mean_amplitude"])
    return {"shape": "×".join(map(str, matrices.shape[1:])), "amplitude_variance": variance,
            "normalized_variance": variance / mean_amplitude if mean_amplitude > 0 else float("nan"),
            **singular_row(key_singular(matrices, k))}


def key_views(task_vectors: TaskVectors, *, transform=None, k: int | None = None, include: Patterns = None,
              exclude: Patterns = None, one_d: str = "skip", device: torch.device | str | None = "cpu",
              progress: bool | None = False) -> tuple[pd.DataFrame, dict[str, torch.Tensor]]:
    """One row per key of the task vectors after `transform` (a method's per-task step):
    ``key, layer_stack, layer, depth, part, role, ndim, norm`` (mean over tasks of the entry's L2
    norm, weight units) and, for matrices, ``shape``, :data:`FOURIER` and :data:`SINGULAR`; plus
    each key's K×K Gram matrix (:func:`~freqmerge_viz.metrics.key_gram`) for per-layer cosines.
    One key's stack at a time (two copies of it at most, while the Fourier measure runs).
    `progress`: a bar over the keys (:mod:`freqmerge_viz.progress`)."""
    keys = common_keys(task_vectors, include, exclude)
    if not keys:
        raise EmptyInputError("no key selected")
    depth = depth_fractions(keys)
    rows, grams = [], {}
    for key in track(keys, "per-key views: keys", progress):
        stack = stack_key(task_vectors, key, device)
        if transform is not None:
            stack = as_compute_tensor(transform(stack, key), stack.device)
        position = layer_position(key)
        gram = key_gram(stack)
        grams[key] = gram
        row = {"key": key, "layer_stack": position[0] if position else None,
               "layer": position[1] if position else None, "depth": depth[key],
               "part": part_of(key, stack.ndim - 1), "role": role_of(key), "ndim": stack.ndim - 1,
               "norm": float(gram.diagonal().clamp_min(0).sqrt().mean())}
        measures = key_measures(stack, key, k, one_d)
        rows.append({**row, **(measures or {})})
        del stack
    table = pd.DataFrame(rows)
    for column in ("shape", *FOURIER, *SINGULAR):
        if column not in table.columns:
            table[column] = np.nan
    return table, grams


def interference_views(task_vectors: TaskVectors, settings: Sequence = DEFAULT_VIEWS, *, k: int | None = None,
                       include: Patterns = None, exclude: Patterns = None, one_d: str = "skip",
                       device: torch.device | str | None = "cpu", progress: bool | None = False) -> pd.DataFrame:
    """The Fourier and the singular measure side by side, per matrix and per method: one row per
    (setting, matrix) with ``label, method`` and the matrix columns of :func:`key_views`, after
    each setting's per-task step (:func:`~freqmerge_viz.method_transform`; a setting is a
    :class:`~freqmerge_viz.analysis.table1.MethodSetting`, a method name or ``(label, method[,
    params])``). Aggregate per layer with :func:`per_layer`. `progress`: a bar over the settings
    (:mod:`freqmerge_viz.progress`)."""
    chosen = [as_setting(s) for s in settings]
    labels = [s.label for s in chosen]
    if len(set(labels)) != len(labels):
        raise ParameterError(f"labels must be unique, got {labels}")
    frames = []
    for setting in track(chosen, "interference views: methods", progress, unit="method"):
        step = method_transform(setting.method, len(task_vectors), **dict(setting.params))
        table, _ = key_views(task_vectors, transform=step, k=k, include=include, exclude=exclude, one_d=one_d,
                             device=device)
        table = table[table["shape"].notna()].copy()
        table.insert(0, "method", setting.method)
        table.insert(0, "label", setting.label)
        frames.append(table)
    out = pd.concat(frames, ignore_index=True)
    out.attrs.update({"tasks": len(task_vectors), "k": k})
    return out


def per_layer(table: pd.DataFrame, columns: Sequence[str] = FOURIER + SINGULAR,
              by: Sequence[str] = ("label",)) -> pd.DataFrame:
    """Means of `columns` over the matrices of each numbered layer (per `by` group, e.g. the method
    label): columns ``*by, layer_stack, layer, depth, matrices`` and `columns`."""
    inside = table[table["layer"].notna()]
    if inside.empty:
        raise EmptyInputError("no key lies in a numbered layer")
    group = [*by, "layer_stack", "layer"]
    means = inside.groupby(group, sort=False)[list(columns) + ["depth"]].mean().reset_index()
    means["matrices"] = inside.groupby(group, sort=False).size().to_numpy()
    means["layer"] = means["layer"].astype(int)
    return means.sort_values([*by, "layer_stack", "layer"], kind="stable").reset_index(drop=True)


def layer_profile(task_vectors: TaskVectors, *, transform=None, k: int | None = None, include: Patterns = None,
                  exclude: Patterns = None, one_d: str = "skip", device: torch.device | str | None = "cpu",
                  progress: bool | None = False) -> pd.DataFrame:
    """Layer-wise view of the task vectors (after `transform`): one row per numbered layer with
    ``layer_stack, layer, depth`` (0 first, 1 last), ``keys``, ``norm`` (mean over tasks of the
    layer's task-vector L2 norm over all its entries, weight units), ``cosine`` (mean over pairs
    of tasks of their cosine over the layer's entries), and the means over the layer's matrices of
    :data:`FOURIER` and of ``sti_normalized``, ``overlap``, ``chance_overlap``, ``alignment``.
    `progress`: a bar over the keys (:mod:`freqmerge_viz.progress`)."""
    table, grams = key_views(task_vectors, transform=transform, k=k, include=include, exclude=exclude,
                             one_d=one_d, device=device, progress=progress)
    inside = table[table["layer"].notna()]
    if inside.empty:
        raise EmptyInputError("no key lies in a numbered layer")
    rows = []
    for (stack_name, layer), group in inside.groupby(["layer_stack", "layer"], sort=False):
        gram = sum(grams[key] for key in group["key"])
        norms = gram.diagonal().clamp_min(0).sqrt()
        cosines = [float(gram[i, j]) / float(norms[i] * norms[j])
                   for i, j in itertools.combinations(range(gram.shape[0]), 2) if float(norms[i] * norms[j]) > 0]
        matrices = group[group["shape"].notna()]
        rows.append({"layer_stack": stack_name, "layer": int(layer), "depth": float(group["depth"].iloc[0]),
                     "keys": len(group), "norm": float(norms.mean()),
                     "cosine": float(np.mean(cosines)) if cosines else float("nan"),
                     **{c: float(matrices[c].mean()) for c in (*FOURIER, "sti_normalized", "overlap", "chance_overlap",
                                                                "alignment")}})
    return pd.DataFrame(rows).sort_values(["layer_stack", "layer"], kind="stable").reset_index(drop=True)


# --------------------------------------------------------------------------- pairs of tasks
def pair_singular_table(study, *, tasks: Sequence[str] | None = None, n_pairs: int | None = None, seed: int = 0,
                        method: str = "task_arithmetic", params: Mapping | None = None, split: str = "test",
                        limit: int | None = 300, k: int | None = None, include: Patterns = None,
                        exclude: Patterns = None, device: torch.device | str | None = None, solver: str = "gram",
                        progress: bool | None = False, estimate: bool | None = None) -> pd.DataFrame:
    """:func:`~freqmerge_viz.analysis.correlation.pair_interference_table` (each pair merged and
    evaluated; its Fourier measures) with the singular measures of each pair's two task vectors
    beside them: ``sti``, ``sti_normalized``, ``overlap``, ``alignment`` (means over the matrices:
    every key of 2+ dimensions, unless `include` / `exclude` globs restrict them, e.g.
    ``include="*.resblocks.11.*"``; the Fourier measures keep every matrix; ``k`` per matrix as
    :func:`~freqmerge_viz.singular.default_rank` with K = 2 unless given).

    The singular measures stream key by key over every pair at once
    (:func:`~freqmerge_viz.singular.pair_singular_interference`): each task's matrix is
    decomposed once per key for all its pairs, on `device` (default the study's ``device``, else
    the CPU), with `solver` ``"gram"`` (float64 Gram matrices and ``eigh``) or ``"svd"``; an
    estimate of their time goes to stderr first when it is long (`estimate`; ViT-B/32's visual
    tower, 4 tasks and 6 pairs: about 1.5 min on one CPU thread). `progress`: bars over the pairs
    and the matrices (:mod:`freqmerge_viz.progress`)."""
    pairs = pair_interference_table(study, tasks=tasks, n_pairs=n_pairs, seed=seed, method=method, params=params,
                                    split=split, limit=limit, progress=progress)
    names = list(dict.fromkeys([*pairs["task_a"], *pairs["task_b"]]))
    vectors = study_task_vectors(study, names)
    if device is None:
        device = getattr(study, "device", None) or "cpu"
    per_matrix = pair_singular_interference(vectors, list(zip(pairs["task_a"], pairs["task_b"])), k=k,
                                            include=include, exclude=exclude, device=device, solver=solver,
                                            progress=progress, estimate=estimate)
    means = pair_means(per_matrix, SINGULAR_PAIR_COLUMNS).set_index(["task_a", "task_b"])
    singular = means.loc[list(zip(pairs["task_a"], pairs["task_b"]))].reset_index(drop=True)
    out = pd.concat([pairs, singular.set_axis(pairs.index)], axis=1)
    out.attrs.update(pairs.attrs)
    out.attrs["k"] = k
    out.attrs["singular_keys"] = int(per_matrix["key"].nunique())
    return out


def predictor_comparison(pairs: pd.DataFrame, measures: Sequence[str] = PAIR_MEASURES,
                         reference: str = "normalized_variance", y_column: str = "normalized_accuracy",
                         n_boot: int = 2000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Which measure predicts the merged accuracy better, as a number with its uncertainty.

    One row per measure: its :func:`~freqmerge_viz.analysis.correlation.correlation_with_ci`
    against `y_column` (Pearson and Spearman with percentile bootstrap intervals), and
    ``abs_spearman_gain`` = ``|ρ_measure| − |ρ_reference|`` with its interval from the *same*
    bootstrap resamples of the pairs (``gain_low``, ``gain_high``; 0 for the reference itself).
    A gain interval above 0 says the measure ranks the pairs' accuracies better than the
    reference on these pairs. The bootstrap treats pairs as independent; pairs sharing a task are
    not, so every interval here is optimistic (too narrow), more so the more tasks each pair shares.
    """
    n_boot = check_positive_int("n_boot", n_boot)
    table = correlation_table(pairs, x_columns=list(measures), y_column=y_column, n_boot=n_boot, seed=seed,
                              level=level)
    y = pairs[y_column].to_numpy(float)
    ref = pairs[reference].to_numpy(float)
    index = np.random.default_rng(seed).integers(0, y.size, size=(n_boot, y.size))
    ranks_y = average_ranks(y[index])
    ref_rho = np.abs(_pearson_rows(average_ranks(ref[index]), ranks_y))
    ref_point = abs(float(_pearson_rows(average_ranks(ref)[None], average_ranks(y)[None])[0]))
    tail = 100.0 * (1.0 - level) / 2.0
    gains = []
    for measure in measures:
        x = pairs[measure].to_numpy(float)
        rho = np.abs(_pearson_rows(average_ranks(x[index]), ranks_y))
        difference = rho - ref_rho
        kept = difference[np.isfinite(difference)]
        point = abs(float(_pearson_rows(average_ranks(x)[None], average_ranks(y)[None])[0])) - ref_point
        low, high = np.percentile(kept, [tail, 100.0 - tail]) if kept.size else (math.nan, math.nan)
        gains.append({"abs_spearman_gain": point, "gain_low": float(low), "gain_high": float(high),
                      "gain_boot_valid": int(kept.size)})
    out = pd.concat([table, pd.DataFrame(gains)], axis=1)
    out.attrs.update({"reference": reference, "y": y_column, "pairs": len(pairs),
                      "tasks": len(set(pairs["task_a"]) | set(pairs["task_b"]))})
    return out
