"""The zoo's eight procedural image-classification tasks and the pretraining pretext.

Each task stands in for one of the paper's eight vision tasks and has its own label
space; images are ``[N, 3, 32, 32]`` float32 in [0, 1], drawn by vectorised numpy code
(:mod:`.render`) from a seed, so nothing is downloaded and nothing is shipped:

========== =============== ======= ====================================================
task       stands in for   classes what it is
========== =============== ======= ====================================================
digits     MNIST           10      handwritten-style stroke digits, white on black
housenum   SVHN            10      printed digits on cluttered colour backgrounds,
                                   with cut-off neighbour digits at both sides
textures   DTD             10      procedural texture families, random colours/scale/angle
signs      GTSRB           12      traffic-sign-like shapes × colour schemes × symbols,
                                   varying light, blur and clutter
landcover  EuroSAT         10      procedural aerial land-cover patches
counting   RESISC45        8       count the objects (1 to 8, at most one per 8x8 cell) on a
                                   smooth background
vehicles   Cars            10      side views of ten vehicle types, random colour/size/facing
scenes     SUN397          15      scene layouts (beach, city, forest, room, ...)
========== =============== ======= ====================================================

The pretext (``shapes64``) is none of these: the shape (8 kinds) × colour (8 hue bins)
of the largest of 1-3 objects on a random background, 64 classes.

Labels are balanced (every class present in every split); the sample streams of the
splits come from different seeds. Generation is deterministic: the same task, split,
size and seed always give the same uint8 images.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import ParameterError
from .render import (F32, arc, blur, box_sdf, col, contrasting, coverage, disc_sdf, ellipse_sdf,
                     hsv_to_rgb, paint, pixel_grid, polygon_sdf, polyline_segments,
                     random_colors, regular_polygon, segments_distance, smooth_noise)

__all__ = ["TaskSpec", "TASKS", "PRETEXT", "TASK_NAMES", "SPLITS", "PRETRAIN_STREAM", "get_task", "generate",
           "split_seed"]

SPLITS = ("train", "val", "test")
"""Split names; ``"validation"`` is accepted as an alias of ``"val"``."""
PRETRAIN_STREAM = "pretrain"
"""A fourth sample stream of every task, disjoint from its splits: the images of the task's
domain that the zoo's backbone sees during pretraining (as CLIP saw digits, signs and cars
among its web images). Only :func:`generate` takes it; it is no evaluation split."""

Generator = Callable[[np.random.Generator, np.ndarray, int], np.ndarray]


@dataclass(frozen=True)
class TaskSpec:
    name: str
    stands_for: str
    classes: tuple[str, ...]
    description: str
    generator: Generator
    aux_classes: tuple[int, ...] = ()
    """Class counts of auxiliary labels (the pretext's); then the generator returns
    ``(images, aux [N, len(aux_classes)])`` and labels are ``[N, 1 + len(aux_classes)]``."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def info(self) -> dict:
        info = {"stands_for": self.stands_for, "num_classes": self.num_classes,
                "classes": list(self.classes), "description": self.description}
        if self.aux_classes:
            info["aux_classes"] = list(self.aux_classes)
        return info


# ----------------------------------------------------------------------------- helpers

def _finish(rng: np.random.Generator, images: np.ndarray, noise=(0.0, 0.04)) -> np.ndarray:
    """Per-image Gaussian pixel noise of a random strength, clipped to [0, 1]."""
    n = images.shape[0]
    sigma = rng.uniform(*noise, n).astype(F32).reshape(-1, 1, 1, 1)
    images = images + sigma * rng.standard_normal(images.shape, dtype=F32)
    return np.clip(images, 0.0, 1.0).astype(F32)


def _fill(n: int, size: int, color: np.ndarray) -> np.ndarray:
    return np.broadcast_to(color.astype(F32)[:, :, None, None], (n, 3, size, size)).copy()


def _noisy_background(rng, n, size, base=None, amount=(0.05, 0.25), cells=(2, 6)) -> np.ndarray:
    """A random (or given) base colour modulated by a smooth random colour field."""
    base = random_colors(rng, n, sat=(0.0, 0.8), val=(0.2, 0.95)) if base is None else base
    img = _fill(n, size, base)
    k = int(rng.integers(cells[0], cells[1] + 1))
    field = smooth_noise(rng, n, size, cells=k, channels=3)
    img += col(rng.uniform(*amount, n))[:, None] * field
    return np.clip(img, 0, 1).astype(F32)


def _rotate(x, y, cx, cy, angle, sx=1.0):
    """Local coordinates ``(u, v)`` [N, S, S] around centres, rotated by -angle, x scaled by 1/sx."""
    c, s = np.cos(col(angle)), np.sin(col(angle))
    dx, dy = x - col(cx), y - col(cy)
    return (dx * c + dy * s) / col(sx), -dx * s + dy * c


# ----------------------------------------------------------------------------- digits

def _digit_strokes() -> list[list[np.ndarray]]:
    """Skeletons of the digits 0-9 in a unit glyph box (y down), as polylines."""
    a = arc
    p = lambda *pts: np.array(pts, dtype=F32)  # noqa: E731
    return [
        [a(.5, .5, .3, .43, 0, 360, 20)],
        [p([.36, .22], [.53, .06], [.53, .94])],
        [np.concatenate([a(.5, .3, .28, .23, 200, 400, 12), p([.18, .94], [.84, .94])])],
        [a(.5, .28, .26, .21, 205, 450, 12), a(.5, .7, .3, .24, 270, 520, 12)],
        [p([.66, .94], [.66, .06], [.14, .66], [.86, .66])],
        [np.concatenate([p([.8, .06], [.32, .06], [.26, .44]), a(.5, .67, .3, .27, 232, 490, 12)])],
        [np.concatenate([a(.74, .62, .5, .56, 250, 180, 6), a(.5, .7, .28, .24, 180, 540, 16)])],
        [p([.14, .08], [.86, .08], [.42, .94])],
        [a(.5, .28, .22, .2, 0, 360, 16), a(.5, .71, .27, .23, 0, 360, 16)],
        [a(.5, .32, .26, .25, 0, 360, 16), p([.76, .32], [.64, .94])],
    ]


def _digit_segments() -> tuple[np.ndarray, np.ndarray]:
    """Per class segment end points ``[10, K, 2]`` each, padded with far-away segments."""
    per_class = []
    for strokes in _digit_strokes():
        segs = [np.stack(polyline_segments(s), axis=1) for s in strokes]  # [P-1, 2, 2]
        per_class.append(np.concatenate(segs))
    k = max(len(s) for s in per_class)
    out = np.full((10, k, 2, 2), -10.0, dtype=F32)
    for c, segs in enumerate(per_class):
        out[c, :len(segs)] = segs
    return out[:, :, 0], out[:, :, 1]


_DIGIT_SEGMENTS = _digit_segments()


def _glyph_distance(rng, labels, size, *, centre, scale, rotation, shear, stretch, warp):
    """Distance maps ``[N, S, S]`` to randomly deformed digit skeletons of class `labels`."""
    n = len(labels)
    p0, p1 = _DIGIT_SEGMENTS[0][labels], _DIGIT_SEGMENTS[1][labels]  # [N, K, 2]
    pad = p0[..., 0] < -5
    theta = rng.uniform(-rotation, rotation, n)
    sh = rng.uniform(-shear, shear, n)
    sx = rng.uniform(*stretch[0], n)
    sy = rng.uniform(*stretch[1], n)
    # smooth warp: two random plane waves per sample
    direction = rng.uniform(0, 2 * np.pi, (n, 2))
    kvec = rng.uniform(0.5, 1.6, (n, 2, 1)) * np.stack([np.cos(direction), np.sin(direction)], -1)
    phase = rng.uniform(0, 2 * np.pi, (n, 2))
    amp = rng.normal(0, warp, (n, 2, 2))

    def transform(pts):
        g = pts.astype(np.float64)
        wave = np.sin(2 * np.pi * np.einsum("nkd,npd->npk", kvec, g) + phase[:, None, :])  # [N, P, 2]
        g = g + np.einsum("npk,nkd->npd", wave, amp)
        u = (g[..., 0] - 0.5) * sx[:, None]
        v = (g[..., 1] - 0.5) * sy[:, None]
        u = u - sh[:, None] * v
        c, s = np.cos(theta)[:, None], np.sin(theta)[:, None]
        x = (u * c - v * s) * scale[:, None] + centre[0][:, None]
        y = (u * s + v * c) * scale[:, None] + centre[1][:, None]
        return np.stack([x, y], -1).astype(F32)

    q0, q1 = transform(p0), transform(p1)
    q0[pad] = -10.0
    q1[pad] = -10.0
    return segments_distance(q0, q1, size)


def _gen_digits(rng, labels, size):
    n = len(labels)
    centre = (0.5 + rng.uniform(-0.06, 0.06, n), 0.5 + rng.uniform(-0.06, 0.06, n))
    dist = _glyph_distance(rng, labels, size, centre=centre, scale=rng.uniform(0.56, 0.7, n),
                           rotation=0.3, shear=0.35, stretch=((0.7, 1.15), (0.85, 1.1)), warp=0.035)
    width = col(rng.uniform(0.05, 0.1, n))
    ink = coverage(dist - width / 2, size, soft=1.6) * col(rng.uniform(0.75, 1.0, n))
    img = np.repeat(ink[:, None], 3, axis=1)
    return _finish(rng, img, noise=(0.0, 0.03))


def _paint_clutter(rng, img, *, count, length, width, opacity, sat, val):
    """Paint `count` translucent, randomly coloured bars at random places and angles onto
    `img` ``[n, 3, size, size]`` (bar length in ``[0.05, length]``, width in `width`, opacity
    up to `opacity`; fractions of the image)."""
    n, size = img.shape[0], img.shape[-1]
    x, y = pixel_grid(size)
    for _ in range(count):
        alpha = coverage(box_sdf(x, y, rng.random(n), rng.random(n), rng.uniform(0.05, length, n),
                                 rng.uniform(*width, n), rng.uniform(0, np.pi, n)), size)
        paint(img, alpha * col(rng.uniform(0.0, opacity, n)), random_colors(rng, n, sat=sat, val=val))


def _gen_housenum(rng, labels, size):
    n = len(labels)
    x, y = pixel_grid(size)
    img = _noisy_background(rng, n, size, amount=(0.05, 0.2), cells=(2, 5))
    _paint_clutter(rng, img, count=3, length=0.5, width=(0.02, 0.12), opacity=0.5, sat=(0, 1), val=(0, 1))
    base = img.mean(axis=(2, 3))
    ink = contrasting(rng, base, 0.3)
    scale = rng.uniform(0.62, 0.78, n)
    cy = 0.5 + rng.uniform(-0.05, 0.05, n)
    cx = 0.5 + rng.uniform(-0.04, 0.04, n)
    gap = scale * rng.uniform(0.62, 0.78, n)
    width = col(rng.uniform(0.07, 0.12, n))
    for offset, lab in ((-1, rng.integers(0, 10, n)), (1, rng.integers(0, 10, n)), (0, labels)):
        dist = _glyph_distance(rng, lab, size, centre=(cx + offset * gap, cy), scale=scale,
                               rotation=0.12, shear=0.25, stretch=((0.65, 0.95), (0.95, 1.05)), warp=0.012)
        paint(img, coverage(dist - width / 2, size, soft=1.3), ink)
    img = blur(img, rng.uniform(0.0, 0.8, n))
    return _finish(rng, img, noise=(0.0, 0.05))


# ----------------------------------------------------------------------------- textures

TEXTURES = ("striped", "checkered", "dotted", "grid", "wavy", "blotchy", "speckled", "concentric",
            "radial", "marbled")


def _ramp(t):
    return np.clip(t, 0.0, 1.0).astype(F32)


def _gen_textures(rng, labels, size):
    n = len(labels)
    x, y = pixel_grid(size)
    period = col(rng.uniform(5.0, 9.0, n))          # pixels
    f = size / period                                 # periods per image
    angle = col(rng.uniform(0, np.pi, n))
    u = (x * np.cos(angle) + y * np.sin(angle)) * f + col(rng.random(n))
    v = (-x * np.sin(angle) + y * np.cos(angle)) * f + col(rng.random(n))
    duty = col(rng.uniform(-0.4, 0.4, n))
    sharp = period / 2.5

    m = np.zeros((n, size, size), dtype=F32)
    for c, name in enumerate(TEXTURES):
        i = np.flatnonzero(labels == c)
        if not len(i):
            continue
        ui, vi, P = u[i], v[i], period[i]
        if name == "striped":
            t = _ramp((np.sin(2 * np.pi * ui) - duty[i]) * sharp[i] + 0.5)
        elif name == "checkered":
            t = _ramp(np.sin(2 * np.pi * ui) * np.sin(2 * np.pi * vi) * P + 0.5)
        elif name == "dotted":
            r = np.sqrt((ui - np.round(ui)) ** 2 + (vi - np.round(vi)) ** 2)
            t = _ramp((col(rng.uniform(0.18, 0.32, len(i))) - r) * P + 0.5)
        elif name == "grid":
            d = np.minimum(np.abs(ui - np.round(ui)), np.abs(vi - np.round(vi)))
            t = _ramp((col(rng.uniform(0.06, 0.14, len(i))) - d) * P + 0.5)
        elif name == "wavy":
            w = col(rng.uniform(0.35, 0.7, len(i))) * np.sin(2 * np.pi * vi * col(rng.uniform(0.3, 0.55, len(i))))
            t = _ramp((np.sin(2 * np.pi * (ui + w)) - duty[i]) * sharp[i] + 0.5)
        elif name == "blotchy":
            field = smooth_noise(rng, len(i), size, cells=int(rng.integers(5, 8)))[:, 0]
            t = _ramp((field - col(rng.uniform(-0.4, 0.4, len(i)))) * 2.5 + 0.5)
        elif name == "speckled":
            t = (rng.random((len(i), size, size), dtype=F32) < col(rng.uniform(0.06, 0.16, len(i)))).astype(F32)
        elif name == "concentric":
            cx, cy = rng.uniform(0.1, 0.9, len(i)), rng.uniform(0.1, 0.9, len(i))
            r = np.sqrt((x - col(cx)) ** 2 + (y - col(cy)) ** 2) * f[i]
            t = _ramp((np.sin(2 * np.pi * r) - duty[i]) * sharp[i] + 0.5)
        elif name == "radial":
            cx, cy = rng.uniform(0.2, 0.8, len(i)), rng.uniform(0.2, 0.8, len(i))
            phi = np.arctan2(y - col(cy), x - col(cx))
            k = col(rng.integers(5, 11, len(i)))
            t = _ramp((np.sin(k * phi + col(rng.uniform(0, 6.3, len(i)))) - duty[i] * 0.5) * 3 + 0.5)
        elif name == "marbled":
            field = smooth_noise(rng, len(i), size, cells=4)[:, 0]
            t = _ramp((np.sin(2 * np.pi * (ui * 0.6 + 1.2 * field)) - duty[i]) * sharp[i] * 0.8 + 0.5)
        m[i] = t
    c1 = random_colors(rng, n, sat=(0.0, 1.0), val=(0.15, 1.0))
    c2 = contrasting(rng, c1, 0.35)
    img = _fill(n, size, c1)
    paint(img, m, c2)
    shade = smooth_noise(rng, n, size, cells=3)[:, 0] * col(rng.uniform(0.0, 0.12, n))
    img = img + shade[:, None]
    return _finish(rng, img, noise=(0.0, 0.04))


# ----------------------------------------------------------------------------- signs

SIGNS = (  # (name, shape, scheme, symbol)
    ("prohibitory", "circle", "ring", None),
    ("no_overtaking", "circle", "ring", "bar"),
    ("end_of_limit", "circle", "ring", "slash"),
    ("ahead_only", "circle", "blue", "arrow_up"),
    ("turn_right", "circle", "blue", "arrow_right"),
    ("no_entry", "circle", "red", "bar"),
    ("caution", "triangle", "ring", "exclamation"),
    ("crossing", "triangle", "ring", "cross"),
    ("yield", "triangle_down", "ring", None),
    ("stop", "octagon", "red", "bar"),
    ("priority_road", "diamond", "yellow", None),
    ("one_way", "square", "blue", "arrow_up"),
)


def _shape_sdf(shape, u, v, r):
    zeros = np.zeros(len(u), dtype=F32)
    if shape == "circle":
        return np.sqrt(u ** 2 + v ** 2) - col(r)
    sides, angle, scale = {"triangle": (3, -np.pi / 2, 1.25), "triangle_down": (3, np.pi / 2, 1.25),
                           "octagon": (8, np.pi / 8, 1.03), "diamond": (4, 0.0, 1.2),
                           "square": (4, np.pi / 4, 1.22)}[shape]
    verts = regular_polygon(zeros, zeros, r * scale, sides, np.full(len(u), angle, dtype=F32))
    if shape.startswith("triangle"):  # centre the triangle's inscribed circle on the sign centre
        verts[..., 1] += F32(0.18) * col(r)[:, 0] * (1 if shape == "triangle" else -1)
    return polygon_sdf(u, v, verts)


def _symbol_sdf(symbol, u, v, r):
    r = col(r)
    if symbol == "bar":
        return box_sdf(u / r, v / r, 0, 0, 0.6, 0.16) * r
    if symbol == "slash":
        return box_sdf(u / r, v / r, 0, 0, 0.75, 0.1, -np.pi / 4) * r
    if symbol in ("arrow_up", "arrow_right"):
        a, b = (u / r, v / r) if symbol == "arrow_up" else (v / r, -u / r)
        shaft = box_sdf(a, b, 0, 0.15, 0.11, 0.42)
        z = np.zeros(len(u), dtype=F32)
        head = polygon_sdf(a, b, np.stack([np.stack([z, z - 0.7], -1), np.stack([z - 0.38, z - 0.2], -1),
                                           np.stack([z + 0.38, z - 0.2], -1)], axis=1))
        return np.minimum(shaft, head) * r
    if symbol == "exclamation":
        return np.minimum(box_sdf(u / r, v / r, 0, -0.02, 0.08, 0.28),
                          disc_sdf(u / r, v / r, 0, 0.42, 0.1)) * r
    if symbol == "cross":
        return np.minimum(box_sdf(u / r, v / r, 0, 0.12, 0.4, 0.08, np.pi / 4),
                          box_sdf(u / r, v / r, 0, 0.12, 0.4, 0.08, -np.pi / 4)) * r
    raise ValueError(symbol)


def _jitter_color(rng, rgb, n, amount=0.1):
    base = np.asarray(rgb, dtype=F32)[None].repeat(n, 0)
    return np.clip(base + rng.uniform(-amount, amount, (n, 3)), 0, 1).astype(F32)


def _gen_signs(rng, labels, size):
    n = len(labels)
    x, y = pixel_grid(size)
    img = _noisy_background(rng, n, size, amount=(0.05, 0.3), cells=(2, 5))
    _paint_clutter(rng, img, count=2, length=0.3, width=(0.05, 0.3), opacity=0.6, sat=(0, 0.8), val=(0.1, 0.9))
    cx, cy = 0.5 + rng.uniform(-0.08, 0.08, n), 0.5 + rng.uniform(-0.08, 0.08, n)
    r = rng.uniform(0.26, 0.4, n).astype(F32)
    u, v = _rotate(x, y, cx, cy, rng.uniform(-0.15, 0.15, n), rng.uniform(0.8, 1.0, n))
    red, blue, white = (0.8, 0.08, 0.1), (0.1, 0.25, 0.75), (0.93, 0.93, 0.93)
    yellow, black = (0.95, 0.78, 0.1), (0.05, 0.05, 0.05)
    for c, (_, shape, scheme, symbol) in enumerate(SIGNS):
        i = np.flatnonzero(labels == c)
        if not len(i):
            continue
        k = len(i)
        sub = img[i]
        outer = _shape_sdf(shape, u[i], v[i], r[i])
        border = col(r[i] * rng.uniform(0.16, 0.24, k))
        if scheme == "ring":
            paint(sub, coverage(outer, size), _jitter_color(rng, red, k))
            paint(sub, coverage(outer + border, size), _jitter_color(rng, white, k, 0.06))
            ink = _jitter_color(rng, black, k, 0.05)
        elif scheme == "blue":
            paint(sub, coverage(outer, size), _jitter_color(rng, white, k, 0.06))
            paint(sub, coverage(outer + border * 0.4, size), _jitter_color(rng, blue, k))
            ink = _jitter_color(rng, white, k, 0.06)
        elif scheme == "red":
            paint(sub, coverage(outer, size), _jitter_color(rng, white, k, 0.06))
            paint(sub, coverage(outer + border * 0.4, size), _jitter_color(rng, red, k))
            ink = _jitter_color(rng, white, k, 0.06)
        else:  # yellow diamond with a white rim
            paint(sub, coverage(outer, size), _jitter_color(rng, white, k, 0.06))
            paint(sub, coverage(outer + border * 0.9, size), _jitter_color(rng, yellow, k))
            ink = None
        if symbol is not None:
            paint(sub, coverage(_symbol_sdf(symbol, u[i], v[i], r[i]), size), ink)
        img[i] = sub
    img = img * col(rng.uniform(0.35, 1.15, n))[:, None]
    img = blur(np.clip(img, 0, 1), rng.uniform(0.0, 1.0, n))
    return _finish(rng, img, noise=(0.0, 0.05))


# ----------------------------------------------------------------------------- landcover

LANDCOVER = ("annual_crop", "forest", "herbaceous", "highway", "industrial", "pasture",
             "permanent_crop", "residential", "river", "sea_lake")


def _terrain(rng, k, size, rgb, jitter=0.08, amount=0.08, cells=8):
    base = _jitter_color(rng, rgb, k, jitter)
    img = _fill(k, size, base)
    img += col(rng.uniform(0.5, 1.0, k) * amount)[:, None] * smooth_noise(rng, k, size, cells=cells, channels=3)
    return img


def _gen_landcover(rng, labels, size):
    n = len(labels)
    x, y = pixel_grid(size)
    img = np.zeros((n, 3, size, size), dtype=F32)
    for c, name in enumerate(LANDCOVER):
        i = np.flatnonzero(labels == c)
        if not len(i):
            continue
        k = len(i)
        ang = col(rng.uniform(0, np.pi, k))
        u = (x * np.cos(ang) + y * np.sin(ang)) * size
        v = (-x * np.sin(ang) + y * np.cos(ang)) * size
        if name == "annual_crop":
            sub = _terrain(rng, k, size, (0.55, 0.5, 0.3), 0.1, 0.05)
            width = col(rng.uniform(6, 11, k))
            band = np.floor(u / width + col(rng.random(k)))
            tint = np.stack([np.sin(band * a + col(rng.uniform(0, 6, k))) for a in (1.7, 2.3, 3.1)], 1)
            sub += F32(0.12) * tint
            sub += F32(0.05) * np.sin(2 * np.pi * v / col(rng.uniform(2.2, 3.2, k)))[:, None]
        elif name == "forest":
            sub = _terrain(rng, k, size, (0.12, 0.3, 0.12), 0.05, 0.1, cells=12)
            sub -= F32(0.08) * np.abs(smooth_noise(rng, k, size, cells=14))
        elif name == "herbaceous":
            sub = _terrain(rng, k, size, (0.45, 0.52, 0.25), 0.08, 0.12, cells=9)
        elif name == "highway":
            sub = _terrain(rng, k, size, (0.35, 0.45, 0.25), 0.1, 0.08)
            off = col(rng.uniform(-6, 6, k))
            centre_v = v - (-0.5 * np.sin(ang) + 0.5 * np.cos(ang)) * size - off
            road = coverage((np.abs(centre_v) - col(rng.uniform(1.2, 2.2, k))) / size, size)
            paint(sub, road, _jitter_color(rng, (0.55, 0.55, 0.55), k, 0.08))
        elif name == "industrial":
            sub = _terrain(rng, k, size, (0.5, 0.5, 0.48), 0.08, 0.05)
            for _ in range(3):
                b = box_sdf(x, y, rng.uniform(0.15, 0.85, k), rng.uniform(0.15, 0.85, k),
                            rng.uniform(0.08, 0.2, k), rng.uniform(0.08, 0.2, k), rng.uniform(0, 0.3, k))
                paint(sub, coverage(b, size), _jitter_color(rng, (0.75, 0.75, 0.78), k, 0.15))
        elif name == "pasture":
            sub = _terrain(rng, k, size, (0.45, 0.65, 0.3), 0.08, 0.06, cells=3)
        elif name == "permanent_crop":
            sub = _terrain(rng, k, size, (0.55, 0.48, 0.32), 0.08, 0.05)
            period = col(rng.uniform(3.0, 4.5, k))
            du = u / period - np.round(u / period)
            dv = v / period - np.round(v / period)
            dots = coverage((np.sqrt(du ** 2 + dv ** 2) - 0.3) * period / size, size)
            paint(sub, dots, _jitter_color(rng, (0.18, 0.38, 0.15), k, 0.06))
        elif name == "residential":
            sub = _terrain(rng, k, size, (0.45, 0.5, 0.38), 0.08, 0.05)
            period = col(rng.uniform(4.5, 6.5, k))
            du = u / period - np.round(u / period)
            dv = v / period - np.round(v / period)
            house = coverage(np.maximum(np.abs(du), np.abs(dv)) * period / size - 1.2 / size, size)
            roofs = np.where(col(rng.random(k)) < 0.5, 1, 0)
            colour = np.where(roofs[:, :, 0] > 0, _jitter_color(rng, (0.7, 0.3, 0.25), k, 0.1),
                              _jitter_color(rng, (0.6, 0.6, 0.62), k, 0.1))
            paint(sub, house, colour)
        elif name == "river":
            sub = _terrain(rng, k, size, (0.3, 0.45, 0.22), 0.08, 0.08)
            centre = (v - (-0.5 * np.sin(ang) + 0.5 * np.cos(ang)) * size
                      - col(rng.uniform(-5, 5, k)) - col(rng.uniform(2, 5, k))
                      * np.sin(2 * np.pi * u / col(rng.uniform(18, 36, k)) + col(rng.uniform(0, 6, k))))
            water = coverage((np.abs(centre) - col(rng.uniform(1.5, 3.5, k))) / size, size)
            paint(sub, water, _jitter_color(rng, (0.12, 0.22, 0.45), k, 0.06))
        else:  # sea_lake
            sub = _terrain(rng, k, size, (0.08, 0.2, 0.4), 0.06, 0.05, cells=4)
            u_centre = (0.5 * np.cos(ang) + 0.5 * np.sin(ang)) * size
            shore = coverage((u_centre - col(rng.uniform(7, 16, k)) - u) / size, size)
            shore = shore * (col(rng.random(k)) < 0.5)
            paint(sub, shore, _jitter_color(rng, (0.35, 0.45, 0.25), k, 0.08))
        img[i] = sub
    img = img * col(rng.uniform(0.8, 1.2, n))[:, None]
    return _finish(rng, np.clip(img, 0, 1), noise=(0.0, 0.04))


# ----------------------------------------------------------------------------- counting

def _gen_counting(rng, labels, size):
    n = len(labels)
    x, y = pixel_grid(size)
    count = labels + 1
    img = _noisy_background(rng, n, size, amount=(0.05, 0.2), cells=(3, 6))
    base = img.mean(axis=(2, 3))
    cells = 4  # one object per cell of a 4x4 grid (the ViT's patch grid at 32 px)
    order = np.argsort(rng.random((n, cells * cells)), axis=1)
    cell = 1.0 / cells
    for j in range(8):
        active = j < count
        slot = order[:, j]
        r = rng.uniform(0.06, 0.09, n)
        room = np.maximum(cell / 2 - r - 0.02, 0)
        cx = (slot % cells + 0.5) * cell + rng.uniform(-1, 1, n) * room
        cy = (slot // cells + 0.5) * cell + rng.uniform(-1, 1, n) * room
        square = rng.random(n) < 0.5
        sdf = np.where(col(square), box_sdf(x, y, cx, cy, r * 0.85, r * 0.85, rng.uniform(0, 1.6, n)),
                       disc_sdf(x, y, cx, cy, r))
        paint(img, coverage(sdf, size) * col(active), contrasting(rng, base, 0.3))
    return _finish(rng, img, noise=(0.0, 0.04))


# ----------------------------------------------------------------------------- vehicles

def _q(*pts):
    return np.array(pts, dtype=F32)


VEHICLES = {  # name -> (body polygons, window polygons, wheels (x, r), cargo polygons); y up, length 1
    "sedan": ([_q((0, .1), (0, .24), (1, .23), (1, .1)), _q((.26, .24), (.38, .38), (.66, .38), (.8, .24))],
              [_q((.33, .26), (.41, .35), (.51, .35), (.51, .26)), _q((.54, .26), (.54, .35), (.64, .35), (.73, .26))],
              [(.2, .09), (.8, .09)], []),
    "hatchback": ([_q((0, .1), (0, .25), (1, .24), (1, .1)), _q((.02, .24), (.08, .43), (.6, .43), (.76, .24))],
                  [_q((.12, .27), (.14, .4), (.36, .4), (.36, .27)), _q((.4, .27), (.4, .4), (.58, .4), (.69, .27))],
                  [(.18, .1), (.8, .1)], []),
    "suv": ([_q((0, .12), (0, .33), (1, .31), (1, .12)), _q((.03, .32), (.06, .53), (.68, .53), (.8, .31))],
            [_q((.1, .36), (.1, .49), (.3, .49), (.3, .36)), _q((.34, .36), (.34, .49), (.64, .49), (.72, .36))],
            [(.18, .12), (.8, .12)], []),
    "van": ([_q((0, .08), (0, .58), (.76, .58), (1, .32), (1, .08))],
            [_q((.79, .34), (.79, .52), (.94, .34)), _q((.5, .36), (.5, .5), (.72, .5), (.72, .36))],
            [(.15, .09), (.82, .09)], []),
    "pickup": ([_q((0, .1), (0, .25), (1, .24), (1, .1)), _q((.45, .24), (.5, .43), (.72, .43), (.8, .24)),
                _q((0, .24), (0, .3), (.43, .3), (.43, .24))],
               [_q((.53, .27), (.55, .4), (.7, .4), (.76, .27))],
               [(.18, .1), (.8, .1)], []),
    "bus": ([_q((0, .06), (0, .48), (1, .48), (1, .06))],
            [_q((a, .3), (a, .42), (a + .14, .42), (a + .14, .3)) for a in (.04, .22, .4, .58, .78)],
            [(.15, .08), (.83, .08)], []),
    "truck": ([_q((.72, .08), (.72, .46), (.87, .46), (1, .3), (1, .08))],
              [_q((.77, .3), (.77, .42), (.87, .42), (.95, .3))],
              [(.12, .08), (.3, .08), (.86, .08)], [_q((0, .12), (0, .62), (.7, .62), (.7, .12))]),
    "sports": ([_q((0, .08), (0, .2), (1, .14), (1, .08)), _q((.3, .19), (.45, .3), (.6, .3), (.76, .16))],
               [_q((.38, .2), (.47, .28), (.58, .28), (.69, .18))],
               [(.19, .08), (.81, .08)], []),
    "limousine": ([_q((0, .08), (0, .2), (1, .19), (1, .08)), _q((.14, .2), (.21, .32), (.76, .32), (.86, .2))],
                  [_q((a, .22), (a, .3), (a + .13, .3), (a + .13, .22)) for a in (.2, .36, .52, .67)],
                  [(.12, .075), (.88, .075)], []),
    "tractor": ([_q((.45, .18), (.45, .38), (1, .34), (1, .18)), _q((.1, .3), (.1, .78), (.5, .78), (.5, .3))],
                [_q((.16, .46), (.16, .72), (.44, .72), (.44, .46))],
                [(.28, .24), (.85, .12)], []),
}
VEHICLE_NAMES = tuple(VEHICLES)


def _gen_vehicles(rng, labels, size):
    n = len(labels)
    x, y = pixel_grid(size)
    horizon = rng.uniform(0.45, 0.7, n)
    sky = random_colors(rng, n, sat=(0.0, 0.5), val=(0.6, 1.0), hue=rng.uniform(0.5, 0.7, n))
    road = _jitter_color(rng, (0.4, 0.4, 0.4), n, 0.15)
    img = _fill(n, size, sky)
    paint(img, coverage(col(horizon) - y, size), road)
    img += col(rng.uniform(0.02, 0.12, n))[:, None] * smooth_noise(rng, n, size, cells=5, channels=3)
    length = rng.uniform(0.8, 0.97, n)
    flip = np.where(rng.random(n) < 0.5, -1.0, 1.0)
    x0 = 0.5 + rng.uniform(-0.03, 0.03, n)
    ground = rng.uniform(0.7, 0.84, n)

    def to_image(poly, idx):  # vehicle coords [M, 2] -> image coords [k, M, 2]
        px = x0[idx, None] + flip[idx, None] * (poly[None, :, 0] - 0.5) * length[idx, None]
        py = ground[idx, None] - poly[None, :, 1] * length[idx, None]
        return np.stack([px, py], -1).astype(F32)

    for c, name in enumerate(VEHICLE_NAMES):
        i = np.flatnonzero(labels == c)
        if not len(i):
            continue
        k = len(i)
        bodies, windows, wheels, cargo = VEHICLES[name]
        sub = img[i]
        body = random_colors(rng, k, sat=(0.0, 1.0), val=(0.2, 1.0))
        for poly in cargo:
            paint(sub, coverage(polygon_sdf(x, y, to_image(poly, i)), size),
                  random_colors(rng, k, sat=(0.0, 0.6), val=(0.4, 1.0)))
        for poly in bodies:
            paint(sub, coverage(polygon_sdf(x, y, to_image(poly, i)), size), body)
        glass = _jitter_color(rng, (0.55, 0.65, 0.78), k, 0.1)
        for poly in windows:
            paint(sub, coverage(polygon_sdf(x, y, to_image(poly, i)), size), glass)
        tyre = _jitter_color(rng, (0.08, 0.08, 0.08), k, 0.05)
        hub = _jitter_color(rng, (0.7, 0.7, 0.7), k, 0.15)
        for wx, wr in wheels:
            cx = x0[i] + flip[i] * (wx - 0.5) * length[i]
            cy = ground[i] - wr * length[i]
            paint(sub, coverage(disc_sdf(x, y, cx, cy, wr * length[i]), size), tyre)
            paint(sub, coverage(disc_sdf(x, y, cx, cy, 0.45 * wr * length[i]), size), hub)
        img[i] = sub
    img = blur(np.clip(img, 0, 1), rng.uniform(0.0, 0.3, n))
    return _finish(rng, img, noise=(0.0, 0.04))


# ----------------------------------------------------------------------------- scenes

SCENES = ("beach", "desert", "forest", "city", "night_city", "mountains", "lake", "field", "snowfield",
          "sunset", "road", "room", "underwater", "tunnel", "harbor")


def _sky(rng, k, size, top, bottom, jitter=0.08):
    _, y = pixel_grid(size)
    t, b = _jitter_color(rng, top, k, jitter), _jitter_color(rng, bottom, k, jitter)
    return (t[:, :, None, None] * (1 - y) + b[:, :, None, None] * y).astype(F32)


def _gen_scenes(rng, labels, size):
    n = len(labels)
    x, y = pixel_grid(size)
    img = np.zeros((n, 3, size, size), dtype=F32)
    for c, name in enumerate(SCENES):
        i = np.flatnonzero(labels == c)
        if not len(i):
            continue
        k = len(i)
        h = col(rng.uniform(0.35, 0.6, k))
        below = coverage(h - y, size)
        J = lambda rgb, a=0.08: _jitter_color(rng, rgb, k, a)  # noqa: E731
        if name == "beach":
            sub = _sky(rng, k, size, (0.35, 0.6, 0.95), (0.7, 0.85, 1.0))
            paint(sub, below, J((0.1, 0.35, 0.65)))
            shore = h + col(rng.uniform(0.12, 0.25, k)) + 0.03 * np.sin(2 * np.pi * x * 1.5 + col(rng.random(k) * 6))
            paint(sub, coverage(shore - y, size), J((0.9, 0.8, 0.55)))
        elif name == "desert":
            sub = _sky(rng, k, size, (0.5, 0.7, 0.9), (0.9, 0.85, 0.7))
            dune = h + 0.06 * np.sin(2 * np.pi * (x * col(rng.uniform(0.6, 1.4, k)) + col(rng.random(k))))
            paint(sub, coverage(dune - y, size), J((0.85, 0.62, 0.35)))
            dune2 = dune + 0.15 + 0.05 * np.sin(2 * np.pi * (x * 1.3 + col(rng.random(k))))
            paint(sub, coverage(dune2 - y, size), J((0.75, 0.5, 0.28)))
            paint(sub, coverage(disc_sdf(x, y, rng.uniform(0.1, 0.9, k), rng.uniform(0.08, 0.22, k), 0.06), size),
                  J((1.0, 0.95, 0.7), 0.05))
        elif name == "forest":
            sub = _sky(rng, k, size, (0.5, 0.7, 0.9), (0.75, 0.85, 0.9))
            paint(sub, below, J((0.15, 0.35, 0.12)))
            for _ in range(9):
                tx, th = rng.uniform(0, 1, k), rng.uniform(0.25, 0.5, k)
                base = h[:, 0, 0] + rng.uniform(0.05, 0.45, k)
                tri = np.stack([np.stack([tx, base - th], -1), np.stack([tx - 0.09, base], -1),
                                np.stack([tx + 0.09, base], -1)], 1)
                paint(sub, coverage(polygon_sdf(x, y, tri), size), J((0.08, 0.28, 0.1), 0.06))
        elif name in ("city", "night_city"):
            night = name == "night_city"
            sub = (_sky(rng, k, size, (0.02, 0.03, 0.12), (0.1, 0.1, 0.25), 0.03) if night
                   else _sky(rng, k, size, (0.4, 0.6, 0.9), (0.75, 0.85, 0.95)))
            lit = np.zeros((k, size, size), dtype=F32)
            for b in range(7):
                bx = (b + rng.uniform(0.0, 0.5, k)) / 6.5
                top = rng.uniform(0.15, 0.6, k)
                cov = coverage(box_sdf(x, y, bx, (top + 1.2) / 2, rng.uniform(0.05, 0.09, k), (1.2 - top) / 2), size)
                paint(sub, cov, J((0.06, 0.06, 0.1), 0.03) if night else J((0.5, 0.5, 0.55), 0.15))
                lit = np.maximum(lit, cov)
            win = ((np.sin(2 * np.pi * x * 16) > 0.2) & (np.sin(2 * np.pi * y * 13) > 0.1)).astype(F32)
            if night:
                win = win[None] * (rng.random((k, size, size)) < 0.45)
                paint(sub, lit * win, J((1.0, 0.85, 0.4), 0.08))
            else:
                paint(sub, lit * win[None] * 0.6, J((0.25, 0.3, 0.4), 0.08))
        elif name == "mountains":
            sub = _sky(rng, k, size, (0.4, 0.6, 0.9), (0.8, 0.88, 0.95))
            for _ in range(3):
                px, ph = rng.uniform(0.1, 0.9, k), rng.uniform(0.25, 0.5, k)
                hw = rng.uniform(0.3, 0.5, k)
                base = h[:, 0, 0] + 0.1
                tri = np.stack([np.stack([px, base - ph], -1), np.stack([px - hw, base], -1),
                                np.stack([px + hw, base], -1)], 1)
                sdf = polygon_sdf(x, y, tri)
                paint(sub, coverage(sdf, size), J((0.4, 0.38, 0.38)))
                snow = coverage(np.maximum(sdf, y - col(base - ph * 0.65)), size)
                paint(sub, snow, J((0.95, 0.95, 0.97), 0.03))
            paint(sub, coverage(h + 0.1 - y, size), J((0.3, 0.42, 0.22)))
        elif name == "lake":
            sub = _sky(rng, k, size, (0.4, 0.6, 0.9), (0.75, 0.85, 0.95))
            hill = h - 0.08 - 0.04 * np.sin(2 * np.pi * (x * 2 + col(rng.random(k))))
            paint(sub, coverage(hill - y, size), J((0.2, 0.32, 0.2)))
            water = J((0.2, 0.4, 0.6))[:, :, None, None] * (1 + 0.15 * np.sin(2 * np.pi * y * 20))[None, None]
            paint(sub, below, water)
        elif name == "field":
            sub = _sky(rng, k, size, (0.4, 0.6, 0.95), (0.8, 0.9, 1.0))
            depth = np.maximum(y - h, 0.02)
            rows = np.sin(2 * np.pi * (x - 0.5) / depth * col(rng.uniform(0.12, 0.2, k)))
            ground = J((0.55, 0.6, 0.2), 0.12)[:, :, None, None] * (1 + 0.2 * rows[:, None])
            paint(sub, below, ground)
        elif name == "snowfield":
            sub = _sky(rng, k, size, (0.75, 0.8, 0.88), (0.9, 0.92, 0.95), 0.05)
            paint(sub, below, J((0.95, 0.96, 1.0), 0.04))
            for _ in range(3):
                tx, th = rng.uniform(0, 1, k), rng.uniform(0.08, 0.2, k)
                base = h[:, 0, 0] + rng.uniform(0.0, 0.2, k)
                tri = np.stack([np.stack([tx, base - th], -1), np.stack([tx - 0.04, base], -1),
                                np.stack([tx + 0.04, base], -1)], 1)
                paint(sub, coverage(polygon_sdf(x, y, tri), size), J((0.1, 0.18, 0.12), 0.05))
        elif name == "sunset":
            sub = _sky(rng, k, size, (0.35, 0.15, 0.4), (1.0, 0.55, 0.2))
            paint(sub, coverage(disc_sdf(x, y, rng.uniform(0.2, 0.8, k), h[:, 0, 0] - 0.02, 0.1), size),
                  J((1.0, 0.85, 0.4), 0.05))
            ridge = h + 0.03 * np.sin(2 * np.pi * (x * 1.5 + col(rng.random(k))))
            paint(sub, coverage(ridge - y, size), J((0.12, 0.06, 0.1), 0.05))
        elif name == "road":
            sub = _sky(rng, k, size, (0.4, 0.6, 0.9), (0.8, 0.88, 0.95))
            paint(sub, below, J((0.3, 0.5, 0.2)))
            vx = col(rng.uniform(0.35, 0.65, k))
            depth = np.maximum(y - h, 0)
            edge = np.abs(x - vx) - depth * col(rng.uniform(0.7, 1.0, k))
            paint(sub, coverage(np.maximum(edge, h - y), size), J((0.35, 0.35, 0.38)))
            dash = (np.sin(2 * np.pi / np.maximum(depth, 0.02) * 0.08) > 0).astype(F32)
            line = coverage(np.maximum(np.abs(x - vx) - depth * 0.05, h + 0.02 - y), size) * dash
            paint(sub, line, J((0.95, 0.95, 0.9), 0.04))
        elif name == "room":
            wall = J((0.8, 0.72, 0.6), 0.1)
            sub = _fill(k, size, wall * 0.8)
            cx, cy = col(rng.uniform(0.4, 0.6, k)), col(rng.uniform(0.4, 0.55, k))
            hw, hh = col(rng.uniform(0.22, 0.3, k)), col(rng.uniform(0.2, 0.28, k))
            back = np.maximum(np.abs(x - cx) - hw, np.abs(y - cy) - hh)
            paint(sub, coverage(back, size), wall)
            floor = np.clip((y - (cy + hh)) * size + 0.5, 0, 1) * (y > cy + hh - 0.01)
            paint(sub, floor.astype(F32), J((0.45, 0.3, 0.2)))
            paint(sub, coverage(box_sdf(x, y, cx[:, 0, 0], cy[:, 0, 0] - 0.05, hw[:, 0, 0] * 0.45, hh[:, 0, 0] * 0.4),
                                size), J((0.6, 0.8, 0.95), 0.06))
        elif name == "underwater":
            sub = _sky(rng, k, size, (0.1, 0.6, 0.65), (0.02, 0.15, 0.35))
            for _ in range(5):
                bx, by, br = rng.uniform(0, 1, k), rng.uniform(0, 1, k), rng.uniform(0.02, 0.05, k)
                ring = np.abs(disc_sdf(x, y, bx, by, br)) - 0.012
                paint(sub, coverage(ring, size) * 0.8, J((0.8, 0.95, 1.0), 0.04))
            rays = np.clip(np.sin(2 * np.pi * (x * 4 + y * 1.5 + col(rng.random(k)))), 0, 1) * (1 - y) * 0.25
            sub = sub + rays[:, None]
        elif name == "tunnel":
            sub = _fill(k, size, J((0.15, 0.13, 0.12), 0.05))
            d = np.sqrt(((x - col(rng.uniform(0.4, 0.6, k))) / 1.0) ** 2 + ((y - h) / 0.8) ** 2)
            sub = sub * (0.6 + 0.8 * np.clip(0.6 - d, 0, 1))[:, None]
            paint(sub, coverage(ellipse_sdf(x, y, rng.uniform(0.4, 0.6, k), h[:, 0, 0], rng.uniform(0.08, 0.14, k),
                                            rng.uniform(0.08, 0.14, k)), size), J((0.95, 0.93, 0.85), 0.05))
        else:  # harbor
            sub = _sky(rng, k, size, (0.4, 0.6, 0.9), (0.75, 0.85, 0.95))
            paint(sub, below, J((0.15, 0.3, 0.5)))
            for _ in range(3):
                bx = rng.uniform(0.1, 0.9, k)
                by = h[:, 0, 0] + rng.uniform(0.06, 0.35, k)
                w = rng.uniform(0.06, 0.1, k)
                hull = np.stack([np.stack([bx - w, by - 0.04], -1), np.stack([bx + w, by - 0.04], -1),
                                 np.stack([bx + w * 0.7, by], -1), np.stack([bx - w * 0.7, by], -1)], 1)
                paint(sub, coverage(polygon_sdf(x, y, hull), size), J((0.9, 0.9, 0.9), 0.1))
                mast = box_sdf(x, y, bx, by - 0.12, 0.008, 0.09)
                paint(sub, coverage(mast, size), J((0.3, 0.25, 0.2), 0.05))
        img[i] = sub
    img = img * col(rng.uniform(0.8, 1.15, n))[:, None]
    img += col(rng.uniform(0.0, 0.06, n))[:, None] * smooth_noise(rng, n, size, cells=4, channels=3)
    return _finish(rng, np.clip(img, 0, 1), noise=(0.0, 0.04))


# ----------------------------------------------------------------------------- pretext

PRETEXT_SHAPES = ("disc", "ring", "square", "triangle", "hexagon", "cross", "ellipse", "bar")
PRETEXT_HUES = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "magenta")
_HUE_CENTRES = np.array([0.0, 0.08, 0.16, 0.33, 0.5, 0.64, 0.76, 0.88], dtype=F32)


def _pretext_shape(kind: np.ndarray, x, y, cx, cy, r, angle):
    """Signed distance of each sample's shape `kind` (index into PRETEXT_SHAPES)."""
    n = len(kind)
    out = np.empty((n,) + x.shape, dtype=F32)
    for s, name in enumerate(PRETEXT_SHAPES):
        i = np.flatnonzero(kind == s)
        if not len(i):
            continue
        a, b, rr, t = cx[i], cy[i], r[i], angle[i]
        if name == "disc":
            d = disc_sdf(x, y, a, b, rr)
        elif name == "ring":
            d = np.abs(disc_sdf(x, y, a, b, rr * 0.8)) - col(rr * 0.22)
        elif name == "square":
            d = box_sdf(x, y, a, b, rr * 0.8, rr * 0.8, t)
        elif name == "triangle":
            d = polygon_sdf(x, y, regular_polygon(a, b, rr * 1.1, 3, t))
        elif name == "hexagon":
            d = polygon_sdf(x, y, regular_polygon(a, b, rr, 6, t))
        elif name == "cross":
            d = np.minimum(box_sdf(x, y, a, b, rr, rr * 0.3, t), box_sdf(x, y, a, b, rr * 0.3, rr, t))
        elif name == "ellipse":
            d = ellipse_sdf(x, y, a, b, rr, rr * 0.5, t)
        else:
            d = box_sdf(x, y, a, b, rr * 1.1, rr * 0.18, t)
        out[i] = d
    return out


PRETEXT_BACKGROUNDS = ("plain", "gradient", "stripes", "dots", "checker", "blotches")


def _gen_pretext(rng, labels, size):
    """Images and auxiliary labels ``[N, 2]``: background kind (6) and the 3x3 cell of the
    main object's centre (9)."""
    n = len(labels)
    x, y = pixel_grid(size)
    img = _noisy_background(rng, n, size, amount=(0.0, 0.3), cells=(2, 5))
    background = rng.integers(0, len(PRETEXT_BACKGROUNDS), n)
    period = col(rng.uniform(3.0, 10.0, n)) / size
    angle = col(rng.uniform(0, np.pi, n))
    u = (x * np.cos(angle) + y * np.sin(angle)) / period + col(rng.random(n))
    v = (-x * np.sin(angle) + y * np.cos(angle)) / period + col(rng.random(n))
    pattern = np.zeros((n, size, size), dtype=F32)
    sel = background == 1
    pattern[sel] = np.clip(0.5 + (x * col(rng.uniform(-1, 1, n)) + y * col(rng.uniform(-1, 1, n)))[sel], 0, 1)
    sel = background == 2
    pattern[sel] = (np.sin(2 * np.pi * u[sel]) > 0)
    sel = background == 3
    pattern[sel] = np.hypot(u - np.round(u), v - np.round(v))[sel] < 0.28
    sel = background == 4
    pattern[sel] = (np.sin(2 * np.pi * u) * np.sin(2 * np.pi * v))[sel] > 0
    sel = np.flatnonzero(background == 5)
    if len(sel):
        pattern[sel] = smooth_noise(rng, len(sel), size, cells=6)[:, 0] > 0
    paint(img, pattern * col(rng.uniform(0.3, 0.8, n)), random_colors(rng, n, sat=(0, 1), val=(0.1, 1)))
    extra = rng.integers(0, 3, n)
    for j in range(2):  # smaller distractors behind the main object
        kind = rng.integers(0, len(PRETEXT_SHAPES), n)
        d = _pretext_shape(kind, x, y, rng.uniform(0.1, 0.9, n), rng.uniform(0.1, 0.9, n),
                           rng.uniform(0.07, 0.13, n), rng.uniform(0, np.pi, n))
        paint(img, coverage(d, size) * col(j < extra), random_colors(rng, n, sat=(0, 1), val=(0.2, 1)))
    shape, hue = labels // len(PRETEXT_HUES), labels % len(PRETEXT_HUES)
    h = (_HUE_CENTRES[hue] + rng.uniform(-0.03, 0.03, n)) % 1.0
    colour = hsv_to_rgb(h, rng.uniform(0.6, 1.0, n), rng.uniform(0.55, 1.0, n))
    r = rng.uniform(0.15, 0.28, n)
    cx, cy = rng.uniform(0.2, 0.8, n), rng.uniform(0.2, 0.8, n)
    d = _pretext_shape(shape, x, y, cx, cy, r, rng.uniform(0, np.pi, n))
    paint(img, coverage(d, size), colour)
    cell = np.minimum((cy * 3).astype(np.int64), 2) * 3 + np.minimum((cx * 3).astype(np.int64), 2)
    return _finish(rng, img, noise=(0.0, 0.04)), np.stack([background, cell], axis=1).astype(np.int64)


# ----------------------------------------------------------------------------- registry

TASKS: dict[str, TaskSpec] = {spec.name: spec for spec in (
    TaskSpec("digits", "MNIST", tuple(str(d) for d in range(10)),
             "handwritten-style stroke digits (random affine, smooth warp, stroke width), white on black",
             _gen_digits),
    TaskSpec("housenum", "SVHN", tuple(str(d) for d in range(10)),
             "printed digits in a contrasting colour on cluttered colour backgrounds, cut-off neighbour "
             "digits at both sides, blur", _gen_housenum),
    TaskSpec("textures", "DTD", TEXTURES,
             "procedural texture families with random colours, scale, orientation and phase", _gen_textures),
    TaskSpec("signs", "GTSRB", tuple(s[0] for s in SIGNS),
             "traffic-sign-like shapes x colour schemes x symbols on clutter, varying light, blur, tilt",
             _gen_signs),
    TaskSpec("landcover", "EuroSAT", LANDCOVER, "procedural aerial land-cover patches", _gen_landcover),
    TaskSpec("counting", "RESISC45", tuple(str(k) for k in range(1, 9)),
             "how many objects (1-8 discs/squares, contrasting colours) lie on a smooth background",
             _gen_counting),
    TaskSpec("vehicles", "Cars", VEHICLE_NAMES,
             "side views of ten vehicle types; colour, size, position and facing are random", _gen_vehicles),
    TaskSpec("scenes", "SUN397", SCENES, "procedural scene layouts with colour and layout jitter", _gen_scenes),
)}
TASK_NAMES: tuple[str, ...] = tuple(TASKS)

PRETEXT = TaskSpec("shapes64", "(pretraining)",
                   tuple(f"{s}_{h}" for s in PRETEXT_SHAPES for h in PRETEXT_HUES),
                   "shape (8 kinds) x hue bin (8) of the largest of 1-3 objects on a random background; "
                   "auxiliary labels: background kind (6: plain, gradient, stripes, dots, checker, blotches) "
                   "and the 3x3 cell of the main object", _gen_pretext, aux_classes=(6, 9))


def get_task(name: str) -> TaskSpec:
    if name == PRETEXT.name:
        return PRETEXT
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ParameterError(f"unknown zoo task {name!r}; tasks: {', '.join(TASK_NAMES)} "
                             f"(pretext: {PRETEXT.name})") from None


def canonical_split(split: str) -> str:
    split = {"validation": "val", "valid": "val"}.get(split, split)
    if split not in SPLITS:
        raise ParameterError(f"unknown split {split!r}; splits: {', '.join(SPLITS)}")
    return split


def split_seed(task: str, split: str, seed: int) -> np.random.SeedSequence:
    """The seed sequence of one task's split: (seed, crc32(task name), split index); the
    pretraining stream has index 3."""
    index = len(SPLITS) if split == PRETRAIN_STREAM else SPLITS.index(canonical_split(split))
    return np.random.SeedSequence([int(seed), zlib.crc32(task.encode()), index])


def generate(task: str, split: str, n: int, seed: int = 0, size: int = 32,
             chunk: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 [n, 3, size, size], labels int64 [n])`` of one task's split, or of its
    pretraining stream (``split="pretrain"``; labels ``[n, 1 + aux]`` for a task with
    auxiliary labels: the pretext).

    Labels are balanced (``n >= classes`` puts every class in) and shuffled. Samples are
    drawn in chunks of `chunk`, each from its own child seed, so memory stays bounded.
    """
    spec = get_task(task)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ParameterError(f"n must be an integer >= 1, got {n!r}")
    sequence = split_seed(spec.name, split, seed)
    label_rng = np.random.default_rng(sequence.spawn(1)[0])
    labels = label_rng.permutation(np.arange(n) % spec.num_classes).astype(np.int64)
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    aux = np.empty((n, len(spec.aux_classes)), dtype=np.int64)
    starts = range(0, n, chunk)
    for lo, child in zip(starts, sequence.spawn(len(starts))):
        rng = np.random.default_rng(child)
        block = spec.generator(rng, labels[lo:lo + chunk], size)
        if spec.aux_classes:
            block, aux[lo:lo + chunk] = block
        images[lo:lo + chunk] = np.round(np.clip(block, 0.0, 1.0) * 255.0).astype(np.uint8)
    if spec.aux_classes:
        return images, np.concatenate([labels[:, None], aux], axis=1)
    return images, labels
