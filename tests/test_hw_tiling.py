"""hw/tiling.py: tile streams for an R×C array reproduce np.matmul and the golden model's three products.

Random shapes (not multiples of R or C, K split into chunks, K = 0), the conv products of
``WageConfig(net="lenet5").layers`` through im2col/col2im, a golden trace, and the cycle model.
Seeds are printed; override with WAGE_TEST_SEED.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from golden import model
from golden.config import WageConfig
from golden.data import load_dataset
from golden.trace import make_trace
from hw import tiling
from support import seed_for





# ---------------------------------------------------------------------------------------------
# Generic tiling
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows,cols", [(1, 1), (2, 3), (3, 2), (4, 4), (8, 8), (16, 16), (5, 7)])
def test_tile_product_matches_matmul_on_random_shapes(rows, cols):
    rng = np.random.default_rng(seed_for(f"shapes-{rows}x{cols}"))
    for _ in range(12):
        m, n, k = (int(x) for x in rng.integers(1, 3 * max(rows, cols) + 3, size=3))
        a = rng.integers(-127, 128, size=(m, k))
        b = rng.integers(-127, 128, size=(k, n))
        chunk = int(rng.integers(1, k + 2)) if rng.random() < 0.5 else None
        got = tiling.tile_product(a, b, rows, cols, k_chunk=chunk)
        assert got.dtype == np.int64
        assert np.array_equal(got, np.matmul(a, b)), (m, n, k, chunk)


def test_tiles_are_zero_padded_in_stream_order():
    a = np.arange(1, 5 * 3 + 1).reshape(5, 3)            # M=5, K=3
    b = np.arange(1, 3 * 4 + 1).reshape(3, 4)            # N=4
    ts = list(tiling.tiles(a, b, 2, 3, k_chunk=2))
    specs = [t.spec for t in ts]
    # row-major over output tiles (3 × 2), K chunks innermost (2 per tile)
    assert [(s.row0, s.col0, s.k0) for s in specs] == [
        (r, c, k) for r in (0, 2, 4) for c in (0, 3) for k in (0, 2)]
    assert [s.k for s in specs] == [2, 1] * 6
    edge = ts[-1]                                        # row block 4 (1 valid row), col block 3 (1 valid col), k0=2
    assert (edge.spec.m, edge.spec.n, edge.spec.k) == (1, 1, 1)
    assert edge.a.tolist() == [[a[4, 2], 0]]             # beat 0: column a[4:6, 2] padded
    assert edge.b.tolist() == [[b[2, 3], 0, 0]]
    beats = list(ts[0].beats())
    assert [last for _, _, last in beats] == [False, True]
    assert beats[0][0].tolist() == a[0:2, 0].tolist() and beats[1][1].tolist() == b[1, 0:3].tolist()
    assert len(ts) == math.ceil(5 / 2) * math.ceil(4 / 3) * math.ceil(3 / 2)


def test_padding_never_changes_results():
    rng = np.random.default_rng(seed_for("padding"))
    a = rng.integers(-127, 128, size=(7, 9))
    b = rng.integers(-127, 128, size=(9, 5))
    ref = a @ b
    for rows, cols in [(4, 4), (8, 8), (3, 7), (16, 2)]:
        for t in tiling.tiles(a, b, rows, cols):
            s = t.spec
            res = tiling.run_tile(t)
            assert np.array_equal(res[:s.m, :s.n], ref[s.row0:s.row0 + s.m, s.col0:s.col0 + s.n])
            assert not res[s.m:].any() and not res[:, s.n:].any()     # padded lanes stay zero


def test_zero_length_reduction_and_tiny_shapes():
    a = np.zeros((3, 0), dtype=np.int64)
    b = np.zeros((0, 2), dtype=np.int64)
    ts = list(tiling.tiles(a, b, 2, 2))
    assert [t.k for t in ts] == [1, 1] and all(not t.a.any() and not t.b.any() for t in ts)
    assert np.array_equal(tiling.tile_product(a, b, 2, 2), np.zeros((3, 2), dtype=np.int64))
    assert np.array_equal(tiling.tile_product([[3]], [[-4]], 4, 4), [[-12]])


def test_input_validation():
    with pytest.raises(ValueError, match="rows=0"):
        tiling.plan_tiles(2, 2, 2, 0, 2)
    with pytest.raises(TypeError, match="cols='2'"):
        tiling.plan_tiles(2, 2, 2, 2, "2")
    with pytest.raises(ValueError, match="k_chunk=0"):
        tiling.plan_tiles(2, 2, 2, 2, 2, k_chunk=0)
    with pytest.raises(ValueError, match="do not match"):
        list(tiling.tiles(np.ones((2, 3)), np.ones((4, 2)), 2, 2))
    with pytest.raises(ValueError, match="integers"):
        list(tiling.tiles(np.full((2, 2), 0.5), np.ones((2, 2)), 2, 2))
    with pytest.raises(ValueError, match="mode='int4'"):
        tiling.ArrayTiming(2, 2, "int4")
    spec = tiling.plan_tiles(3, 3, 1, 2, 2)
    with pytest.raises(ValueError, match="covered by no tile"):
        tiling.assemble([(spec[0], np.zeros((2, 2)))], 3, 3)


# ---------------------------------------------------------------------------------------------
# The three WAGE products
# ---------------------------------------------------------------------------------------------

def _layer_tensors(cfg: WageConfig, layer, batch: int, rng):
    """Random integer tensors at the golden ranges: A_in, ternary Wq, E at P's shape."""
    a_in = rng.integers(0 if layer.index else -127, 128, size=(batch, *layer.in_shape))
    wq = rng.integers(-1, 2, size=layer.weight_shape)
    e = rng.integers(-127, 128, size=(batch, *layer.product_shape)) * (rng.random((batch, *layer.product_shape)) < 0.5)
    return a_in, wq, e


