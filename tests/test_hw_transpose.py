"""hw.transpose.StreamTransposer in the Amaranth simulator, every output word against numpy's transpose.

One testbench drives both streams cycle by cycle (seeded random input gaps and output stalls; seed
printed, override with WAGE_TEST_SEED), records the cycle of every transfer, and checks the stream
rules on the output: ``o.valid`` does not depend on ``o.ready`` within a cycle, and a word offered
and not taken is offered again, unchanged, in the next cycle.
"""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from hw.transpose import LATENCY, StreamTransposer
from support import pack, seed_for, unpack

pytestmark = pytest.mark.filterwarnings("ignore:.*created but never used")


class Run:
    """Result of :func:`simulate`: output words/lasts and the cycle of every transfer."""

    def __init__(self):
        self.out_words, self.out_last, self.out_cycles, self.in_cycles = [], [], [], []
        self.first_valid = []          # cycles in which o.valid rose
        self.error_cycle = None
        self.cycles = 0


def simulate(dut, words, lasts, rng=None, *, gap=0.0, stall=0.0, ready_script=None, max_cycles=20000):
    """Feed ``words`` (n × lanes ints) with ``lasts`` into ``dut`` and collect every output word.

    ``gap``/``stall``: probability that the source offers nothing in a cycle / the sink is not ready
    (only when ``rng`` is given). ``ready_script(cycle) -> bool`` overrides the sink's ready.
    """
    L, w = dut.lanes, dut.width
    last_shift = dut.layout["last"].offset
    flat_in = [pack(v, w) | (int(e) << last_shift) for v, e in zip(words, lasts)]
    expected_out = len(words) if len(words) % L == 0 and not any(
        lasts[k] and k % L != L - 1 for k in range(len(lasts))) else None
    run = Run()

    async def bench(ctx):
        nxt, offered, pending, prev_valid = 0, False, None, 0
        for cycle in range(max_cycles):
            if not offered and nxt < len(flat_in) and not (rng is not None and rng.random() < gap):
                offered = True
                ctx.set(dut.i.payload.as_value(), flat_in[nxt])
            ctx.set(dut.i.valid, offered)
            ctx.set(dut.o.ready, 0)
            v0 = ctx.get(dut.o.valid)
            ctx.set(dut.o.ready, 1)
            v1 = ctx.get(dut.o.valid)
            assert v0 == v1, f"cycle {cycle}: o.valid depends on o.ready"
            if ready_script is not None:
                ready = bool(ready_script(cycle))
            else:
                ready = not (rng is not None and rng.random() < stall)
            ctx.set(dut.o.ready, ready)
            _, _, i_ready, o_valid, o_flat, err = await ctx.tick().sample(
                dut.i.ready, dut.o.valid, dut.o.payload.as_value(), dut.error)
            if pending is not None:
                assert o_valid and o_flat == pending, f"cycle {cycle}: output word withdrawn or changed before taken"
            if o_valid and not prev_valid:
                run.first_valid.append(cycle)
            prev_valid = o_valid and not ready
            if err and run.error_cycle is None:
                run.error_cycle = cycle
            if offered and i_ready:
                run.in_cycles.append(cycle)
                offered = False
                nxt += 1
            if o_valid and ready:
                run.out_words.append(unpack(o_flat, w, L))
                run.out_last.append((o_flat >> last_shift) & 1)
                run.out_cycles.append(cycle)
                pending = None
            else:
                pending = o_flat if o_valid else None
            run.cycles = cycle + 1
            done_in = nxt == len(flat_in)
            if done_in and expected_out is not None and len(run.out_words) == expected_out:
                break
            if done_in and expected_out is None and cycle > run.in_cycles[-1] + 4 * L + 8 and not o_valid:
                break
        else:
            raise AssertionError(f"not finished in {max_cycles} cycles: {nxt}/{len(flat_in)} words in, "
                                 f"{len(run.out_words)} out")

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return run


def reference(words, lasts, lanes):
    """Expected output (words, lasts): blocks transposed with numpy; an early ``last`` pads zero rows."""
    blocks, lasts_out, cur, = [], [], []
    for v, e in zip(words, lasts):
        cur.append(list(v))
        if len(cur) == lanes or e:
            cur += [[0] * lanes] * (lanes - len(cur))
            blocks.append(cur)
            lasts_out += [0] * (lanes - 1) + [int(bool(e))]
            cur = []
    assert not cur, "reference: input ends inside a block"
    arr = np.array(blocks, dtype=np.int64).reshape(-1, lanes, lanes)
    return arr.transpose(0, 2, 1).reshape(-1, lanes), lasts_out


