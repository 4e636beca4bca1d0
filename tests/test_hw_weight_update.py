"""hw/weight_update.py in the Amaranth simulator, bit for bit against golden.quant.

Stored weights are compared with ``golden.quant.update_weights`` and served codes with
``golden.quant.forward_weights``. Every stream gets seeded random stalls (seed printed; override with
WAGE_TEST_SEED); the sinks also check the stream rules on the DUT's outputs (a beat offered and not
taken stays valid with the same payload).
"""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
from amaranth.sim import Simulator

from golden.config import WageConfig
from golden.quant import forward_weights, update_weights
from hw.weight_update import LATENCY_READ, WeightUpdate, dw_bound
from support import seed_for, pack, unpack

pytestmark = pytest.mark.filterwarnings("ignore:.*created but never used")









class Bench:
    """Random-stall sources/sinks around one WeightUpdate plus a reference memory in golden terms."""

    def __init__(self, dut: WeightUpdate, rng: np.random.Generator, stall: float = 0.3):
        self.dut, self.rng, self.stall = dut, rng, stall
        self.ref = np.zeros((dut.depth, dut.lanes), dtype=np.int64)
        self.queues = {n: deque() for n in ("update", "load", "serve_cmd", "readback_cmd")}
        self.sent = {n: 0 for n in self.queues}
        self.got = {"serve": [], "readback": []}
        self.cycle = 0
        self.accept_cycle = {n: [] for n in ("update", "load", "serve_cmd", "readback_cmd", "serve", "readback")}

    # payload encoders
    def enc_update(self, addr, dw):
        d = self.dut
        return int(addr) | (pack(dw, d.dw_width) << d.update_layout["dw"].offset)

    def enc_load(self, addr, w):
        d = self.dut
        return int(addr) | (pack(w, d.w_width) << d.load_layout["w"].offset)

    def enc_cmd(self, start, count):
        return int(start) | (int(count) << self.dut.cmd_layout["count"].offset)

    def dec_serve(self, flat):
        d = self.dut
        return unpack(flat, d.wq_width, d.lanes), (flat >> (d.wq_width * d.lanes)) & 1

    def dec_readback(self, flat):
        d = self.dut
        return unpack(flat, d.w_width, d.lanes), (flat >> (d.w_width * d.lanes)) & 1

    # reference model (golden functions, applied in stream order)
    def ref_update(self, addr, dw):
        if addr < self.dut.depth:
            self.ref[addr] = update_weights(self.ref[addr], np.asarray(dw, dtype=np.int64), self.dut.w_clip)

    def ref_load(self, addr, w):
        if addr < self.dut.depth:
            self.ref[addr] = update_weights(np.asarray(w, dtype=np.int64), 0, self.dut.w_clip)

    # processes
    def _source(self, name):
        stream = getattr(self.dut, name)
        queue = self.queues[name]

        async def proc(ctx):
            while True:
                if queue and self.rng.random() >= self.stall:
                    ctx.set(stream.payload.as_value(), queue.popleft())
                    ctx.set(stream.valid, 1)
                    await ctx.tick().until(stream.ready)
                    ctx.set(stream.valid, 0)
                    self.sent[name] += 1
                    self.accept_cycle[name].append(self.cycle)
                else:
                    await ctx.tick()
        return proc

    def _sink(self, name):
        stream = getattr(self.dut, name)

        async def proc(ctx):
            pending = None
            while True:
                ready = self.rng.random() >= self.stall
                ctx.set(stream.ready, ready)
                _, _, valid, payload = await ctx.tick().sample(stream.valid, stream.payload.as_value())
                if pending is not None:
                    assert valid and payload == pending, f"{name}: beat withdrawn or changed while not taken"
                if valid and ready:
                    self.got[name].append(payload)
                    self.accept_cycle[name].append(self.cycle)
                    pending = None
                else:
                    pending = payload if valid else None
        return proc

    async def _clock(self, ctx):
        while True:
            await ctx.tick()
            self.cycle += 1

    async def wait_sent(self, ctx, name, n):
        while self.sent[name] < n:
            await ctx.tick()

    async def wait_got(self, ctx, name, n):
        while len(self.got[name]) < n:
            await ctx.tick()

    # high-level operations, each returns when done
    async def load(self, ctx, words: dict):
        target = self.sent["load"] + len(words)
        for addr, w in words.items():
            self.queues["load"].append(self.enc_load(addr, w))
            self.ref_load(addr, w)
        await self.wait_sent(ctx, "load", target)

    async def update(self, ctx, beats):
        target = self.sent["update"] + len(beats)
        for addr, dw in beats:
            self.queues["update"].append(self.enc_update(addr, dw))
            self.ref_update(addr, dw)
        await self.wait_sent(ctx, "update", target)

    async def read(self, ctx, kind, start, count):
        """Issue one serve/readback command and return the decoded words (checks ``last``)."""
        base = len(self.got[kind])
        self.queues[f"{kind}_cmd"].append(self.enc_cmd(start, count))
        await self.wait_got(ctx, kind, base + count)
        dec = self.dec_serve if kind == "serve" else self.dec_readback
        words = [dec(f) for f in self.got[kind][base:base + count]]
        assert [last for _, last in words] == [0] * (count - 1) + [1] * (count > 0)
        return np.array([w for w, _ in words], dtype=np.int64).reshape(count, self.dut.lanes)

    def expect_served(self, start, count):
        addrs = [(start + i) % self.dut.depth for i in range(count)]
        return forward_weights(self.ref[addrs], self.dut.config.kW, self.dut.config.kG)

    async def check_all(self, ctx):
        d = self.dut
        got = await self.read(ctx, "readback", 0, d.depth)
        np.testing.assert_array_equal(got, self.ref, err_msg="stored weights differ from golden update_weights")
        got = await self.read(ctx, "serve", 0, d.depth)
        np.testing.assert_array_equal(got, self.expect_served(0, d.depth),
                                      err_msg="served Wq differ from golden forward_weights")