@pytest.mark.parametrize("rows,cols", [(4, 4), (3, 5), (16, 16)])
def test_lenet5_products_match_golden(rows, cols):
    cfg = WageConfig(net="lenet5", batch_size=2)
    rng = np.random.default_rng(seed_for(f"lenet5-{rows}x{cols}"))
    for layer in cfg.layers:
        a_in, wq, e = _layer_tensors(cfg, layer, 2, rng)
        prods = tiling.layer_products(cfg, layer, a_in, wq, e)
        # golden model's own products (exact_matmul / im2col / col2im)
        p_ref, cols_ref = model._product(layer, a_in, wq, cfg.a_max, cfg.wq_max)
        cache = model.LayerCache(a_in, wq, p_ref, None, None, None, None, None, cols_ref)
        g_ref = model._gradient(layer, cache, e, cfg.a_max, cfg.e_max)
        assert np.array_equal(prods["forward"].reference(), p_ref)
        assert np.array_equal(prods["gradient"].reference(), g_ref)
        for name, prod in prods.items():
            m, n, k = prod.shape
            assert np.array_equal(prod.a @ prod.b, np.matmul(prod.a, prod.b))
            chunk = 300 if k > 300 else None
            assert np.array_equal(prod.tiled(rows, cols, chunk), prod.reference()), (layer.index, name)
        if layer.index:
            d_ref = model._propagate(layer, e, wq, cfg.layers[layer.index - 1].out_shape, cfg.e_max, cfg.wq_max)
            assert np.array_equal(prods["error"].reference(), d_ref)
        else:
            assert "error" not in prods


def test_lenet5_im2col_shapes():
    cfg = WageConfig(net="lenet5", batch_size=3)
    rng = np.random.default_rng(seed_for("lenet5-shapes"))
    shapes = {}
    for layer in cfg.layers:
        a_in, wq, e = _layer_tensors(cfg, layer, 3, rng)
        prods = tiling.layer_products(cfg, layer, a_in, wq, e)
        shapes[layer.index] = {k: p.shape for k, p in prods.items()}
    # (M, N, K) per product
    assert shapes[0] == {"forward": (3 * 24 * 24, 32, 25), "gradient": (32, 25, 3 * 24 * 24)}
    assert shapes[1] == {"forward": (3 * 8 * 8, 64, 800), "gradient": (64, 800, 3 * 8 * 8),
                         "error": (3 * 8 * 8, 800, 64)}
    assert shapes[2] == {"forward": (3, 512, 1024), "gradient": (512, 1024, 3), "error": (3, 1024, 512)}
    assert shapes[3] == {"forward": (3, 10, 512), "gradient": (10, 512, 3), "error": (3, 512, 10)}
    assert tiling.max_reductions(WageConfig(net="lenet5")) == {"forward": 1024, "error": 512,
                                                                "gradient": 128 * 576}


