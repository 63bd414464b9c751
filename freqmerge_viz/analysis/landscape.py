"""Loss landscape on the plane of two task vectors (the paper's Fig. 4), with merged points.

The plane passes through ``θ_pre`` and is spanned by ``τ_A`` and ``τ_B``: ``u = τ_A/‖τ_A‖``,
``v = τ_B⊥/‖τ_B⊥‖`` with ``τ_B⊥ = τ_B − ⟨τ_B, u⟩ u`` (Gram–Schmidt). Coordinates ``(α, β)``
count in units of ``‖τ_A‖`` and ``‖τ_B⊥‖``::

    θ(α, β)[key] = θ_pre[key] + α·τ_A[key] + β·τ_B⊥[key]

so ``(0, 0)`` is ``θ_pre``, ``(1, 0)`` the fine-tuned model A and ``(⟨τ_B, u⟩/‖τ_A‖, 1)`` model B.
Inner products and norms run over the *plane keys*: the evaluator's parameters selected
by the ``include``/``exclude`` globs (default: all of them, e.g. every backbone key of the
study's model); the other parameters stay at ``θ_pre`` everywhere on the plane. Everything is
computed key by key; no model is flattened into one vector.

``filtered=`` replaces both task vectors by their filtered versions before the plane is
built (a :class:`~freqmerge_viz.FilterSpec`, FR-Merging's parameters as a dict such as
``{"preset": "official"}`` or ``{"cutoff": 0.2}``, ``True`` for FR's defaults, or any
``step(stack[K, *shape], key) -> stack``), so ``(1, 0)`` becomes ``θ_pre + G(τ_A)``.

A grid can be evaluated in blocks of rows through any ``concurrent.futures``-style executor
(``executor=``, anything with ``map``: a thread or process pool, a dask cluster's
``client.get_executor()``): each block is a :class:`GridBlock`, which pickles and rebuilds the
study's forward where it runs. Every model is scored on its own, so the grid matches the serial
one (exactly, on CPU, in ``tests/test_executors.py``).

Evaluations are cached as ``.npz`` files in ``cache_dir`` (none by default), named by a
sha256 of everything that determines them: the content of ``θ_pre``, ``θ_A``, ``θ_B`` (and
of merged or given points), the plane keys, the filter, the coordinates, and the
evaluator's fingerprint (model name, head, data content). A second call with the same
inputs loads the file instead of evaluating. A custom forward enters the key only through
the evaluator's ``name`` and its ``fingerprint`` attribute, a custom filter step through
its module and qualified name: rename them (or clear the cache) when their code changes.

:func:`write_figures` draws the study's Fig. 4 analogue; see its docstring for the defaults.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from ..engine import EvalResult, Evaluator, StackedStates, tensor_digest
from ..study import as_study, study_evaluator
from ..errors import ParameterError, ShapeMismatchError, check_positive_int
from ..io import load_state, write_atomically
from ..keys import Patterns, select_keys
from ..spectral import FilterSpec, filter_stack
from ..taskvector import names_from_sources, short_name

StackStep = Callable[[torch.Tensor, str], torch.Tensor]

CACHE_FORMAT = "freqmerge-viz-landscape/2"
REFERENCES = ("pretrained", "finetuned_a", "finetuned_b")
"""Labels of the reference points in :func:`project_points`' ``method`` column."""

DEFAULT_TASKS = ("landcover", "textures")
"""The demo zoo's stand-ins for the paper's Fig. 4 pair (EuroSAT, DTD), evaluated on landcover
(another study's default pair is its first two tasks: :func:`default_pair`)."""


def default_pair(study) -> tuple[str, str]:
    """The two tasks whose plane a study's landscape shows by default: :data:`DEFAULT_TASKS` when
    the study has both (the demo zoo), else its first two tasks."""
    tasks = list(study.tasks)
    if all(t in tasks for t in DEFAULT_TASKS):
        return DEFAULT_TASKS
    if len(tasks) < 2:
        raise ParameterError(f"a loss landscape needs two tasks; study {getattr(study, 'name', '')!r} has "
                             f"{len(tasks)}")
    return tasks[0], tasks[1]
DEFAULT_METHODS = {
    "task_arithmetic": {"method": "task_arithmetic", "scaling": 0.5},
    "fr": {"method": "fr"},
    "ties": {"method": "ties"},
}
"""Merged points drawn by default: label -> ``{"method": registered name, **parameters}``."""


