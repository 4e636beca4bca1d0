"""Tensor operations (golden/ops.py): exact BLAS containers, im2col/col2im, 2×2 max-pool."""

from __future__ import annotations

import numpy as np
import pytest

from golden.ops import col2im, exact_dtype, exact_matmul, im2col, maxpool2, maxpool2_backward


# --------------------------------------------------------------------------------------------
# exact_dtype / exact_matmul
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bound,dtype", [
    (0, np.float32), (2**24 - 1, np.float32), (2**24, np.float64), (2**53 - 1, np.float64),
    (2**53, np.int64), (2**62, np.int64),
])
def test_exact_dtype_thresholds(bound, dtype):
    assert exact_dtype(bound) is dtype


def _int_matmul(a, b):
    return np.asarray(a, dtype=np.int64) @ np.asarray(b, dtype=np.int64)


@pytest.mark.parametrize("k", [1040, 1041, 2048])
def test_exact_matmul_near_float32_threshold(k):
    # ±127 operands: bound 127²·K crosses 2^24 between K = 1040 and 1041
    rng = np.random.default_rng(k)
    a = rng.integers(-127, 128, size=(9, k))
    b = rng.integers(-127, 128, size=(k, 7))
    a[0, :] = 127
    b[:, 0] = 127                               # one output is exactly 127²·K
    got = exact_matmul(a, b)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, _int_matmul(a, b))
    assert int(got[0, 0]) == 127 * 127 * k
    assert exact_dtype(127 * 127 * k) is (np.float32 if k <= 1040 else np.float64)


def test_exact_matmul_float64_needed_where_float32_is_wrong():
    # 127²·1041 = 16790289 is odd and above 2^24: float32 cannot even represent the result
    k = 1041
    a = np.full((2, k), 127, dtype=np.int64)
    b = np.full((k, 3), 127, dtype=np.int64)
    exact = 127 * 127 * k
    assert exact > 2**24 and exact % 2 == 1
    f32 = (a.astype(np.float32) @ b.astype(np.float32)).astype(np.int64)
    assert np.all(f32 != exact)                 # float32 alone would have been wrong
    assert exact_dtype(127 * 127 * k) is np.float64
    np.testing.assert_array_equal(exact_matmul(a, b), np.full((2, 3), exact))
    # minimal case: 2^24 + 1
    a2, b2 = np.array([[1, 1]]), np.array([[2**24], [1]])
    assert int((a2.astype(np.float32) @ b2.astype(np.float32))[0, 0]) == 2**24
    assert int(exact_matmul(a2, b2)[0, 0]) == 2**24 + 1


def test_exact_matmul_near_float64_threshold():
    rng = np.random.default_rng(53)
    m = 2**26 - 1
    for k in (2, 3):                            # (2^26−1)²·2 < 2^53 ≤ (2^26−1)²·3
        a = rng.integers(m - 1000, m + 1, size=(5, k)) * rng.choice([-1, 1], size=(5, k))
        b = rng.integers(m - 1000, m + 1, size=(k, 4)) * rng.choice([-1, 1], size=(k, 4))
        a[0, 0] = m
        b[0, 0] = m
        np.testing.assert_array_equal(exact_matmul(a, b), _int_matmul(a, b))
    assert exact_dtype(m * m * 2) is np.float64 and exact_dtype(m * m * 3) is np.int64
    # beyond 2^53: float64 would round 2^60 + 1, the int64 path does not
    a, b = np.array([[2**30, 1]]), np.array([[2**30], [1]])
    assert int((a.astype(np.float64) @ b.astype(np.float64))[0, 0]) == 2**60
    assert int(exact_matmul(a, b)[0, 0]) == 2**60 + 1


def test_exact_matmul_given_bounds_and_shapes():
    rng = np.random.default_rng(0)
    a = rng.integers(-127, 128, size=(4, 1500))
    b = rng.integers(-1, 2, size=(1500, 6))
    np.testing.assert_array_equal(exact_matmul(a, b, a_max=127, b_max=1), _int_matmul(a, b))
    np.testing.assert_array_equal(exact_matmul(a[0], b), _int_matmul(a[0], b))
    with pytest.raises(ValueError):
        exact_matmul(a, b[:-1])


