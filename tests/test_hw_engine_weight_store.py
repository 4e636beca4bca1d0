"""The engine's weight store across its two tiers: loads, read-backs, served Wq codes and updates of
words on chip and in the external memory, against golden.quant, with random stalls."""

import random

import numpy as np
import pytest
from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.sim import Simulator

from golden.config import WageConfig
from golden.quant import forward_weights, update_weights
from hw.engine.config import EngineConfig
from hw.engine.extmem_model import ExternalMemoryModel
from hw.engine.extport import ExternalPort
from hw.engine.isa import ADDR_BITS
from hw.engine.weight_store import WeightStore
from tests.support import seed_for

LANES = 4
CONFIG = EngineConfig(WageConfig(net="8FC-4", input_shape=(1, 4, 4), batch_size=4), lanes=LANES, weight_words=8,
                      external_words=5, external_weight_words=16)


class StoreWithMemory(wiring.Component):
    """The store, and (when the config has external weight words) the port and memory model behind it."""

    def __init__(self, config, latency):
        self.store = WeightStore(config)
        self.port = self.memory = None
        if config.external_weight_words:
            self.port = ExternalPort(ADDR_BITS, config.external_width, readers=3, writers=1)
            self.memory = ExternalMemoryModel(config.external_depth, config.external_width, addr_bits=ADDR_BITS,
                                              latency=latency, cycles_per_word=2, command_cycles=1)
        super().__init__({})

    def writes_issued(self):
        return self.store.idle & (self.port.writes_idle if self.port is not None else 1)

    def elaborate(self, platform):
        m = Module()
        m.submodules.store = self.store
        if self.port is None:
            return m
        m.submodules.port, m.submodules.memory = self.port, self.memory
        wiring.connect(m, self.store.ext_serve, self.port.rd0)
        wiring.connect(m, self.store.ext_readback, self.port.rd1)
        wiring.connect(m, self.store.ext_rmw, self.port.rd2)
        wiring.connect(m, self.store.ext_write, self.port.wr0)
        wiring.connect(m, self.port.port, self.memory.port)
        return m


@pytest.mark.parametrize("config, latency", [(CONFIG, 1), (CONFIG, 9),
                                             (CONFIG.replace(weight_words=24, external_weight_words=0), 0)])
def test_both_tiers_load_serve_update_and_read_back(config, latency):
    """Also without an external memory (the store is then the on-chip unit behind wider addresses)."""
    rng = random.Random(seed_for(f"weight-store-{latency}"))
    dut = StoreWithMemory(config, latency)
    store, wage = dut.store, config.wage
    words = config.weight_space
    clip = wage.w_clip
    loaded = np.array([[rng.randint(-clip - 20, clip + 20) for _ in range(LANES)] for _ in range(words)])
    ref = update_weights(loaded, 0, clip)                       # loads saturate
    dws = np.array([[rng.randint(-12, 12) for _ in range(LANES)] for _ in range(words)])
    order = rng.sample(range(words), words)                     # each word updated once, any order
    after = ref.copy()
    for a in order:
        after[a] = update_weights(after[a], dws[a], clip)
    got = {}

    async def read_all(ctx, cmd, out, field):
        """Single-word commands for every address in a random order, random consumer stalls."""
        addresses = rng.sample(range(words), words)
        values, sent, cycles = [], 0, 0
        while len(values) < words:
            cycles += 1
            assert cycles < 20 * words + 500, f"{field}: {len(values)} of {words} words came back"
            ctx.set(cmd.valid, sent < words)
            if sent < words:
                ctx.set(cmd.payload, {"start": addresses[sent], "count": 1})
            ctx.set(out.ready, rng.random() < 0.7)
            _, _, took, came, payload = await ctx.tick().sample(cmd.valid & cmd.ready, out.valid & out.ready,
                                                                 out.payload)
            sent += took
            if came:
                values.append([int(v) for v in getattr(payload, field)])
        ctx.set(cmd.valid, 0)
        result = np.zeros((words, LANES), dtype=np.int64)
        result[addresses] = values
        return result

    async def bench(ctx):
        for a in rng.sample(range(words), words):
            ctx.set(store.load.valid, 1)
            ctx.set(store.load.payload, {"addr": a, "w": [int(v) for v in loaded[a]]})
            await ctx.tick().until(store.load.ready)
        ctx.set(store.load.valid, 0)
        await ctx.tick().until(dut.writes_issued())          # the contract: reads after writes are issued
        got["loaded"] = await read_all(ctx, store.readback_cmd, store.readback, "w")
        got["served"] = await read_all(ctx, store.serve_cmd, store.serve, "wq")
        for a in order:
            ctx.set(store.update.valid, 1)
            ctx.set(store.update.payload, {"addr": a, "dw": [int(v) for v in dws[a]]})
            await ctx.tick().until(store.update.ready)
        ctx.set(store.update.valid, 0)
        await ctx.tick().until(dut.writes_issued())
        got["updated"] = await read_all(ctx, store.readback_cmd, store.readback, "w")
        assert dut.memory is None or not ctx.get(dut.memory.fault)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    np.testing.assert_array_equal(got["loaded"], ref)
    np.testing.assert_array_equal(got["served"], forward_weights(ref, wage.kW, wage.kG))
    np.testing.assert_array_equal(got["updated"], after)
    assert not np.array_equal(after, ref)
    # a wrong word in either tier would be caught: the reference differs from a one-bit change
    for a in (2, config.weight_space - 3):
        bad = after.copy()
        bad[a, 1] ^= 1
        assert not np.array_equal(got["updated"], bad)


def test_without_an_external_memory_it_is_the_unit_alone():
    store = WeightStore(CONFIG.replace(external_words=0, external_weight_words=0))
    assert not hasattr(store, "ext_serve")
