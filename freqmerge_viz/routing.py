"""Routers for FREE-Merging: which task's parameters each input is run with.

A router maps a batch (inputs ``x[N, ...]`` or features ``[N, F]``) to task indices ``[N]``
(int64, in ``[0, n_tasks)``), the ``argmax R(x)`` of the paper's Alg. 1. The paper trains an
MLP router (:class:`MLPRouter`) and simulates routing errors with a random one
(:class:`RandomRouter`, Fig. 5c); :class:`OracleRouter` is the perfect router. Inputs are then
grouped by route (:func:`group_by_route`) and each group is run with its own task's
parameters (:func:`routed_apply`).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .errors import EmptyInputError, ParameterError, check_positive_int


def as_task_ids(task_ids, n: int | None = None, n_tasks: int | None = None) -> torch.Tensor:
    """`task_ids` as a 1-D int64 tensor, checked to hold `n` entries in ``[0, n_tasks)`` when given."""
    ids = task_ids if isinstance(task_ids, torch.Tensor) else torch.as_tensor(task_ids)
    if ids.ndim != 1 or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ParameterError(f"task ids must be a 1-D integer tensor, got dtype {ids.dtype} "
                             f"and shape {tuple(ids.shape)}")
    ids = ids.long()
    if n is not None and ids.shape[0] != n:
        raise ParameterError(f"expected {n} task ids (one per input), got {ids.shape[0]}")
    if ids.numel() and int(ids.min()) < 0:
        raise ParameterError(f"task ids must be >= 0, got {int(ids.min())}")
    if n_tasks is not None and ids.numel() and int(ids.max()) >= n_tasks:
        raise ParameterError(f"task ids must be < n_tasks = {n_tasks}, got {int(ids.max())}")
    return ids


def _batch_size(x) -> int | None:
    return None if x is None else int(x.shape[0])



class Router:
    """Base of every router: ``route(x, task_ids=None) -> LongTensor[N]``.

    `task_ids` are the true tasks of the inputs; only routers that simulate routing read them.
    Calling a router is the same as calling :meth:`route`.
    """

    def route(self, x, task_ids=None) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, x, task_ids=None) -> torch.Tensor:
        return self.route(x, task_ids)


class OracleRouter(Router):
    """The perfect router: returns the true `task_ids` (required); `x`, if given, fixes N."""

    def route(self, x=None, task_ids=None) -> torch.Tensor:
        if task_ids is None:
            raise ParameterError("OracleRouter needs the true task_ids of the inputs")
        return as_task_ids(task_ids, _batch_size(x)).clone()

    def __repr__(self) -> str:
        return "OracleRouter()"


class RandomRouter(Router):
    """A router right with probability `accuracy`, else sent to a uniformly drawn *other* task.

    Each input is routed independently. Draws come from the router's own CPU
    ``torch.Generator`` seeded with `seed` and advanced by every call (two calls on the same
    batch give different routes; the sequence of calls is reproducible, and :meth:`reset`
    restarts it). Every call draws the same amount for N inputs whatever `accuracy` is.
    """

    def __init__(self, n_tasks: int, accuracy: float, seed: int = 0):
        self.n_tasks = check_positive_int("n_tasks", n_tasks)
        if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)) or not 0 <= accuracy <= 1:
            raise ParameterError(f"accuracy must be a probability in [0, 1], got {accuracy!r}")
        if n_tasks == 1 and accuracy < 1:
            raise ParameterError(f"with a single task every route is right; accuracy {accuracy!r} "
                                 "is impossible")
        self.accuracy = float(accuracy)
        self.seed = seed
        self.reset()

    def reset(self) -> None:
        """Restart the random stream from `seed`."""
        self._generator = torch.Generator().manual_seed(self.seed)

    def route(self, x=None, task_ids=None) -> torch.Tensor:
        if task_ids is None:
            raise ParameterError("RandomRouter needs the true task_ids of the inputs")
        truth = as_task_ids(task_ids, _batch_size(x), self.n_tasks)
        n = truth.shape[0]
        right = torch.rand(n, generator=self._generator) < self.accuracy
        if self.n_tasks == 1:
            return truth.clone()
        offset = torch.randint(1, self.n_tasks, (n,), generator=self._generator)
        wrong = (truth.cpu() + offset) % self.n_tasks
        return torch.where(right, truth.cpu(), wrong).to(truth.device)

    def __repr__(self) -> str:
        return f"RandomRouter(n_tasks={self.n_tasks}, accuracy={self.accuracy:g}, seed={self.seed})"


class MLPRouter(Router):
    """A small MLP ``Linear(F, hidden) → ReLU → Linear(hidden, n_tasks)`` over input features.

    Features are whatever the caller gives, ``[N, F]`` (more dimensions are flattened): e.g.
    flattened inputs or embeddings of a pretrained backbone. They are standardised with the
    per-feature mean and std of the training set (stored in the router; constant features get
    std 1). The router works in float32 on `device` (CPU by default).
    """

    def __init__(self, n_features: int, n_tasks: int, hidden: int = 64, seed: int = 0,
                 device: str | torch.device = "cpu"):
        self.n_features = check_positive_int("n_features", n_features)
        self.n_tasks = check_positive_int("n_tasks", n_tasks)
        self.hidden = check_positive_int("hidden", hidden)
        self.seed = seed
        self.device = torch.device(device)
        self.network = self._build(seed)
        self.mean: torch.Tensor | None = None
        self.std: torch.Tensor | None = None
        self.history: list[float] = []
        """Mean training loss (cross-entropy, nats) of each epoch of the last :meth:`fit`."""

    def _build(self, seed: int) -> nn.Sequential:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            network = nn.Sequential(nn.Linear(self.n_features, self.hidden), nn.ReLU(),
                                    nn.Linear(self.hidden, self.n_tasks))
        return network.to(self.device)

    def _features(self, features) -> torch.Tensor:
        x = features if isinstance(features, torch.Tensor) else torch.as_tensor(features)
        if x.is_complex() or x.ndim < 1:
            raise ParameterError(f"features must be a real [N, F] tensor, got dtype {x.dtype}, "
                                 f"shape {tuple(x.shape)}")
        x = x.reshape(x.shape[0], -1).to(device=self.device, dtype=torch.float32)
        if x.shape[1] != self.n_features:
            raise ParameterError(f"router expects {self.n_features} features per input, got {x.shape[1]}")
        return x

    def fit(self, features, task_ids, epochs: int = 30, lr: float = 1e-2, batch_size: int = 128,
            seed: int | None = None, weight_decay: float = 0.0) -> MLPRouter:
        """Train from a fresh initialisation with Adam on cross-entropy; returns the router.

        Deterministic: initial weights and the shuffling of each epoch come from `seed`
        (default: the router's own), so equal data and settings give equal routers.
        """
        check_positive_int("epochs", epochs)
        check_positive_int("batch_size", batch_size)
        if not lr > 0:
            raise ParameterError(f"lr must be > 0, got {lr!r}")
        seed = self.seed if seed is None else seed
        x = self._features(features)
        if x.shape[0] == 0:
            raise EmptyInputError("cannot fit a router on zero inputs")
        y = as_task_ids(task_ids, x.shape[0], self.n_tasks).to(self.device)
        self.mean = x.mean(dim=0)
        std = x.std(dim=0, unbiased=False)
        self.std = torch.where(std > 0, std, torch.ones_like(std))
        z = (x - self.mean) / self.std
        self.network = self._build(seed)
        optimiser = torch.optim.Adam(self.network.parameters(), lr=lr, weight_decay=weight_decay)
        generator = torch.Generator().manual_seed(seed)
        self.history = []
        self.network.train()
        n = z.shape[0]
        for _ in range(epochs):
            order = torch.randperm(n, generator=generator).to(self.device)
            total = 0.0
            for start in range(0, n, batch_size):
                batch = order[start:start + batch_size]
                loss = F.cross_entropy(self.network(z[batch]), y[batch])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total += loss.detach().item() * batch.numel()
            self.history.append(total / n)
        self.network.eval()
        return self

    def logits(self, features) -> torch.Tensor:
        """Unnormalised task scores ``[N, n_tasks]`` (float32, on the router's device)."""
        if self.mean is None:
            raise ParameterError("this MLPRouter is not fitted yet; call fit(features, task_ids) first")
        x = self._features(features)
        with torch.no_grad():
            return self.network((x - self.mean) / self.std)

    def route(self, x, task_ids=None) -> torch.Tensor:
        """``argmax`` of :meth:`logits` per input, int64, on the device of `x`; `task_ids` is ignored."""
        routes = self.logits(x).argmax(dim=1)
        return routes.to(x.device) if isinstance(x, torch.Tensor) else routes

    def accuracy(self, features, task_ids) -> float:
        """Share of inputs routed to their true task, in [0, 1]."""
        routes = self.logits(features).argmax(dim=1)
        truth = as_task_ids(task_ids, routes.shape[0], self.n_tasks).to(routes.device)
        if routes.numel() == 0:
            raise EmptyInputError("accuracy of zero inputs is undefined")
        return float((routes == truth).double().mean())

    def __repr__(self) -> str:
        state = "fitted" if self.mean is not None else "not fitted"
        return (f"MLPRouter(n_features={self.n_features}, n_tasks={self.n_tasks}, "
                f"hidden={self.hidden}, seed={self.seed}, {state})")


def group_by_route(routes) -> dict[int, torch.Tensor]:
    """``task -> int64 positions`` (ascending) of the inputs routed to it; tasks in ascending order."""
    ids = as_task_ids(routes)
    return {int(task): (ids == task).nonzero().squeeze(1) for task in torch.unique(ids).tolist()}


def routed_apply(x: torch.Tensor, routes, run_task: Callable[[int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Run ``run_task(task, x[positions])`` once per routed task and put outputs back in input order.

    `x` is ``[N, ...]``, `routes` ``[N]``; each call must return ``[n_group, *out]`` with the same
    trailing shape ``out`` for every group; the result is ``[N, *out]`` (dtype and device of the
    first group's output).
    """
    n = int(x.shape[0])
    if n == 0:
        raise EmptyInputError("routed_apply needs at least one input, got an empty batch")
    groups = group_by_route(as_task_ids(routes, n))
    out = None
    for task, positions in groups.items():
        result = run_task(task, x[positions.to(x.device)])
        if not isinstance(result, torch.Tensor) or result.ndim < 1 or result.shape[0] != positions.numel():
            shape = tuple(result.shape) if isinstance(result, torch.Tensor) else type(result).__name__
            raise ParameterError(f"run_task({task}, ·) must return one output row per input "
                                 f"({positions.numel()}), got {shape}")
        if out is None:
            out = result.new_empty((n, *result.shape[1:]))
        elif result.shape[1:] != out.shape[1:]:
            raise ParameterError(f"run_task outputs differ in shape: {tuple(out.shape[1:])} for earlier "
                                 f"tasks, {tuple(result.shape[1:])} for task {task}")
        out[positions.to(out.device)] = result.to(out.device)
    return out
