"""hw/mac_array.py in the Amaranth simulator, bit for bit against NumPy int64 / golden.ops.exact_matmul.

Small arrays (1×1, 2×3, 3×2, 4×4) in both modes: operands at the extremes, K = 1 and
K = max_reduction, random shapes that are not multiples of R or C through ``hw.tiling``, random
stalls on both streams (seed printed; override with WAGE_TEST_SEED), the cycle model of
``hw.tiling.ArrayTiming`` checked cycle for cycle, the K-overflow flag, and parameter validation.
The sink also checks the stream rules on ``results`` (a beat offered and not taken stays valid with
the same payload).
"""

from __future__ import annotations


import numpy as np
import pytest
from amaranth.back import rtlil
from amaranth.sim import Simulator

from golden.config import WageConfig
from golden.ops import exact_matmul
from hw import tiling
from hw.mac_array import MULT18X18D_PARAMETERS, MacArray
from support import seed_for, pack, unpack

pytestmark = pytest.mark.filterwarnings("ignore:.*created but never used")

CFG = WageConfig()
GEOMETRIES = [(1, 1), (2, 3), (3, 2), (4, 4)]
MODES = ["int8", "ternary"]








class Bench:
    """Drive tiles into a MacArray with seeded random stalls; collect result rows and cycles.

    ``in_stall``: probability that the source idles in a cycle where it could start a beat;
    ``out_stall``: probability that ``results.ready`` is low in a cycle; ``out_pause``: results are
    not taken at all during the first ``out_pause`` cycles.
    """

    def __init__(self, dut: MacArray, rng=None, in_stall=0.0, out_stall=0.0, out_pause=0, max_cycles=None):
        self.dut, self.rng = dut, rng or np.random.default_rng(0)
        self.in_stall, self.out_stall, self.out_pause = in_stall, out_stall, out_pause
        self.max_cycles = max_cycles
        self.last_cycles: list[int] = []        # cycle in which each last beat was accepted
        self.row_cycles: list[int] = []         # cycle in which each result row was taken
        self.ready_low_on_last = 0              # cycles a last beat was offered and refused
        self.k_overflow = self.operand_error = self.overrun = None

    def _beat(self, a_col, b_row, last) -> int:
        d = self.dut
        if d.mode == "ternary":
            b_row = [MacArray.ternary_code(w) for w in b_row]
        return (pack(a_col, d.a_width) | pack(b_row, d.b_width) << (d.rows * d.a_width)
                | int(last) << (d.rows * d.a_width + d.cols * d.b_width))

    def run(self, tile_list) -> list[np.ndarray]:
        d, rng = self.dut, self.rng
        beats = [(self._beat(a, b, last), last) for t in tile_list for a, b, last in t.beats()]
        n_rows = d.rows * len(tile_list)
        if self.max_cycles is None:             # generous: a lost row must fail fast, not hang
            self.max_cycles = self.out_pause + 12 * (len(beats) + n_rows + 2 * (d.rows + d.cols) * len(tile_list)) + 200
        rows: list[tuple[int, int, list[int]]] = []
        aw = d.accumulator_width
        row_width = max(d.rows - 1, 0).bit_length()

        async def source(ctx):
            i, cycle, presenting = 0, 0, False
            while i < len(beats):
                if not presenting and (self.in_stall == 0 or rng.random() >= self.in_stall):
                    ctx.set(d.operands.payload.as_value(), beats[i][0])
                    ctx.set(d.operands.valid, 1)
                    presenting = True
                elif not presenting:
                    ctx.set(d.operands.valid, 0)
                _, _, ready = await ctx.tick().sample(d.operands.ready)
                if presenting and ready:
                    if beats[i][1]:
                        self.last_cycles.append(cycle)
                    i += 1
                    presenting = False
                elif presenting and beats[i][1]:
                    self.ready_low_on_last += 1
                cycle += 1
                assert cycle < self.max_cycles, "source: cycle limit"
            ctx.set(d.operands.valid, 0)

        async def sink(ctx):
            cycle, held = 0, None
            while len(rows) < n_rows:
                rdy = cycle >= self.out_pause and (self.out_stall == 0 or rng.random() >= self.out_stall)
                ctx.set(d.results.ready, rdy)
                _, _, valid, payload = await ctx.tick().sample(d.results.valid, d.results.payload.as_value())
                if held is not None:
                    assert valid and payload == held, f"results: beat changed/dropped before taken (cycle {cycle})"
                if valid and rdy:
                    data = unpack(payload, aw, d.cols)
                    row = (payload >> (aw * d.cols)) & ((1 << row_width) - 1)
                    last = (payload >> (aw * d.cols + row_width)) & 1
                    rows.append((row, last, data))
                    self.row_cycles.append(cycle)
                    held = None
                else:
                    held = payload if valid else None
                cycle += 1
                assert cycle < self.max_cycles, "sink: cycle limit"
            ctx.set(d.results.ready, 0)
            for _ in range(4):                   # nothing more may appear
                _, _, valid = await ctx.tick().sample(d.results.valid)
                assert not valid, "results: more rows than tiles·R"
            self.k_overflow = ctx.get(d.k_overflow)
            self.operand_error = ctx.get(d.operand_error)
            self.overrun = ctx.get(d.overrun)

        sim = Simulator(d)
        sim.add_clock(1e-8)
        sim.add_testbench(source)
        sim.add_testbench(sink)
        sim.run()
        assert self.overrun == 0, "result FIFO written while full"
        out = []
        for t in range(len(tile_list)):
            chunk = rows[t * d.rows:(t + 1) * d.rows]
            assert [r for r, _, _ in chunk] == list(range(d.rows)), f"tile {t}: row indices {chunk}"
            assert [l for _, l, _ in chunk] == [0] * (d.rows - 1) + [1], f"tile {t}: last flags"
            out.append(np.array([data for _, _, data in chunk], dtype=np.int64))
        return out


