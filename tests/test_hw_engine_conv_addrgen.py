"""ConvAddressGenerator against ConvPattern.addresses, beat for beat, with random output stalls."""

import itertools
import math
import random
import re

import pytest
from amaranth.hdl import ResetInserter, Signal

from golden.config import WageConfig
from hw.engine.config import EngineConfig
from hw.engine.conv import MAX_DIGITS, ConvInstruction, ConvPattern, Drive, compile_conv_network
from hw.engine.conv_addrgen import ConvAddressGenerator, conv_pattern_payload
from tests.support import run_benches, seed_for

LANES = 4
TRUNCATE = 700           # beats checked per long compiled pattern (the prefix of its walk)


def expected_beats(p: ConvPattern, limit: int | None = None):
    """(addr, valid, t1, t2, tile_last, last) per beat: ConvPattern.addresses() plus the loop counters."""
    loops = itertools.product(range(p.n1), range(p.n2), range(p.nk), range(p.nr))
    beats = []
    for i, ((addr, valid), (t1, t2, k, r)) in enumerate(zip(p.addresses(LANES), loops)):
        if limit is not None and i >= limit:
            break
        beats.append((addr, int(valid), t1, t2, int(k == p.nk - 1 and r == p.nr - 1), int(i == p.length - 1)))
    return beats


def run(jobs, stall_seed, stall=0.3, payload_held=False, hold=None, digits=(MAX_DIGITS, MAX_DIGITS)):
    """``jobs``: (pattern, beats to check). A truncated job is aborted by a one-cycle reset once its
    prefix is taken (the next command waits for it); a whole job's successor is offered as soon as
    the generator takes commands again, so a command lands while earlier beats still drain.
    The next payload is put on ``cmd`` while the previous pattern walks, unless ``hold`` (by default
    ``payload_held``, the generator's option) keeps it until the generator takes commands again.
    Returns (got, expected, cycle of each taken beat)."""
    hold = payload_held if hold is None else hold
    dut = ConvAddressGenerator(LANES, payload_held=payload_held, digits=digits)
    rst = Signal()
    top = ResetInserter({"sync": rst})(dut)
    rng = random.Random(stall_seed)
    got, taken_at = [], []
    expected = sum((expected_beats(p, n) for p, n in jobs), [])
    payloads = [conv_pattern_payload(p) for p, _ in jobs]

    async def bench(ctx):
        cycle, sent, held, ready = 0, 0, None, None
        for j, (p, n) in enumerate(jobs):
            end = len(got) + n
            while len(got) < end:
                # the next command is offered once every truncated job before it has been aborted
                offer = sent < len(jobs) and (sent <= j or all(q.length == k for q, k in jobs[j:sent]))
                offer = offer and (not hold or ctx.get(dut.cmd.ready))
                if offer:
                    ctx.set(dut.cmd.payload, payloads[sent])
                ctx.set(dut.cmd.valid, offer)
                r = rng.random() >= stall
                if r != ready:
                    ctx.set(dut.o.ready, r)
                    ready = r
                taken = offer and ctx.get(dut.cmd.ready)      # sampled before the edge
                valid, pl = ctx.get(dut.o.valid), ctx.get(dut.o.payload)
                assert not (valid and ctx.get(dut.drained)), "drained while a beat waits"
                beat = (pl.addr, pl.valid, pl.t1, pl.t2, pl.tile_last, pl.last)
                if held is not None:
                    assert valid and beat == held, "a beat changed or vanished before it was taken"
                await ctx.tick()
                cycle += 1
                assert cycle - (taken_at[-1] if taken_at else 0) < 1000, "no beat for 1000 cycles: one was lost"
                sent += taken
                if valid:
                    held = None if ready else beat
                    if ready:
                        got.append(beat)
                        taken_at.append(cycle)
            if n < p.length:                                   # abort the rest of the walk
                ctx.set(dut.cmd.valid, 0)
                ctx.set(rst, 1)
                await ctx.tick()
                ctx.set(rst, 0)
                held = None
        ctx.set(dut.cmd.valid, 0)
        ctx.set(dut.o.ready, 1)
        for _ in range(8):                                     # nothing more comes
            await ctx.tick()
            assert not ctx.get(dut.o.valid)
        assert ctx.get(dut.drained)

    run_benches(top, bench)
    return got, expected, taken_at