# ----------------------------------------------------------------------------- filters

def filter_step(filtered) -> tuple[StackStep | None, str | None]:
    """``(step, label)`` for a ``filtered=`` argument (``(None, None)`` when unfiltered).

    Accepts ``None``/``False``, a :class:`FilterSpec` (1-D tensors are left alone), FR's
    parameters as a mapping (its per-task step, :func:`~freqmerge_viz.method_transform`),
    ``True`` (FR's defaults), or a callable ``step(stack[K, *shape], key) -> stack``.
    `label` is deterministic and enters cache keys and titles.
    """
    if filtered is None or filtered is False:
        return None, None
    if filtered is True:
        filtered = {}
    if isinstance(filtered, FilterSpec):
        spec = filtered

        def step(stack: torch.Tensor, key: str) -> torch.Tensor:
            return filter_stack(stack, spec)

        return step, repr(spec)
    if isinstance(filtered, Mapping):
        from ..methods import method_transform

        params = dict(filtered)
        return method_transform("fr", **params), "fr" + json.dumps(_fr_params(params), sort_keys=True, default=str)
    if callable(filtered):
        name = getattr(filtered, "__qualname__", None) or type(filtered).__name__
        return filtered, f"callable:{getattr(filtered, '__module__', '')}.{name}"
    raise ParameterError("filtered must be None, a FilterSpec, FR parameters (a dict), True or a callable "
                         f"step(stack, key); got {type(filtered).__name__}")


def filter_label(filtered) -> str:
    """Short human label of a ``filtered=`` argument (``"unfiltered"`` for none)."""
    if filtered is None or filtered is False:
        return "unfiltered"
    if isinstance(filtered, FilterSpec):
        cut = "–".join(f"{c:g}" for c in filtered.cutoffs)
        official = " (official)" if filtered.convention == "official" else ""
        return f"{filtered.kind} {filtered.band}-pass {cut}{official}"
    if filtered is True or isinstance(filtered, Mapping):
        params = _fr_params({} if filtered is True else dict(filtered))
        plain = params["kind"] == "ideal" and params["band"] == "high"
        shape = "" if plain else f"{params['kind']} {params['band']}-pass, "
        if params["filter_convention"] == "official":
            return f"FR filter ({shape}official, ratio {params['cutoff']:g})"
        return f"FR filter ({shape}cutoff {params['cutoff']:g})"
    return getattr(filtered, "__name__", "filtered")


def _fr_params(params: Mapping) -> dict:
    """FR-Merging's resolved parameters (defaults and preset filled in)."""
    from ..methods import get_method

    return get_method("fr").resolve(params)


# ----------------------------------------------------------------------------- the plane

def _float(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to(device="cpu", dtype=torch.float32)


def _dot(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], keys: Sequence[str]) -> float:
    return float(sum(torch.sum(a[k].double() * b[k].double()) for k in keys))


@dataclass(frozen=True, eq=False)
class Plane:
    """The plane ``θ_pre + α·τ_A + β·τ_B⊥`` (see the module docstring).

    `origin` holds ``θ_pre`` for every evaluator key; `tau_a` and `tau_b_perp` (float32, CPU)
    the plane keys `keys`. Norms are L2 over the plane keys; ``b_alpha = ⟨τ_B, τ_A⟩/‖τ_A‖²``
    is model B's α; `cosine` is ``cos(τ_A, τ_B)``.
    """

    origin: dict[str, torch.Tensor]
    tau_a: dict[str, torch.Tensor]
    tau_b_perp: dict[str, torch.Tensor]
    keys: tuple[str, ...]
    norm_a: float
    norm_b: float
    norm_b_perp: float
    b_alpha: float
    cosine: float

    def states(self, coordinates) -> StackedStates:
        """The models at ``coordinates [S, 2]`` (α, β), computed per chunk by the engine."""
        return StackedStates.affine(self.origin, [self.tau_a, self.tau_b_perp], coordinates)

    def point(self, alpha: float, beta: float) -> dict[str, torch.Tensor]:
        """The model ``θ(α, β)`` as a plain state (every evaluator key, float32)."""
        return self.states([[alpha, beta]])[0]

    def project(self, state: Mapping[str, torch.Tensor]) -> tuple[float, float, float]:
        """``(α, β, distance)`` of `state`: its plane coordinates and its L2 distance from the
        plane over every evaluator key (keys outside the plane count with ``θ − θ_pre``)."""
        deltas = {k: _float(state[k]) - self.origin[k] for k in self.origin}
        alpha = _dot(deltas, self.tau_a, self.keys) / self.norm_a**2
        beta = _dot(deltas, self.tau_b_perp, self.keys) / self.norm_b_perp**2
        squares = 0.0
        for key, delta in deltas.items():
            if key in self.tau_a:
                delta = delta - alpha * self.tau_a[key] - beta * self.tau_b_perp[key]
            squares += float(torch.sum(delta.double() ** 2))
        return alpha, beta, math.sqrt(squares)

    def metadata(self) -> dict:
        """Scalars describing the plane (JSON-ready)."""
        return {"norm_a": self.norm_a, "norm_b": self.norm_b, "norm_b_perp": self.norm_b_perp,
                "b_alpha": self.b_alpha, "cosine": self.cosine, "plane_keys": len(self.keys)}


