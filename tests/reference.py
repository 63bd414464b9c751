"""Independent transcriptions of the definitions in docs/methods.md (no library code).

Each function restates, in numpy or plain torch, what the published code of the FREE-Merging
authors, fusion-bench's ``emr_merge`` or mergekit computes, as read from that code; the tests
compare the library's presets with them. Selections that depend on how a sort or ``topk``
breaks ties call the same torch function the original calls.
"""

from __future__ import annotations

import numpy as np
import torch


# --------------------------------------------------------------------------- authors' filter
def authors_filter(matrix, ratio: float) -> np.ndarray:
    """The authors' Fourier filter of one matrix (ViT and LLM paths alike), in float64.

    Unshifted ``fft2``; ``d`` = distance from array index (H//2, W//2), computed as the float32
    square root of the integer squared distance; a disc ``d <= min//10`` and a band
    ``min//10 <= d <= ratio·min`` (float32 comparison) are filtered separately and the two real
    parts added, so the ring ``d = min//10`` counts twice when the band is not empty.
    """
    x = np.asarray(matrix, dtype=np.float64)
    disc, band = authors_disc_and_band(*x.shape, ratio)
    spectrum = np.fft.fft2(x)
    return np.fft.ifft2(spectrum * disc).real + np.fft.ifft2(spectrum * band).real