def mismatches(run, want_words, want_lasts):
    """Every disagreement between a run's output and an expectation, as readable strings (empty = equal)."""
    got = np.array(run.out_words, dtype=np.int64).reshape(-1, want_words.shape[1])
    out = []
    if got.shape != want_words.shape:
        out.append(f"{got.shape[0]} output words, expected {want_words.shape[0]}")
    n = min(got.shape[0], want_words.shape[0])
    for k in np.flatnonzero((got[:n] != want_words[:n]).any(axis=1)):
        out.append(f"word {k}: got {got[k].tolist()}, want {want_words[k].tolist()}")
    for k in range(min(len(run.out_last), len(want_lasts))):
        if run.out_last[k] != want_lasts[k]:
            out.append(f"word {k}: last {run.out_last[k]}, want {want_lasts[k]}")
    return out


def random_sequences(rng, lanes, width, blocks):
    """``blocks`` random blocks grouped into sequences of 1..4 blocks; ``last`` ends each sequence."""
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    words = rng.integers(lo, hi + 1, (blocks * lanes, lanes)).tolist()
    lasts, b = [0] * (blocks * lanes), 0
    while b < blocks:
        b = min(blocks, b + int(rng.integers(1, 5)))
        lasts[b * lanes - 1] = 1
    return words, lasts


CONFIGS = [(lanes, width) for lanes in (1, 2, 4, 8, 16) for width in (2, 8)]
BLOCKS = {1: 120, 2: 60, 4: 30, 8: 14, 16: 6}


@pytest.mark.parametrize("lanes,width", CONFIGS)
def test_random_blocks_with_random_gaps_and_stalls(lanes, width):
    rng = np.random.default_rng(seed_for(f"transpose_random_{lanes}_{width}"))
    words, lasts = random_sequences(rng, lanes, width, BLOCKS[lanes])
    dut = StreamTransposer(lanes, width)
    run = simulate(dut, words, lasts, rng, gap=0.3, stall=0.3)
    want, want_last = reference(words, lasts, lanes)
    assert mismatches(run, want, want_last) == []
    assert run.error_cycle is None


@pytest.mark.parametrize("lanes,width", [(4, 8), (8, 2), (16, 8)])
def test_long_output_stalls_back_pressure_the_input(lanes, width):
    """Bursty sink (long runs of ready low): nothing is lost or duplicated, the input waits."""
    rng = np.random.default_rng(seed_for(f"transpose_bursty_{lanes}_{width}"))
    words, lasts = random_sequences(rng, lanes, width, 5)
    script = (rng.random(4000) < 0.5).repeat(3 * lanes)       # ready in runs of 3·L cycles
    run = simulate(StreamTransposer(lanes, width), words, lasts, ready_script=lambda c: script[c])
    want, want_last = reference(words, lasts, lanes)
    assert mismatches(run, want, want_last) == []


@pytest.mark.parametrize("lanes", [1, 2, 4, 8, 16])
def test_full_throughput_one_word_in_and_out_per_cycle(lanes):
    """No gaps, no stalls: N blocks enter in cycles 0..N·L−1; block n's word j leaves in cycle (n+1)·L + j."""
    rng = np.random.default_rng(seed_for(f"transpose_throughput_{lanes}"))
    nblocks = 6
    words, lasts = random_sequences(rng, lanes, 8, nblocks)
    run = simulate(StreamTransposer(lanes, 8), words, lasts)
    want, want_last = reference(words, lasts, lanes)
    assert mismatches(run, want, want_last) == []
    n = nblocks * lanes
    assert run.in_cycles == list(range(n))
    assert run.out_cycles == [lanes - 1 + LATENCY + k for k in range(n)]
    assert run.cycles == n + lanes - 1 + LATENCY            # = N·L + L cycles from first word in to last out