def run_bench(dut, seed_tag, main, stall=0.3, max_cycles=40000):
    bench = Bench(dut, np.random.default_rng(seed_for(seed_tag)), stall)
    bench.done = False

    async def wrapped(ctx, b):
        await main(ctx, b)
        b.done = True
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for name in bench.queues:
        sim.add_testbench(bench._source(name), background=True)
    for name in bench.got:
        sim.add_testbench(bench._sink(name), background=True)
    sim.add_testbench(bench._clock, background=True)

    async def top(ctx):
        await wrapped(ctx, bench)
    sim.add_testbench(top)
    t = 0
    while not bench.done and t < max_cycles:          # sim.run() would hang forever on a stuck DUT
        t += 500
        sim.run_until(t * 1e-8)
    assert bench.done, f"testbench did not finish within {max_cycles} cycles"
    return bench


def _dw_values(dut, rng, n):
    """ΔWs mix: zeros, ±dw_max, port extremes, small random."""
    lo, hi = -(1 << (dut.dw_width - 1)), (1 << (dut.dw_width - 1)) - 1
    pool = np.array([0, 0, 0, dut.dw_max, -dut.dw_max, lo, hi, 1, -1], dtype=np.int64)
    pick = rng.random((n, dut.lanes))
    special = pool[rng.integers(0, len(pool), (n, dut.lanes))]
    small = rng.integers(-dut.dw_max, dut.dw_max + 1, (n, dut.lanes))
    return np.where(pick < 0.35, special, small)


def _addresses(dut, rng, n):
    """Addresses with back-to-back repeats and near neighbours (hazard distances 1..4)."""
    addrs = []
    while len(addrs) < n:
        r = rng.random()
        if addrs and r < 0.3:
            addrs.append(addrs[-1])                                  # same address, back to back
        elif len(addrs) >= 2 and r < 0.5:
            addrs.append(addrs[-int(rng.integers(2, min(5, len(addrs) + 1)))])   # distance 2..4
        elif addrs and r < 0.6:
            addrs.append((addrs[-1] + 1) % dut.depth)
        else:
            addrs.append(int(rng.integers(0, dut.depth)))
    return addrs


def _weights(dut, rng, shape):
    c = dut.w_clip
    special = np.array([c, -c, 0, 32, -32, 31, -31, 33, -33, c - 1, -c + 1], dtype=np.int64)
    special = special[np.abs(special) <= c]
    pick = rng.random(shape)
    return np.where(pick < 0.4, special[rng.integers(0, len(special), shape)],
                    rng.integers(-c, c + 1, shape))


# ---- parameters --------------------------------------------------------------------------------
CFG = WageConfig(net="mlp")


