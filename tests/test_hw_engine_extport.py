"""The engine's side of the external-memory port: burst coalescing, arbitration, tiered reads and
writes against the external-memory model, with random stalls on every consumer."""

import random

import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from hw.bram import BlockRam
from hw.engine.extmem_model import ExternalMemoryModel
from hw.engine.extport import BurstCoalescer, ExternalPort, SharedReadClient, TieredReader, TieredWriter
from hw.engine.feeder import INVALID_ADDRESS
from hw.engine.feeder import RamReader
from tests.support import run_benches, seed_for

from hw.engine.isa import ADDR_BITS  # noqa: E402  (the engine's; RamReader takes it)


def run(dut, bench, deadline=200_000):
    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run_until(deadline * 1e-8)


def test_coalescer_merges_consecutive_addresses_into_bursts():
    rng = random.Random(seed_for("coalescer"))
    dut = BurstCoalescer(ADDR_BITS, max_burst=4)
    # runs of consecutive addresses of random lengths, then random jumps
    addresses = []
    while len(addresses) < 400:
        start = rng.randrange(1 << 15)
        addresses += list(range(start, start + rng.randint(1, 9)))
    bursts = []

    async def producer(ctx):
        for a in addresses:
            while rng.random() < 0.2:                       # gaps close bursts early
                ctx.set(dut.i.valid, 0)
                await ctx.tick()
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload, a)
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)

    async def consumer(ctx):
        while sum(c for _, c in bursts) < len(addresses):
            ctx.set(dut.o.ready, rng.random() < 0.6)
            _, _, valid, ready, payload = await ctx.tick().sample(dut.o.valid, dut.o.ready, dut.o.payload)
            if valid and ready:
                bursts.append((payload.addr, payload.count))
        for _ in range(10):
            assert not ctx.get(dut.o.valid)
            await ctx.tick()
        assert ctx.get(dut.idle)

    run_benches(dut, producer, consumer, period=1e-8)
    flat = [a + k for a, c in bursts for k in range(c)]
    assert flat == addresses
    assert all(1 <= c <= 4 for _, c in bursts)
    assert max(c for _, c in bursts) == 4
    assert len(bursts) < len(addresses) * 0.6                # it did merge


class Tiers(wiring.Component):
    """Two tiered readers and two tiered writers over two block RAMs (``chip`` words each) and one
    external-memory model: the engine's memory system in miniature. ``shared``: the readers share
    one of the port's read clients (a :class:`SharedReadClient`)."""

    def __init__(self, chip, ext_words, width, ext_width, latency, cycles_per_word, command_cycles, credits,
                 registered=False, shared=False):
        self.chip, self.shared = chip, shared
        self.share = SharedReadClient(ADDR_BITS, ext_width, in_flight=2 * credits) if shared else None
        self.rams = [BlockRam(width, chip) for _ in range(2)]
        self.readers = [TieredReader(ADDR_BITS, width, ext_width, chip, credits=credits) for _ in range(2)]
        self.writers = [TieredWriter(ADDR_BITS, width, ext_width, chip, registered=registered) for _ in range(2)]
        self.port = ExternalPort(ADDR_BITS, ext_width, readers=1 if shared else 2, writers=2)
        self.memory = ExternalMemoryModel(ext_words, ext_width, addr_bits=ADDR_BITS, latency=latency,
                                          cycles_per_word=cycles_per_word, command_cycles=command_cycles)
        super().__init__({})

    def elaborate(self, platform):
        m = Module()
        m.submodules.port, m.submodules.memory = self.port, self.memory
        wiring.connect(m, self.port.port, self.memory.port)
        if self.shared:
            m.submodules.share = self.share
            wiring.connect(m, self.share.o, self.port.rd0)
        for k in range(2):
            ram, rd, wr = self.rams[k], self.readers[k], self.writers[k]
            m.submodules[f"ram{k}"], m.submodules[f"rd{k}"], m.submodules[f"wr{k}"] = ram, rd, wr
            m.submodules[f"ram_rd{k}"] = ram_rd = RamReader(ram.width)
            wiring.connect(m, rd.chip.req, ram_rd.req)
            wiring.connect(m, rd.chip.resp, ram_rd.resp)
            m.d.comb += [ram.r_addr.eq(ram_rd.r_addr), ram_rd.r_data.eq(ram.r_data),
                         ram.w_en.eq(wr.chip_en), ram.w_addr.eq(wr.chip_addr), ram.w_data.eq(wr.chip_data)]
            wiring.connect(m, rd.ext, getattr(self.share, "ab"[k]) if self.shared else getattr(self.port, f"rd{k}"))
            wiring.connect(m, wr.ext, getattr(self.port, f"wr{k}"))
        return m


@pytest.mark.parametrize("latency, cycles_per_word, command_cycles, credits, registered, shared", [
    (1, 1, 0, 64, False, False), (12, 1, 2, 64, True, False), (9, 3, 4, 8, False, False), (30, 1, 0, 4, True, False),
    (12, 1, 2, 64, True, True), (30, 1, 0, 4, False, True)])