# --------------------------------------------------------------------------------------------
# im2col / col2im
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape,k,pad", [
    ((2, 3, 6, 5), 3, 0), ((2, 3, 6, 5), 3, 1), ((1, 2, 7, 7), 5, 0), ((1, 2, 7, 7), 5, 2),
    ((3, 1, 4, 4), 1, 0), ((1, 4, 5, 6), 2, 0),
])
def test_im2col_col2im_adjoint(shape, k, pad):
    rng = np.random.default_rng(sum(shape) * 10 + k + pad)
    x = rng.integers(-50, 51, size=shape).astype(np.int64)
    cols = im2col(x, k, pad)
    b, c, h, w = shape
    ho, wo = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    assert cols.shape == (b * ho * wo, c * k * k)
    y = rng.integers(-50, 51, size=cols.shape).astype(np.int64)
    back = col2im(y, shape, k, pad)
    assert back.shape == shape
    assert int(np.sum(cols * y)) == int(np.sum(x * back))


def _direct_conv(x, w, pad):
    b, c, h, wd = x.shape
    o, _, k, _ = w.shape
    xp = np.zeros((b, c, h + 2 * pad, wd + 2 * pad), dtype=np.int64)
    xp[:, :, pad:pad + h, pad:pad + wd] = x
    ho, wo = h + 2 * pad - k + 1, wd + 2 * pad - k + 1
    out = np.zeros((b, o, ho, wo), dtype=np.int64)
    for n in range(b):
        for oc in range(o):
            for i in range(ho):
                for j in range(wo):
                    s = 0
                    for ic in range(c):
                        for di in range(k):
                            for dj in range(k):
                                s += int(xp[n, ic, i + di, j + dj]) * int(w[oc, ic, di, dj])
                    out[n, oc, i, j] = s
    return out


@pytest.mark.parametrize("k,pad", [(3, 0), (3, 1), (5, 2), (2, 0)])
def test_conv_via_im2col_matches_direct(k, pad):
    rng = np.random.default_rng(k * 10 + pad)
    x = rng.integers(-127, 128, size=(2, 3, 6, 7))
    w = rng.integers(-1, 2, size=(4, 3, k, k))
    cols = im2col(x, k, pad)
    prod = exact_matmul(cols, w.reshape(4, -1).T)
    b, _, h, wd = x.shape
    ho, wo = h + 2 * pad - k + 1, wd + 2 * pad - k + 1
    y = prod.reshape(b, ho, wo, 4).transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(y, _direct_conv(x, w, pad))


# --------------------------------------------------------------------------------------------
# maxpool2 / maxpool2_backward (spec §4.2.5: ties go to the first in row-major order)
# --------------------------------------------------------------------------------------------

def _window(vals):
    """A (1, 1, 2, 2) tensor from four values in row-major order."""
    return np.array(vals, dtype=np.int64).reshape(1, 1, 2, 2)


@pytest.mark.parametrize("vals,idx", [
    ([7, 7, 7, 7], 0), ([0, 0, 0, 0], 0), ([-3, -3, -3, -3], 0),
    ([0, 5, 2, 5], 1), ([1, 2, 9, 9], 2), ([1, 2, 3, 9], 3), ([-5, -2, -2, -9], 1),
])
def test_maxpool2_ties_first_row_major(vals, idx):
    pooled, index = maxpool2(_window(vals))
    assert int(pooled[0, 0, 0, 0]) == max(vals)
    assert int(index[0, 0, 0, 0]) == idx
    back = maxpool2_backward(np.array([[[[11]]]], dtype=np.int64), index)
    want = [0, 0, 0, 0]
    want[idx] = 11
    assert back.reshape(-1).tolist() == want


def test_maxpool2_random_against_loops():
    rng = np.random.default_rng(7)
    x = rng.integers(-3, 4, size=(2, 3, 6, 8))      # few levels: many ties
    pooled, index = maxpool2(x)
    e = rng.integers(-127, 128, size=pooled.shape)
    back = maxpool2_backward(e, index)
    assert pooled.shape == (2, 3, 3, 4) and back.shape == x.shape
    for n in range(2):
        for c in range(3):
            for i in range(3):
                for j in range(4):
                    win = [int(x[n, c, 2 * i + a, 2 * j + b]) for a in (0, 1) for b in (0, 1)]
                    first = win.index(max(win))
                    assert pooled[n, c, i, j] == max(win)
                    assert index[n, c, i, j] == first
                    got = [int(back[n, c, 2 * i + a, 2 * j + b]) for a in (0, 1) for b in (0, 1)]
                    want = [0, 0, 0, 0]
                    want[first] = int(e[n, c, i, j])
                    assert got == want