@pytest.mark.parametrize("lanes", [1, 3, 8])
def test_latency_first_word_valid_one_cycle_after_block_completes(lanes):
    """The sink is not ready for 10 cycles: o.valid still rises exactly LATENCY cycles after word L−1."""
    words = [[r * lanes + c for c in range(lanes)] for r in range(lanes)]
    lasts = [0] * (lanes - 1) + [1]
    run = simulate(StreamTransposer(lanes, 8), words, lasts, ready_script=lambda c: c >= lanes + 10)
    assert run.in_cycles == list(range(lanes))
    assert run.first_valid[0] == run.in_cycles[-1] + LATENCY == lanes - 1 + LATENCY
    assert run.out_cycles == [lanes + 10 + j for j in range(lanes)]
    want, want_last = reference(words, lasts, lanes)
    assert mismatches(run, want, want_last) == []


def test_started_next_block_couples_the_output_to_the_input():
    """Documented lock-step: once block 1 has started, block 0 leaves only as block 1's words arrive.

    Block 0 then one word of block 1, then the source pauses 20 cycles: exactly one word of block 0
    leaves before the pause (together with block 1's word 0), the rest after it, one per cycle.
    """
    lanes, pause = 4, 20
    words = [[r * lanes + c for c in range(lanes)] for r in range(2 * lanes)]
    lasts = [0] * (2 * lanes - 1) + [1]
    dut = StreamTransposer(lanes, 8)
    last_shift = dut.layout["last"].offset
    out_cycles = []

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        cycle = 0
        for k, (v, e) in enumerate(zip(words, lasts)):
            if k == lanes + 1:
                ctx.set(dut.i.valid, 0)
                for _ in range(pause):
                    assert not ctx.get(dut.o.valid), f"cycle {cycle}: block 0 drained while block 1 paused"
                    await ctx.tick()
                    cycle += 1
            ctx.set(dut.i.payload.as_value(), pack(v, 8) | (e << last_shift))
            ctx.set(dut.i.valid, 1)
            while True:
                if ctx.get(dut.o.valid):
                    out_cycles.append(cycle)
                _, _, ready = await ctx.tick().sample(dut.i.ready)
                cycle += 1
                if ready:
                    break
        ctx.set(dut.i.valid, 0)
        while len(out_cycles) < 2 * lanes:
            if ctx.get(dut.o.valid):
                out_cycles.append(cycle)
            await ctx.tick()
            cycle += 1

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    resume = lanes + 1 + pause              # block 1's words 1..L-1 are accepted in cycles resume..resume+L-2
    assert out_cycles == ([lanes] + [resume + j for j in range(lanes - 1)]
                          + [resume + lanes - 2 + LATENCY + j for j in range(lanes)])


def test_last_marks_the_final_transposed_word_of_each_sequence():
    lanes = 4
    rng = np.random.default_rng(seed_for("transpose_last"))
    words = rng.integers(-128, 128, (5 * lanes, lanes)).tolist()
    lasts = [0] * (5 * lanes)
    lasts[2 * lanes - 1] = lasts[3 * lanes - 1] = lasts[5 * lanes - 1] = 1
    run = simulate(StreamTransposer(lanes, 8), words, lasts, rng, gap=0.2, stall=0.2)
    assert [k for k, e in enumerate(run.out_last) if e] == [2 * lanes - 1, 3 * lanes - 1, 5 * lanes - 1]
    want, want_last = reference(words, lasts, lanes)
    assert mismatches(run, want, want_last) == []
    assert run.error_cycle is None


@pytest.mark.parametrize("stall", [0.0, 0.4])
def test_early_last_raises_error_and_pads_the_block_with_zero_rows(stall):
    """``last`` on word 1 of a 4-word block: error (sticky), the block leaves padded, the stream goes on."""
    lanes = 4
    rng = np.random.default_rng(seed_for(f"transpose_early_last_{stall}"))
    words = rng.integers(1, 100, (lanes + 2 + 2 * lanes, lanes)).tolist()     # no zeros: padding is visible
    lasts = [0] * len(words)
    lasts[lanes + 1] = 1                     # word 1 of block 1
    lasts[-1] = 1
    run = simulate(StreamTransposer(lanes, 8), words, lasts, rng, gap=stall, stall=stall)
    want, want_last = reference(words, lasts, lanes)
    assert mismatches(run, want, want_last) == []
    padded = np.array(run.out_words[lanes:2 * lanes])
    assert (padded[:, 2:] == 0).all() and (padded[:, :2] != 0).all()
    assert run.out_last[2 * lanes - 1] == 1
    assert run.error_cycle is not None
    # error rises in the cycle after the early `last` is accepted (registered) and stays: the sampled
    # value at the edge of the accepting cycle is still 0
    assert run.error_cycle == run.in_cycles[lanes + 1] + 1
    if stall == 0.0:                         # padding rows take cycles with no input accepted
        assert run.in_cycles[lanes + 2] == run.in_cycles[lanes + 1] + (lanes - 2) + 1


