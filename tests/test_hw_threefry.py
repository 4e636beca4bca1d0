"""hw/threefry.py against golden.prng.threefry2x32 (Amaranth simulator).

Known answers are Random123's kat_vectors (the same as tests/test_golden_prng.py); random vectors are
checked under seeded random stalls on both stream sides, with each backpressure scheme (output FIFO
with credits, global enable); latency and throughput are measured.
"""

from __future__ import annotations

import random
import zlib

import numpy as np
import pytest
from amaranth.sim import Simulator

from golden.prng import threefry2x32
from hw.threefry import Threefry2x32

M32 = 0xFFFFFFFF
SEED = 0x3F2A_2024

KAT = [
    (13, (0, 0), (0, 0), (0x9D1C5EC6, 0x8BD50731)),
    (13, (M32, M32), (M32, M32), (0xFD36D048, 0x2D17272C)),
    (13, (0x243F6A88, 0x85A308D3), (0x13198A2E, 0x03707344), (0xBA3E4725, 0xF27D669E)),
    (20, (0, 0), (0, 0), (0x6B200159, 0x99BA4EFE)),
]


def run_stream(dut, items, *, seed, p_in=0.3, p_out=0.3, side=None, max_cycles=100_000):
    """Push ``items`` (c0, c1, k0, k1) through ``dut`` with random stalls; return outputs and log.

    Returns (outputs, cycles) where outputs are (x0, x1[, side]) in order. A monitor checks the
    stream rules on the output: once valid, valid and payload stay until the transfer (and, with
    the output FIFO, that it is never written while full).
    """
    rng = random.Random(seed)
    outs: list[tuple] = []
    cycles = [0]
    done = [False]

    async def producer(ctx):
        for n, (c0, c1, k0, k1) in enumerate(items):
            while rng.random() < p_in:
                await ctx.tick()
            ctx.set(dut.i.valid, 1)
            ctx.set(dut.i.payload.counter0, c0)
            ctx.set(dut.i.payload.counter1, c1)
            ctx.set(dut.i.payload.key0, k0)
            ctx.set(dut.i.payload.key1, k1)
            if side is not None:
                ctx.set(dut.i.payload.side, side[n])
            await ctx.tick().until(dut.i.ready)
            ctx.set(dut.i.valid, 0)

    async def consumer(ctx):
        out_rng = random.Random(seed + 1)
        pending = None
        while len(outs) < len(items):
            ready = out_rng.random() >= p_out
            ctx.set(dut.o.ready, ready)
            sig = [dut.o.valid, dut.o.payload.x0, dut.o.payload.x1]
            if side is not None:
                sig.append(dut.o.payload.side)
            _, _, valid, x0, x1, *sd = await ctx.tick().sample(*sig)
            sd = sd[0] if sd else None
            cycles[0] += 1
            assert cycles[0] < max_cycles, "simulation did not finish"
            if pending is not None:     # stalled last cycle: must still be valid with the same payload
                assert valid and (x0, x1) == pending[:2], "output changed while stalled"
            if valid and ready:
                outs.append((x0, x1) if side is None else (x0, x1, sd))
                pending = None
            elif valid:
                pending = (x0, x1)
        done[0] = True

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer, background=True)
    sim.add_testbench(consumer)
    if getattr(dut, "_out_overflow", None) is not None:
        async def overflow_monitor(ctx):
            async for _, _, overflow in ctx.tick().sample(dut._out_overflow):
                assert not overflow, "output FIFO written while full"
        sim.add_testbench(overflow_monitor, background=True)
    sim.run()
    return outs, cycles[0]


@pytest.mark.parametrize("rounds,ctr,key,out", KAT)
def test_known_answers(rounds, ctr, key, out):
    dut = Threefry2x32(rounds=rounds)
    outs, _ = run_stream(dut, [(*ctr, *key)], seed=SEED, p_in=0, p_out=0)
    assert outs == [out]


