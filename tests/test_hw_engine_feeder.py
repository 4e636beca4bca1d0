"""Operand feeder (pattern reader + RAM reader + transposer) against the address pattern, with stalls;
its requests: every valid beat's address, word 0 for an invalid beat."""

import random

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from hw.bram import BlockRam
from hw.engine.feeder import INVALID_ADDRESS, OperandFeeder, PatternReader, RamReader
from hw.engine.conv import ConvPattern, Drive
from hw.engine.isa import AddressPattern, RowSel
from hw.engine.slot import slot_payload
from tests.support import pack, run_benches, seed_for


class FeederOnRam(wiring.Component):
    """An OperandFeeder reading a BlockRam through a RamReader; the RAM is written by the bench."""

    def __init__(self, lanes, depth):
        self.lanes, self.depth = lanes, depth
        self.feeder = OperandFeeder(lanes)
        self.ram = BlockRam(8 * lanes, depth)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.feeder, m.submodules.ram = f, ram = self.feeder, self.ram
        m.submodules.reader = rd = RamReader(8 * self.lanes)
        m.d.comb += [rd.req.valid.eq(f.req.valid), rd.req.payload.eq(f.req.payload), f.req.ready.eq(rd.req.ready),
                     f.resp.valid.eq(rd.resp.valid), f.resp.payload.eq(rd.resp.payload),
                     rd.resp.ready.eq(f.resp.ready), ram.r_addr.eq(rd.r_addr), rd.r_data.eq(ram.r_data)]
        return m


def expected_beats(memory, p, lanes):
    """(data lanes, last) per output beat: zero words where invalid, L×L blocks transposed when nr = L."""
    words = [(memory[a % len(memory)] if v else np.zeros(lanes, dtype=np.int64), r)
             for r, (a, v) in zip(range(p.length), p.addresses(lanes))]
    words = [w for w, _ in words]
    beats = []
    per_tile = p.nk * p.nr
    for t in range(p.n1 * p.n2):
        tile = words[t * per_tile:(t + 1) * per_tile]
        if p.nr == lanes:
            for k in range(p.nk):
                block = np.array(tile[k * lanes:(k + 1) * lanes])
                for j in range(lanes):
                    beats.append((list(block[:, j]), int(k == p.nk - 1 and j == lanes - 1)))
        else:
            for k, w in enumerate(tile):
                beats.append((list(w), int(k == p.nk - 1)))
    return beats


@pytest.mark.parametrize("lanes, transposed", [(4, True), (4, False), (8, True), (1, False)])
def test_feeder_matches_the_pattern(lanes, transposed):
    rng = random.Random(seed_for(f"feeder-{lanes}-{transposed}"))
    depth = 64
    memory = np.array([[rng.randint(-128, 127) for _ in range(lanes)] for _ in range(depth)])
    patterns = []
    for i in range(6):
        n1, n2, nk, nr = rng.randint(1, 2), rng.randint(1, 2), rng.randint(1, 3), lanes if transposed else 1
        base, s1, s2, sk, sr = rng.randrange(depth), rng.randrange(20), rng.randrange(9), rng.randrange(5), rng.randrange(4)
        klim = rng.randint(1, 3)
        if i % 3 == 2:                       # a convolution pattern between plain ones: the slot switches kind
            patterns.append(ConvPattern(base=base, s1=s1, s2=s2, n1=n1, n2=n2, nk=nk, nr=nr,
                                        pos_drive=Drive.T1R, pos_radix=(n1, nr), pos_addr=(0, sr),
                                        pos_coord=((0, 0, 0), (0, 0, 0)), tap_drive=Drive.K, tap_radix=(nk,),
                                        tap_addr=(sk,), tap_coord=((1, 0, 0),), coord_lim=(klim, 1, 1)))
        else:
            patterns.append(AddressPattern(base=base, s1=s1, s2=s2, sk=sk, sr=sr, n1=n1, n2=n2, nk=nk, nr=nr,
                                           lim=rng.randrange(2 * lanes + 1), klim=klim,
                                           row_sel=rng.choice([RowSel.T1, RowSel.T2, RowSel.NONE])))
    expected = sum((expected_beats(memory, p, lanes) for p in patterns), [])
    top = FeederOnRam(lanes, depth)
    f = top.feeder
    got = []

    async def load_and_feed(ctx):
        for a in range(depth):
            ctx.set(top.ram.w_en, 1)
            ctx.set(top.ram.w_addr, a)
            ctx.set(top.ram.w_data, pack(memory[a], 8))
            await ctx.tick()
        ctx.set(top.ram.w_en, 0)
        ctx.set(f.transposed, int(transposed))
        for p in patterns:
            ctx.set(f.cmd.payload, slot_payload(p))
            ctx.set(f.cmd.valid, 1)
            while True:
                taken = ctx.get(f.cmd.ready)
                await ctx.tick()
                if taken:
                    break
            ctx.set(f.cmd.valid, 0)

    async def drain(ctx):
        cycles = 0
        while len(got) < len(expected) and cycles < 20000:
            ready = rng.random() >= 0.3
            ctx.set(f.o.ready, ready)
            valid, word, last = ctx.get(f.o.valid), ctx.get(f.o.payload.data), ctx.get(f.o.payload.last)
            await ctx.tick()
            cycles += 1
            if ready and valid:
                got.append(([int(word[i]) for i in range(lanes)], last))

    requests = []

    async def record_requests(ctx):
        async for _, _, valid, ready, addr in ctx.tick().sample(f.req.valid, f.req.ready, f.req.payload):
            if valid and ready:
                requests.append(addr)

    sim = Simulator(top)
    sim.add_clock(1e-6)
    sim.add_testbench(load_and_feed)
    sim.add_testbench(drain)
    sim.add_process(record_requests)
    sim.run()
    assert len(got) == len(expected)
    assert got == [(list(map(int, w)), last) for w, last in expected]
    # one request per beat, in order: a valid beat's address, word 0 (INVALID_ADDRESS) for an invalid one
    want_requests = [a if v else INVALID_ADDRESS for p in patterns
                     for _, (a, v) in zip(range(p.length), p.addresses(lanes))]
    assert requests == want_requests
    assert any(not v for p in patterns for _, (a, v) in zip(range(p.length), p.addresses(lanes)))