def test_tiered_reads_and_writes_match_a_reference(latency, cycles_per_word, command_cycles, credits, registered,
                                                   shared):
    """Both clients write their half of a shared address space (scratchpad words and external
    words, runs and scattered addresses), then read it back in random orders with random consumer
    stalls; one reader's consumer stops for a long stretch while the other goes on (its responses
    must not wait behind the stalled one's). Among the reads are a pattern's invalid beats
    (INVALID_ADDRESS): answered in order, their data ignored, and never sent to the memory (which
    would flag the address as beyond its words). ``shared``: both readers on one of the port's read
    clients, so the stall must not hold the other reader's data either."""
    rng = random.Random(seed_for(f"tiers-{latency}-{cycles_per_word}-{command_cycles}-{credits}" + ("-shared" if shared else "")))
    chip, ext_words, width = 32, 256, 24
    dut = Tiers(chip, ext_words, width, 32, latency, cycles_per_word, command_cycles, credits, registered, shared)
    space = chip + ext_words
    halves = [list(range(0, space, 2)), list(range(1, space, 2))]       # client k owns addresses ≡ k mod 2
    ref = {}
    reads = []
    for k in range(2):
        order = sorted(halves[k], key=lambda a: (a >= chip, rng.random()))
        writes = [(a, rng.getrandbits(width)) for a in order]
        ref.update(writes)
        reads.append([INVALID_ADDRESS if rng.random() < 0.15 else rng.choice(halves[k]) for _ in range(150)] +
                     [a for a in halves[k] if a >= chip][:40])                  # a consecutive run: bursts
    got = [[], []]
    done = [False, False]

    def writer(k):
        async def bench(ctx):
            wr = dut.writers[k]
            order = [a for a in sorted(halves[k], key=lambda a: rng.random())]
            for a in order:
                ctx.set(wr.i.valid, 1)
                ctx.set(wr.i.payload, {"addr": a, "data": ref[a]})
                await ctx.tick().until(wr.i.ready)
                if rng.random() < 0.2:
                    ctx.set(wr.i.valid, 0)
                    await ctx.tick()
            ctx.set(wr.i.valid, 0)
            await ctx.tick().until(dut.port.writes_idle & wr.idle)      # (a registered writer's last word)
            done[k] = True
        return bench

    def reader(k):
        async def bench(ctx):
            while not all(done):
                await ctx.tick()
            rd = dut.readers[k]
            sent, cycles = 0, 0
            while len([v for v in got[k] if v is not None]) < len(reads[k]):
                cycles += 1
                assert cycles < 20_000, f"reader {k}: stuck after {len(got[k])} words"
                if sent < len(reads[k]):
                    ctx.set(rd.req.valid, 1)
                    ctx.set(rd.req.payload, reads[k][sent])
                else:
                    ctx.set(rd.req.valid, 0)
                ctx.set(rd.resp.ready, rng.random() >= 0.3)
                _, _, req_ok, resp_ok, data = await ctx.tick().sample(rd.req.valid & rd.req.ready,
                                                                    rd.resp.valid & rd.resp.ready, rd.resp.payload)
                if req_ok:
                    sent += 1
                if resp_ok:
                    got[k].append(data)
                if k == 1 and len(got[k]) == 100:           # a long stall: reader 0 must go on meanwhile
                    before = len(got[0])
                    ctx.set(rd.req.valid, 0)
                    ctx.set(rd.resp.ready, 0)
                    for _ in range(300):
                        await ctx.tick()
                    assert len(got[0]) > before or len(got[0]) == len(reads[0])
                    got[k].append(None)                      # marks the stall (once), dropped below
            ctx.set(rd.req.valid, 0)
        return bench

    fault = []

    async def watch(ctx):
        async for _, _, f in ctx.tick().sample(dut.memory.fault):
            if f:
                fault.append(1)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    for k in range(2):
        sim.add_testbench(writer(k))
        sim.add_testbench(reader(k))
    sim.add_process(watch)
    sim.run()
    assert any(a == INVALID_ADDRESS for a in reads[0] + reads[1])
    for k in range(2):
        values = [v for v in got[k] if v is not None]
        want = [ref.get(a) for a in reads[k]][:len(values)]
        assert [v for v, w in zip(values, want) if w is not None] == [w for w in want if w is not None]
        assert len(values) == len(reads[k]), f"reader {k}: {len(values)} of {len(reads[k])} words"
    assert not fault, "an invalid beat reached the external memory"


def test_tiered_reader_refuses_a_narrow_external_word():
    with pytest.raises(ValueError, match="ext_width=8: narrower than the words it holds \\(16 bits\\)"):
        TieredReader(ADDR_BITS, 16, 8, 32)
    with pytest.raises(ValueError, match="ext_width=8"):
        TieredWriter(ADDR_BITS, 16, 8, 32)
    with pytest.raises(TypeError, match="registered=1: must be True or False"):
        TieredWriter(ADDR_BITS, 16, 16, 32, registered=1)
    with pytest.raises(ValueError, match="readers=0, writers=0"):
        ExternalPort(ADDR_BITS, 16, 0, 0)
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match=rf"in_flight={bad!r}: must be a positive integer"):
            SharedReadClient(ADDR_BITS, 16, in_flight=bad)
