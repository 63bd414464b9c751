"""Vectorised numpy drawing: anti-aliased shapes, strokes and smooth noise on ``[N, 3, S, S]``.

Coordinates are unit coordinates ``(x, y)`` with ``x`` to the right and ``y`` downwards,
``(0, 0)`` the top-left corner and ``(1, 1)`` the bottom-right one of the image; pixel
``(i, j)`` has its centre at ``((j + 0.5) / S, (i + 0.5) / S)``. Shapes are given by signed
distances (negative inside, in unit coordinates) and drawn with one pixel of anti-aliasing.
Everything is float32 and a function of its arguments only (no hidden randomness).
"""

from __future__ import annotations

import numpy as np

F32 = np.float32


def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(X, Y)`` pixel-centre coordinates, each ``[S, S]``."""
    c = (np.arange(size, dtype=F32) + F32(0.5)) / F32(size)
    y, x = np.meshgrid(c, c, indexing="ij")
    return x, y


def coverage(sdf: np.ndarray, size: int, soft: float = 1.0) -> np.ndarray:
    """Pixel coverage in [0, 1] of the region ``sdf < 0`` with `soft` pixels of ramp."""
    return np.clip(F32(0.5) - sdf * F32(size / soft), F32(0.0), F32(1.0)).astype(F32, copy=False)


def paint(images: np.ndarray, alpha: np.ndarray, color: np.ndarray) -> None:
    """In place: ``images = (1 - alpha) * images + alpha * color``; alpha ``[N, S, S]``,
    color ``[N, 3]`` or ``[N, 3, S, S]``."""
    a = alpha[:, None].astype(F32, copy=False)
    if color.ndim == 2:
        color = color[:, :, None, None]
    images *= F32(1.0) - a
    images += a * color.astype(F32, copy=False)


def col(values, n: int | None = None) -> np.ndarray:
    """`values` as an ``[N, 1, 1]`` float32 column (broadcast against ``[N, S, S]``)."""
    arr = np.asarray(values, dtype=F32)
    if arr.ndim == 0:
        arr = np.full(n or 1, arr, dtype=F32)
    return arr.reshape(-1, 1, 1)


def disc_sdf(x, y, cx, cy, r) -> np.ndarray:
    """Signed distance to discs centred ``(cx, cy)`` with radius ``r`` (each ``[N]``)."""
    return np.sqrt((x - col(cx)) ** 2 + (y - col(cy)) ** 2) - col(r)


def ellipse_sdf(x, y, cx, cy, rx, ry, angle=0.0) -> np.ndarray:
    """Approximate signed distance to rotated ellipses (exact on the axes)."""
    c, s = np.cos(col(angle)), np.sin(col(angle))
    u = (x - col(cx)) * c + (y - col(cy)) * s
    v = -(x - col(cx)) * s + (y - col(cy)) * c
    rx, ry = col(rx), col(ry)
    k = np.sqrt((u / rx) ** 2 + (v / ry) ** 2)
    return (k - 1.0) * np.minimum(rx, ry)


def box_sdf(x, y, cx, cy, hw, hh, angle=0.0) -> np.ndarray:
    """Signed distance to rotated rectangles with half-width `hw` and half-height `hh`."""
    c, s = np.cos(col(angle)), np.sin(col(angle))
    u = (x - col(cx)) * c + (y - col(cy)) * s
    v = -(x - col(cx)) * s + (y - col(cy)) * c
    qx, qy = np.abs(u) - col(hw), np.abs(v) - col(hh)
    outside = np.sqrt(np.maximum(qx, 0) ** 2 + np.maximum(qy, 0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0)


def polygon_sdf(x, y, vertices: np.ndarray) -> np.ndarray:
    """Signed distance (exact inside, a lower bound outside) to convex polygons.

    `vertices` is ``[N, M, 2]`` in either winding order.
    """
    v = np.asarray(vertices, dtype=F32)
    nxt = np.roll(v, -1, axis=1)
    e = nxt - v
    length = np.sqrt((e ** 2).sum(-1)) + F32(1e-9)
    nx, ny = e[..., 1] / length, -e[..., 0] / length
    centre = v.mean(axis=1)
    side = np.sign(((centre[:, None, 0] - v[..., 0]) * nx + (centre[:, None, 1] - v[..., 1]) * ny).sum(1))
    side = np.where(side == 0, F32(1.0), side).astype(F32)
    best = None
    for m in range(v.shape[1]):
        d = ((x - col(v[:, m, 0])) * col(nx[:, m]) + (y - col(v[:, m, 1])) * col(ny[:, m])) * -col(side)
        best = d if best is None else np.maximum(best, d)
    return best


def regular_polygon(cx, cy, r, sides: int, angle=0.0) -> np.ndarray:
    """Vertices ``[N, sides, 2]`` of regular polygons with circumradius `r`."""
    t = np.asarray(angle, dtype=F32).reshape(-1, 1) + F32(2 * np.pi) * np.arange(sides, dtype=F32) / F32(sides)
    cx, cy, r = (np.asarray(a, dtype=F32).reshape(-1, 1) for a in (cx, cy, r))
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=-1).astype(F32)


def segments_distance(p0: np.ndarray, p1: np.ndarray, size: int) -> np.ndarray:
    """Distance ``[N, S, S]`` from every pixel to the nearest of each sample's segments.

    `p0`, `p1` are ``[N, K, 2]`` segment end points; a segment placed far outside the
    image (e.g. at (-10, -10)) acts as padding.
    """
    p0 = np.asarray(p0, dtype=F32)
    p1 = np.asarray(p1, dtype=F32)
    n, k, _ = p0.shape
    x, y = pixel_grid(size)
    px, py = x.reshape(1, 1, -1), y.reshape(1, 1, -1)
    out = np.empty((n, size * size), dtype=F32)
    chunk = max(1, (1 << 21) // max(1, k * size * size))
    for lo in range(0, n, chunk):
        a, b = p0[lo:lo + chunk], p1[lo:lo + chunk]
        dx, dy = (b - a)[..., 0:1], (b - a)[..., 1:2]
        l2 = dx * dx + dy * dy + F32(1e-12)
        vx, vy = px - a[..., 0:1], py - a[..., 1:2]
        t = np.clip((vx * dx + vy * dy) / l2, F32(0.0), F32(1.0))
        ex, ey = vx - t * dx, vy - t * dy
        out[lo:lo + chunk] = np.sqrt((ex * ex + ey * ey).min(axis=1))
    return out.reshape(n, size, size)


def polyline_segments(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive-point segments ``(p0, p1)`` of polylines ``[..., P, 2]``."""
    return points[..., :-1, :], points[..., 1:, :]