class ReaderOnDelayLine(wiring.Component):
    """A PatternReader whose memory answers every request ``latency`` cycles later (word = address),
    as an external memory behind the port does: no back-pressure, a long round trip."""

    def __init__(self, latency, outstanding):
        from amaranth.hdl import unsigned
        self.latency = latency
        self.reader = PatternReader(4, unsigned(32), outstanding=outstanding)
        super().__init__({})

    def elaborate(self, platform):
        from amaranth.hdl import Signal
        m = Module()
        m.submodules.reader = rd = self.reader
        line = [(Signal(name=f"v{i}"), Signal(32, name=f"a{i}")) for i in range(self.latency)]
        m.d.comb += [rd.req.ready.eq(1), rd.resp.valid.eq(line[-1][0]), rd.resp.payload.eq(line[-1][1])]
        m.d.sync += [line[0][0].eq(rd.req.valid), line[0][1].eq(rd.req.payload)]
        m.d.sync += [dst.eq(src) for (dv, da), (sv, sa) in zip(line[1:], line) for dst, src in ((dv, sv), (da, sa))]
        return m


@pytest.mark.parametrize("outstanding", [16, 64])
def test_reader_streams_one_word_per_cycle_when_enough_beats_are_in_flight(outstanding):
    """Behind a 30-cycle round trip a reader streams one word per cycle only with more beats in
    flight than the round trip (the engine's readers behind its external port get EXT_CREDITS);
    the default depth (16) is for the scratchpads and the weight store."""
    beats, latency = 200, 30
    top = ReaderOnDelayLine(latency, outstanding)
    rd = top.reader
    got, overrun = [], []

    async def bench(ctx):
        ctx.set(rd.o.ready, 1)
        ctx.set(rd.cmd.payload, slot_payload(AddressPattern(base=5, sk=1, nk=beats)))
        ctx.set(rd.cmd.valid, 1)
        await ctx.tick().until(rd.cmd.ready)
        ctx.set(rd.cmd.valid, 0)
        cycles = 0
        while len(got) < beats and cycles < 5000:
            if ctx.get(rd.resp.valid) and not ctx.get(rd.resp.ready):
                overrun.append(cycles)               # the delay line cannot wait: a lost word
            if ctx.get(rd.o.valid):
                got.append(ctx.get(rd.o.payload.word))
            await ctx.tick()
            cycles += 1
        top.cycles = cycles

    run_benches(top, bench)
    assert got == list(range(5, 5 + beats)) and not overrun
    if outstanding > latency + 4:
        assert top.cycles <= beats + latency + 8, top.cycles
    else:
        assert top.cycles >= beats * latency // outstanding, top.cycles


def test_reader_refuses_a_bad_depth():
    with pytest.raises(ValueError, match="outstanding=1"):
        PatternReader(4, 8, outstanding=1)