def _conv_trace():
    ds = load_dataset("embedded")
    cfg = WageConfig(net="8C5-MP2-16FC-10", input_shape=(1, 28, 28), batch_size=4, seed=3)
    return cfg, make_trace(cfg, ds.train_images, ds.train_labels, 1)


@pytest.mark.parametrize("net", ["mlp", "conv"])
def test_trace_products_through_the_tiler(net):
    """P = A_in·Wqᵀ, D_l = E_{l+1}·Wq_{l+1} and G = Eᵀ·A_in recorded by the golden model."""
    if net == "mlp":
        ds = load_dataset("embedded")
        cfg = WageConfig(net="mlp", batch_size=16)
        tr = make_trace(cfg, ds.train_images, ds.train_labels, 1)
    else:
        cfg, tr = _conv_trace()
    for layer in cfg.layers:
        s = f"s0/l{layer.index}"
        prods = tiling.layer_products(cfg, layer, tr[f"{s}/A_in"], tr[f"{s}/Wq"], tr[f"{s}/E"])
        assert np.array_equal(prods["forward"].tiled(4, 4), tr[f"{s}/P"])
        assert np.array_equal(prods["gradient"].tiled(3, 5, k_chunk=50), tr[f"{s}/G"])
        if layer.index:
            d_prev = tr[f"s0/l{layer.index - 1}/D"]           # D at layer l−1 = E_l·Wq_l
            assert np.array_equal(prods["error"].tiled(5, 3), d_prev)


# ---------------------------------------------------------------------------------------------
# Widths and cycles
# ---------------------------------------------------------------------------------------------

def test_accumulator_bits_and_operand_width():
    assert tiling.accumulator_bits(8, 2, 4608) == 21        # spec §8.2
    assert tiling.accumulator_bits(8, 8, 2**17) == 32       # spec §8.2: int32 at B=128, 32×32 conv
    assert tiling.accumulator_bits(8, 8, 2**18) == 33       # batch 256 overflows int32
    assert tiling.operand_width(WageConfig()) == 8
    assert tiling.operand_width(WageConfig(kW=12, kG=12)) == 12


def test_timing_model():
    t = tiling.ArrayTiming(4, 4, "int8")
    assert (t.product_latency, t.result_latency, t.min_last_interval, t.result_buffer_rows) == (4, 15, 4, 16)
    assert tiling.ArrayTiming(2, 3, "ternary").result_latency == 10
    assert tiling.ArrayTiming(1, 1).min_last_interval == 2
    assert [tiling.ArrayTiming(r, 1).drain_stages for r in (1, 4, 5, 16, 17, 64, 65)] == [1, 1, 2, 2, 3, 3, 4]
    # long tiles stream back to back; the total adds the fill latency and the R result rows once
    # two start-up cycles after reset, one bubble after each last beat
    assert t.last_beat_cycles([20, 20, 20]) == [21, 42, 63]
    assert t.cycles([20, 20, 20]) == 63 + 15 + 4
    # short tiles: one tile per max(R, C) cycles at first, then limited by the 4R-row FIFO
    # (tile 4 waits for tile 0's last row, taken in cycle 2 + 15 + 3, plus the registered credit
    # return and the registered test)
    assert t.last_beat_cycles([1] * 6) == [2, 6, 10, 14, 23, 27]
    assert tiling.estimate_cycles(8, 8, 20, 4, 4) == t.cycles([20] * 4)
    assert tiling.estimate_cycles(8, 8, 40, 4, 4, k_chunk=20) == t.cycles([20] * 8)


def test_lenet5_cycle_estimates_are_consistent():
    cfg = WageConfig(net="lenet5", batch_size=128)
    for layer in cfg.layers:
        for name in ("forward", "gradient"):
            m, n, k = {"forward": (128 * layer.out_positions, layer.out_channels, layer.fan_in),
                       "gradient": (layer.out_channels, layer.fan_in, 128 * layer.out_positions)}[name]
            c8 = tiling.estimate_cycles(m, n, k, 8, 8, "int8" if name == "gradient" else "ternary")
            c16 = tiling.estimate_cycles(m, n, k, 16, 16, "int8" if name == "gradient" else "ternary")
            ideal8 = math.ceil(m / 8) * math.ceil(n / 8) * k
            assert ideal8 <= c8 <= ideal8 * 1.5 + 100          # near one beat per cycle
            assert c16 < c8