def _tile(a: np.ndarray, b: np.ndarray, rows: int, cols: int) -> tiling.Tile:
    """One explicit tile: a (K, R) columns, b (K, C) rows."""
    k = a.shape[0]
    spec = tiling.TileSpec(0, 0, 0, 0, rows, cols, k, k)
    return tiling.Tile(spec, np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64))


def _check_tiles(tile_list, results):
    assert len(results) == len(tile_list)
    for n, (t, got) in enumerate(zip(tile_list, results)):
        want = t.a.T @ t.b                      # int64
        assert np.array_equal(got, want), f"tile {n} (K={t.k}):\nwant\n{want}\ngot\n{got}"


# ---------------------------------------------------------------------------------------------
# Parameters and widths
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,exc,text", [
    (dict(rows=0), ValueError, "rows=0"),
    (dict(rows=-2), ValueError, "rows=-2"),
    (dict(cols="4"), TypeError, "cols='4': must be a positive integer"),
    (dict(rows=True), TypeError, "rows=True"),
    (dict(rows=2.0), TypeError, "rows=2.0"),
    (dict(mode="int4"), ValueError, "mode='int4'"),
    (dict(max_reduction=0), ValueError, "max_reduction=0"),
    (dict(max_reduction="8"), TypeError, "max_reduction='8'"),
    (dict(target="xilinx"), ValueError, "target='xilinx'"),
    (dict(config={"kW": 2}), TypeError, "config="),
    (dict(config=WageConfig(kW=4), mode="ternary"), ValueError, "kW=4"),
    (dict(a_width=1), ValueError, "a_width=1"),
    (dict(b_width=19), ValueError, "b_width=19"),
    (dict(mode="ternary", b_width=8), ValueError, "b_width=8"),
])
def test_parameters_are_validated_eagerly(kwargs, exc, text):
    args = dict(config=CFG, rows=2, cols=2, max_reduction=16)
    args.update(kwargs)
    config, rows, cols = args.pop("config"), args.pop("rows"), args.pop("cols")
    with pytest.raises(exc, match=f"^{text}" if not text.startswith("kW") else text):
        MacArray(config, rows, cols, **args)


def test_max_reduction_is_required():
    with pytest.raises(TypeError):
        MacArray(CFG, 2, 2)                      # noqa: the user's contract, no silent default


def test_int8_mode_serves_wider_weights():
    dut = MacArray(WageConfig(kW=4, kG=8), 2, 2, max_reduction=10)
    assert dut.a_width == dut.b_width == 8
    dut = MacArray(WageConfig(kW=12, kA=8, kE=8, kG=12), 2, 2, max_reduction=10)
    assert dut.a_width == dut.b_width == 12