def authors_disc_and_band(h: int, w: int, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """The two boolean masks ``[h, w]`` of the unshifted spectrum that the authors' filter keeps."""
    rows = np.arange(h, dtype=np.int64)[:, None] - h // 2
    cols = np.arange(w, dtype=np.int64)[None, :] - w // 2
    distance = np.sqrt((rows**2 + cols**2).astype(np.float32))
    inner = min(h, w) // 10
    outer = np.float32(min(h, w) * ratio)
    return distance <= inner, (distance >= inner) & (distance <= outer)


def is_attn_mlp_weight(key: str) -> bool:
    return "weight" in key and ("attn" in key or "mlp" in key)


def in_attn_mlp(key: str) -> bool:
    return "attn" in key or "mlp" in key


def task_vectors(pre: dict, fts: list[dict]) -> list[dict]:
    """``θ_t − θ_pre`` for every floating key, in the checkpoints' dtype (the code skips int keys)."""
    return [{k: ft[k] - pre[k] for k in pre if pre[k].is_floating_point()} for ft in fts]


def _filtered(vector: dict, ratio: float) -> dict:
    out = {}
    for key, value in vector.items():
        if is_attn_mlp_weight(key):
            out[key] = torch.from_numpy(authors_filter(value.double().numpy(), ratio)).to(value.dtype)
        else:
            out[key] = value
    return out


def _vector_sum(vectors: list[dict]) -> dict:
    """The ViT code's task-vector addition: attn/mlp weights add up, every other key keeps the
    left operand's value, so in a sum it is the first task's."""
    total = dict(vectors[0])
    for other in vectors[1:]:
        total = {k: total[k] + other[k] if is_attn_mlp_weight(k) else total[k] for k in total}
    return total


def _times(vector: dict, factor: float) -> dict:
    """The ViT code's ``TaskVector * factor``: only attn/mlp weights are multiplied."""
    return {k: factor * v if is_attn_mlp_weight(k) else v for k, v in vector.items()}


def _apply_to(pre: dict, vector: dict, scaling: float) -> dict:
    """The ViT code's ``apply_to``: θ_pre + scaling · vector on keys with attn or mlp, θ_pre elsewhere."""
    return {k: pre[k] + scaling * vector[k] if (k in vector and in_attn_mlp(k)) else pre[k] for k in pre}


def _key_means(vector: dict) -> list[float]:
    return [float(torch.mean(torch.abs(v))) for v in vector.values()]


def authors_fr_vit(pre: dict, fts: list[dict], ratio: float = 0.7, scaling: float = 0.7) -> dict:
    """FR-Merging as config ViT-B-32_8_FR runs it: filter, align each key to the largest mean
    |·| over tasks, add (first-task rule), apply to attn/mlp keys with ``scaling``."""
    filtered = [_filtered(v, ratio) for v in task_vectors(pre, fts)]
    means = np.array([_key_means(v) for v in filtered])
    ratios = 1.0 / (means / means.max(axis=0))
    aligned = [{k: v[k] * float(r) for k, r in zip(v, row)} for v, row in zip(filtered, ratios)]
    return _apply_to(pre, _vector_sum(aligned), scaling)


def _top_per_row(value: torch.Tensor, density: float) -> torch.Tensor:
    """The code's expert selection: keep ``int(W·d)`` entries per last-dimension row, chosen by
    ``torch.topk`` of the magnitudes; 0-d tensors whole."""
    if value.ndim == 0:
        return value
    k = int(value.shape[-1] * density)
    indices = torch.topk(torch.abs(value), k).indices
    mask = torch.zeros(value.shape, dtype=value.dtype)
    mask.scatter_(value.ndim - 1, indices, 1)
    return mask * value


def authors_free_vit(pre: dict, fts: list[dict], density: float = 0.01, ratio: float = 0.7,
                     scaling: float = 0.5) -> tuple[list[dict], list[float]]:
    """FREE-Merging as config ViT-B-32_8_FREE runs it: one state per task and the μ of each.

    Backbone = sum of filtered vectors (first-task rule), times ``scaling`` on attn/mlp
    weights; expert = per-row top-d of the raw task vector, times μ on attn/mlp weights;
    ``sum_two`` puts the expert's non-zero entries in place of the backbone's; ``apply_to``
    with ``scaling`` again on attn/mlp keys.
    """
    vectors = task_vectors(pre, fts)
    filtered = [_filtered(v, ratio) for v in vectors]
    backbone = _times(_vector_sum(filtered), scaling)
    experts = [{k: _top_per_row(v[k], density) for k in v} for v in vectors]
    row_means = np.mean(np.array([_key_means(f) for f in filtered]), axis=1)
    expert_means = np.mean(np.array([_key_means(e) for e in experts]), axis=1) / density
    normalised = row_means / row_means.sum()
    mus = (expert_means * np.log10(density)) / (-normalised * row_means.sum())
    states = []
    for expert, mu in zip(experts, mus):
        scaled = _times(expert, float(mu))
        location = {}
        for k in scaled:
            both = (scaled[k] != 0) & (backbone[k] != 0)
            location[k] = scaled[k] + backbone[k]
            location[k][both] = scaled[k][both]
        states.append(_apply_to(pre, location, scaling))
    return states, [float(m) for m in mus]


# --------------------------------------------------------------------------- LLM path
def authors_fr_lm(pre: dict, fts: list[dict], weights: list[float], lam: float, ratio: float = 0.9) -> dict:
    """The LLM path (mergekit method ``fourier``): every 2-D delta filtered by the authors'
    filter, weighted, sign consensus ``sum`` on the weighted deltas, no normalisation, times λ."""
    out = {}
    for key in pre:
        if not pre[key].is_floating_point():
            out[key] = pre[key]
            continue
        deltas = []
        for ft in fts:
            delta = ft[key] - pre[key]
            if delta.ndim == 2:
                delta = torch.from_numpy(authors_filter(delta.double().numpy(), ratio)).to(delta.dtype)
            deltas.append(delta)
        weighted = torch.stack(deltas) * torch.tensor(weights, dtype=pre[key].dtype).reshape(-1, *[1] * pre[key].ndim)
        majority = (weighted.sum(dim=0) >= 0).to(weighted.dtype) * 2 - 1
        mask = weighted.sign() == majority
        out[key] = pre[key] + lam * (weighted * mask).sum(dim=0)
    return out


# --------------------------------------------------------------------------- mergekit TIES
def mergekit_ties(pre: dict, fts: list[dict], weights: list[float], density: float,
                  consensus: str = "sum", lam: float = 1.0) -> dict:
    """mergekit 0.1.5's ``ties``: per tensor keep the ``max(1, int(d·n))`` largest |δ| (``argsort``
    descending; none for d ≤ 0, all for d ≥ 1),
    weight, elect by ``sum`` (Σ weighted δ ≥ 0) or ``count`` (Σ sign(weighted δ) ≥ 0), keep the
    weighted deltas whose sign equals it, divide by Σ w·mask (0 → 1), times λ.

    mergekit's ``argsort`` does not ask for a stable sort, so which of several entries tying
    the k-th magnitude it keeps is up to torch's sort; here the sort is stable (the lowest
    flat index first), the rule the library documents. Without ties the two are the same.
    """
    out = {}
    for key in pre:
        deltas = []
        for ft in fts:
            delta = ft[key] - pre[key]
            if density < 1:
                k = max(1, int(density * delta.numel()))
                mask = torch.zeros_like(delta)
                mask.view(-1)[torch.argsort(delta.abs().view(-1), descending=True, stable=True)[:k]] = 1
                delta = delta * mask
            deltas.append(delta)
        stacked = torch.stack(deltas)
        w = torch.tensor(weights, dtype=stacked.dtype).reshape(-1, *[1] * (stacked.ndim - 1))
        weighted = stacked * w
        sign = weighted.sign()
        votes = weighted.sum(dim=0) if consensus == "sum" else sign.sum(dim=0)
        majority = (votes >= 0).to(stacked.dtype) * 2 - 1
        mask = (sign == majority).to(stacked.dtype)
        mixed = (weighted * mask).sum(dim=0)
        divisor = (w * mask).sum(dim=0)
        divisor[divisor == 0] = 1
        out[key] = pre[key] + lam * mixed / divisor
    return out


# --------------------------------------------------------------------------- EMR as coded
def emr_as_coded(vectors: list[dict]) -> tuple[dict, dict, list[float]]:
    """fusion-bench's ``emr_merge`` (and the FREE authors' copy): sign = +1 where Σ τ > 0, else −1;
    masks τ_t·sign > 0; τ_uni the largest masked |τ_t| times the sign; λ_t = Σ_keys mean|τ_t| /
    Σ_keys mean|τ_uni ⊙ M_t|. Returns (τ_uni, masks per key [K, ...], λ)."""
    n = len(vectors)
    unified, masks = {}, {}
    scales, new_scales = [0.0] * n, [0.0] * n
    for key in vectors[0]:
        flag = (sum(v[key] for v in vectors) > 0).to(vectors[0][key].dtype) * 2 - 1
        largest = torch.zeros_like(vectors[0][key])
        key_masks = []
        for t, v in enumerate(vectors):
            mask = v[key] * flag > 0
            key_masks.append(mask)
            largest = torch.where(torch.abs(mask * v[key]) > largest, torch.abs(mask * v[key]), largest)
            scales[t] += float(torch.mean(torch.abs(v[key])))
        unified[key] = largest * flag
        masks[key] = torch.stack(key_masks)
    for t in range(n):
        for key in unified:
            new_scales[t] += float(torch.mean(torch.abs(unified[key] * masks[key][t])))
    return unified, masks, [a / b for a, b in zip(scales, new_scales)]


def emr_as_in_paper(vectors: list[dict]) -> tuple[dict, dict, list[float]]:
    """The EMR paper: σ = sign(Σ τ) (0 at a zero sum), τ_uni = σ · max agreeing |τ_t|,
    M_t = τ_t ⊙ τ_uni > 0, λ_t = Σ|τ_t| / Σ|M_t ⊙ τ_uni| over all entries pooled."""
    n = len(vectors)
    unified, masks = {}, {}
    total, masked = [0.0] * n, [0.0] * n
    for key in vectors[0]:
        sign = torch.sign(sum(v[key] for v in vectors))
        largest = torch.zeros_like(vectors[0][key])
        for v in vectors:
            largest = torch.where(v[key] * sign > 0, torch.maximum(largest, v[key].abs()), largest)
        unified[key] = largest * sign
        masks[key] = torch.stack([v[key] * unified[key] > 0 for v in vectors])
        for t, v in enumerate(vectors):
            total[t] += float(v[key].abs().sum())
            masked[t] += float((masks[key][t] * unified[key]).abs().sum())
    return unified, masks, [a / b for a, b in zip(total, masked)]


# --------------------------------------------------------------------------- singular-value and mask baselines
# One matrix at a time, as numpy float64 arrays; each follows the authors' published code
# (TSV: AntoAndGar/task_singular_vectors; Iso: danielm1405/iso-merging; CART: JH-GEECS/CART;
# TALL masks and consensus: nik-dim/tall_masks) as read, not the library.
def _thin_svd(x):
    return np.linalg.svd(np.asarray(x, dtype=np.float64), full_matrices=False)


def _orthogonal_factor(x):
    u, _, vh = _thin_svd(x)
    return u @ vh


def tsv_reference(tvs, fraction=None) -> np.ndarray:
    """TSV-M: per task the first ``int(r/K)`` singular triplets written into slot t of zero
    matrices of r columns (rows for V); both bases replaced by ``U Vᵀ`` of their own SVD; then
    ``U diag(s) V``."""
    k_tasks = len(tvs)
    m, n = np.shape(tvs[0])
    r = min(m, n)
    k = int(r * (1.0 / k_tasks if fraction is None else fraction))
    width = max(r, k_tasks * k)
    u_all, s_all, v_all = np.zeros((m, width)), np.zeros(width), np.zeros((width, n))
    for t, x in enumerate(tvs):
        u, s, vh = _thin_svd(x)
        u_all[:, t * k:(t + 1) * k], s_all[t * k:(t + 1) * k], v_all[t * k:(t + 1) * k] = u[:, :k], s[:k], vh[:k]
    return _orthogonal_factor(u_all) @ np.diag(s_all) @ _orthogonal_factor(v_all)


def iso_c_reference(tvs) -> np.ndarray:
    """Iso-C: the SVD of the sum with every singular value replaced by their mean."""
    u, s, vh = _thin_svd(np.sum(tvs, axis=0))
    return u @ np.diag(np.full_like(s, s.mean())) @ vh


def iso_cts_reference(tvs, common_fraction: float) -> np.ndarray:
    """Iso-CTS as ``iso_cts`` computes it: common size ``int(r·f)``, then ``round((r − c)/K)·K``
    task-specific slots (c recomputed as r minus them), common triplets of the sum in the last c
    slots, each task's top ``(r − c)/K`` triplets of ``w − U_c U_cᵀ w`` in its slots, both bases
    orthogonalised, singular values all their mean."""
    k_tasks = len(tvs)
    m, n = np.shape(tvs[0])
    r = min(m, n)
    common = int(r * common_fraction)
    common = r - round((r - common) / k_tasks) * k_tasks
    per_task = int((r - common) / k_tasks)
    u, s, vh = _thin_svd(np.sum(tvs, axis=0))
    u_all, s_all, v_all = np.zeros((m, r)), np.zeros(r), np.zeros((r, n))
    for t, w in enumerate(tvs):
        residual = np.asarray(w) - u[:, :common] @ u[:, :common].T @ np.asarray(w)
        ut, st, vht = _thin_svd(residual)
        sl = slice(t * per_task, (t + 1) * per_task)
        u_all[:, sl], s_all[sl], v_all[sl] = ut[:, :per_task], st[:per_task], vht[:per_task]
    tail = slice(k_tasks * per_task, k_tasks * per_task + common)
    u_all[:, tail], s_all[tail], v_all[tail] = u[:, :common], s[:common], vh[:common]
    return _orthogonal_factor(u_all) @ np.diag(np.full(r, s_all.mean())) @ _orthogonal_factor(v_all)


def cart_reference(tvs, rank_ratio: float, prior: float) -> np.ndarray:
    """CART's static merge of one matrix, as a delta from θ_pre: ``θ_avg − θ_pre`` plus ``prior``
    times the sum of each centred task vector's SVD truncated to ``max(1, int(ρ·r))`` (none at ρ = 0)."""
    mean = np.mean(tvs, axis=0)
    total = np.zeros_like(mean)
    if rank_ratio > 0:
        dim = max(1, int(rank_ratio * min(mean.shape)))
        for x in tvs:
            u, s, vh = _thin_svd(np.asarray(x) - mean)
            total += (u[:, :dim] * s[:dim]) @ vh[:dim]
    return mean + prior * total


def ties_dis_reference(tvs, density: float, aggregate: str) -> np.ndarray:
    """TIES per tensor: keep each task's ``int(d·n)`` largest |τ| (stable order: lower index first
    among ties), elect sign(Σ trimmed) (0 → +), keep agreeing entries, sum or average them."""
    flat = np.array([np.ravel(x) for x in tvs], dtype=np.float64)
    k = int(density * flat.shape[1])
    trimmed = np.zeros_like(flat)
    for t, row in enumerate(flat):
        keep = np.argsort(-np.abs(row), kind="stable")[:k]
        trimmed[t, keep] = row[keep]
    positive = trimmed.sum(axis=0) >= 0
    agree = np.where(positive, trimmed > 0, trimmed < 0)
    kept = trimmed * agree
    total = kept.sum(axis=0)
    if aggregate == "mean":
        total = total / np.maximum(agree.sum(axis=0), 1)
    return total.reshape(np.shape(tvs[0]))


def tall_masks_reference(tvs, multi_task, tall_lambda: float) -> np.ndarray:
    """TALL masks ``[K, ...]``: ``|θ_0 − θ_t| > λ·|θ_MTL − θ_t|`` with θ_0 = 0, θ_t = τ_t, θ_MTL = τ_MTL."""
    tvs = np.asarray(tvs, dtype=np.float64)
    return np.abs(tvs) > tall_lambda * np.abs(np.asarray(multi_task) - tvs)


def consensus_reference(tvs, tall_lambda: float, min_tasks: int, scaling: float, base: str = "task_arithmetic",
                        density: float = 0.2, aggregate: str = "sum") -> np.ndarray:
    """Consensus merging of one tensor: the multi-task vector (Σ τ or TIES) times 1[Σ_t m_t ≥ k], times α."""
    multi_task = np.sum(tvs, axis=0) if base == "task_arithmetic" else ties_dis_reference(tvs, density, aggregate)
    count = tall_masks_reference(tvs, multi_task, tall_lambda).sum(axis=0)
    return scaling * multi_task * (count >= min_tasks)


def wudi_reference(tvs, steps: int, lr: float) -> torch.Tensor:
    """WUDI as the authors' code runs it: a parameter initialised at Σ τ_t, ``torch.optim.Adam(lr)``
    on ``Σ_t ‖(M − τ_t) τ_tᵀ‖² / ‖τ_t‖²`` back-propagated by autograd, `steps` times."""
    vectors = torch.stack([torch.as_tensor(x) for x in tvs])
    merged = torch.nn.Parameter(vectors.sum(dim=0).clone())
    optimizer = torch.optim.Adam([merged], lr=lr, weight_decay=0)
    norms = vectors.reshape(len(tvs), -1).norm(dim=-1) ** 2
    for _ in range(steps):
        products = torch.matmul(merged.unsqueeze(0) - vectors, vectors.transpose(1, 2))
        loss = (products ** 2 / norms.view(-1, 1, 1)).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return merged.detach()
