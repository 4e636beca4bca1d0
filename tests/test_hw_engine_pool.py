"""WindowPool against golden.ops.maxpool2 (ties to the first maximum), with random stalls."""

import random

import numpy as np
import pytest

from golden.ops import maxpool2
from hw.engine.pool import WindowPool
from tests.support import run_benches, seed_for


def run(rows, lanes, width, seed, stall=0.3):
    dut = WindowPool(lanes, width)
    rng = random.Random(seed)
    got = []

    async def feed(ctx):
        for row in rows:
            ctx.set(dut.i.payload.data, [int(v) for v in row])
            ctx.set(dut.i.valid, 1)
            while True:                  # ready depends on the drain's o.ready: sample it at the edge
                _, _, taken = await ctx.tick().sample(dut.i.ready)
                if taken:
                    break
            ctx.set(dut.i.valid, 0)
            if rng.random() < stall:
                await ctx.tick()

    async def drain(ctx):
        while len(got) < len(rows) // 4:
            ready = rng.random() >= stall
            ctx.set(dut.o.ready, ready)
            _, _, valid, d, idx = await ctx.tick().sample(dut.o.valid, dut.o.payload.data, dut.o.payload.idx)
            if ready and valid:
                got.append(([int(d[j]) for j in range(lanes)], [int(idx[j]) for j in range(lanes)]))

    run_benches(dut, feed, drain)
    return got


def golden_windows(rows, lanes):
    """Rows are window-major: window w's rows 4w..4w+3 are (dy, dx) = (0,0), (0,1), (1,0), (1,1)."""
    x = np.asarray(rows).reshape(-1, 2, 2, lanes).transpose(0, 3, 1, 2)     # (windows, lanes, 2, 2)
    pooled, idx = maxpool2(x)                                                # (windows, lanes, 1, 1)
    return [(list(map(int, p)), list(map(int, i))) for p, i in zip(pooled[..., 0, 0], idx[..., 0, 0])]


@pytest.mark.parametrize("lanes, width", [(4, 25), (1, 8), (8, 12)])
def test_pool_matches_golden_with_ties(lanes, width):
    rng = random.Random(seed_for(f"pool-{lanes}"))
    lim = 1 << (width - 1)
    rows = []
    for w in range(40):
        kind = w % 4
        for _ in range(4):
            if kind == 0:        # ties everywhere: all four equal
                rows.append([5] * lanes)
            elif kind == 1:      # few distinct values: many ties
                rows.append([rng.choice([-3, 0, 3]) for _ in range(lanes)])
            else:                # extremes
                rows.append([rng.choice([-lim, lim - 1, rng.randrange(-lim, lim)]) for _ in range(lanes)])
    want = golden_windows(rows, lanes)
    got = run(rows, lanes, width, rng.randrange(1 << 30))
    assert got == want
    bad = list(want)
    bad[1] = (bad[1][0], [(bad[1][1][0] + 1) % 4] + bad[1][1][1:])
    assert got != bad                   # the comparison sees a wrong index


def test_bad_parameters_are_named():
    with pytest.raises(ValueError, match="lanes=0"):
        WindowPool(0, 8)
    with pytest.raises(ValueError, match="width=1"):
        WindowPool(4, 1)