# ---- (1) every pattern the conv compiler emits ----------------------------------------------------

NETWORKS = {"lenet": "8C5-MP2-16C3p-MP2-32FC-10", "same-first": "4C3p-8C5-MP2-10"}


def compiled_patterns(net: str, fold: bool):
    wage = WageConfig(net=net, input_shape=(1, 28, 28), batch_size=6)
    program = compile_conv_network(EngineConfig(wage=wage, lanes=LANES, data_words=1 << 16, fold_input=fold))
    seen = {}
    for ins in program.instructions:
        if isinstance(ins, ConvInstruction):
            for name in ("a", "b", "out", "aux", "draw"):
                p = getattr(ins, name)
                if isinstance(p, ConvPattern):
                    seen.setdefault(p, f"{ins} {name}")
    return list(seen.items())


def test_compiled_patterns_cover_every_kind():
    pats = [p for net in NETWORKS.values() for fold in (False, True) for p, _ in compiled_patterns(net, fold)]
    drives = {p.pos_drive for p in pats} | {p.tap_drive for p in pats}
    assert {Drive.T1R, Drive.K, Drive.T2, Drive.NONE} <= drives
    assert {(p.pos_drive, p.tap_drive) for p in pats} >= {(Drive.T1R, Drive.K), (Drive.T1R, Drive.NONE),
                                                          (Drive.T1R, Drive.T2), (Drive.K, Drive.T2),
                                                          (Drive.K, Drive.NONE), (Drive.NONE, Drive.K)}
    pooled = [p for p in pats if p.pos_drive == Drive.T1R and len(p.pos_radix) == 5]     # window-major digits
    unpooled = [p for p in pats if p.pos_drive == Drive.T1R and p.tap_drive == Drive.K and len(p.pos_radix) == 3]
    assert pooled and unpooled
    assert any(not all(v for v in p.address_array(LANES)[1].flat) for p in pats)          # padding: invalid beats


def checked_beats(p: ConvPattern) -> int:
    """Beats checked of a compiled pattern: all of a short one, else the first TRUNCATE, or up to just
    past the first t2 step when that comes soon enough (the CONV_GRAD patterns' K × T2 walk)."""
    if p.length <= TRUNCATE:
        return p.length
    t2_step = p.nk * p.nr
    return t2_step + 16 if TRUNCATE < t2_step <= 2 * TRUNCATE else TRUNCATE


def test_compiled_patterns():
    """Every pattern the compiler emits for both networks (each once), whole or its prefix, in one run."""
    rng = random.Random(seed_for("conv-addrgen-compiled"))
    pats = list(dict.fromkeys(p for net in NETWORKS.values() for fold in (False, True)
                              for p, _ in compiled_patterns(net, fold)))
    jobs = [(p, checked_beats(p)) for p in pats]
    got, expected, _ = run(jobs, rng.randrange(1 << 30), stall=0.15)
    start = 0
    for p, n in jobs:
        assert got[start:start + n] == expected[start:start + n], f"pattern {p}"
        start += n
    assert len(got) == len(expected)


# ---- (2) random small valid patterns ---------------------------------------------------------------