def test_accumulator_width_formula():
    # bits = bit_length(max|a|·max|b|·K) + 1 with symmetric codes: max|a| = 127, max|b| = 127 or 1
    assert MacArray(CFG, 1, 1, mode="ternary", max_reduction=4608).accumulator_width == 21   # spec §8.2
    assert MacArray(CFG, 1, 1, mode="ternary", max_reduction=8192).accumulator_width == 21   # spec §8.2
    assert MacArray(CFG, 1, 1, max_reduction=128).accumulator_width == 22                  # FC gradient
    assert MacArray(CFG, 1, 1, max_reduction=2**17).accumulator_width == 32              # spec: int32
    assert MacArray(CFG, 1, 1, max_reduction=1).accumulator_width == 15
    for mode, bmax in (("int8", 127), ("ternary", 1)):
        for k in (1, 5, 100, 4097, 2**17):
            w = MacArray(CFG, 1, 1, mode=mode, max_reduction=k).accumulator_width
            assert 127 * bmax * k <= 2**(w - 1) - 1       # fits
            assert 127 * bmax * k > 2**(w - 2) - 1        # and no bit is wasted
    assert tiling.accumulator_bits(8, 8, 2**17) == 32 and tiling.accumulator_bits(8, 2, 8192) == 21


def test_lenet5_batch128_accumulator_widths():
    cfg = WageConfig(net="lenet5", batch_size=128)
    red = tiling.max_reductions(cfg)
    assert red == {"forward": 1024, "error": 512, "gradient": 128 * 24 * 24}
    fwd = MacArray(cfg, 8, 8, mode="ternary", max_reduction=red["forward"])
    err = MacArray(cfg, 8, 8, mode="ternary", max_reduction=red["error"])
    grad = MacArray(cfg, 8, 8, mode="int8", max_reduction=red["gradient"])
    assert (fwd.accumulator_width, err.accumulator_width, grad.accumulator_width) == (18, 17, 32)


# ---------------------------------------------------------------------------------------------
# Simulation
# ---------------------------------------------------------------------------------------------

def _extreme_tiles(rows, cols, mode, kmax, rng):
    bmax = 1 if mode == "ternary" else 127
    bvals = [-1, 0, 1] if mode == "ternary" else [-127, -126, -1, 0, 1, 127]
    full = lambda k, v, n: np.full((k, n), v, dtype=np.int64)
    ts = [
        _tile(full(kmax, 127, rows), full(kmax, bmax, cols), rows, cols),     # +bound, K = max_reduction
        _tile(full(kmax, -127, rows), full(kmax, -bmax, cols), rows, cols),   # −127 × −127: +bound
        _tile(full(kmax, 127, rows), full(kmax, -bmax, cols), rows, cols),    # −bound
        _tile(full(1, 0, rows), full(1, 0, cols), rows, cols),                # all zero, K = 1
        _tile(full(1, -127, rows), full(1, bmax, cols), rows, cols),          # K = 1
        _tile(full(3, 0, rows), full(3, bmax, cols), rows, cols),             # zero A
        _tile(full(3, -127, rows), full(3, 0, cols), rows, cols),             # zero B
    ]
    for k in (1, 2, kmax, kmax, 5):
        ts.append(_tile(rng.choice([-127, -126, -1, 0, 1, 126, 127], size=(k, rows)),
                        rng.choice(bvals, size=(k, cols)), rows, cols))
    a = rng.integers(-127, 128, size=(kmax, rows))                           # mixed signs at the bound
    ts.append(_tile(a, np.sign(a[:, :1]) * bmax * np.ones((1, cols), dtype=np.int64), rows, cols))
    return ts


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rows,cols", GEOMETRIES)
def test_extremes_bit_exact(rows, cols, mode):
    rng = np.random.default_rng(seed_for(f"extremes-{rows}x{cols}-{mode}"))
    kmax = 20
    dut = MacArray(CFG, rows, cols, mode=mode, max_reduction=kmax)
    ts = _extreme_tiles(rows, cols, mode, kmax, rng)
    bench = Bench(dut, rng, in_stall=0.2, out_stall=0.3)
    results = bench.run(ts)
    _check_tiles(ts, results)
    bound = 127 * (1 if mode == "ternary" else 127) * kmax
    assert results[0].min() == bound and results[1].min() == bound and results[2].max() == -bound
    assert bound <= 2 ** (dut.accumulator_width - 1) - 1
    assert bench.k_overflow == 0 and bench.operand_error == 0