@pytest.mark.parametrize("kwargs, exc, text", [
    (dict(config="2-8-8-8", depth=4), TypeError, "config='2-8-8-8'"),
    (dict(config=CFG, depth=0), ValueError, "depth=0"),
    (dict(config=CFG, depth=-3), ValueError, "depth=-3"),
    (dict(config=CFG, depth=4.0), TypeError, "depth=4.0"),
    (dict(config=CFG, depth=True), TypeError, "depth=True"),
    (dict(config=CFG, depth=4, lanes=0), ValueError, "lanes=0"),
    (dict(config=CFG, depth=4, lanes="2"), TypeError, "lanes='2'"),
    (dict(config=CFG, depth=2, lanes=1, init=[1, 2, 3]), ValueError, "init has shape (3,)"),
    (dict(config=CFG, depth=2, lanes=1, init=[1, 65]), ValueError, "init[1][0]=65"),
    (dict(config=CFG, depth=2, lanes=1, init=[0.5, 1]), TypeError, "init"),
    (dict(config=CFG, depth=4, target="xilinx"), ValueError, "target='xilinx'"),
    (dict(config=CFG, depth=4, target=None), ValueError, "target=None"),
    (dict(config=CFG, depth=2, init=[1, 2], target="ecp5"), ValueError, "init=...: target='ecp5'"),
])
def test_parameters_checked(kwargs, exc, text):
    with pytest.raises(exc) as info:
        WeightUpdate(**kwargs)
    assert text in str(info.value)


def test_ecp5_target_netlist():
    """target="ecp5": the words live in DP16KD blocks with the output register, no inferred memory
    remains, and the duplicated select registers carry hw.netlist.kept names."""
    from amaranth.back import rtlil
    from hw.bram import dp16kd_count
    from hw.netlist import KEEP_SUFFIX
    dut = WeightUpdate(CFG, depth=512, lanes=8, target="ecp5")
    text = rtlil.convert(dut)
    assert text.count("cell \\DP16KD ") == dp16kd_count(8 * 8, 512) == 2
    assert 'parameter \\REGMODE_B "OUTREG"' in text and 'MEMID "\\\\mem"' not in text
    assert text.count(f"s2_upd_0{KEEP_SUFFIX}") and text.count(f"s2_m4_7{KEEP_SUFFIX}")
    generic = rtlil.convert(WeightUpdate(CFG, depth=512, lanes=8))
    assert "DP16KD" not in generic and 'MEMID "\\\\mem"' in generic


def test_widths_from_config():
    d = WeightUpdate(CFG, depth=100, lanes=3)
    assert (d.dw_max, d.dw_width, d.w_width, d.wq_width, d.addr_width) == (12, 5, 8, 2, 7)
    assert d.w_clip == 64 and WeightUpdate(CFG.replace(weight_clip="kG"), 4).w_clip == 127
    big = CFG.replace(lr_schedule=((0, 2.0 ** 16),))
    assert dw_bound(big) == 92682 and WeightUpdate(big, 4).dw_width == 18
    assert dw_bound(CFG.replace(lr_schedule=((0, 0.125),))) == 1
    assert dw_bound(CFG.replace(lr_schedule=((0, 1),))) == 2
    # the bound holds for Q_G's worst case: |η·G/Shift(max|G|)| < √2·η
    import math
    for e in range(-3, 17):
        eta = 2.0 ** e
        assert math.ceil(math.sqrt(2) * eta) == dw_bound(CFG.replace(lr_schedule=((0, eta),)))


# ---- randomised update / serve ----------------------------------------------------------------
@pytest.mark.parametrize("weight_clip", ["kW", "kG"])
@pytest.mark.parametrize("lanes", [1, 3])
def test_random_updates(weight_clip, lanes):
    dut = WeightUpdate(CFG.replace(weight_clip=weight_clip), depth=16, lanes=lanes)

    async def main(ctx, b):
        rng = b.rng
        init = _weights(dut, rng, (dut.depth, lanes))
        await b.load(ctx, {a: init[a] for a in rng.permutation(dut.depth)})
        await b.check_all(ctx)
        for _ in range(6):
            n = int(rng.integers(20, 80))
            await b.update(ctx, list(zip(_addresses(dut, rng, n), _dw_values(dut, rng, n))))
            await b.check_all(ctx)
    run_bench(dut, f"random-{weight_clip}-{lanes}", main)


