"""cocotb bench for hw/mac_array.py on Verilator (pytest entry points: ``sim/test_sim_mac_array.py``).

Every result row is compared, in order, as the packed payload integer (C signed lanes, row index,
``last``) by a :class:`sim.streams.Scoreboard`; the expected rows come from NumPy int64. Sources and
sinks insert seeded random stalls and check the stream rules. All randomness derives from
``cocotb.RANDOM_SEED`` (printed by the runner; rerun with ``COCOTB_RANDOM_SEED=<seed>``).

Tests (parameters from ``sim_params()``):

* ``random_tiles`` — ``tiles`` random tiles: K from 1 to ``kmax`` (a few at ``max_reduction`` when it
  is ≤ ``kmax_full``), operands uniform, at the ±127 extremes, all zero or sparse.
* ``random_shapes`` — ``shapes`` random products (M, K, N not multiples of R or C) through
  ``hw.tiling``; the reassembled product is checked against ``golden.ops.exact_matmul`` too.
* ``golden_trace`` — the products of one training step of the golden MLP (batch 16, embedded
  Fashion-MNIST): forward ``s0/l{l}/P`` = A_in·Wqᵀ, error ``s0/l{l}/D`` = E_{l+1}·Wq_{l+1}, gradient
  ``s0/l{l}/G`` = Eᵀ·A_in, as selected by ``products`` (and ``trace_layers``, default all).

``mutate`` = [n, bit] flips one bit of the n-th received row before it is compared: ``random_tiles``
must then fail, and ``mutation_detected`` checks that the scoreboard reports exactly that row and bit.
"""

from __future__ import annotations

import random

import cocotb
import numpy as np
from cocotb.triggers import ReadOnly, RisingEdge

from sim.streams import (Scoreboard, ScoreboardMismatch, StreamSink, StreamSource, pack_lanes, read_int,
                         sim_params, unpack_lanes, wait_reset)


class Harness:
    """Source, sink and scoreboard around the DUT, with the payload packing of MacArray."""

    def __init__(self, dut, p: dict, seed: int, name: str, fail_fast: bool = True):
        self.dut, self.p = dut, p
        self.rows, self.cols, self.mode = p["rows"], p["cols"], p["mode"]
        self.aw, self.bw, self.accw = p["a_width"], p["b_width"], p["acc_width"]
        self.row_width = max(self.rows - 1, 0).bit_length()
        self.sb = Scoreboard(name, log=dut._log, fail_fast=fail_fast)
        self.received = 0
        self.expected_rows = 0
        self.got_rows: list[int] = []                 # every row taken, in order (after any mutation)
        mutate = p.get("mutate")
        dut.clear_error.value = 0

        def check(value: int) -> None:
            if mutate is not None and self.received == mutate[0]:
                value ^= 1 << mutate[1]
            self.received += 1
            self.got_rows.append(value)
            self.sb.compare("results", value)

        self.src = StreamSource(dut.clk, dut.operands__valid, dut.operands__ready, dut.operands__payload,
                                rng=random.Random(seed + 1), stall_probability=p.get("stall", 0.0),
                                name="operands")
        self.sink = StreamSink(dut.clk, dut.results__valid, dut.results__ready, dut.results__payload,
                               rng=random.Random(seed + 2), backpressure_probability=p.get("backpressure", 0.0),
                               callback=check, name="results")

    def beat(self, a_col, b_row, last: bool) -> int:
        if self.mode == "ternary":
            b = pack_lanes([int(w) & 3 for w in b_row], 2)         # two's-complement 2-bit codes
        else:
            b = pack_lanes(b_row, self.bw, signed=True)
        return (pack_lanes(a_col, self.aw, signed=True) | b << (self.rows * self.aw)
                | int(last) << (self.rows * self.aw + self.cols * self.bw))

    def row(self, r: int, values) -> int:
        base = self.cols * self.accw
        return (pack_lanes(values, self.accw, signed=True) | r << base
                | int(r == self.rows - 1) << (base + self.row_width))

    def unpack_row(self, value: int) -> list[int]:
        return unpack_lanes(value & ((1 << (self.cols * self.accw)) - 1), self.cols, self.accw, signed=True)

    def send_tile(self, a: np.ndarray, b: np.ndarray) -> None:
        """a: (K, R) columns, b: (K, C) rows; queue the beats and expect the R result rows."""
        k = a.shape[0]
        self.src.send(self.beat(a[j], b[j], j == k - 1) for j in range(k))
        res = a.T.astype(np.int64) @ b.astype(np.int64)
        for r in range(self.rows):
            self.sb.expect("results", self.row(r, res[r]))
        self.expected_rows += self.rows

    async def finish(self) -> int:
        """Wait for every expected row; check flags and leftovers; return the cycles waited."""
        await self.sink.wait_count(self.expected_rows)
        for _ in range(8):                        # nothing extra may follow
            await RisingEdge(self.dut.clk)
            await ReadOnly()
            assert not read_int(self.dut.results__valid), "results: more rows than expected"
        self.sb.check_empty()
        assert read_int(self.dut.k_overflow) == 0, "k_overflow raised"
        assert read_int(self.dut.operand_error) == 0, "operand_error raised"
        self.dut._log.info("%s; sink saw %d cycles", self.sb.report(), self.sink.cycle)
        return self.sink.cycle


