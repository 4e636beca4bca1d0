"""The counter-based generator for stochastic rounding (golden/prng.py).

Known answers come from Random123's kat_vectors; the statistical checks use fixed seeds and
thresholds loose enough (p ≥ 1e-4, 5σ) that they are deterministic, not flaky.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from golden.prng import sr_draws, threefry2x32
from golden.quant import stochastic_round_shift

M32 = 0xFFFFFFFF


# --------------------------------------------------------------------------------------------
# Threefry-2x32 known answers (Random123 kat_vectors: counter c0 c1, key k0 k1 → out)
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rounds,ctr,key,out", [
    (13, (0, 0), (0, 0), (0x9D1C5EC6, 0x8BD50731)),
    (13, (M32, M32), (M32, M32), (0xFD36D048, 0x2D17272C)),
    (13, (0x243F6A88, 0x85A308D3), (0x13198A2E, 0x03707344), (0xBA3E4725, 0xF27D669E)),
    (20, (0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
])
def test_threefry_known_answers(rounds, ctr, key, out):
    x0, x1 = threefry2x32(*ctr, *key, rounds=rounds)
    assert (int(x0), int(x1)) == out
    # the same through broadcast arrays, at every position
    c0 = np.full(5, ctr[0], dtype=np.uint32)
    y0, y1 = threefry2x32(c0, ctr[1], *key, rounds=rounds)
    assert y0.dtype == np.uint32 and y1.dtype == np.uint32
    assert y0.tolist() == [out[0]] * 5 and y1.tolist() == [out[1]] * 5


@pytest.mark.parametrize("pos", [0, 1, 2, 3])
def test_threefry_broadcasts_every_argument(pos):
    """The docstring promises broadcasting: an array in any one position equals scalar calls."""
    args = [5, 6, 7, 8]
    vals = np.array([0, 1, 0x7FFFFFFF, M32], dtype=np.uint32)
    args[pos] = vals
    x0, x1 = threefry2x32(*args)
    want = []
    for v in vals:
        a = [5, 6, 7, 8]
        a[pos] = int(v)
        want.append(tuple(int(w) for w in threefry2x32(*a)))
    assert list(zip(x0.tolist(), x1.tolist())) == want


def test_threefry_default_is_13_rounds():
    assert tuple(map(int, threefry2x32(0, 0, 0, 0))) == (0x9D1C5EC6, 0x8BD50731)


# --------------------------------------------------------------------------------------------
# sr_draws: mapping, determinism, ranges
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [1, 7, 8, 15, 16, 17, 24, 31, 32])
@pytest.mark.parametrize("count", [1, 2, 3, 5, 1001])
def test_sr_draws_indices_agree_and_range(bits, count):
    full = sr_draws(7, 11, 2, count, bits)
    assert full.shape == (count,)
    assert int(full.min()) >= 0 and int(full.max()) < 2**bits
    rng = np.random.default_rng(bits * 1000 + count)
    idx = rng.permutation(count)
    part = sr_draws(7, 11, 2, count, bits, indices=idx)
    np.testing.assert_array_equal(part, full[idx])
    # the same arguments again, and a subset in another order: identical draws
    np.testing.assert_array_equal(sr_draws(7, 11, 2, count, bits), full)
    sub = idx[: max(1, count // 3)][::-1]
    np.testing.assert_array_equal(sr_draws(7, 11, 2, count, bits, indices=sub), full[sub])


def test_sr_draws_count_prefix_independent():
    """An element's draw depends on its index, not on the tensor length (odd counts included)."""
    for bits in (16, 24):
        big = sr_draws(3, 5, 1, 4099, bits)
        for count in (1, 2, 3, 4, 5, 7, 4097):
            np.testing.assert_array_equal(sr_draws(3, 5, 1, count, bits), big[:count])