@pytest.mark.parametrize("mode", MODES)
def test_most_negative_code_is_flagged(mode):
    """−2^(w−1) (and the reserved ternary code 0b10) are outside the contract: flagged, and with
    headroom the sums are still exact (the reserved ternary code counts as 0)."""
    rng = np.random.default_rng(seed_for(f"minus128-{mode}"))
    dut = MacArray(CFG, 2, 2, mode=mode, max_reduction=20)
    ts = [_tile(np.full((4, 2), 100), rng.integers(-1, 2, size=(4, 2)), 2, 2),
          _tile(np.full((4, 2), -128), np.full((4, 2), -1), 2, 2)]
    if mode == "int8":
        ts.append(_tile(np.full((3, 2), -128), np.full((3, 2), -128), 2, 2))
    bench = Bench(dut, rng)
    results = bench.run(ts)
    _check_tiles(ts, results)
    assert bench.operand_error == 1 and bench.k_overflow == 0
    bench = Bench(MacArray(CFG, 2, 2, mode=mode, max_reduction=20), rng)
    bench.run(ts[:1])
    assert bench.operand_error == 0


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("rows,cols", GEOMETRIES)
def test_random_shapes_through_tiler_with_stalls(rows, cols, mode):
    rng = np.random.default_rng(seed_for(f"shapes-{rows}x{cols}-{mode}"))
    dut = MacArray(CFG, rows, cols, mode=mode, max_reduction=16)
    for trial in range(5):
        m = int(rng.integers(1, 2 * rows + 2))
        n = int(rng.integers(1, 2 * cols + 2))
        k = int(rng.integers(1, 30))
        if trial == 0:                          # at least one ragged edge
            m += (m % rows == 0) * (rows > 1)
            n += (n % cols == 0) * (cols > 1)
        a = rng.integers(-127, 128, size=(m, k))
        b = rng.integers(-1, 2, size=(k, n)) if mode == "ternary" else rng.integers(-127, 128, size=(k, n))
        chunk = 16 if k > 16 else None
        ts = list(tiling.tiles(a, b, rows, cols, k_chunk=chunk))
        bench = Bench(dut, rng, in_stall=0.3, out_stall=0.4)
        results = bench.run(ts)
        got = tiling.assemble([(t.spec, r) for t, r in zip(ts, results)], m, n)
        assert np.array_equal(got, exact_matmul(a, b)), f"trial {trial}: m={m} n={n} k={k}"
        assert bench.k_overflow == 0


@pytest.mark.parametrize("rows,cols,mode", [(1, 1, "int8"), (2, 3, "int8"), (3, 2, "ternary"),
                                            (4, 4, "int8"), (4, 4, "ternary")])
def test_timing_matches_model(rows, cols, mode):
    """No stalls: last beats are accepted and rows leave exactly when ArrayTiming says."""
    rng = np.random.default_rng(seed_for(f"timing-{rows}x{cols}-{mode}"))
    timing = tiling.ArrayTiming(rows, cols, mode)
    dut = MacArray(CFG, rows, cols, mode=mode, max_reduction=40)
    ks = [1, 1, 1, 2, 1, 3, 40, 5, 1, 1, 17, 9, 1, 2, 30, 1, 1, 1, 1, 4]
    bvals = [-1, 0, 1] if mode == "ternary" else list(range(-127, 128))
    ts = [_tile(rng.integers(-127, 128, size=(k, rows)), rng.choice(bvals, size=(k, cols)), rows, cols)
          for k in ks]
    bench = Bench(dut, rng)
    results = bench.run(ts)
    _check_tiles(ts, results)
    lasts = timing.last_beat_cycles(ks)
    assert bench.last_cycles == lasts
    want_rows = [t + timing.result_latency + r for t in lasts for r in range(rows)]
    assert bench.row_cycles == want_rows
    assert bench.row_cycles[-1] + 1 == timing.cycles(ks)
    assert dut.result_latency == cols + 6 + (4 if mode == "int8" else 0) + 1   # one drain stage (R ≤ 4)