def make_plane(pretrained, finetuned_a, finetuned_b, keys: Sequence[str], *, include: Patterns = None,
               exclude: Patterns = None, step: StackStep | None = None) -> Plane:
    """The :class:`Plane` through `pretrained` spanned by the two task vectors.

    `keys` are every parameter the evaluator needs (all become the origin); the plane keys
    are those the globs select. `step` (e.g. from :func:`filter_step`) transforms each key's
    ``[2, *shape]`` stack of task vectors first. States are anything ``load_state`` reads.
    """
    pre, fa, fb = (load_state(s) for s in (pretrained, finetuned_a, finetuned_b))
    keys = list(keys)
    plane_keys = select_keys(keys, include, exclude)
    if not plane_keys:
        raise ParameterError(f"the include/exclude globs select none of the {len(keys)} parameters")
    origin, tau_a, tau_b = {}, {}, {}
    for key in keys:
        origin[key] = _float(pre[key])
        if key not in plane_keys:
            continue
        for state, where in ((fa, "model A"), (fb, "model B")):
            if tuple(state[key].shape) != tuple(origin[key].shape):
                raise ShapeMismatchError(key, state[key].shape, origin[key].shape, where, "the pretrained model")
        stack = torch.stack([_float(fa[key]) - origin[key], _float(fb[key]) - origin[key]])
        if step is not None:
            shape = stack.shape
            stack = step(stack, key)
            if tuple(stack.shape) != tuple(shape):
                raise ShapeMismatchError(key, stack.shape, shape, "the filter's output", "its input")
        tau_a[key], tau_b[key] = _float(stack[0]), _float(stack[1])
    aa = _dot(tau_a, tau_a, plane_keys)
    bb = _dot(tau_b, tau_b, plane_keys)
    ab = _dot(tau_a, tau_b, plane_keys)
    if aa == 0.0:
        raise ParameterError("task vector A is zero over the plane keys: no plane")
    ratio = ab / aa
    tau_b_perp = {k: tau_b[k] - ratio * tau_a[k] for k in plane_keys}
    perp = _dot(tau_b_perp, tau_b_perp, plane_keys)
    if perp <= 1e-12 * bb or perp == 0.0:
        raise ParameterError("task vectors A and B are parallel over the plane keys: no plane")
    return Plane(origin, tau_a, tau_b_perp, tuple(plane_keys), math.sqrt(aa), math.sqrt(bb), math.sqrt(perp),
                 ratio, ab / math.sqrt(aa * bb) if bb > 0 else float("nan"))


# ----------------------------------------------------------------------------- grids