def _operands(rng: np.random.Generator, k: int, n: int, kind: str, ternary: bool):
    if ternary:
        v = rng.integers(-1, 2, size=(k, n))
        if kind == "extreme":
            v = rng.choice([-1, 1], size=(k, n))
        elif kind == "zero":
            v[:] = 0
        return v
    if kind == "extreme":
        return rng.choice([-127, 127], size=(k, n))
    if kind == "zero":
        return np.zeros((k, n), dtype=np.int64)
    v = rng.integers(-127, 128, size=(k, n))
    if kind == "sparse":
        v *= rng.random((k, n)) < 0.2
    return v


def _random_tiles(h: Harness, p: dict, rng: np.random.Generator) -> int:
    """Queue p["tiles"] random tiles; return how many have K = max_reduction."""
    kinds = ["uniform", "uniform", "extreme", "zero", "sparse"]
    kmax, full = p["kmax"], p["max_reduction"]
    n_full = 0
    for t in range(p["tiles"]):
        kind = kinds[int(rng.integers(len(kinds)))]
        u = rng.random()
        if full <= p.get("kmax_full", 0) and (t < 2 or u < 0.002):
            k, n_full = full, n_full + 1
        elif u < 0.15:
            k = 1
        else:
            k = int(rng.integers(1, kmax + 1))
        a = _operands(rng, k, h.rows, kind, False)
        b = _operands(rng, k, h.cols, "extreme" if kind == "extreme" else kind, h.mode == "ternary")
        h.send_tile(a, b)
    return n_full


@cocotb.test()
async def random_tiles(dut):
    p = sim_params()
    seed = cocotb.RANDOM_SEED
    h = Harness(dut, p, seed, "random_tiles")
    await wait_reset(dut)
    n_full = _random_tiles(h, p, np.random.default_rng(seed))
    cycles = await h.finish()
    dut._log.info("random_tiles: %d tiles (%d at K = max_reduction = %d), %d cycles, seed %d",
                  p["tiles"], n_full, p["max_reduction"], cycles, seed)


@cocotb.test()
async def mutation_detected(dut):
    """One bit of one result row is flipped on its way to the scoreboard (``mutate`` = [row, bit]):
    exactly that row must be reported, naming the bit, and the scoreboard must refuse to pass."""
    p = sim_params()
    row, bit = p["mutate"]
    seed = cocotb.RANDOM_SEED
    h = Harness(dut, p, seed, "mutation", fail_fast=False)
    await wait_reset(dut)
    _random_tiles(h, p, np.random.default_rng(seed))
    await h.sink.wait_count(h.expected_rows)
    assert len(h.sb.mismatches) == 1, h.sb.mismatches
    msg = h.sb.mismatches[0]
    assert f"'results' beat {row}:" in msg and f"(bit {bit})" in msg, msg
    try:
        h.sb.check_empty()
    except ScoreboardMismatch as e:
        dut._log.info("scoreboard failed as it must: %s", e)
    else:
        raise AssertionError("the scoreboard passed a flipped bit")