@pytest.mark.parametrize("kwargs", [
    dict(), dict(key_stages=False), dict(rounds_per_stage=3), dict(stages=1, key_stages=False), dict(stages=5),
    dict(rounds=20, rounds_per_stage=2), dict(rounds=20, key_stages=False, rounds_per_stage=3),
    dict(split_rounds=True), dict(rounds=20, split_rounds=True), dict(split_rounds=False),
    dict(backpressure="stall"), dict(backpressure="stall", split_rounds=False),
    dict(backpressure="stall", key_stages=False, rounds_per_stage=2), dict(stages=1, key_stages=False, rounds=20),
])
def test_random_vectors_with_stalls(kwargs):
    seed = SEED + zlib.crc32(repr(sorted(kwargs.items())).encode()) % 1000
    print(f"seed={seed} kwargs={kwargs}")
    rng = np.random.default_rng(seed)
    n = 200
    c0, c1, k0, k1 = (rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32) for _ in range(4))
    c0[:4] = [0, M32, 1, 0x80000000]       # edges
    k1[:4] = [M32, 0, 0x80000000, 1]
    rounds = kwargs.get("rounds", 13)
    side = [int(v) for v in rng.integers(0, 2**11, n)]
    dut = Threefry2x32(**kwargs, sideband=11)
    items = list(zip(*(a.tolist() for a in (c0, c1, k0, k1))))
    outs, _ = run_stream(dut, items, seed=seed, side=side)
    x0, x1 = threefry2x32(c0, c1, k0, k1, rounds=rounds)
    assert outs == list(zip(x0.tolist(), x1.tolist(), side))


@pytest.mark.parametrize("kwargs", [dict(), dict(key_stages=False, rounds_per_stage=2), dict(split_rounds=True),
                                    dict(split_rounds=False), dict(backpressure="stall"),
                                    dict(backpressure="stall", split_rounds=False)])
