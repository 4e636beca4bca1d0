"""Helpers shared by the hardware tests: logged seeds, two's-complement lane packing, running
testbenches on Amaranth's simulator, and training an engine model beside golden."""

from __future__ import annotations

import os

#: Base of every test seed; override with WAGE_TEST_SEED to explore, the printed seed reproduces.
BASE_SEED = int(os.environ.get("WAGE_TEST_SEED", "20240611"))


def seed_for(tag: str) -> int:
    """A seed derived from BASE_SEED and the test's tag, printed so a failure can be replayed."""
    seed = (BASE_SEED * 1000003 + sum(ord(c) * 31 ** i for i, c in enumerate(tag))) % 2**32
    print(f"[{tag}] seed {seed} (WAGE_TEST_SEED={BASE_SEED})")
    return seed


def run_benches(dut, *benches, period: float = 1e-6) -> None:
    """Simulate ``dut`` with one clock of ``period`` seconds until every testbench has returned."""
    from amaranth.sim import Simulator
    sim = Simulator(dut)
    sim.add_clock(period)
    for bench in benches:
        sim.add_testbench(bench)
    sim.run()


def pack(values, width: int) -> int:
    """Lane i in bits [i·w, (i+1)·w), two's complement; values wrap (tests feed illegal codes on purpose)."""
    out = 0
    for i, v in enumerate(values):
        out |= (int(v) & ((1 << width) - 1)) << (i * width)
    return out


def unpack(flat: int, width: int, n: int) -> list[int]:
    """Inverse of :func:`pack` for signed lanes."""
    vals = []
    for i in range(n):
        v = (flat >> (i * width)) & ((1 << width) - 1)
        vals.append(v - (1 << width) if v >> (width - 1) else v)
    return vals


def train_model_and_golden(engine, wage, program, embedded, steps, eta_log2=3, check=True):
    """Train golden and an engine model (``hw.engine.model.EngineModel`` or a subclass, built on
    ``program``) side by side on the embedded data. With ``check`` every A, E (but those that tile
    staging overwrites, ``program.overwritten``) and the weights must match after every step;
    otherwise return the set of mismatching tensors."""
    import numpy as np

    from golden import model as golden
    weights = golden.init_weights(wage)
    engine.load_weights(weights)
    b = wage.batch_size
    mismatches = set()
    for s in range(steps):
        x, y = embedded.train_images[s * b:(s + 1) * b], embedded.train_labels[s * b:(s + 1) * b]
        trace = {}
        weights, _ = golden.train_step(wage, weights, x, y, s, eta_log2, trace=trace)
        engine.load_batch(x, y)
        engine.run_step(s, eta_log2)
        pairs = [(f"A{i}", a.unpack(engine.act[a.base:a.end]), trace[f"s{s}/l{i}/A"])
                 for i, a in enumerate(program.activations) if a.name not in program.overwritten]
        pairs += [(f"E{i}", e.unpack(engine.err[e.base:e.end]), trace[f"s{s}/l{i}/E"])
                  for i, e in enumerate(program.errors) if e.name not in program.overwritten]
        pairs += [(f"W{i}", got, want) for i, (got, want) in enumerate(zip(engine.read_weights(), weights))]
        for name, got, want in pairs:
            got, want = got.reshape(want.shape), want
            if check:
                np.testing.assert_array_equal(got, want, err_msg=f"step {s} {name}")
            elif not np.array_equal(got, want):
                mismatches.add(name)
    return mismatches


async def send_stalling(ctx, stream, payloads, rng, stall: float) -> None:
    """Offer ``payloads`` on ``stream`` (an Amaranth testbench), each after a random number of idle
    cycles (one more with probability ``stall``), holding it until taken; ``valid`` low at the end."""
    for payload in payloads:
        while rng.random() < stall:
            ctx.set(stream.valid, 0)
            await ctx.tick()
        ctx.set(stream.payload, payload)
        ctx.set(stream.valid, 1)
        while not (await ctx.tick().sample(stream.ready))[2]:      # ready as sampled at the edge
            pass
    ctx.set(stream.valid, 0)


def add_domain_clocks(sim, dut, sync_period: float) -> None:
    """Toggle the clock ports of ``dut``'s other domains (``dut.domain_freqs``: domain → Hz, with
    ``sync``'s; ports ``<domain>_clk``) in proportion to ``sync_period``, the period
    :meth:`~amaranth.sim.Simulator.add_clock` gave ``sync``. A design without ``domain_freqs``
    gets nothing."""
    freqs = getattr(dut, "domain_freqs", {})
    for domain, freq in freqs.items():
        if domain == "sync":
            continue

        async def toggle(ctx, clk=getattr(dut, f"{domain}_clk"), half=sync_period * freqs["sync"] / freq / 2):
            while True:
                for level in (1, 0):
                    await ctx.delay(half)
                    ctx.set(clk, level)
        sim.add_process(toggle)