@pytest.mark.parametrize("weight_clip", ["kW", "kG"])
def test_saturation_both_sides(weight_clip):
    dut = WeightUpdate(CFG.replace(weight_clip=weight_clip), depth=8, lanes=2)
    c, m = dut.w_clip, dut.dw_max

    async def main(ctx, b):
        await b.load(ctx, {0: [c, -c], 1: [c - 1, -c + 1], 2: [0, 0], 3: [c, -c],
                           4: [-128, 127], 5: [127, -127], 6: [32, -32], 7: [33, -33]})
        await b.check_all(ctx)                                   # loads saturate to ±w_clip
        beats = [(0, [-m, m])] * 3 + [(1, [-1, 1]), (1, [-2, 2]), (3, [m, -m])] * 2
        beats += [(2, [m, -m])] * 12 + [(2, [-(1 << (dut.dw_width - 1)), (1 << (dut.dw_width - 1)) - 1])] * 4
        beats += [(6, [0, 0]), (7, [1, -1]), (6, [-1, 1]), (6, [1, -1])]
        await b.update(ctx, beats)
        await b.check_all(ctx)
        assert abs(b.ref).max() == c and (b.ref == c).any() and (b.ref == -c).any()
    run_bench(dut, f"saturate-{weight_clip}", main)


@pytest.mark.parametrize("bits, weight_clip", [
    ((2, 8), "kW"), ((2, 8), "kG"), ((3, 8), "kW"), ((4, 6), "kG"), ((5, 5), "kG"), ((2, 3), "kW")])
