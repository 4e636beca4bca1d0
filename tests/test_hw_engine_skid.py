"""SkidBuffer, PingPongBuffer and tagged_skid: every beat once and in order under random stalls on both sides, junk
offered while valid is low never leaks out, one beat per cycle when unstalled, and no
combinational path from the consumer's ready to the producer's."""

import random

import pytest
from amaranth.hdl import Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.engine.skid import PingPongBuffer, SkidBuffer, tagged_skid
from tests.support import run_benches, seed_for

WIDTH = 12


def run(dut, beats, seed, in_stall, out_stall, source=None, sink=None, cycles_out=None, empty=None):
    """Offer ``beats`` on ``source`` (junk on the payload while idle), drain ``sink`` with random
    ready; returns the beats taken (with ``sink.payload`` as read). ``empty``, if given, must be
    low while a beat is offered on ``sink`` and high once everything has left."""
    source = dut.i if source is None else source
    sink = dut.o if sink is None else sink
    rng = random.Random(seed)
    got = []

    async def feed(ctx):
        for beat in beats:
            while rng.random() < in_stall:
                ctx.set(source.valid, 0)
                ctx.set(source.payload, rng.randrange(1 << WIDTH))       # junk: must never come out
                await ctx.tick()
            ctx.set(source.payload, beat)
            ctx.set(source.valid, 1)
            while not (await ctx.tick().sample(source.ready))[2]:
                pass
        ctx.set(source.valid, 0)
        ctx.set(source.payload, rng.randrange(1 << WIDTH))

    async def drain(ctx):
        cycles = 0
        while len(got) < len(beats):
            ready = rng.random() >= out_stall
            ctx.set(sink.ready, ready)
            _, _, valid, payload, is_empty = await ctx.tick().sample(
                sink.valid, sink.payload, sink.valid if empty is None else empty)
            cycles += 1
            assert cycles <= 50 * len(beats) + 100, f"only {len(got)} of {len(beats)} beats came out"
            assert empty is None or not (valid and is_empty), "empty high while a beat is offered"
            if ready and valid:
                got.append(payload)
        if cycles_out is not None:
            cycles_out.append(cycles)
        for _ in range(4):                # nothing more comes out
            ctx.set(sink.ready, 1)
            _, _, valid = await ctx.tick().sample(sink.valid)
            assert not valid
        assert empty is None or ctx.get(empty), "empty low after every beat left"

    run_benches(dut, feed, drain)
    return got


BUFFERS = pytest.mark.parametrize("buffer", [SkidBuffer, PingPongBuffer], ids=lambda b: b.__name__)


@BUFFERS
@pytest.mark.parametrize("in_stall, out_stall", [(0.0, 0.0), (0.3, 0.0), (0.0, 0.5), (0.4, 0.4), (0.1, 0.8)])
def test_every_beat_once_in_order(buffer, in_stall, out_stall):
    rng = random.Random(seed_for(f"skid-{in_stall}-{out_stall}"))
    beats = [rng.randrange(1 << WIDTH) for _ in range(300)]
    dut = buffer(WIDTH)
    got = run(dut, beats, rng.randrange(1 << 30), in_stall, out_stall, empty=dut.empty)
    assert got == beats
    assert got[:-1] + [got[-1] ^ 1] != beats          # the comparison sees one flipped bit


@BUFFERS
def test_full_rate_with_one_cycle_latency(buffer):
    beats = list(range(100))
    cycles = []
    got = run(buffer(WIDTH), beats, 0, 0.0, 0.0, cycles_out=cycles)
    assert got == beats
    assert cycles == [len(beats) + 1]                 # one beat per cycle after one cycle of latency


@BUFFERS
def test_no_path_from_consumer_ready_to_producer_ready(buffer):
    dut = buffer(WIDTH)
    seen = []

    async def bench(ctx):
        ctx.set(dut.i.valid, 1)
        for cycle in range(12):                       # fill with the consumer stalled, then drain
            before = ctx.get(dut.i.ready)
            ctx.set(dut.o.ready, 1)
            after_high = ctx.get(dut.i.ready)
            ctx.set(dut.o.ready, 0)
            after_low = ctx.get(dut.i.ready)
            seen.append((before, after_high, after_low))
            ctx.set(dut.o.ready, cycle >= 6)
            await ctx.tick()

    run_benches(dut, bench)
    assert all(b == h == lo for b, h, lo in seen), seen
    assert {s[0] for s in seen} == {0, 1}             # i.ready did fall (the buffer filled) and rise


class TaggedHarness(wiring.Component):
    i: In(stream.Signature(WIDTH))
    o: Out(stream.Signature(WIDTH + 1))              # beat with its tag on top
    empty: Out(1)                                    # the buffer's ``empty``

    def elaborate(self, platform):
        m = Module()
        src = stream.Signature(WIDTH).create()
        m.d.comb += [src.valid.eq(self.i.valid), src.payload.eq(self.i.payload), self.i.ready.eq(src.ready)]
        out, tag, buf = tagged_skid(m, "buf", src, self.i.payload[0] ^ self.i.payload[5])
        m.d.comb += [self.o.valid.eq(out.valid), self.o.payload.eq(out.payload | (tag << WIDTH)),
                     out.ready.eq(self.o.ready), self.empty.eq(buf.empty)]
        return m


def test_tagged_skid_keeps_each_beats_tag():
    rng = random.Random(seed_for("tagged-skid"))
    beats = [rng.randrange(1 << WIDTH) for _ in range(200)]
    dut = TaggedHarness()
    got = run(dut, beats, rng.randrange(1 << 30), 0.3, 0.4, empty=dut.empty)
    assert got == [b | (((b ^ (b >> 5)) & 1) << WIDTH) for b in beats]
