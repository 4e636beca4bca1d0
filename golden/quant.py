"""WAGE's integer primitives, each defined once (spec §2, §8.3). Hardware mirrors these bit for bit.

All functions take and return int64 NumPy arrays (or Python ints where noted); none uses floating
point.  Conventions: RNE is round-half-to-even; saturation is symmetric at ±(2^(k−1)−1), so the
code −2^(k−1) never appears.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "rne_shift", "rne_div", "saturate", "shift_exponent", "sqrt2_threshold",
    "forward_weights", "quantize_activation", "quantize_error", "quantize_gradient",
    "stochastic_round_shift", "update_weights", "max_abs",
]


def _int(x) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "iub":
        raise TypeError(f"integer array expected, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def rne_shift(x, s: int) -> np.ndarray:
    """Round-half-to-even arithmetic shift: RNE(x / 2^s). For s ≤ 0 an exact left shift.

    q = x >> s (floor), r = x mod 2^s, h = 2^(s−1): q+1 if r > h, q if r < h, q + (q & 1) if r = h.
    Correct for negative x (spec §8.3).
    """
    x = _int(x)
    s = int(s)
    if s <= 0:
        return x << (-s)
    q = x >> s
    r = x & ((1 << s) - 1)
    h = 1 << (s - 1)
    return q + ((r > h) | ((r == h) & (q & 1 == 1)))


def rne_div(num, den: int) -> np.ndarray:
    """RNE(num / den) for integers, den > 0 (used for exact lookup tables such as input scaling)."""
    num = _int(num)
    den = int(den)
    if den <= 0:
        raise ValueError(f"den={den}: must be positive")
    q, r = np.divmod(num, den)             # floor division, 0 ≤ r < den
    twice = 2 * r
    return q + ((twice > den) | ((twice == den) & (q & 1 == 1)))


def saturate(x, k: int) -> np.ndarray:
    """Clip to the symmetric k-bit range ±(2^(k−1)−1)."""
    m = (1 << (k - 1)) - 1
    return np.clip(_int(x), -m, m)


def sqrt2_threshold(n: int) -> int:
    """⌊√2·2^n⌋ = isqrt(2^(2n+1)): the per-exponent constant of the exact Shift rule."""
    return math.isqrt(1 << (2 * n + 1))


def shift_exponent(m: int) -> int:
    """Exact exponent of Shift(m) = 2^round(log2 m) for an integer m > 0 (spec §2.3).

    n = bitlength(m) − 1, plus 1 when m > ⌊√2·2^n⌋ (m² = 2^(2n+1) is impossible, so there are no ties).
    """
    m = int(m)
    if m <= 0:
        raise ValueError(f"shift_exponent needs m > 0, got {m} (an all-zero tensor takes the zero path)")
    n = m.bit_length() - 1
    return n + (m > sqrt2_threshold(n))


def max_abs(x) -> int:
    """max |x| over the whole tensor, as a Python int (0 for an empty tensor)."""
    x = _int(x)
    return max(int(x.max()), -int(x.min())) if x.size else 0     # two reductions, no |x| temporary


def forward_weights(ws, kW: int, kG: int) -> np.ndarray:
    """Forward weight codes Wq = clip(RNE(Ws / 2^(kG−kW)), ±(2^(kW−1)−1)).

    For kW = 2 this is ternary: T = sgn(Ws)·[|Ws| > 2^(kG−2)]; the tie |Ws| = 32 (kG = 8) goes to 0.
    """
    return saturate(rne_shift(ws, kG - kW), kW)


def quantize_activation(p, shift: int, kA: int, relu: bool = True):
    """Q_A on an integer sum P (already pooled): returns (A, relu_mask, sat_mask).

    A = clip(RNE(relu(P) / 2^shift), ±(2^(kA−1)−1)). The saturation mask — whether the gradient
    passes Q_A's clip — is taken on the unquantised value: |relu(P)| ≤ (2^(kA−1)−1)·2^shift
    (spec §4.2, §8.5.5). relu_mask = [P > 0] (strict; None when relu is False).
    """
    p = _int(p)
    limit = ((1 << (kA - 1)) - 1) << shift if shift >= 0 else None
    if relu:
        relu_mask = p > 0
        x = np.where(relu_mask, p, 0)
    else:
        relu_mask = None
        x = p
    a = saturate(rne_shift(x, shift), kA)
    if limit is None:  # negative shift (never with α ≥ 1, kW ≥ 2): compare after the exact shift
        sat_mask = np.abs(x << (-shift)) <= (1 << (kA - 1)) - 1
    else:
        sat_mask = np.abs(x) <= limit
    return a, relu_mask, sat_mask


def quantize_error(d, kE: int):
    """Q_E: E = clip(RNE(D / Shift(max|D|)·2^(kE−1))) with the max over the whole tensor.

    Returns (E, n) with Shift(max|D|) = 2^n at D's scale; for an all-zero tensor (E = 0, None).
    The scale is discarded, as in WAGE (spec §2.6).
    """
    d = _int(d)
    m = max_abs(d)
    if m == 0:
        return np.zeros_like(d), None
    n = shift_exponent(m)
    return saturate(rne_shift(d, n - (kE - 1)), kE), n


def stochastic_round_shift(g, q: int, draws, sr_bits: int) -> np.ndarray:
    """sgn(G)·(⌊|G| / 2^q⌋ + [R < F]) with F the fraction |G| mod 2^q aligned to sr_bits bits.

    F = frac·2^(sr_bits−q) when q ≤ sr_bits, else frac >> (q − sr_bits) (truncation, bias ≤ 2^−sr_bits).
    The comparison is strict, so a zero fraction never rounds up; for q ≤ 0 the result is the exact
    G·2^(−q) whatever R is.

    Computed as one addition: with t = |G| aligned so that its low sr_bits bits are F,
    ⌊|G| / 2^q⌋ + [R < F] = (t + (2^sr_bits − 1 − R)) >> sr_bits, and 2^sr_bits − 1 − R is R with
    its bits inverted — so hardware needs an adder and a shift, no comparator.
    """
    g = _int(g)
    t = np.abs(g)
    shift = sr_bits - q
    if shift >= 0:
        t <<= shift
    else:
        t >>= -shift
    t += (1 << sr_bits) - 1
    t -= np.asarray(draws).reshape(g.shape)
    t >>= sr_bits
    np.negative(t, out=t, where=g < 0)
    return t


def quantize_gradient(g, eta_log2: int, draws, sr_bits: int):
    """Q_G: ΔWs = SR(η·G / Shift(max|G|)) in units of σ(kG) (spec §2.7, §8.2).

    Returns (ΔWs, q) with q = n_G − log2 η the right shift applied; (zeros, None) when G is all zero
    (then no update happens). ``draws``: the R of every element, shaped like G.
    """
    g = _int(g)
    m = max_abs(g)
    if m == 0:
        return np.zeros_like(g), None
    q = shift_exponent(m) - int(eta_log2)
    return stochastic_round_shift(g, q, draws, sr_bits), q


def update_weights(ws, dws, w_clip: int) -> np.ndarray:
    """Ws ← clip(Ws − ΔWs, ±w_clip) (spec §2.8)."""
    return np.clip(_int(ws) - _int(dws), -w_clip, w_clip)
