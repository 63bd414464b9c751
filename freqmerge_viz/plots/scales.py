"""Scales a person can read: robust colour limits for spectra, exact zeros marked, accuracy in percent.

Pure numpy functions shared by the static figures and the explorers, so that a spectrum or
an accuracy looks the same in an exported PNG and in a notebook.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..stats import binomial_se, mean_se, within_noise  # noqa: F401  (re-exported: the scales' statistics)

ZERO_RELATIVE = 1e-4
"""An amplitude at most this fraction of the largest one in its matrix counts as zero. A true
zero computed in float32 (a sum of training updates that cancels) comes out near 1e-6 of the
largest amplitude; the smallest genuine amplitudes of the demo zoo's task vectors are above
5e-3 of it."""

ZERO_COLOR = "#bdbdbd"
"""Colour of exactly-zero bins in every spectrum picture (drawn as missing values)."""


@dataclass(frozen=True)
class SpectrumImage:
    """A log-amplitude picture: ``values`` = ln|F| with NaN where |F| is zero (see
    :data:`ZERO_RELATIVE`), colour limits ``vmin``/``vmax`` (percentiles of the finite values),
    and where the zeros lie."""

    values: np.ndarray
    vmin: float
    vmax: float
    zero: np.ndarray
    zero_rows: tuple[int, ...]
    zero_cols: tuple[int, ...]

    @property
    def zero_fraction(self) -> float:
        """Share of bins that are exactly zero, in [0, 1]."""
        return float(self.zero.mean()) if self.zero.size else 0.0

    def caption(self, row_label: str = "η", col_label: str = "γ", center: tuple[int, int] | None = None) -> str:
        """One sentence saying what the grey bins are ('' when there are none).

        `center` is the (row, column) index of DC in a centred spectrum; rows and columns that
        are entirely zero are named by their frequency relative to it.
        """
        if not self.zero.any():
            return ""
        parts = []
        cy, cx = center if center is not None else (0, 0)
        if self.zero_rows:
            parts.append(f"{row_label} = " + ", ".join(str(r - cy) for r in self.zero_rows[:3])
                         + (" …" if len(self.zero_rows) > 3 else "") + (" row" if len(self.zero_rows) == 1 else " rows"))
        if self.zero_cols:
            parts.append(f"{col_label} = " + ", ".join(str(c - cx) for c in self.zero_cols[:3])
                         + (" …" if len(self.zero_cols) > 3 else "") + (" column" if len(self.zero_cols) == 1 else " columns"))
        where = f" ({'; '.join(parts)})" if parts else ""
        return (f"grey: |F| = 0 to float precision in {100 * self.zero_fraction:.1f}% of bins{where}, "
                "outside the colour scale")


def spectrum_image(amplitude: np.ndarray, low_percentile: float = 1.0, high_percentile: float = 99.5) -> SpectrumImage:
    """ln of amplitude ``[H, W]`` (or ``[..., H, W]``) with exact zeros as NaN and robust limits.

    Colour limits are the `low_percentile` and `high_percentile` of the finite log values, so
    one zero bin (ln 0 = −∞) or one huge DC value cannot wash out the rest. Rows and columns
    are reported as zero when every bin in them is (over all leading dimensions).
    """
    amplitude = np.asarray(amplitude, dtype=np.float64)
    largest = float(np.max(amplitude)) if amplitude.size else 0.0
    zero = amplitude <= ZERO_RELATIVE * largest if largest > 0 else np.ones(amplitude.shape, dtype=bool)
    with np.errstate(divide="ignore"):
        values = np.where(zero, np.nan, np.log(np.where(zero, 1.0, amplitude)))
    finite = values[np.isfinite(values)]
    if finite.size:
        vmin, vmax = (float(v) for v in np.percentile(finite, [low_percentile, high_percentile]))
        if not vmax > vmin:
            vmin, vmax = float(finite.min()), float(finite.max()) + 1e-9
    else:
        vmin, vmax = 0.0, 1.0
    plane = zero.reshape(-1, *zero.shape[-2:]).all(axis=0) if zero.ndim >= 2 else zero[None]
    rows = tuple(int(i) for i in np.flatnonzero(plane.all(axis=1)))
    cols = tuple(int(i) for i in np.flatnonzero(plane.all(axis=0)))
    return SpectrumImage(values, vmin, vmax, zero, rows, cols)


def as_percent(fraction) -> float | np.ndarray:
    """A fraction in [0, 1] as a percentage (×100); arrays stay arrays."""
    value = np.asarray(fraction, dtype=np.float64) * 100.0
    return float(value) if value.ndim == 0 else value


def sample_note(tasks: int, images, split: str = "test", bars: str = "bars") -> str:
    """What an accuracy error bar rests on, e.g. ``"mean over 8 tasks × 300 test images; bars ±1 SE
    (binomial)"``; `images` may be one count or one per task (then shown as a range)."""
    counts = sorted({int(n) for n in np.atleast_1d(np.asarray(images))})
    shown = f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]}"
    where = f"mean over {tasks} tasks × {shown} {split} images" if tasks > 1 else f"{shown} {split} images"
    return f"{where}; {bars} ±1 SE (binomial)"


def plus_minus(error: float) -> str:
    """`` ± 1.2`` for a known standard error (percentage points), `` ± ?`` for an unknown one."""
    return f" ± {error:.1f}" if np.isfinite(error) else " ± ?"