def grid_axes(grid, plane: Plane) -> tuple[np.ndarray, np.ndarray]:
    """``(alphas, betas)`` of a ``grid=`` argument.

    ``n`` (an int): n values per axis, α from ``min(0, b_alpha) − 0.5`` to ``max(1, b_alpha) + 0.5``
    and β from −0.5 to 1.5, so θ_pre, A and B lie inside with a margin of half a unit;
    ``(n, (low, high))``: n values in ``[low, high]`` on both axes; ``(alphas, betas)``: as given.
    """
    if isinstance(grid, (int, np.integer)) and not isinstance(grid, bool):
        n = check_positive_int("grid", int(grid))
        low, high = min(0.0, plane.b_alpha) - 0.5, max(1.0, plane.b_alpha) + 0.5
        return np.linspace(low, high, n), np.linspace(-0.5, 1.5, n)
    if isinstance(grid, (tuple, list)) and len(grid) == 2:
        first, second = grid
        if isinstance(first, (int, np.integer)) and not isinstance(first, bool):
            n = check_positive_int("grid size", int(first))
            try:
                low, high = (float(v) for v in second)
            except (TypeError, ValueError):
                raise ParameterError(f"grid=(n, range) needs range = (low, high), got {second!r}") from None
            if not low < high:
                raise ParameterError(f"grid range must satisfy low < high, got {(low, high)}")
            axis = np.linspace(low, high, n)
            return axis, axis.copy()
        alphas, betas = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (first, second))
        if alphas.size == 0 or betas.size == 0 or not (np.isfinite(alphas).all() and np.isfinite(betas).all()):
            raise ParameterError("grid=(alphas, betas) needs two non-empty sequences of finite numbers")
        return alphas, betas
    raise ParameterError(f"grid must be n, (n, (low, high)) or (alphas, betas); got {grid!r}")


# ----------------------------------------------------------------------------- caching

def _state_digest(state: Mapping[str, torch.Tensor], keys: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for key in keys:
        digest.update(key.encode())
        digest.update(tensor_digest(_float(state[key])).encode())
    return digest.hexdigest()


def _cached(cache_dir, kind: str, parts: dict, compute: Callable[[], dict[str, np.ndarray]]
            ) -> tuple[dict[str, np.ndarray], Path | None, bool]:
    """``(arrays, path, hit)``: `compute()`'s arrays, loaded from ``cache_dir`` when present."""
    if cache_dir is None:
        return compute(), None, False
    text = json.dumps({"format": CACHE_FORMAT, "kind": kind, **parts}, sort_keys=True, default=str)
    path = Path(cache_dir) / f"{kind}-{hashlib.sha256(text.encode()).hexdigest()[:24]}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as stored:
                if str(stored["inputs"]) == text:
                    return {k: stored[k] for k in stored.files if k != "inputs"}, path, True
        except (OSError, ValueError, KeyError):
            pass
    arrays = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    np.savez(buffer, inputs=np.array(text), **arrays)
    write_atomically(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))
    return arrays, path, False


# ----------------------------------------------------------------------------- blocks

@dataclass(frozen=True, eq=False)
class GridBlock:
    """Grid points to evaluate on their own, anywhere: a picklable task for :func:`evaluate_block`.

    `plane` and `coordinates [S, 2]` fix the models, `evaluator` scores them. A study's forward
    is a closure that does not pickle, so a block of a study opened from a file carries its
    evaluator without it and ``zoo_recipe = (zoo folder or study file, task, head)`` to rebuild
    it; otherwise the
    evaluator's own forward travels (a process pool or a cluster needs one that pickles).
    """

    plane: Plane
    evaluator: Evaluator
    coordinates: np.ndarray
    zoo_recipe: tuple[str, str, str] | None = None

    def resolved_evaluator(self) -> Evaluator:
        """The evaluator, with the study's forward rebuilt when the block carries a recipe."""
        if self.zoo_recipe is None:
            return self.evaluator
        path, task, head = self.zoo_recipe
        return replace(self.evaluator, forward=as_study(path).functional_forward(task, head))


def _compact(plane: Plane) -> Plane:
    """`plane` with every tensor in storage of its own, so that pickling sends no more than its
    values (a view pickles its whole storage, e.g. a task vector its stack of two)."""
    return replace(plane, **{name: {k: v.clone() for k, v in getattr(plane, name).items()}
                             for name in ("origin", "tau_a", "tau_b_perp")})


def evaluate_block(block: GridBlock) -> dict[str, np.ndarray]:
    """Loss, accuracy and how they were computed at the block's coordinates (what
    :meth:`PlaneStudy.evaluate_coordinates` stores)."""
    return _result_arrays(block.resolved_evaluator()(block.plane.states(block.coordinates)))


def _result_arrays(result: EvalResult) -> dict[str, np.ndarray]:
    return {"loss": result.loss, "accuracy": result.accuracy, "mode": np.array(result.mode),
            "chunk": np.array(result.chunk or 0), "workers": np.array(result.workers)}


