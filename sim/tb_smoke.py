"""cocotb bench for the smoke test of the simulation infrastructure (see ``test_sim_smoke.py``)."""

import random

import cocotb
from cocotb.triggers import Event

from sim.streams import (Scoreboard, ScoreboardMismatch, StreamSink, StreamSource, pack_lanes, sim_params,
                         reset_dut, unpack_lanes)


def _setup(dut, p, rng, callback):
    src = StreamSource(dut.clk, dut.i__valid, dut.i__ready, dut.i__payload, rng=rng,
                       stall_probability=p.get("stall", 0.0), name="i")
    # the output's clock: the harness's own, or another domain's it generates (an async FIFO's read side)
    snk = StreamSink(getattr(dut, p.get("o_clock", "clk")), dut.o__valid, dut.o__ready, dut.o__payload, rng=rng,
                     backpressure_probability=p.get("backpressure", 0.0), callback=callback, name="o")
    return src, snk


def _random_beats(p, rng):
    lo, hi = -(1 << (p["width"] - 1)), (1 << (p["width"] - 1)) - 1
    return [[rng.randint(lo, hi) for _ in range(p["lanes"])] for _ in range(p["beats"])]


@cocotb.test()
async def fifo_random(dut):
    p = sim_params()
    rng = random.Random(cocotb.RANDOM_SEED)
    sb = Scoreboard("lane_fifo")
    beats = _random_beats(p, rng)
    for b in beats:
        sb.expect("o", b)
    mutate = p.get("mutate_beat")          # used by the pytest check that failures propagate
    seen = 0

    def monitor(v):
        nonlocal seen
        if seen == mutate:
            v ^= 1
        seen += 1
        sb.compare("o", unpack_lanes(v, p["lanes"], p["width"], True))

    src, snk = _setup(dut, p, rng, monitor)
    await reset_dut(dut, p.get("reset_cycles", 2))
    src.send(pack_lanes(b, p["width"], True) for b in beats)
    await snk.wait_count(len(beats))
    sb.check_empty()
    dut._log.info("%s; %d cycles", sb.report(), snk.cycle)


@cocotb.test()
async def scoreboard_catches_flipped_bit(dut):
    """Mutation check: flip bit 0 of one output beat; the scoreboard must report exactly that."""
    p = sim_params()
    rng = random.Random(cocotb.RANDOM_SEED + 1)
    n = min(p["beats"], 2000)
    victim = rng.randrange(n)
    sb = Scoreboard("lane_fifo")
    beats = [pack_lanes(b, p["width"], True) for b in _random_beats({**p, "beats": n}, rng)]
    sb.expect_many("o", beats)
    seen = 0
    caught = []

    def monitor(v):
        nonlocal seen
        if seen == victim:
            v ^= 1
        seen += 1
        try:
            sb.compare("o", v)
        except ScoreboardMismatch as e:
            caught.append(str(e))

    src, snk = _setup(dut, p, rng, monitor)
    await reset_dut(dut, p.get("reset_cycles", 2))
    src.send(beats)
    await snk.wait_count(n)
    assert len(caught) == 1, f"expected exactly one mismatch, got {len(caught)}: {caught[:3]}"
    msg = caught[0]
    assert f"'o' beat {victim}:" in msg and "xor 0x1 (bit 0)" in msg, msg
    assert sb.total_matches == n - 1
    sb.check_empty()
    dut._log.info("mutation detected as expected: %s", msg)


@cocotb.test(skip=not sim_params().get("hang"))
async def hangs_forever(dut):
    """Only with parameters ``{"hang": true}``: never ends, so the runner's ``timeout_s`` must kill it."""
    await Event().wait()