def test_forward_codes_exhaustive(bits, weight_clip):
    """Every storable Ws (incl. the ternary tie |Ws| = 32) served once, against forward_weights."""
    kW, kG = bits
    cfg = CFG.replace(kW=kW, kG=kG, kA=8, kE=8, weight_clip=weight_clip)
    values = np.arange(-cfg.w_clip, cfg.w_clip + 1)
    lanes = 4
    values = np.concatenate([values, np.zeros(-len(values) % lanes, dtype=np.int64)])
    dut = WeightUpdate(cfg, depth=len(values) // lanes, lanes=lanes)

    async def main(ctx, b):
        await b.load(ctx, {a: values[a * lanes:(a + 1) * lanes] for a in range(dut.depth)})
        await b.check_all(ctx)
    b = run_bench(dut, f"codes-{kW}-{kG}-{weight_clip}", main, stall=0.2)
    if (kW, kG) == (2, 8):
        assert b.ref.flatten().tolist().count(32) == 1 and b.ref.flatten().tolist().count(-32) == 1


def test_nonpow2_depth_wrap_and_out_of_range():
    dut = WeightUpdate(CFG, depth=6, lanes=2)      # addresses 6, 7 are out of range

    async def main(ctx, b):
        rng = b.rng
        await b.load(ctx, {a: _weights(dut, rng, 2) for a in range(8)})     # 6, 7 dropped
        await b.update(ctx, [(a, _dw_values(dut, rng, 1)[0]) for a in [5, 6, 7, 0, 7, 5, 5]])
        await b.check_all(ctx)
        got = await b.read(ctx, "serve", 4, 6)                              # wraps 4, 5, 0, 1, 2, 3
        np.testing.assert_array_equal(got, b.expect_served(4, 6))
        got = await b.read(ctx, "readback", 5, 7)                           # count > depth repeats
        np.testing.assert_array_equal(got, b.ref[[(5 + i) % 6 for i in range(7)]])
        got = await b.read(ctx, "readback", 7, 2)      # 7 out of range: zeros; then 8 mod 2^3 = 0
        np.testing.assert_array_equal(got, [[0, 0], b.ref[0]])
        assert (await b.read(ctx, "serve", 2, 0)).size == 0                 # count 0: nothing
        got = await b.read(ctx, "serve", 3, 1)
        np.testing.assert_array_equal(got, b.expect_served(3, 1))
    run_bench(dut, "nonpow2", main)


def test_concurrent_streams_disjoint():
    """All four streams at once on disjoint words (updates 0..7, loads 8..15, reads 16..23)."""
    dut = WeightUpdate(CFG, depth=24, lanes=2)

    async def main(ctx, b):
        rng = b.rng
        await b.load(ctx, {a: _weights(dut, rng, 2) for a in range(24)})
        for _ in range(3):
            reads = b.ref[16:].copy()
            base = {k: len(b.got[k]) for k in b.got}
            for k in ("serve", "readback"):
                for _ in range(3):
                    b.queues[f"{k}_cmd"].append(b.enc_cmd(16, 8))
            n = 60
            for addr, dw in zip([a % 8 for a in _addresses(dut, rng, n)], _dw_values(dut, rng, n)):
                b.queues["update"].append(b.enc_update(addr, dw))
                b.ref_update(addr, dw)
            for addr in rng.integers(8, 16, 20):
                w = _weights(dut, rng, 2)
                b.queues["load"].append(b.enc_load(int(addr), w))
                b.ref_load(int(addr), w)
            await b.wait_got(ctx, "serve", base["serve"] + 24)
            await b.wait_got(ctx, "readback", base["readback"] + 24)
            srv = np.array([b.dec_serve(f)[0] for f in b.got["serve"][base["serve"]:]])
            rb = np.array([b.dec_readback(f)[0] for f in b.got["readback"][base["readback"]:]])
            np.testing.assert_array_equal(srv, np.tile(forward_weights(reads, dut.config.kW, dut.config.kG), (3, 1)))
            np.testing.assert_array_equal(rb, np.tile(reads, (3, 1)))
            while b.queues["load"] or b.queues["update"]:
                await ctx.tick()
            await b.check_all(ctx)
    run_bench(dut, "concurrent", main)


def test_full_rate_latency_and_hazards():
    """No stalls: updates at one word per cycle with every hazard distance, except exactly one
    bubble (update.ready low for one cycle) for an update to the address of the update just before
    it; a serve command accepted in the same cycle as the last update (its first read issues one
    cycle later, inside the forwarding window), the documented read latency, and back-to-back
    commands without a gap."""
    depth, lanes = 8, 2
    dut = WeightUpdate(CFG, depth=depth, lanes=lanes)
    rng = np.random.default_rng(seed_for("full-rate"))
    bench = Bench(dut, rng)
    init = _weights(dut, rng, (depth, lanes))
    addrs = [3, 3, 3, 4, 3, 5, 4, 3, 0, 1, 2, 0, 1, 2, 7, 7, 6, 7, 0, 3]
    beats = list(zip(addrs, _dw_values(dut, rng, len(addrs))))
    log = {}

    async def tb(ctx):
        cyc = 0

        async def step(*sig):
            nonlocal cyc
            res = await ctx.tick().sample(*sig)
            cyc += 1
            return res[2:]
        for a in range(depth):
            ctx.set(dut.load.payload.as_value(), bench.enc_load(a, init[a]))
            ctx.set(dut.load.valid, 1)
            (ready,) = await step(dut.load.ready)
            assert ready, "lone load stream must be accepted every cycle"
            bench.ref_load(a, init[a])
        ctx.set(dut.load.valid, 0)
        for i, (a, dw) in enumerate(beats):
            ctx.set(dut.update.payload.as_value(), bench.enc_update(a, dw))
            ctx.set(dut.update.valid, 1)
            if i and a == beats[i - 1][0]:
                # update-after-write bubble: the beat right behind an update to its address waits
                # exactly one cycle
                (ready,) = await step(dut.update.ready)
                assert not ready, f"beat {i} (address {a}) must wait one cycle behind the same address"
            if i == len(beats) - 1:
                ctx.set(dut.serve_cmd.payload.as_value(), bench.enc_cmd(0, depth))
                ctx.set(dut.serve_cmd.valid, 1)
            ready, cmd_ready = await step(dut.update.ready, dut.serve_cmd.ready)
            assert ready, "lone update stream must be accepted every cycle but the bubbles"
            bench.ref_update(a, dw)
        assert cmd_ready
        accepted = cyc - 1
        # second command waits behind the first and must follow without a gap
        ctx.set(dut.update.valid, 0)
        ctx.set(dut.serve_cmd.payload.as_value(), bench.enc_cmd(5, depth))
        ctx.set(dut.serve.ready, 1)
        served, first = [], None
        while len(served) < 2 * depth:
            cmd_ready, valid, payload = await step(dut.serve_cmd.ready, dut.serve.valid,
                                                   dut.serve.payload.as_value())
            if cmd_ready:
                ctx.set(dut.serve_cmd.valid, 0)
            if valid:
                first = cyc - 1 if first is None else first
                served.append((cyc - 1, payload))
        log["latency"] = first - accepted
        log["cycles"] = [c for c, _ in served]
        log["words"] = [bench.dec_serve(p) for _, p in served]
        # readback straight after, also full rate
        ctx.set(dut.readback_cmd.payload.as_value(), bench.enc_cmd(0, depth))
        ctx.set(dut.readback_cmd.valid, 1)
        ctx.set(dut.readback.ready, 1)
        rb = []
        while len(rb) < depth:
            cmd_ready, valid, payload = await step(dut.readback_cmd.ready, dut.readback.valid,
                                                   dut.readback.payload.as_value())
            if cmd_ready:
                ctx.set(dut.readback_cmd.valid, 0)
            if valid:
                rb.append(bench.dec_readback(payload)[0])
        log["readback"] = np.array(rb)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert log["latency"] == LATENCY_READ + 1          # accepted in c, issued in c+1, valid in c+7
    assert log["cycles"] == list(range(log["cycles"][0], log["cycles"][0] + 2 * depth))
    wq = np.array([w for w, _ in log["words"]])
    np.testing.assert_array_equal(wq[:depth], bench.expect_served(0, depth))
    np.testing.assert_array_equal(wq[depth:], bench.expect_served(5, depth))
    assert [l for _, l in log["words"]] == ([0] * (depth - 1) + [1]) * 2
    np.testing.assert_array_equal(log["readback"], bench.ref)


def _issue_trace(dut, sim, trace):
    """Background testbench appending, for every cycle, the issue register's (valid, kind, addr)
    and whether a grant was cancelled by a read-after-write hazard (``dut._issue_hooks``): the
    order in which the operations take effect."""
    valid, op, kill = dut._issue_hooks

    async def proc(ctx):
        while True:
            _, _, v, kind, addr, k = await ctx.tick().sample(valid, op.kind, op.addr, kill)
            trace.append((v, kind, addr, k))
    sim.add_testbench(proc, background=True)


def _read_addresses(dut, commands):
    """Word addresses of read commands in order: start, start + 1, … wrapping depth − 1 → 0, and
    counting on modulo 2^addr_width from an out-of-range start."""
    out = []
    for start, count in commands:
        a = start
        for _ in range(count):
            out.append(a)
            a = 0 if a == dut.depth - 1 else (a + 1) % (1 << dut.addr_width)
    return out


@pytest.mark.parametrize("stalls", [(0.0, 0.3, 0.6, 0.9), (0.1, 0.5, 0.8)])
def test_hazards_all_streams_against_model(stalls):
    """All four streams at once on a few words (depth 5: addresses 5-7 out of range), with seeded
    random stalls on every source and sink (the stall probability redrawn from ``stalls`` every
    61 cycles, so that the streams interleave in many patterns): updates, loads and read words on
    the same address at issue distances 1..6 behind a write (an update right behind a same-address
    write must see a bubble instead).
    A Python model replays the issue order (sampled from the issue register) with the golden
    functions: every update and load takes effect in that order, every read word returns the word
    as of its issue (zero out of range), bit for bit."""
    dut = WeightUpdate(CFG, depth=5, lanes=2)
    rng = np.random.default_rng(seed_for(f"hazards-model-{stalls}"))
    bench = Bench(dut, rng, stalls[0])
    aw_max = 1 << dut.addr_width
    n_upd, n_load, n_cmd = 800, 400, 100

    def addrs(n):
        out = []
        while len(out) < n:
            r = rng.random()
            if out and r < 0.3:
                out.append(out[-1])                                          # distance 1 (same stream)
            elif len(out) >= 2 and r < 0.6:
                out.append(out[-int(rng.integers(2, min(7, len(out) + 1)))])   # distance 2..6
            elif r < 0.65:
                out.append(int(rng.integers(dut.depth, aw_max)))             # out of range
            else:
                out.append(int(rng.integers(0, 2)))                          # two hot words
        return out
    updates = list(zip(addrs(n_upd), _dw_values(dut, rng, n_upd)))
    loads = list(zip(addrs(n_load), _weights(dut, rng, (n_load, dut.lanes))))
    cmds = {k: [(int(rng.choice([0, 1, 2, int(rng.integers(0, aw_max))])), int(rng.integers(1, 8)))
                for _ in range(n_cmd)] for k in ("serve", "readback")}
    for a, dw in updates:
        bench.queues["update"].append(bench.enc_update(a, dw))
    for a, w in loads:
        bench.queues["load"].append(bench.enc_load(a, w))
    for k in cmds:
        for start, count in cmds[k]:
            bench.queues[f"{k}_cmd"].append(bench.enc_cmd(start, count))
    n_words = {k: sum(c for _, c in cmds[k]) for k in cmds}
    trace = []

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for name in bench.queues:
        sim.add_testbench(bench._source(name), background=True)
    for name in bench.got:
        sim.add_testbench(bench._sink(name), background=True)
    _issue_trace(dut, sim, trace)
    done = []

    async def top(ctx):
        cycle = 0
        while (bench.sent["update"] < n_upd or bench.sent["load"] < n_load
               or any(len(bench.got[k]) < n_words[k] for k in n_words)):
            await ctx.tick()
            cycle += 1
            if cycle % 61 == 0:
                bench.stall = float(rng.choice(stalls))
        for _ in range(12):                             # nothing extra may follow
            assert not ctx.get(dut.serve.valid) and not ctx.get(dut.readback.valid)
            await ctx.tick()
        done.append(1)
    sim.add_testbench(top)
    t = 0
    while not done and t < 60000:
        t += 1000
        sim.run_until(t * 1e-8)
    assert done, "testbench did not finish"

    # replay the issue order on a golden memory
    mem = np.zeros((dut.depth, dut.lanes), dtype=np.int64)
    upd, ld = iter(updates), iter(loads)
    issued = {k: [] for k in range(4)}
    expect = {"serve": [], "readback": []}
    ops = [(kind, addr) for v, kind, addr, _ in trace if v]
    for kind, addr in ops:
        issued[kind].append(addr)
        ok = addr < dut.depth
        if kind == 0:
            a, dw = next(upd)
            assert a == addr, "updates issued out of order"
            if ok:
                mem[addr] = update_weights(mem[addr], np.asarray(dw, dtype=np.int64), dut.w_clip)
        elif kind == 1:
            a, w = next(ld)
            assert a == addr, "loads issued out of order"
            if ok:
                mem[addr] = update_weights(np.asarray(w, dtype=np.int64), 0, dut.w_clip)
        else:
            word = mem[addr] if ok else np.zeros(dut.lanes, dtype=np.int64)
            if kind == 2:
                expect["serve"].append(forward_weights(word, dut.config.kW, dut.config.kG))
            else:
                expect["readback"].append(word.copy())
    assert len(issued[0]) == n_upd and len(issued[1]) == n_load
    assert issued[2] == _read_addresses(dut, cmds["serve"])
    assert issued[3] == _read_addresses(dut, cmds["readback"])
    for k, dec in (("serve", bench.dec_serve), ("readback", bench.dec_readback)):
        got = np.array([dec(f)[0] for f in bench.got[k]])
        np.testing.assert_array_equal(got, np.array(expect[k]), err_msg=f"{k} words differ from the model")
        lasts = [dec(f)[1] for f in bench.got[k]]
        assert lasts == [int(i == c - 1) for _, c in cmds[k] for i in range(c)]
    # the hazard rule: no update is issued in the cycle right behind a write to its address
    for t in range(len(trace) - 1):
        (v, kind, addr, _), (v2, kind2, addr2, _) = trace[t], trace[t + 1]
        assert not (v and kind <= 1 and v2 and kind2 == 0 and addr2 == addr), \
            f"cycle {t + 1}: update issued right behind a write to its address {addr}"
    # coverage: a write, then an update, a load or a read word of the same address 1..6 operations
    # later (bubbles not counted), and reads right behind such a write (distance 1 in cycles)
    seen = np.zeros((7, 3), dtype=int)
    for j, (kind, addr) in enumerate(ops):
        if kind > 1:
            continue
        for d in range(1, 7):
            if j + d < len(ops) and ops[j + d][1] == addr:
                seen[d, min(ops[j + d][0], 2)] += 1
    assert (seen[1:] > 0).all(), f"hazard coverage (distance 1..6 x update/load/read):\n{seen[1:]}"
    assert sum(1 for t in range(len(trace) - 1) if trace[t][0] and trace[t][1] <= 1 and trace[t + 1][0]
               and trace[t + 1][1] >= 2 and trace[t + 1][2] == trace[t][2]) > 10, "no read right behind its write"
    assert sum(k for *_, k in trace) > 10, "no read-after-write bubble was exercised"


def test_read_right_behind_write_timing():
    """No stalls, exact cycles: a serve command accepted together with an update of its start word
    (its first word issues right behind that update), a readback accepted together with a load of
    its start word, a read two ops behind its write, and one behind an unrelated write: all four
    without a bubble (latency LATENCY_READ + 1; reads are forwarded the write just ahead), and the
    words read include those writes."""
    depth, lanes = 8, 2
    dut = WeightUpdate(CFG, depth=depth, lanes=lanes)
    rng = np.random.default_rng(seed_for("raw-bubble"))
    bench = Bench(dut, rng)
    log = {}

    async def tb(ctx):
        cyc = 0

        async def step(*sig):
            nonlocal cyc
            res = await ctx.tick().sample(*sig)
            cyc += 1
            return res[2:]

        async def read_after(kind, start, write, write_addr, other_addr):
            """``other`` update one cycle ahead, then ``write`` (update or load) of write_addr in the
            cycle the ``kind`` command (start, 2 words) is accepted; returns (latency, words)."""
            cmd, out = getattr(dut, f"{kind}_cmd"), getattr(dut, kind)
            dw = _dw_values(dut, rng, 2)
            ctx.set(dut.update.payload.as_value(), bench.enc_update(other_addr, dw[0]))
            ctx.set(dut.update.valid, 1)
            (ready,) = await step(dut.update.ready)
            assert ready
            bench.ref_update(other_addr, dw[0])
            ctx.set(dut.update.valid, 0)
            if write == "update":
                ctx.set(dut.update.payload.as_value(), bench.enc_update(write_addr, dw[1]))
                ctx.set(dut.update.valid, 1)
                bench.ref_update(write_addr, dw[1])
            else:
                w = _weights(dut, rng, lanes)
                ctx.set(dut.load.payload.as_value(), bench.enc_load(write_addr, w))
                ctx.set(dut.load.valid, 1)
                bench.ref_load(write_addr, w)
            ctx.set(cmd.payload.as_value(), bench.enc_cmd(start, 2))
            ctx.set(cmd.valid, 1)
            wr, cmd_ready = await step(getattr(dut, write).ready, cmd.ready)
            assert wr and cmd_ready, "write and command must be accepted in the same cycle"
            accepted = cyc - 1
            ctx.set(getattr(dut, write).valid, 0)
            ctx.set(cmd.valid, 0)
            ctx.set(out.ready, 1)
            words, first = [], None
            while len(words) < 2:
                valid, payload = await step(out.valid, out.payload.as_value())
                if valid:
                    first = cyc - 1 if first is None else first
                    words.append(payload)
            ctx.set(out.ready, 0)
            for _ in range(8):
                await step()
            dec = bench.dec_serve if kind == "serve" else bench.dec_readback
            return first - accepted, np.array([dec(p)[0] for p in words])

        await bench.load(ctx, {})                       # (no-op: the RAM starts at zero)
        log["serve_upd"] = await read_after("serve", 5, "update", 5, 2)
        log["serve_upd_ref"] = bench.expect_served(5, 2)
        log["rb_load"] = await read_after("readback", 3, "load", 3, 6)
        log["rb_load_ref"] = bench.ref[[3, 4]].copy()
        log["serve_dist2"] = await read_after("serve", 1, "update", 6, 1)   # word 1 written two ops ahead
        log["serve_dist2_ref"] = bench.expect_served(1, 2)
        log["rb_other"] = await read_after("readback", 0, "update", 4, 7)   # no shared address
        log["rb_other_ref"] = bench.ref[[0, 1]].copy()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    assert log["serve_upd"][0] == LATENCY_READ + 1
    assert log["rb_load"][0] == LATENCY_READ + 1
    assert log["serve_dist2"][0] == LATENCY_READ + 1
    assert log["rb_other"][0] == LATENCY_READ + 1
    for k in ("serve_upd", "rb_load", "serve_dist2", "rb_other"):
        np.testing.assert_array_equal(log[k][1], log[f"{k}_ref"], err_msg=k)


def test_golden_trace_mlp_layer1():
    """s0/l1: load W_before, apply dW, compare with W_after; then serve and compare with s1/l1/Wq."""
    from golden.data import load_dataset
    from golden.trace import make_trace
    cfg = WageConfig(net="mlp", batch_size=16)
    ds = load_dataset("embedded")
    trace = make_trace(cfg, ds.train_images, ds.train_labels, 2)
    lanes = 16
    w_before = trace["s0/l1/W_before"].reshape(-1, lanes)
    dw = trace["s0/l1/dW"].reshape(-1, lanes)
    w_after = trace["s0/l1/W_after"].reshape(-1, lanes)
    wq_next = trace["s1/l1/Wq"].reshape(-1, lanes).astype(np.int64)
    depth = len(w_before)
    dut = WeightUpdate(cfg, depth=depth, lanes=lanes)

    async def main(ctx, b):
        await b.load(ctx, {a: w_before[a] for a in range(depth)})
        await b.update(ctx, [(a, dw[a]) for a in range(depth)])
        got = await b.read(ctx, "readback", 0, depth)
        np.testing.assert_array_equal(got, w_after)
        got = await b.read(ctx, "serve", 0, depth)
        np.testing.assert_array_equal(got, wq_next)
    run_bench(dut, "trace-mlp-l1", main, stall=0.2)