@pytest.mark.parametrize("bits", [1, 8, 12, 16])
def test_sr_draws_four_lanes_up_to_16_bits(bits):
    seed, step, layer, count = 0xDEADBEEF, 1234, 3, 403
    d = sr_draws(seed, step, layer, count, bits)
    for i in range(count):
        x0, x1 = (int(v) for v in threefry2x32(i // 4, step, seed, layer))
        word64 = (x0 << 32) | x1                       # x0‖x1, high half of x0 first
        half = (word64 >> (16 * (3 - i % 4))) & 0xFFFF
        assert int(d[i]) == half >> (16 - bits), i


@pytest.mark.parametrize("bits", [17, 24, 32])
def test_sr_draws_two_lanes_above_16_bits(bits):
    seed, step, layer, count = 99, 77, 6, 301
    d = sr_draws(seed, step, layer, count, bits)
    for i in range(count):
        words = [int(v) for v in threefry2x32(i // 2, step, seed, layer)]
        assert int(d[i]) == words[i % 2] >> (32 - bits), i


def test_sr_draws_truncation_is_top_bits():
    d16 = sr_draws(1, 2, 3, 1000, 16)
    d32 = sr_draws(1, 2, 3, 1000, 32)
    for b in range(1, 16):
        np.testing.assert_array_equal(sr_draws(1, 2, 3, 1000, b), d16 >> (16 - b))
    for b in range(17, 32):
        np.testing.assert_array_equal(sr_draws(1, 2, 3, 1000, b), d32 >> (32 - b))


@pytest.mark.parametrize("bits", [16, 24])
def test_sr_draws_streams_differ(bits):
    n = 4096
    base = sr_draws(10, 20, 3, n, bits)
    for args in ((11, 20, 3), (10, 21, 3), (10, 20, 4), (2**32 - 1, 20, 3), (10, 2**32 - 1, 3)):
        other = sr_draws(*args, n, bits)
        assert not np.array_equal(other, base), args
        assert np.mean(other == base) < 0.01, args


@pytest.mark.parametrize("kwargs", [dict(bits=0), dict(bits=33), dict(seed=-1), dict(seed=2**32),
                                    dict(step=-1), dict(layer=2**32), dict(count=-1)])
def test_sr_draws_rejects_out_of_range(kwargs):
    args = dict(seed=1, step=2, layer=3, count=10, bits=16)
    args.update(kwargs)
    with pytest.raises(ValueError):
        sr_draws(**args)


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------

N_STAT = 1 << 20


def chi2_tail_probs(x: float, k: int) -> tuple[float, float]:
    """(P[X ≤ x], P[X ≥ x]) for X ~ χ²(k), Wilson–Hilferty normal approximation (fine for k=255)."""
    z = ((x / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    upper = 0.5 * math.erfc(z / math.sqrt(2))
    return 1 - upper, upper


def _chi2_upper_exact_even(x: float, k: int) -> float:
    """P[X ≥ x] for X ~ χ²(k), k even: e^(−x/2)·Σ_{i<k/2} (x/2)^i / i! (exact series)."""
    h = x / 2
    return sum(math.exp(-h + i * math.log(h) - math.lgamma(i + 1)) for i in range(k // 2))


@pytest.mark.parametrize("x", [200.0, 256.0, 300.0, 340.0, 360.0])
def test_chi2_helper_sanity(x):
    # the approximation against the exact series at k = 256 (close to the 255 used below)
    lower, upper = chi2_tail_probs(x, 256)
    exact = _chi2_upper_exact_even(x, 256)
    assert abs(lower + upper - 1) < 1e-12
    assert abs(upper - exact) <= 0.05 * min(exact, 1 - exact), (x, upper, exact)


@pytest.mark.parametrize("bits", [16, 24])
@pytest.mark.parametrize("seed,step,layer", [(0, 0, 0), (12345, 678, 3)])
def test_uniformity_chi_square(bits, seed, step, layer):
    d = sr_draws(seed, step, layer, N_STAT, bits)
    for shift in (bits - 8, 0):            # top 8 bits, and the low 8 bits
        bins = (d >> np.uint32(shift)) & np.uint32(0xFF)
        counts = np.bincount(bins, minlength=256)
        expected = N_STAT / 256
        chi2 = float(np.sum((counts - expected) ** 2) / expected)
        lower, upper = chi2_tail_probs(chi2, 255)
        assert upper > 1e-4 and lower > 1e-4, (bits, shift, chi2)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64) - a.mean()
    b = b.astype(np.float64) - b.mean()
    return float(np.dot(a, b) / math.sqrt(np.dot(a, a) * np.dot(b, b)))


@pytest.mark.parametrize("bits", [16, 24])
def test_serial_correlation_neighbours(bits):
    d = sr_draws(42, 7, 1, N_STAT, bits)
    for lag in (1, 2, 3, 4, 5, 8):         # lags within one hash (lanes) and across hashes
        r = _corr(d[:-lag], d[lag:])
        assert abs(r) < 5 / math.sqrt(N_STAT - lag), (lag, r)


@pytest.mark.parametrize("bits", [16, 24])
def test_serial_correlation_consecutive_steps(bits):
    n = 1 << 18
    prev = sr_draws(42, 0, 1, n, bits)
    for step in (1, 2, 3):
        cur = sr_draws(42, step, 1, n, bits)
        r = _corr(prev, cur)
        assert abs(r) < 5 / math.sqrt(n), (step, r)
        prev = cur
    r = _corr(sr_draws(42, 5, 1, n, bits), sr_draws(42, 5, 2, n, bits))   # neighbouring layers
    assert abs(r) < 5 / math.sqrt(n)


def test_bit_positions_balanced():
    d = sr_draws(2024, 3, 0, N_STAT, 16)
    sigma = 0.5 / math.sqrt(N_STAT)
    for b in range(16):
        mean = float(np.mean((d >> np.uint32(b)) & np.uint32(1)))
        assert abs(mean - 0.5) < 5 * sigma, (b, mean)


N_SR = 1 << 18


@pytest.mark.parametrize("F", [0, 1, 257, 4096, 21845, 32768, 49151, 65535])
@pytest.mark.parametrize("sign", [1, -1])
def test_stochastic_rounding_unbiased(F, sign):
    """Fixed fraction F/2^16 (q = r = 16): the round-up rate matches F/2^16 within 5σ."""
    base = 3
    g = np.full(N_SR, sign * (base * 2**16 + F), dtype=np.int64)
    draws = sr_draws(77, 1000 + F, 2, N_SR, 16)
    dw = stochastic_round_shift(g, 16, draws, 16)
    ups = np.abs(dw) - base
    assert set(np.unique(ups).tolist()) <= {0, 1}
    p = F / 2**16
    rate = float(np.mean(ups))
    sigma = math.sqrt(p * (1 - p) / N_SR)
    if F == 0:
        assert rate == 0
    else:
        assert abs(rate - p) <= 5 * sigma + 1e-12, (F, rate, p)
    assert np.all(np.sign(dw) == sign)


@pytest.mark.parametrize("q,r,frac", [(16, 24, 12345), (20, 16, 0xABCDE), (8, 24, 201), (30, 24, 0x2345678)])
def test_stochastic_rounding_unbiased_other_alignments(q, r, frac):
    """Rate = F/2^r with F = frac·2^(r−q) (q ≤ r) or frac >> (q−r) (q > r, truncation)."""
    F = frac << (r - q) if q <= r else frac >> (q - r)
    g = np.full(N_SR, (5 << q) + frac, dtype=np.int64)
    draws = sr_draws(5, 9, 1, N_SR, r)
    dw = stochastic_round_shift(g, q, draws, r)
    p = F / 2**r
    rate = float(np.mean(dw - 5))
    assert abs(rate - p) <= 5 * math.sqrt(p * (1 - p) / N_SR), (rate, p)
