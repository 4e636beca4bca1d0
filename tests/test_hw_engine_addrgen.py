"""Address generator against AddressPattern.addresses, with random output stalls."""

import random

import pytest

from hw.engine.addrgen import AddressGenerator
from hw.engine.isa import AddressPattern, RowSel
from tests.support import run_benches, seed_for


def random_pattern(rng, lanes):
    return AddressPattern(base=rng.randrange(1 << 20), s1=rng.randrange(5000), s2=rng.randrange(300),
                          sk=rng.randrange(40), sr=rng.randrange(9), n1=rng.randint(1, 3), n2=rng.randint(1, 3),
                          nk=rng.randint(1, 4), nr=rng.choice([1, lanes]), lim=rng.randrange(3 * lanes + 2),
                          klim=rng.randrange(6), row_sel=rng.choice([RowSel.NONE, RowSel.T1, RowSel.T2]))


def expected_beats(p, lanes):
    beats, i, n = [], 0, p.length
    for t1 in range(p.n1):
        for t2 in range(p.n2):
            for k in range(p.nk):
                for r in range(p.nr):
                    sel = (0, t1, t2)[p.row_sel]
                    valid = sel * lanes + r < p.lim and k < p.klim
                    addr = (p.base + t1 * p.s1 + t2 * p.s2 + k * p.sk + r * p.sr) % (1 << 24)
                    i += 1
                    beats.append((addr, int(valid), t1, t2, int(k == p.nk - 1 and r == p.nr - 1), int(i == n)))
    return beats


def run(patterns, lanes, stall_seed, stall=0.3, payload_held=False, hold=None):
    """The beats of ``patterns`` walked in turn. The next payload is put on ``cmd`` right after the
    handshake, unless ``hold`` (by default ``payload_held``) keeps it until ``cmd.ready`` rises again."""
    hold = payload_held if hold is None else hold
    dut = AddressGenerator(lanes, payload_held=payload_held)
    rng = random.Random(stall_seed)
    got = []
    expected = sum((expected_beats(p, lanes) for p in patterns), [])

    async def feed(ctx):
        for p in patterns:
            while hold and not ctx.get(dut.cmd.ready):
                await ctx.tick()
            ctx.set(dut.cmd.payload, {name: getattr(p, name) for name in
                                      ("base", "s1", "s2", "sk", "sr", "n1", "n2", "nk", "nr", "lim", "klim", "row_sel")})
            ctx.set(dut.cmd.valid, 1)
            while True:
                taken = ctx.get(dut.cmd.ready)          # ready is a register output: sample before the edge
                await ctx.tick()
                if taken:
                    break
            ctx.set(dut.cmd.valid, 0)

    async def drain(ctx):
        while len(got) < len(expected):
            ready = rng.random() >= stall
            ctx.set(dut.o.ready, ready)
            valid, pl = ctx.get(dut.o.valid), ctx.get(dut.o.payload)     # sampled before the edge
            await ctx.tick()
            if ready and valid:
                got.append((pl.addr, pl.valid, pl.t1, pl.t2, pl.tile_last, pl.last))
        for _ in range(5):                   # nothing more comes
            ctx.set(dut.o.ready, 1)
            await ctx.tick()
            assert not ctx.get(dut.o.valid)

    run_benches(dut, feed, drain)
    return got, expected


@pytest.mark.parametrize("lanes", [1, 4, 16])
def test_random_patterns_with_stalls(lanes):
    rng = random.Random(seed_for(f"addrgen-{lanes}"))
    patterns = [random_pattern(rng, lanes) for _ in range(12)]
    got, expected = run(patterns, lanes, rng.randrange(1 << 30))
    assert got == expected


def test_full_rate_and_a_wrong_expectation_is_caught():
    p = AddressPattern(base=7, s1=100, sk=1, sr=10, n1=2, nk=3, nr=4, lim=6, row_sel=RowSel.T1)
    got, expected = run([p], 4, 0, stall=0.0)
    assert got == expected
    bad = list(expected)
    bad[5] = (bad[5][0] ^ 1,) + bad[5][1:]
    assert got != bad


def test_bad_lanes_are_named():
    with pytest.raises(ValueError, match="lanes=12"):
        AddressGenerator(12)


def test_held_payload_walks_the_same_beats():
    rng = random.Random(seed_for("addrgen-held"))
    patterns = [random_pattern(rng, 4) for _ in range(12)]
    got, expected = run(patterns, 4, rng.randrange(1 << 30), payload_held=True)
    assert got == expected


def test_held_payload_is_read_during_the_walk():
    """Without the hold, the next payload reaches a running walk of a payload_held generator (it
    keeps no copy); a copying generator ignores it."""
    p = AddressPattern(base=7, s1=100, sk=1, sr=10, n1=2, nk=3, nr=4, lim=6, row_sel=RowSel.T1)
    q = AddressPattern(base=900, s1=3, sk=50, sr=1, n1=1, nk=2, nr=4, lim=16)
    got, expected = run([p, q], 4, 0, payload_held=True, hold=False)
    assert got != expected
    got, expected = run([p, q], 4, 0, payload_held=False, hold=False)
    assert got == expected


@pytest.mark.parametrize("flag", [1, None, "yes"])
def test_bad_payload_held_is_named(flag):
    with pytest.raises(TypeError, match=f"payload_held={flag!r}"):
        AddressGenerator(4, payload_held=flag)