def test_full_throughput_for_long_tiles():
    """K ≥ max(R, C) and K + 1 ≥ (latency + R + 1)/4: one beat per cycle, one bubble per tile."""
    timing = tiling.ArrayTiming(4, 4, "int8")
    ks = [12] * 6
    assert timing.last_beat_cycles(ks) == [13 * (i + 1) for i in range(6)]    # 2 start-up cycles
    ks = [1] * 6                                # short tiles: limited by the FIFO and one row per cycle
    lasts = timing.last_beat_cycles(ks)
    assert all(b - a >= 4 for a, b in zip(lasts, lasts[1:]))


@pytest.mark.parametrize("rows,cols,mode", [(3, 2, "int8"), (2, 3, "ternary")])
def test_result_backpressure_stops_the_input_without_loss(rows, cols, mode):
    """The consumer takes nothing for 150 cycles: the array must stop accepting last beats, keep
    every landed row, and deliver all tiles in order afterwards."""
    rng = np.random.default_rng(seed_for(f"pause-{rows}x{cols}-{mode}"))
    dut = MacArray(CFG, rows, cols, mode=mode, max_reduction=8)
    bvals = [-1, 0, 1] if mode == "ternary" else [-127, -3, 0, 5, 127]
    ts = [_tile(rng.integers(-127, 128, size=(k, rows)), rng.choice(bvals, size=(k, cols)), rows, cols)
          for k in rng.integers(1, 9, size=24)]
    bench = Bench(dut, rng, out_pause=150, out_stall=0.5)
    results = bench.run(ts)
    _check_tiles(ts, results)
    assert bench.ready_low_on_last > 100         # the input side stopped
    # tiles 0..3 reserve the 4R FIFO rows; tile 4's last beat waits until the consumer wakes up
    assert bench.last_cycles[3] < 150 <= bench.last_cycles[4]