def test_early_last_error_is_sticky():
    lanes = 2
    words = [[1, 2], [3, 4], [5, 6], [7, 8]]
    lasts = [1, 0, 0, 1]                    # word 0 of block 0 carries last
    dut = StreamTransposer(lanes, 8)
    seen = []

    async def bench(ctx):
        ctx.set(dut.o.ready, 1)
        for v, e in zip(words, lasts):
            ctx.set(dut.i.payload.as_value(), pack(v, 8) | (e << dut.layout["last"].offset))
            ctx.set(dut.i.valid, 1)
            await ctx.tick().until(dut.i.ready)
        ctx.set(dut.i.valid, 0)
        for _ in range(20):
            seen.append(ctx.get(dut.error))
            await ctx.tick()

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert seen == [1] * 20


@pytest.mark.parametrize("lanes,width", [(4, 1), (4, 2), (3, 8), (8, 8), (2, 64)])
def test_extreme_values(lanes, width):
    lo, hi = -(1 << (width - 1)), (1 << (width - 1)) - 1
    rng = np.random.default_rng(seed_for(f"transpose_extremes_{lanes}_{width}"))
    pattern = [lo, hi, 0, -1] if width > 1 else [lo, hi]
    words = np.array(pattern)[rng.integers(0, len(pattern), (4 * lanes, lanes))].tolist()
    words[:lanes] = [[lo] * lanes] * lanes
    words[lanes:2 * lanes] = [[hi if (r + c) % 2 else lo for c in range(lanes)] for r in range(lanes)]
    lasts = [0] * (4 * lanes - 1) + [1]
    run = simulate(StreamTransposer(lanes, width), words, lasts, rng, gap=0.2, stall=0.2)
    want, want_last = reference(words, lasts, lanes)
    assert mismatches(run, want, want_last) == []


def test_checker_reports_a_wrong_expectation():
    """The comparison can fail: one flipped bit in one input word of the reference is reported."""
    lanes, width = 4, 8
    rng = np.random.default_rng(seed_for("transpose_checker"))
    words, lasts = random_sequences(rng, lanes, width, 3)
    run = simulate(StreamTransposer(lanes, width), words, lasts, rng, gap=0.2, stall=0.2)
    want, want_last = reference(words, lasts, lanes)
    assert mismatches(run, want, want_last) == []
    bad = [list(v) for v in words]
    bad[lanes + 2][1] ^= 1 << 3                           # block 1, row 2, lane 1
    bad_want, _ = reference(bad, lasts, lanes)
    found = mismatches(run, bad_want, want_last)
    assert len(found) == 1 and found[0].startswith(f"word {lanes + 1}:"), found   # block 1, output word 1
    wrong_last = list(want_last)
    wrong_last[0] = 1
    assert mismatches(run, want, wrong_last) == [f"word 0: last 0, want 1"]
    assert mismatches(run, want[:-1], want_last)[0] == f"{len(want)} output words, expected {len(want) - 1}"


@pytest.mark.parametrize("kwargs,exc,text", [
    (dict(lanes=0, width=8), ValueError, "lanes=0: must be a positive integer"),
    (dict(lanes=-3, width=8), ValueError, "lanes=-3"),
    (dict(lanes=2.0, width=8), TypeError, "lanes=2.0"),
    (dict(lanes=True, width=8), TypeError, "lanes=True"),
    (dict(lanes=4, width=0), ValueError, "width=0: must be an integer in 1..64"),
    (dict(lanes=4, width=65), ValueError, "width=65"),
    (dict(lanes=4, width="8"), TypeError, "width='8'"),
])
def test_bad_parameters_name_the_value(kwargs, exc, text):
    with pytest.raises(exc, match=text.replace(".", r"\.")):
        StreamTransposer(**kwargs)


def test_interface_and_repr():
    dut = StreamTransposer(4, 8)
    dut._MustUse__silence = True                          # inspected, not elaborated
    assert dut.lanes == 4 and dut.width == 8
    assert repr(dut) == "StreamTransposer(lanes=4, width=8)"
    assert dut.layout.size == 4 * 8 + 1
    assert dut.layout["last"].offset == 32