@cocotb.test()
async def random_shapes(dut):
    from golden.ops import exact_matmul
    from hw import tiling

    p = sim_params()
    seed = cocotb.RANDOM_SEED
    h = Harness(dut, p, seed, "random_shapes")
    rng = np.random.default_rng(seed + 7)
    await wait_reset(dut)
    R, C = h.rows, h.cols
    jobs = []
    for _ in range(p["shapes"]):
        m = int(rng.integers(1, 3 * R + 2))
        n = int(rng.integers(1, 3 * C + 2))
        m += (m % R == 0) * (R > 1)               # ragged edges
        n += (n % C == 0) * (C > 1)
        k = int(rng.integers(1, min(p["kmax"], p["max_reduction"]) * 2 + 1))
        a = rng.integers(-127, 128, size=(m, k))
        b = rng.integers(-1, 2, size=(k, n)) if h.mode == "ternary" else rng.integers(-127, 128, size=(k, n))
        chunk = p["max_reduction"] if k > p["max_reduction"] else None
        ts = list(tiling.tiles(a, b, R, C, k_chunk=chunk))
        for t in ts:
            h.send_tile(t.a, t.b)
        jobs.append((a, b, ts))
    await h.finish()
    got_rows, i = h.got_rows, 0                   # reassemble too, independently of the scoreboard
    for a, b, ts in jobs:
        results = []
        for t in ts:
            results.append((t.spec, np.array([h.unpack_row(v) for v in got_rows[i:i + R]])))
            i += R
        got = tiling.assemble(results, a.shape[0], b.shape[1])
        assert np.array_equal(got, exact_matmul(a, b)), f"product {a.shape}·{b.shape} differs"
    dut._log.info("random_shapes: %d products, %d tiles", len(jobs), sum(len(j[2]) for j in jobs))


def golden_mlp_trace():
    """Golden MLP trace at batch 16 on the embedded data set (1 step), cached."""
    from golden.config import WageConfig
    from golden.trace import embedded_trace
    cfg = WageConfig(net="mlp", batch_size=16)
    return cfg, embedded_trace(cfg, 1)


@cocotb.test()
async def golden_trace(dut):
    from hw import tiling

    p = sim_params()
    seed = cocotb.RANDOM_SEED
    h = Harness(dut, p, seed, "golden_trace")
    cfg, tr = golden_mlp_trace()
    await wait_reset(dut)
    R, C = h.rows, h.cols
    jobs = []
    for layer in cfg.layers:
        if layer.index not in p.get("trace_layers", range(len(cfg.layers))):
            continue
        s = f"s0/l{layer.index}"
        prods = tiling.layer_products(cfg, layer, tr[f"{s}/A_in"], tr[f"{s}/Wq"], tr[f"{s}/E"])
        for name in p["products"]:
            if name not in prods:
                continue
            # D recorded at layer l−1 is E_l·Wq_l (golden/model.py)
            label = {"forward": f"{s}/P", "gradient": f"{s}/G", "error": f"s0/l{layer.index - 1}/D"}[name]
            want = tr[label]
            prod = prods[name]
            assert np.array_equal(prod.reference(), want), f"{label}: tiler products disagree with the trace"
            ts = list(tiling.tiles(prod.a, prod.b, R, C, k_chunk=p["max_reduction"]))
            for t in ts:
                h.send_tile(t.a, t.b)
            jobs.append((label, prod, ts, want))
    await h.finish()
    got_rows, i = h.got_rows, 0
    for label, prod, ts, want in jobs:
        results = []
        for t in ts:
            results.append((t.spec, np.array([h.unpack_row(v) for v in got_rows[i:i + R]])))
            i += R
        m, n, _ = prod.shape
        got = prod.finish(tiling.assemble(results, m, n))
        assert np.array_equal(got, want), f"{label}: DUT result differs from the golden trace"
        dut._log.info("golden_trace: %s %s bit-exact (%d tiles)", label, want.shape, len(ts))