def _joined(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The blocks' results as one: values in order; the modes met, the largest chunk and worker count."""
    modes = sorted({str(p["mode"]) for p in parts})
    return {"loss": np.concatenate([p["loss"] for p in parts]),
            "accuracy": np.concatenate([p["accuracy"] for p in parts]),
            "mode": np.array("+".join(modes)), "chunk": np.array(max(int(p["chunk"]) for p in parts)),
            "workers": np.array(max(int(p["workers"]) for p in parts)), "blocks": np.array(len(parts))}


# ----------------------------------------------------------------------------- the study

@dataclass(eq=False)
class PlaneStudy:
    """A plane, an evaluator and a cache directory: what :func:`landscape`,
    :func:`project_points` and :func:`interpolation_curves` share. Build it with
    :func:`plane_study` and call :meth:`grid`, :meth:`points`, :meth:`curves`."""

    plane: Plane
    evaluator: Evaluator
    pretrained: Mapping[str, torch.Tensor]
    finetuned_a: Mapping[str, torch.Tensor]
    finetuned_b: Mapping[str, torch.Tensor]
    names: tuple[str, str]
    filter_label: str | None
    cache_dir: Path | None = None
    info: dict = field(default_factory=dict)
    zoo_recipe: tuple[str, str, str] | None = None
    _digests: dict | None = field(default=None, repr=False)

    def _inputs(self) -> dict:
        if self._digests is None:
            keys = list(self.plane.origin)
            self._digests = {"evaluator": self.evaluator.fingerprint(),
                             "pretrained": _state_digest(self.pretrained, keys),
                             "finetuned_a": _state_digest(self.finetuned_a, keys),
                             "finetuned_b": _state_digest(self.finetuned_b, keys),
                             "plane_keys": list(self.plane.keys), "filter": self.filter_label}
        return dict(self._digests)

    def _attrs(self, path: Path | None, hit: bool, arrays: dict[str, np.ndarray]) -> dict:
        return {"task_a": self.names[0], "task_b": self.names[1], "evaluator": self.evaluator.name,
                "filtered": self.filter_label, **self.plane.metadata(), **self.info,
                "samples": int(len(self.evaluator.labels)), "cache": str(path) if path else None,
                "cache_hit": hit, "mode": str(arrays["mode"]), "chunk": int(arrays["chunk"]) or None,
                "workers": int(arrays["workers"]), "blocks": int(arrays.get("blocks", 1))}

    def _evaluate(self, states) -> dict[str, np.ndarray]:
        return _result_arrays(self.evaluator(states))

    def blocks(self, coordinates: np.ndarray, size: int) -> list[GridBlock]:
        """``coordinates [S, 2]`` cut into :class:`GridBlock` s of at most `size` points, in order,
        sharing one copy of the plane and data that pickles compactly. A study opened from a
        file sends the study's forward as a recipe (see :class:`GridBlock`)."""
        size = check_positive_int("block size", size)
        coordinates = np.asarray(coordinates, dtype=np.float64).reshape(-1, 2)
        evaluator = replace(self.evaluator, inputs=self.evaluator.inputs.clone(),
                            labels=self.evaluator.labels.clone())
        if self.zoo_recipe is not None:
            evaluator = replace(evaluator, forward=None)
        plane = _compact(self.plane)
        return [GridBlock(plane, evaluator, coordinates[lo:lo + size].copy(), self.zoo_recipe)
                for lo in range(0, len(coordinates), size)]

    def evaluate_coordinates(self, kind: str, coordinates: np.ndarray, extra: dict | None = None, *,
                             executor=None, block_size: int | None = None) -> tuple[dict[str, np.ndarray], dict]:
        """Loss and accuracy at ``coordinates [S, 2]`` (cached), and the attrs to attach. With an
        `executor` (anything with ``map``), blocks of `block_size` points (default: all) are
        mapped over it; the values equal the serial ones."""
        coordinates = np.asarray(coordinates, dtype=np.float64).reshape(-1, 2)
        parts = {**self._inputs(), "coordinates": hashlib.sha256(coordinates.tobytes()).hexdigest(),
                 "count": len(coordinates), **(extra or {})}

        def compute() -> dict[str, np.ndarray]:
            if executor is None:
                return self._evaluate(self.plane.states(coordinates))
            blocks = self.blocks(coordinates, block_size or len(coordinates))
            return _joined(list(executor.map(evaluate_block, blocks)))

        arrays, path, hit = _cached(self.cache_dir, kind, parts, compute)
        return arrays, self._attrs(path, hit, arrays)

    def grid(self, grid=21, *, executor=None, rows_per_block: int = 1) -> pd.DataFrame:
        """Tidy ``alpha, beta, loss, accuracy`` over the grid (see :func:`grid_axes`); the plane's
        metadata, the grid axes and the cache file in ``df.attrs``.

        With an `executor` (anything with ``map``, e.g. ``ProcessPoolExecutor`` or a dask
        ``client.get_executor()``), the grid is evaluated in blocks of `rows_per_block` rows
        (one β each), mapped over it; ``df.attrs["blocks"]`` counts them. Default: serially.
        """
        alphas, betas = grid_axes(grid, self.plane)
        aa, bb = np.meshgrid(alphas, betas, indexing="xy")
        coordinates = np.stack([aa.reshape(-1), bb.reshape(-1)], axis=1)
        block_size = check_positive_int("rows_per_block", rows_per_block) * len(alphas)
        arrays, attrs = self.evaluate_coordinates("grid", coordinates, executor=executor, block_size=block_size)
        frame = pd.DataFrame({"alpha": coordinates[:, 0], "beta": coordinates[:, 1],
                              "loss": arrays["loss"], "accuracy": arrays["accuracy"]})
        frame.attrs.update(attrs, alphas=alphas.tolist(), betas=betas.tolist())
        return frame

    def curves(self, n: int = 21, t=None) -> pd.DataFrame:
        """1-D interpolations: ``path`` ``"pretrained→A"`` (``θ_pre + t·τ_A``), ``"pretrained→B"``
        and ``"A→B"`` (``θ_A + t·(θ_B − θ_A)``), all on the plane; columns
        ``path, t, alpha, beta, loss, accuracy``. `t` defaults to n values in [0, 1]."""
        ts = np.linspace(0.0, 1.0, check_positive_int("n", n)) if t is None else np.asarray(t, np.float64).reshape(-1)
        b = self.plane.b_alpha
        paths = {"pretrained→A": (ts, 0.0 * ts), "pretrained→B": (b * ts, ts), "A→B": ((1 - ts) + b * ts, ts)}
        coordinates = np.concatenate([np.stack(c, axis=1) for c in paths.values()])
        arrays, attrs = self.evaluate_coordinates("curves", coordinates)
        frame = pd.DataFrame({"path": np.repeat(list(paths), len(ts)), "t": np.tile(ts, len(paths)),
                              "alpha": coordinates[:, 0], "beta": coordinates[:, 1],
                              "loss": arrays["loss"], "accuracy": arrays["accuracy"]})
        frame.attrs.update(attrs)
        return frame

    def points(self, methods: Mapping[str, Mapping] | Sequence[str] | None = None,
               points: Mapping[str, Mapping[str, torch.Tensor]] | None = None,
               references: bool = True) -> pd.DataFrame:
        """Merged (and given) models projected onto the plane, with their own loss and accuracy.

        `methods`: ``{label: {"method": name, **parameters}}`` (``"method"`` defaults to the
        label) or a list of names with default parameters (default :data:`DEFAULT_METHODS`);
        each merges models A and B with ``freqmerge_viz.merge``. `points`: further
        ``{label: state}``. With `references`, rows ``pretrained``, ``finetuned_a`` and
        ``finetuned_b`` come first. Columns ``method, alpha, beta, off_plane_distance, loss,
        accuracy``; loss and accuracy are those of the point itself, not of its projection.
        """
        labelled: dict[str, Mapping[str, torch.Tensor]] = {}
        if references:
            labelled.update(zip(REFERENCES, (self.pretrained, self.finetuned_a, self.finetuned_b)))
        methods = DEFAULT_METHODS if methods is None else methods
        recipes = _method_recipes(methods)
        keys = list(self.plane.origin)
        labelled.update(merged_states(methods, self.pretrained, self.finetuned_a, self.finetuned_b, self.names, keys))
        for label, state in (points or {}).items():
            labelled[str(label)] = {k: _float(load_state(state)[k]) for k in keys}
        if not labelled:
            raise ParameterError("no points to project: give methods or points, or keep references")
        geometry = np.array([self.plane.project(s) for s in labelled.values()], dtype=np.float64).reshape(-1, 3)
        parts = {**self._inputs(), "labels": list(labelled),
                 "points": [_state_digest(s, keys) for s in labelled.values()]}
        arrays, path, hit = _cached(self.cache_dir, "points", parts, lambda: self._evaluate(list(labelled.values())))
        frame = pd.DataFrame({"method": list(labelled), "alpha": geometry[:, 0], "beta": geometry[:, 1],
                              "off_plane_distance": geometry[:, 2], "loss": arrays["loss"],
                              "accuracy": arrays["accuracy"]})
        frame.attrs.update(self._attrs(path, hit, arrays),
                           recipes={k: {"method": n, **p} for k, (n, p) in recipes.items()})
        return frame


def _method_recipes(methods) -> dict[str, tuple[str, dict]]:
    from ..methods import get_method

    if isinstance(methods, str):
        methods = [methods]
    items = methods.items() if isinstance(methods, Mapping) else ((m, {}) for m in methods)
    recipes = {}
    for label, params in items:
        params = dict(params)
        name = params.pop("method", label)
        get_method(name)
        recipes[str(label)] = (name, params)
    return recipes


def merged_states(methods, pretrained, finetuned_a, finetuned_b, names: tuple[str, str],
                  keys: Sequence[str]) -> dict[str, dict[str, torch.Tensor]]:
    """``{label: state}`` of models A and B merged by each of `methods` (as in
    :meth:`PlaneStudy.points`), each read once into memory over `keys` (float32)."""
    from ..methods import merge

    out = {}
    for label, (name, params) in _method_recipes(methods).items():
        state = merge(name, pretrained, {names[0]: finetuned_a, names[1]: finetuned_b}, **params)
        out[label] = {k: _float(state[k]) for k in keys}
    return out


def _engine_options(mode, chunk, device, batch_size, memory_budget, workers) -> dict:
    given = {"mode": mode, "chunk": chunk, "device": device, "batch_size": batch_size,
             "memory_budget": memory_budget, "workers": workers}
    return {k: v for k, v in given.items() if v is not None}


def plane_study(source, task_a, task_b, *, eval_task: str | None = None, filtered=None, split: str = "test",
                limit: int | None = None, head: str = "finetuned", pretrained=None,
                names: tuple[str, str] | None = None, include: Patterns = None, exclude: Patterns = None,
                cache_dir=None, mode: str | None = None, chunk: int | None = None, device=None,
                batch_size: int | None = None, memory_budget: int | None = None,
                workers: int | None = None) -> PlaneStudy:
    """The :class:`PlaneStudy` of two models; arguments as in :func:`landscape`."""
    step, label = filter_step(filtered)
    options = _engine_options(mode, chunk, device, batch_size, memory_budget, workers)
    if isinstance(source, Evaluator):
        if pretrained is None:
            raise ParameterError("with an Evaluator, give pretrained= and the two fine-tuned states as task_a, task_b")
        if eval_task is not None:
            raise ParameterError("eval_task applies to a study; an Evaluator fixes its own data")
        evaluator = replace(source, **options)
        pre, fa, fb = (load_state(s) for s in (pretrained, task_a, task_b))
        names = names or names_from_sources([task_a, task_b]) or (
            short_name(getattr(fa, "name", "") or "A"), short_name(getattr(fb, "name", "") or "B"))
        info, recipe = {}, None
    elif hasattr(source, "finetuned") and hasattr(source, "pretrained"):
        for task in (task_a, task_b):
            source.check_task(task)
        evaluated = eval_task or task_a
        evaluator = study_evaluator(source, evaluated, split, limit, head, **options)
        pre, fa, fb = source.pretrained, source.finetuned[task_a], source.finetuned[task_b]
        names = names or (task_a, task_b)
        info = {"eval_task": evaluated, "split": split, "limit": limit, "head": head}
        path = getattr(source, "source_path", None)
        recipe = None if path is None else (str(path), evaluated, head)
        if pretrained is not None:
            raise ParameterError("pretrained= is for an Evaluator; a study brings its own")
    else:
        raise ParameterError(f"source must be a study (or the zoo) or an Evaluator, got {type(source).__name__}")
    plane = make_plane(pre, fa, fb, evaluator.keys, include=include, exclude=exclude, step=step)
    return PlaneStudy(plane, evaluator, pre, fa, fb, tuple(names), label,
                      None if cache_dir is None else Path(cache_dir), info, recipe)


def landscape(source, task_a, task_b, *, eval_task: str | None = None, grid=21, filtered=None,
              split: str = "test", limit: int | None = None, head: str = "finetuned", pretrained=None,
              include: Patterns = None, exclude: Patterns = None, cache_dir=None, mode: str | None = None,
              chunk: int | None = None, device=None, batch_size: int | None = None,
              memory_budget: int | None = None, workers: int | None = None, executor=None,
              rows_per_block: int = 1, names: tuple[str, str] | None = None) -> pd.DataFrame:
    """Loss and accuracy over a grid of the plane of two task vectors (tidy:
    ``alpha, beta, loss, accuracy``; plane metadata in ``df.attrs``).

    `source` is a study (then `task_a`, `task_b` are task names and the data are the first
    `limit` samples of `eval_task`'s `split`, default task A, scored with its `head`) or an
    :class:`~freqmerge_viz.engine.Evaluator` of your own model (then `task_a`, `task_b` are the
    fine-tuned states and `pretrained=` is required). `grid`: see :func:`grid_axes`;
    `filtered`, `include`/`exclude` and `cache_dir`: see the module docstring. The engine
    options (mode, chunk, device, batch_size, memory_budget, workers; see
    :func:`~freqmerge_viz.engine.evaluate_params`) replace the evaluator's where not ``None``.
    `executor` and `rows_per_block`: see :meth:`PlaneStudy.grid` (default: serial). `names`: the
    two tasks' names in titles and legends (default: the study's task names, else the fine-tuned
    files' names, or their folders' names when the file names are the same).
    """
    study = plane_study(source, task_a, task_b, eval_task=eval_task, filtered=filtered, split=split, limit=limit,
                        head=head, pretrained=pretrained, include=include, exclude=exclude, cache_dir=cache_dir,
                        mode=mode, chunk=chunk, device=device, batch_size=batch_size, memory_budget=memory_budget,
                        workers=workers, names=names)
    return study.grid(grid, executor=executor, rows_per_block=rows_per_block)


def project_points(source, task_a, task_b, *, methods=None, points=None, references: bool = True,
                   eval_task: str | None = None, filtered=None, split: str = "test", limit: int | None = None,
                   head: str = "finetuned", pretrained=None, include: Patterns = None, exclude: Patterns = None,
                   cache_dir=None, mode: str | None = None, chunk: int | None = None, device=None,
                   batch_size: int | None = None, memory_budget: int | None = None,
                   workers: int | None = None, names: tuple[str, str] | None = None) -> pd.DataFrame:
    """Merged points on the plane: ``method, alpha, beta, off_plane_distance, loss, accuracy``
    (see :meth:`PlaneStudy.points`; other arguments as in :func:`landscape`)."""
    study = plane_study(source, task_a, task_b, eval_task=eval_task, filtered=filtered, split=split, limit=limit,
                        head=head, pretrained=pretrained, include=include, exclude=exclude, cache_dir=cache_dir,
                        mode=mode, chunk=chunk, device=device, batch_size=batch_size, memory_budget=memory_budget,
                        workers=workers, names=names)
    return study.points(methods, points, references)


def interpolation_curves(source, task_a, task_b, *, n: int = 21, t=None, eval_task: str | None = None,
                         filtered=None, split: str = "test", limit: int | None = None, head: str = "finetuned",
                         pretrained=None, include: Patterns = None, exclude: Patterns = None, cache_dir=None,
                         mode: str | None = None, chunk: int | None = None, device=None,
                         batch_size: int | None = None, memory_budget: int | None = None,
                         workers: int | None = None, names: tuple[str, str] | None = None) -> pd.DataFrame:
    """1-D curves θ_pre → A, θ_pre → B and A → B (see :meth:`PlaneStudy.curves`; other
    arguments as in :func:`landscape`)."""
    study = plane_study(source, task_a, task_b, eval_task=eval_task, filtered=filtered, split=split, limit=limit,
                        head=head, pretrained=pretrained, include=include, exclude=exclude, cache_dir=cache_dir,
                        mode=mode, chunk=chunk, device=device, batch_size=batch_size, memory_budget=memory_budget,
                        workers=workers, names=names)
    return study.curves(n, t)


# ----------------------------------------------------------------------------- figures


def _close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)