def arc(cx: float, cy: float, rx: float, ry: float, start: float, stop: float,
        points: int = 12) -> np.ndarray:
    """Points ``[P, 2]`` along an elliptic arc; angles in degrees, 90 pointing down."""
    t = np.deg2rad(np.linspace(start, stop, points, dtype=np.float64))
    return np.stack([cx + rx * np.cos(t), cy + ry * np.sin(t)], axis=-1).astype(F32)


def upsample_matrix(cells: int, size: int) -> np.ndarray:
    """``[S, cells]`` linear interpolation matrix from a coarse grid spanning the image."""
    u = (np.arange(size, dtype=np.float64) + 0.5) / size * (cells - 1)
    i0 = np.minimum(np.floor(u).astype(int), cells - 2)
    w = u - i0
    w = w * w * (3 - 2 * w)  # smoothstep weights hide the coarse grid's kinks
    m = np.zeros((size, cells), dtype=np.float64)
    m[np.arange(size), i0] = 1 - w
    m[np.arange(size), i0 + 1] = w
    return m.astype(F32)


def smooth_noise(rng: np.random.Generator, n: int, size: int, cells: int = 4,
                 channels: int = 1) -> np.ndarray:
    """Smooth random fields ``[N, channels, S, S]`` (about unit standard deviation)."""
    coarse = rng.standard_normal((n, channels, cells, cells)).astype(F32)
    m = upsample_matrix(cells, size)
    return np.matmul(np.matmul(m, coarse), m.T)


def hsv_to_rgb(h, s, v) -> np.ndarray:
    """``[N, 3]`` RGB from hue, saturation, value arrays in [0, 1]."""
    h, s, v = (np.asarray(a, dtype=F32) for a in (h, s, v))
    out = []
    for shift in (5.0, 3.0, 1.0):
        k = (shift + h * 6.0) % 6.0
        out.append(v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0))
    return np.stack(out, axis=1).astype(F32)


def random_colors(rng: np.random.Generator, n: int, sat=(0.4, 1.0), val=(0.4, 1.0),
                  hue: np.ndarray | None = None) -> np.ndarray:
    """Random saturated colours ``[N, 3]`` (hue uniform unless given)."""
    h = rng.random(n, dtype=F32) if hue is None else np.asarray(hue, dtype=F32)
    s = rng.uniform(*sat, n).astype(F32)
    v = rng.uniform(*val, n).astype(F32)
    return hsv_to_rgb(h, s, v)


def luminance(rgb: np.ndarray) -> np.ndarray:
    return rgb @ np.array([0.299, 0.587, 0.114], dtype=F32)


def contrasting(rng: np.random.Generator, base: np.ndarray, min_delta: float = 0.35) -> np.ndarray:
    """Random colours whose luminance differs from `base`'s by at least `min_delta`."""
    n = base.shape[0]
    other = random_colors(rng, n, sat=(0.0, 1.0), val=(0.0, 1.0))
    lb, lo = luminance(base), luminance(other)
    target = np.where(lb > 0.5, rng.uniform(0.0, max(0.0, 0.5 - min_delta + 0.15), n),
                      rng.uniform(min(1.0, 0.5 + min_delta - 0.15), 1.0, n)).astype(F32)
    target = np.where(lb > 0.5, np.minimum(target, lb - min_delta), np.maximum(target, lb + min_delta))
    target = np.clip(target, 0.0, 1.0)
    # shift the colour so its luminance is the target (grey shift keeps the hue)
    other = other + (target - lo)[:, None]
    return np.clip(other, 0.0, 1.0).astype(F32)


def blur(images: np.ndarray, amount: np.ndarray) -> np.ndarray:
    """Per-image blur: mix of each image with its 3x3 box-filtered version by `amount` in [0, 1]."""
    padded = np.pad(images, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
    s = images.shape[-1]
    box = sum(padded[:, :, i:i + s, j:j + s] for i in range(3) for j in range(3)) / F32(9.0)
    a = np.asarray(amount, dtype=F32).reshape(-1, 1, 1, 1)
    return (images * (1 - a) + box * a).astype(F32)
