"""Independent numpy transcriptions of the definitions in METHOD_NOTES.md (no library code)."""

from __future__ import annotations

import numpy as np


def official_filter_numpy(matrix: np.ndarray, ratio: float) -> np.ndarray:
    """The authors' filter: unshifted fft2, keep bins within ratio·min(H, W) of (H//2, W//2)."""
    h, w = matrix.shape
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    keep = np.sqrt((rows - h // 2) ** 2 + (cols - w // 2) ** 2) <= ratio * min(h, w)
    return np.fft.ifft2(np.fft.fft2(matrix) * keep).real
