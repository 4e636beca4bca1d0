"""Unpool stage against golden.ops.maxpool2_backward's scatter, with stalls on both sides."""

import random

import numpy as np
import pytest

from golden.ops import maxpool2_backward
from hw.engine.unpool import Unpool
from tests.support import run_benches, seed_for


def expected_writes(words, lanes, dx, dy):
    out = []
    for data, idx, addr, valid in words:
        if not valid:
            continue
        # golden scatter of one window per lane: (1, lanes, 1, 1) errors and indices → (1, lanes, 2, 2)
        win = maxpool2_backward(np.array(data).reshape(1, lanes, 1, 1), np.array(idx).reshape(1, lanes, 1, 1))
        for k, off in enumerate((0, dx, dy, dy + dx)):
            dy_k, dx_k = divmod(k, 2)
            out.append(([int(v) for v in win[0, :, dy_k, dx_k]], (addr + off) % (1 << 24)))
    return out


@pytest.mark.parametrize("lanes", [1, 4, 8])
def test_unpool_scatters_like_golden(lanes):
    rng = random.Random(seed_for(f"unpool-{lanes}"))
    dx, dy = rng.randint(1, 5), rng.randint(6, 60)
    words = [([rng.randint(-127, 127) for _ in range(lanes)], [rng.randrange(4) for _ in range(lanes)],
              rng.randrange(1 << 24), rng.random() > 0.2) for _ in range(40)]
    want = expected_writes(words, lanes, dx, dy)
    dut = Unpool(lanes)
    got = []

    async def feed(ctx):
        ctx.set(dut.dx, dx)
        ctx.set(dut.dy, dy)
        for data, idx, addr, valid in words:
            ctx.set(dut.i.payload, {"data": data, "idx": idx, "addr": addr, "valid": int(valid)})
            ctx.set(dut.i.valid, 1)
            while True:
                _, _, taken = await ctx.tick().sample(dut.i.ready)
                if taken:
                    break
            ctx.set(dut.i.valid, 0)
            while rng.random() < 0.2:
                await ctx.tick()

    async def drain(ctx):
        for _ in range(4000):
            ready = rng.random() > 0.3
            ctx.set(dut.o.ready, ready)
            _, _, valid, d, a = await ctx.tick().sample(dut.o.valid, dut.o.payload.data, dut.o.payload.addr)
            if valid and ready:
                got.append(([int(d[j]) for j in range(lanes)], int(a)))
            if len(got) == len(want):
                break

    run_benches(dut, feed, drain)
    assert got == want
    bad = list(want)
    bad[2] = (bad[2][0], bad[2][1] ^ 1)
    assert got != bad


def test_bad_lanes_are_named():
    with pytest.raises(ValueError, match="lanes=0"):
        Unpool(0)