def test_static_key(kwargs):
    """static_key=True: the key is read by every stage, so it is held while hashes are in flight.
    Two bursts with different keys, the pipeline drained (and one idle cycle) in between."""
    seed = SEED + 7
    dut = Threefry2x32(static_key=True, **kwargs)
    rng = np.random.default_rng(seed)
    keys = [(0x1234_5678, 3), (0xFFFF_FFFF, 0x8000_0000)]
    items = [[(int(c), int(rng.integers(0, 2**32)), *key) for c in rng.integers(0, 2**32, 60)] for key in keys]
    got = []

    async def tb(ctx):
        out_rng = random.Random(seed)
        for burst in items:
            ctx.set(dut.i.payload.key0, burst[0][2])
            ctx.set(dut.i.payload.key1, burst[0][3])
            await ctx.tick()                                   # key stable one cycle before use
            pending = list(burst)
            received = 0
            while received < len(burst):
                if pending and out_rng.random() < 0.7:
                    ctx.set(dut.i.valid, 1)
                    ctx.set(dut.i.payload.counter0, pending[0][0])
                    ctx.set(dut.i.payload.counter1, pending[0][1])
                else:
                    ctx.set(dut.i.valid, 0)
                ready = out_rng.random() < 0.7
                ctx.set(dut.o.ready, ready)
                _, _, iv, ir, ov, x0, x1 = await ctx.tick().sample(
                    dut.i.valid, dut.i.ready, dut.o.valid, dut.o.payload.x0, dut.o.payload.x1)
                if iv and ir:
                    pending.pop(0)
                if ov and ready:
                    got.append((x0, x1))
                    received += 1
            ctx.set(dut.i.valid, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    want = []
    for burst in items:
        c0, c1, k0, k1 = (np.array(v, dtype=np.uint32) for v in zip(*burst))
        x0, x1 = threefry2x32(c0, c1, k0, k1)
        want += list(zip(x0.tolist(), x1.tolist()))
    assert got == want


@pytest.mark.parametrize("kwargs,latency", [
    (dict(split_rounds=False), 17),                 # K, 13 rounds, 3 injections: one adder level each
    (dict(split_rounds=False, backpressure="stall"), 17),
    (dict(split_rounds=False, backpressure="none"), 17),
    (dict(key_stages=False), 13),
    (dict(rounds_per_stage=4), 8),
    (dict(stages=1), 2), (dict(stages=1, key_stages=False), 1),
    (dict(stages=7), 11), (dict(stages=7, key_stages=False), 7),
    (dict(split_rounds=True), 30),                  # K, 13 × (add, XOR), 3 injections
    (dict(), 30),                                   # the default: split rounds (one round per stage)
    (dict(backpressure="stall"), 30), (dict(backpressure="none"), 30),
])
def test_latency_and_full_throughput(kwargs, latency):
    dut = Threefry2x32(**kwargs)
    assert dut.latency == latency and sum(dut.stage_rounds) == 13
    assert dut.split_rounds == (latency == 30)
    steps = [op for stage in dut.schedule for op in stage]
    rounds = ([f"{h}{r}" for h in "AX"] for r in range(13)) if dut.split_rounds else \
        ([f"R{r}"] for r in range(13))
    rounds = list(rounds)
    want = ["K", *rounds[0], *rounds[1], *rounds[2], *rounds[3], "I1", *rounds[4], *rounds[5], *rounds[6],
            *rounds[7], "I2", *rounds[8], *rounds[9], *rounds[10], *rounds[11], "I3", *rounds[12]]
    assert steps == want
    if dut.split_rounds:
        assert all(len(stage) == 1 for stage in dut.schedule)
        assert dut.stage_rounds == tuple(int(stage[0][0] == "X") for stage in dut.schedule)
    if kwargs.get("key_stages", True):
        assert all(len(stage) == 1 for stage in dut.schedule if stage[0] in ("K", "I1", "I2", "I3"))
    n = 40
    items = [(i, 7, 0x1234, 99) for i in range(n)]
    seen: list[tuple[int, int]] = []

    async def tb(ctx):
        ctx.set(dut.o.ready, 1)
        for cycle in range(n + latency + 3):
            if cycle < n:
                ctx.set(dut.i.valid, 1)
                ctx.set(dut.i.payload.counter0, items[cycle][0])
                ctx.set(dut.i.payload.counter1, 7)
                ctx.set(dut.i.payload.key0, 0x1234)
                ctx.set(dut.i.payload.key1, 99)
            else:
                ctx.set(dut.i.valid, 0)
            _, _, ready, valid, x0 = await ctx.tick().sample(dut.i.ready, dut.o.valid, dut.o.payload.x0)
            assert ready, "input must always be ready when the output is"
            if valid:
                seen.append((cycle, x0))

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(tb)
    sim.run()
    want = threefry2x32(np.arange(n, dtype=np.uint32), 7, 0x1234, 99)[0].tolist()
    # the first input transfers at cycle 0's edge; its hash is valid after `latency` edges
    assert [c for c, _ in seen] == list(range(latency, latency + n))
    assert [x for _, x in seen] == want


@pytest.mark.parametrize("kwargs,exc,text", [
    (dict(rounds=0), ValueError, "rounds=0"),
    (dict(rounds=13.0), TypeError, "rounds=13.0"),
    (dict(rounds_per_stage=0), ValueError, "rounds_per_stage=0"),
    (dict(rounds_per_stage=14), ValueError, "rounds_per_stage=14"),
    (dict(stages=0), ValueError, "stages=0"),
    (dict(stages=True), TypeError, "stages=True"),
    (dict(stages=2, rounds_per_stage=2), ValueError, "at most one"),
    (dict(sideband="wide"), TypeError, "sideband='wide'"),
    (dict(key_stages=1), TypeError, "key_stages=1"),
    (dict(static_key="yes"), TypeError, "static_key='yes'"),
    (dict(split_rounds=1), TypeError, "split_rounds=1"),
    (dict(split_rounds=True, rounds_per_stage=2), ValueError, "rounds_per_stage=2"),
    (dict(split_rounds=True, stages=5), ValueError, "stages=5"),
    (dict(split_rounds=True, key_stages=False), ValueError, "key_stages=False"),
    (dict(backpressure="skid"), ValueError, "backpressure='skid'"),
    (dict(backpressure=None), ValueError, "backpressure=None"),
])
def test_parameter_checks(kwargs, exc, text):
    with pytest.raises(exc, match=text.replace("(", r"\(")):
        Threefry2x32(**kwargs)


@pytest.mark.parametrize("kwargs", [dict(), dict(split_rounds=False), dict(stages=1, key_stages=False)])
def test_output_fifo_under_heavy_backpressure(kwargs):
    """backpressure="fifo": a consumer that is mostly stalled fills the output FIFO (the credits must
    stop the input exactly in time); the input is always offered."""
    seed = SEED + 11 + zlib.crc32(repr(sorted(kwargs.items())).encode()) % 1000
    print(f"seed={seed} kwargs={kwargs}")
    rng = np.random.default_rng(seed)
    n = 150
    c0, c1, k0, k1 = (rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32) for _ in range(4))
    side = list(range(n))
    dut = Threefry2x32(**kwargs, sideband=8)
    outs, _ = run_stream(dut, list(zip(*(a.tolist() for a in (c0, c1, k0, k1)))), seed=seed, side=[s % 256 for s in side],
                         p_in=0, p_out=0.85)
    x0, x1 = threefry2x32(c0, c1, k0, k1)
    assert outs == list(zip(x0.tolist(), x1.tolist(), [s % 256 for s in side]))
