"""hw.engine.extcdc: the external-memory port across two clocks, against a Python reference memory.

The initiator's side runs on ``sync`` (10 ns); the memory model (hw.engine.extmem_model) runs on
its own domain, faster or slower, with edges drifting past the initiator's. Random read and write
bursts with stalls on every stream must read back exactly what the reference memory holds (the port
stays in order across the crossing), nothing left over; the checks name a bad parameter.
"""

import random

import pytest
from amaranth.hdl import ClockDomain, DomainRenamer, Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out
from amaranth.sim import Simulator

from hw.engine.extcdc import ExternalMemoryCDC
from hw.engine.extmem import ExternalMemorySignature
from hw.engine.extmem_model import ExternalMemoryModel
from tests.support import seed_for, send_stalling
from tests.test_hw_engine_extmem_model import check_reads, random_traffic, reference_reads


class MemoryAcrossClocks(wiring.Component):
    """``port`` (domain ``sync``) → :class:`ExternalMemoryCDC` → an ExternalMemoryModel in ``mem``."""

    def __init__(self, depth=200, data_width=48, max_burst=16, **model):
        self.depth, self.data_width, self.max_burst = depth, data_width, max_burst
        addr_bits = max(1, (depth - 1).bit_length())
        self.cdc = ExternalMemoryCDC(addr_bits, data_width, max_burst, memory_domain="mem")
        self.model = ExternalMemoryModel(depth, data_width, max_burst=max_burst, **model)
        super().__init__({"port": In(ExternalMemorySignature(addr_bits, data_width, max_burst)),
                          "fault": Out(1)})

    def elaborate(self, platform):
        m = Module()
        m.domains.mem = ClockDomain("mem")
        m.submodules.cdc = self.cdc
        m.submodules.model = DomainRenamer({"sync": "mem"})(self.model)
        wiring.connect(m, wiring.flipped(self.port), self.cdc.initiator)
        wiring.connect(m, self.cdc.target, self.model.port)
        m.d.comb += self.fault.eq(self.model.fault)
        return m


def run_across(dut, commands, write_data, rng, mem_period, stall=0.3, max_cycles=40000):
    """Feed ``commands`` and ``write_data`` through ``dut`` with stalls; the read words."""
    port, got, done = dut.port, [], []
    n_reads = sum(count for _, count, write in commands if not write)

    async def command_producer(ctx):
        await send_stalling(ctx, port.cmd, [{"addr": a, "count": c, "write": w} for a, c, w in commands], rng, stall)
        done.append("cmd")

    async def write_producer(ctx):
        await send_stalling(ctx, port.w, write_data, rng, stall)
        done.append("w")

    async def read_consumer(ctx):
        cycles = 0
        while len(got) < n_reads or len(done) < 2:
            ready = rng.random() >= stall
            ctx.set(port.r.ready, ready)
            _, _, valid, word = await ctx.tick().sample(port.r.valid, port.r.payload)
            if valid and ready:
                got.append(word)
            cycles += 1
            assert cycles < max_cycles, f"stuck: {len(got)}/{n_reads} read words after {cycles} cycles"
        ctx.set(port.r.ready, 1)
        for _ in range(200):                     # whatever was accepted has finished by now
            _, _, valid = await ctx.tick().sample(port.r.valid)
            assert not valid, "an extra read word"
        assert ctx.get(dut.model.read_words) == n_reads and ctx.get(dut.model.write_words) == len(write_data)
        assert ctx.get(dut.model.commands) == len(commands) and ctx.get(dut.fault) == 0

    sim = Simulator(dut)
    sim.add_clock(10e-9)
    sim.add_clock(mem_period, domain="mem")
    for bench in (command_producer, write_producer, read_consumer):
        sim.add_testbench(bench)
    sim.run()
    return got


@pytest.mark.parametrize("mem_period_ns", [4.7, 13.1])
def test_random_traffic_across_the_clocks_matches_the_reference(mem_period_ns):
    rng = random.Random(seed_for(f"extcdc-{mem_period_ns}"))
    dut = MemoryAcrossClocks(latency=3, cycles_per_word=2)
    commands, write_data = random_traffic(rng, dut, 120)
    got = run_across(dut, commands, write_data, rng, mem_period_ns * 1e-9)
    expected = reference_reads(commands, write_data)
    check_reads(got, expected)
    assert any(word for word in got)               # reads of fresh writes, not only zeros
    bad = list(expected)
    i = next(i for i, (_, word) in enumerate(bad) if word)
    bad[i] = (bad[i][0], bad[i][1] ^ 1 << 47)      # the scoreboard sees one wrong bit
    with pytest.raises(AssertionError, match=f"read word {i} "):
        check_reads(got, bad)


@pytest.mark.parametrize("kw, message", [
    (dict(memory_domain="sync"), "memory_domain='sync': the same domain as the initiator's"),
    (dict(memory_domain=""), "memory_domain='': must be a clock domain name"),
    (dict(depth=12), "depth=12: must be a power of two from 4 to 1024"),
    (dict(depth=2), "depth=2"),
    (dict(depth=True), "depth=True"),
])
def test_bad_parameters_are_named(kw, message):
    with pytest.raises(ValueError, match=message):
        ExternalMemoryCDC(10, 48, **kw)
    with pytest.raises(ValueError, match="data_width=0"):
        ExternalMemoryCDC(10, 0, memory_domain="mem")


def test_repr_names_the_domains():
    cdc = ExternalMemoryCDC(10, 48, memory_domain="sdram")
    cdc._MustUse__silence = True
    assert repr(cdc) == (
        "ExternalMemoryCDC(10, 48, max_burst=16, memory_domain='sdram', initiator_domain='sync', depth=16)")