@pytest.mark.parametrize("mode", MODES)
def test_reset_with_work_in_flight_leaves_no_trace(mode):
    """Reset while beats, flags and finished rows are in flight (consumer stalled): afterwards no
    stale row appears and the next tiles are exact (the mesh's reset tree and start-up delay)."""
    from amaranth.hdl import ClockDomain, Module
    rng = np.random.default_rng(seed_for(f"reset-{mode}"))
    R, C = 3, 4
    dut = MacArray(CFG, R, C, mode=mode, max_reduction=16)
    top = Module()
    top.domains.sync = cd = ClockDomain("sync")
    top.submodules.dut = dut
    bvals = [-1, 0, 1] if mode == "ternary" else list(range(-127, 128))

    def tile(k):
        return _tile(rng.integers(-127, 128, size=(k, R)), rng.choice(bvals, size=(k, C)), R, C)

    before = [tile(int(k)) for k in rng.integers(1, 9, size=4)] + [tile(12)]
    after = [tile(int(k)) for k in rng.integers(1, 9, size=6)]
    packer = Bench(dut)
    beats_before = [packer._beat(a, b, last) for t in before for a, b, last in t.beats()][:-5]
    beats_after = [packer._beat(a, b, last) for t in after for a, b, last in t.beats()]
    state = {"reset_done": False}
    rows = []

    async def source(ctx):
        for phase, beats in (("before", beats_before), ("after", beats_after)):
            for value in beats:
                ctx.set(dut.operands.payload.as_value(), value)
                ctx.set(dut.operands.valid, 1)
                while True:
                    _, _, ready = await ctx.tick().sample(dut.operands.ready)
                    if ready:
                        break
            ctx.set(dut.operands.valid, 0)
            if phase == "before":
                await ctx.tick().repeat(int(rng.integers(0, 6)))
                ctx.set(cd.rst, 1)
                await ctx.tick()
                ctx.set(cd.rst, 0)
                state["reset_done"] = True

    async def sink(ctx):
        aw = dut.accumulator_width
        cycles = 0
        while len(rows) < R * len(after) + 1 and cycles < 3000:
            ready = state["reset_done"]
            ctx.set(dut.results.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(dut.results.valid, dut.results.payload.as_value())
            if valid and ready:
                rows.append(unpack(payload, aw, C))
            cycles += 1

    sim = Simulator(top)
    sim.add_clock(1e-8, domain="sync")
    sim.add_testbench(source)
    sim.add_testbench(sink)
    sim.run()
    want = [list(row) for t in after for row in (t.a.T @ t.b)]
    assert len(rows) == R * len(after), f"{len(rows)} rows after the reset, want {R * len(after)}:\n{rows}\n{want}"
    for n, t in enumerate(after):
        assert np.array_equal(np.array(rows[n * R:(n + 1) * R]), t.a.T @ t.b), f"tile {n} after reset"


def test_k_overflow_flag_is_sticky_and_clearable():
    dut = MacArray(CFG, 2, 2, max_reduction=4)
    rng = np.random.default_rng(seed_for("k-overflow"))
    ok = [_tile(np.full((4, 2), 127), np.full((4, 2), 127), 2, 2)]
    bench = Bench(dut, rng)
    _check_tiles(ok, bench.run(ok))
    assert bench.k_overflow == 0
    # K = 5 > max_reduction: flagged (and the sum still fits here, since it is small)
    bad = [_tile(np.ones((5, 2)), np.ones((5, 2)), 2, 2), _tile(np.ones((2, 2)), np.ones((2, 2)), 2, 2)]
    bench = Bench(MacArray(CFG, 2, 2, max_reduction=4), rng)
    _check_tiles(bad, bench.run(bad))
    assert bench.k_overflow == 1

    # clear_error clears it; a following legal tile does not set it again
    dut = MacArray(CFG, 2, 2, max_reduction=4)
    seen = []

    async def tb(ctx):
        async def send(k):
            for j in range(k):
                ctx.set(dut.operands.payload.as_value(), pack([1, 1], 8) | pack([1, 1], 8) << 16
                        | int(j == k - 1) << 32)
                ctx.set(dut.operands.valid, 1)
                await ctx.tick().until(dut.operands.ready)
            ctx.set(dut.operands.valid, 0)
        ctx.set(dut.results.ready, 1)
        await send(6)
        await ctx.tick()
        seen.append(ctx.get(dut.k_overflow))
        await ctx.tick().repeat(3)
        seen.append(ctx.get(dut.k_overflow))     # sticky
        ctx.set(dut.clear_error, 1)
        await ctx.tick()
        ctx.set(dut.clear_error, 0)
        seen.append(ctx.get(dut.k_overflow))
        await send(4)
        await ctx.tick().repeat(30)
        seen.append(ctx.get(dut.k_overflow))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert seen == [1, 1, 0, 0]


def test_ternary_reserved_code_counts_as_zero():
    dut = MacArray(CFG, 1, 2, mode="ternary", max_reduction=4)
    out = []

    async def tb(ctx):
        ctx.set(dut.results.ready, 1)
        # a = 100; b lanes: 0b10 (reserved) and 0b01 (+1)
        for j in range(2):
            ctx.set(dut.operands.payload.as_value(), 100 | (0b01 << 2 | 0b10) << 8 | int(j == 1) << 12)
            ctx.set(dut.operands.valid, 1)
            await ctx.tick().until(dut.operands.ready)
        ctx.set(dut.operands.valid, 0)
        payload, = await ctx.tick().sample(dut.results.payload.as_value()).until(dut.results.valid)
        out.append(unpack(payload, dut.accumulator_width, 2))
        out.append(ctx.get(dut.operand_error))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert out == [[0, 200], 1]


def test_ecp5_target_instantiates_mult18x18d():
    dut = MacArray(CFG, 2, 3, mode="int8", max_reduction=64, target="ecp5")
    text = rtlil.convert(dut, name="mac")
    assert text.count("cell \\MULT18X18D ") == 6
    for key, value in MULT18X18D_PARAMETERS.items():
        assert f'parameter \\{key} "{value}"' in text
    for key in ("REG_INPUTA_CLK", "REG_INPUTB_CLK", "REG_PIPELINE_CLK", "REG_OUTPUT_CLK"):
        assert MULT18X18D_PARAMETERS[key] == "CLK0"
    tern = rtlil.convert(MacArray(CFG, 2, 3, mode="ternary", max_reduction=64, target="ecp5"), name="mac")
    assert "MULT18X18D" not in tern                 # no multiplier in ternary elements
    gen = rtlil.convert(MacArray(CFG, 2, 3, mode="int8", max_reduction=64), name="mac")
    assert "MULT18X18D" not in gen