def random_odometer(rng, drive, loop_range):
    if drive == Drive.NONE:
        return (), (), ()
    n = rng.randint(1, 6)
    radix = [rng.choice([1, 1, 2, 2, 3, 4]) for _ in range(n)]
    radix[0] = max(radix[0], -(-loop_range // math.prod(radix[1:])))     # the top digit never wraps
    addr = tuple(rng.choice([rng.randrange(-300, 300), rng.randrange(-(1 << 24), 1 << 24)]) for _ in range(n))
    coord = tuple(tuple(rng.choice([0, 0, 1, -1, 2, rng.randrange(-40, 40)]) for _ in range(3)) for _ in range(n))
    return tuple(radix), addr, coord


def random_pattern(rng, wide=True):
    """``wide``: coordinate bases anywhere in 16 bits and limits up to 2^16 − 1, where only the walk's
    unsigned compare of the wrapped sum defines validity (the closed form compares true integers: the
    two agree only for limits ≤ 2^15 and sums inside the signed 16-bit range)."""
    n1, n2, nk, nr = (rng.randint(1, 3) for _ in range(4))
    loop_range = {Drive.T1R: n1 * nr, Drive.K: nk, Drive.T2: n2, Drive.NONE: 0}
    fields = {}
    for odo in ("pos", "tap"):
        drive = rng.choice([Drive.NONE, Drive.T1R, Drive.K, Drive.T2])
        radix, addr, coord = random_odometer(rng, drive, loop_range[drive])
        fields.update({f"{odo}_drive": drive, f"{odo}_radix": radix, f"{odo}_addr": addr, f"{odo}_coord": coord})
    big = 1 << 24
    return ConvPattern(base=rng.choice([rng.randrange(1 << 20), rng.randrange(-big, big)]),
                       s1=rng.randrange(-5000, 5000), s2=rng.randrange(-300, 300), n1=n1, n2=n2, nk=nk, nr=nr,
                       coord_base=tuple(rng.choice([0, rng.randrange(-4, 4)] + wide * [rng.randrange(-(1 << 15), 1 << 15)])
                                        for _ in range(3)),
                       coord_lim=tuple(rng.choice([1, rng.randint(1, 6), 1 << 15])
                                       for _ in range(3)),
                       **fields)


@pytest.mark.parametrize("stall", [0.4, 0.9])      # 0.9: the walk's FIFO fills and its credit stops it
def test_random_patterns_with_stalls(stall):
    rng = random.Random(seed_for("conv-addrgen-random"))
    patterns = [random_pattern(rng) for _ in range(60)]
    got, expected, _ = run([(p, p.length) for p in patterns], rng.randrange(1 << 30), stall=stall)
    assert got == expected
    assert 0 < sum(b[1] for b in expected) < len(expected)          # both valid and invalid beats


def test_closed_form_agrees_on_the_random_patterns():
    """The reference itself: the incremental walk equals the closed form (coordinates kept in range)."""
    rng = random.Random(seed_for("conv-addrgen-closed-form"))
    for _ in range(60):
        p = random_pattern(rng, wide=False)
        address, valid = p.address_array(LANES)
        assert [(a, int(v)) for a, v in zip(address.flat, valid.flat)] == [b[:2] for b in expected_beats(p)]


# ---- (3) full rate, latency; (4) the checker can fail; (5) bad lanes ------------------------------

def full_rate_patterns():
    a = ConvPattern(base=7, s1=100, s2=1, n1=3, n2=2, nk=4, nr=4,
                    pos_drive=Drive.T1R, pos_radix=(2, 3, 2, 2), pos_addr=(1000, 40, 2, 20),
                    pos_coord=((0, 0, 1), (1, 0, 0), (0, 0, 0), (0, 1, 0)),
                    tap_drive=Drive.K, tap_radix=(2, 2), tap_addr=(-10, 1), tap_coord=((1, 0, 0), (0, 1, 0)),
                    coord_base=(-1, 0, 0), coord_lim=(3, 3, 2))
    b = ConvPattern(base=3, n1=2, n2=3, nk=5, nr=1, pos_drive=Drive.K, pos_radix=(2, 3), pos_addr=(9, 1),
                    pos_coord=((0, 0, 0), (1, 0, 0)), tap_drive=Drive.T2, tap_radix=(3,), tap_addr=(100,),
                    tap_coord=((0, 0, 0),), coord_lim=(2, 1, 1))
    return [a, b]


def test_full_rate_and_latency():
    pats = full_rate_patterns()
    got, expected, taken_at = run([(p, p.length) for p in pats], 0, stall=0.0)
    assert got == expected
    first = 0
    for p in pats:
        cycles = taken_at[first:first + p.length]
        assert cycles == list(range(cycles[0], cycles[0] + p.length)), "one beat per cycle while o.ready is high"
        first += p.length
    # command taken at edge 1; PREP, INIT, stage 1, output stage, the FIFO's write and its output
    # register: o.valid from edge 7, taken at edge 8
    assert taken_at[0] == 8
    assert taken_at[pats[0].length] - taken_at[pats[0].length - 1] == 4     # 3 idle cycles between patterns


def test_a_wrong_expectation_is_caught():
    pats = full_rate_patterns()
    got, expected, _ = run([(p, p.length) for p in pats], 5)
    assert got == expected
    for field in range(6):                                     # any field of any beat
        bad = list(expected)
        i = 7 + 13 * field
        bad[i] = bad[i][:field] + (bad[i][field] ^ 1,) + bad[i][field + 1:]
        assert got != bad
    other = ConvPattern(**{**pats[0].__dict__, "tap_addr": (-10, 2)})   # a different pattern: different beats
    assert expected_beats(other) != got[:pats[0].length]


@pytest.mark.parametrize("lanes", [12, 0, -4, True, "4"])
def test_bad_lanes_are_named(lanes):
    with pytest.raises(ValueError, match=f"lanes={lanes!r}"):
        ConvAddressGenerator(lanes)


# ---- (6) payload_held: the walk reads the held payload, no copy ------------------------------------

def test_held_payload_walks_the_same_beats():
    rng = random.Random(seed_for("conv-addrgen-held"))
    patterns = [random_pattern(rng) for _ in range(30)] + full_rate_patterns()
    got, expected, _ = run([(p, p.length) for p in patterns], rng.randrange(1 << 30), payload_held=True)
    assert got == expected


def test_held_payload_is_read_during_the_walk():
    """Without the hold, the next pattern's payload reaches a running walk of a payload_held
    generator (it keeps no copy), and a copying generator ignores it."""
    pats = full_rate_patterns()
    jobs = [(p, p.length) for p in pats]
    got, expected, _ = run(jobs, 3, payload_held=True, hold=False)
    assert got != expected
    got, expected, _ = run(jobs, 3, payload_held=False, hold=False)
    assert got == expected


@pytest.mark.parametrize("flag", [1, None, "yes"])
def test_bad_payload_held_is_named(flag):
    with pytest.raises(TypeError, match=f"payload_held={flag!r}"):
        ConvAddressGenerator(LANES, payload_held=flag)


def test_payload_helper_rejects_a_plain_address_pattern():
    from hw.engine.isa import AddressPattern
    with pytest.raises(TypeError, match="pattern=AddressPattern"):
        conv_pattern_payload(AddressPattern())


# ---- (7) digits: odometers built with only the digits the patterns use -------------------------------

def needed_digits(patterns):
    return (max(len(p.pos_radix) for p in patterns), max(len(p.tap_radix) for p in patterns))


def test_fewer_digits_walk_the_same_beats():
    rng = random.Random(seed_for("conv-addrgen-digits"))
    digits = (4, 3)
    shallow = (p for p in iter(lambda: random_pattern(rng), None) if all(n <= d for n, d in zip(needed_digits([p]), digits)))
    patterns = [next(shallow) for _ in range(30)] + full_rate_patterns()
    assert needed_digits(patterns) == digits
    got, expected, _ = run([(p, p.length) for p in patterns], rng.randrange(1 << 30), digits=digits,
                           payload_held=True)
    assert got == expected


def test_a_pattern_deeper_than_the_odometer_walks_wrongly():
    """The digits are really left out: a pattern that moves one more digit than built walks other
    beats (the engine refuses such a record before it reaches a slot)."""
    pats = full_rate_patterns()
    pos, tap = needed_digits(pats)
    got, expected, _ = run([(p, p.length) for p in pats], 1, digits=(pos - 1, tap))
    assert got != expected


@pytest.mark.parametrize("digits", [(0, 2), (2, MAX_DIGITS + 1), (3,), [2, 2], (2, True)])
def test_bad_digits_are_named(digits):
    """… by the generator, and when the slot and the readers around it are made (not at elaboration)."""
    from hw.engine.feeder import OperandFeeder, PatternReader
    from hw.engine.slot import SlotGenerator
    for make in (lambda: ConvAddressGenerator(LANES, digits=digits), lambda: SlotGenerator(LANES, digits=digits),
                 lambda: PatternReader(LANES, 8, digits=digits), lambda: OperandFeeder(LANES, digits=digits)):
        with pytest.raises(ValueError, match=f"digits={re.escape(repr(digits))}"):
            make()
