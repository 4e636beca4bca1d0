"""Tensor operations shared by the integer WAGE model and the float32 baseline.

The integer model holds integers in float32/float64 only to reach BLAS; :func:`exact_matmul`
decides the container from a bound proven on the operands, so every partial sum is an integer the
container represents exactly (below 2^24 in float32, 2^53 in float64), whatever order BLAS adds in.
Layout is NCHW; convolutions have stride 1 and symmetric zero padding.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = [
    "FLOAT32_EXACT", "FLOAT64_EXACT", "exact_dtype", "exact_matmul",
    "im2col", "col2im", "maxpool2", "maxpool2_backward",
]

FLOAT32_EXACT = 2 ** 24
FLOAT64_EXACT = 2 ** 53


def exact_dtype(bound: int):
    """The cheapest container in which integers of magnitude ≤ ``bound`` are exact."""
    if bound < FLOAT32_EXACT:
        return np.float32
    if bound < FLOAT64_EXACT:
        return np.float64
    return np.int64


def exact_matmul(a: np.ndarray, b: np.ndarray, a_max: int | None = None, b_max: int | None = None) -> np.ndarray:
    """``a @ b`` for integer-valued arrays, exact, returned as int64.

    Every partial sum is bounded by max|a|·max|b|·K (K the reduction length); that bound picks
    float32, float64 or (beyond 2^53) int64 arithmetic. ``a_max``/``b_max`` may be given when known.
    """
    k = a.shape[-1]
    if b.shape[0] != k:
        raise ValueError(f"matmul shapes {a.shape} and {b.shape} do not match")
    a_max = int(np.max(np.abs(a))) if a_max is None and a.size else int(a_max or 0)
    b_max = int(np.max(np.abs(b))) if b_max is None and b.size else int(b_max or 0)
    bound = a_max * b_max * k
    dtype = exact_dtype(bound)
    return np.matmul(a.astype(dtype, copy=False), b.astype(dtype, copy=False)).astype(np.int64)


def im2col(x: np.ndarray, k: int, pad: int) -> np.ndarray:
    """(B, C, H, W) → (B·Ho·Wo, C·k·k) patches in (c, i, j) order, Ho = H + 2·pad − k + 1."""
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    b, c = x.shape[:2]
    win = sliding_window_view(x, (k, k), axis=(2, 3))          # (B, C, Ho, Wo, k, k)
    ho, wo = win.shape[2:4]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(b * ho * wo, c * k * k)


def col2im(cols: np.ndarray, shape: tuple[int, int, int, int], k: int, pad: int) -> np.ndarray:
    """Adjoint of :func:`im2col`: scatter-add (B·Ho·Wo, C·k·k) patches into a (B, C, H, W) tensor."""
    b, c, h, w = shape
    hp, wp = h + 2 * pad, w + 2 * pad
    ho, wo = hp - k + 1, wp - k + 1
    patches = cols.reshape(b, ho, wo, c, k, k).transpose(0, 3, 4, 5, 1, 2)  # (B, C, k, k, Ho, Wo)
    out = np.zeros((b, c, hp, wp), dtype=cols.dtype)
    for i in range(k):
        for j in range(k):
            out[:, :, i:i + ho, j:j + wo] += patches[:, :, i, j]
    return out[:, :, pad:pad + h, pad:pad + w] if pad else out


def maxpool2(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2×2 stride-2 max-pool of (B, C, H, W), H and W even.

    Returns (pooled, index) with index ∈ {0, 1, 2, 3} the winner in row-major order within the
    window; ties go to the first (spec §4.2.5).
    """
    b, c, h, w = x.shape
    win = x.reshape(b, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(b, c, h // 2, w // 2, 4)
    idx = np.argmax(win, axis=-1)                              # argmax returns the first maximum
    pooled = np.take_along_axis(win, idx[..., None], axis=-1)[..., 0]
    return pooled, idx.astype(np.int8)


def maxpool2_backward(e: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Route each pooled error to its window's arg-max position; the other three get 0."""
    b, c, h2, w2 = e.shape
    win = np.zeros((b, c, h2, w2, 4), dtype=e.dtype)
    np.put_along_axis(win, idx[..., None].astype(np.intp), e[..., None], axis=-1)
    return win.reshape(b, c, h2, w2, 2, 2).transpose(0, 1, 2, 4, 3, 5).reshape(b, c, 2 * h2, 2 * w2)
