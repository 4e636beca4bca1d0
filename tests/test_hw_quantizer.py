"""hw/quantizer.py (ShiftQuantizer) against golden.quant / golden.prng in the Amaranth simulator.

Every mode runs on random tensors plus the hard cases — exact ties (half an LSB, odd and even
floors), saturation edges, all-zero tensors, the largest sums ±(2^(acc_width−1)−1) (and −2^(acc_width−1)),
exponent thresholds ⌊√2·2^n⌋ and ⌊√2·2^n⌋+1, negative shifts — with seeded random stalls on the
command, input and output streams. The seed of each test is printed (pytest -s shows it).
"""

from __future__ import annotations

import random
import zlib

import numpy as np
import pytest
from amaranth.sim import Simulator

from golden.config import WageConfig
from golden.prng import sr_draws
from golden.quant import quantize_activation, quantize_error, quantize_gradient, sqrt2_threshold
from hw.quantizer import Mode, ShiftQuantizer

BASE_SEED = 0x5EED_0A7E


def seed_for(name: str) -> int:
    seed = BASE_SEED ^ zlib.crc32(name.encode())
    print(f"{name}: seed={seed:#x}")
    return seed


# -------------------------------------------------------------------------------------------------
# Driver: one simulation runs a list of jobs (command, flat tensor) back to back.
# -------------------------------------------------------------------------------------------------

def simulate(dut: ShiftQuantizer, jobs, *, seed: int, p_in=0.3, p_out=0.3, indices=None):
    """Run ``jobs`` = [(cmd dict, int array)] through ``dut``; return one result dict per job.

    The producer sends each command, then the tensor once (Q_A) or twice (Q_E, Q_G: the
    store-then-quantise contract). The consumer checks the stream rules: once ``o.valid`` is high,
    it and the payload stay unchanged until the transfer.
    """
    lanes = dut.lanes
    rng_in, rng_out = random.Random(seed), random.Random(seed + 1)
    beats_expected = sum(-(-len(t) // lanes) for c, t in jobs)
    got: list[dict] = []
    cycle = [0]

    def beats(t):
        t = [int(v) for v in t]
        t += [0] * (-len(t) % lanes)
        return [t[k:k + lanes] for k in range(0, len(t), lanes)]

    async def producer(ctx):
        for cmd, tensor in jobs:
            while rng_in.random() < p_in:
                await ctx.tick()
            ctx.set(dut.cmd.valid, 1)
            ctx.set(dut.cmd.payload, cmd)
            await ctx.tick().until(dut.cmd.ready)
            ctx.set(dut.cmd.valid, 0)
            passes = 1 if cmd["mode"] == Mode.QA else 2
            for _ in range(passes if len(tensor) else 0):
                for beat in beats(tensor):
                    while rng_in.random() < p_in:
                        await ctx.tick()
                    ctx.set(dut.i.valid, 1)
                    ctx.set(dut.i.payload, {"data": beat})
                    await ctx.tick().until(dut.i.ready)
                    ctx.set(dut.i.valid, 0)

    async def consumer(ctx):
        held = None
        while len(got) < beats_expected:
            ready = rng_out.random() >= p_out
            ctx.set(dut.o.ready, ready)
            _, _, valid, payload = await ctx.tick().sample(dut.o.valid, dut.o.payload)
            cycle[0] += 1
            assert cycle[0] < 200_000, "simulation did not finish"
            if held is not None:
                assert valid, "o.valid dropped before the transfer"
                assert payload.as_value().value == held, "o.payload changed while stalled"
            held = None
            if valid and ready:
                got.append(payload)
            elif valid:
                held = payload.as_value().value

    async def index_feeder(ctx):             # draw_index="stream": first element index of each Q_G beat
        rng_idx = random.Random(seed + 2)
        for first in indices:
            while rng_idx.random() < p_in:
                await ctx.tick()
            ctx.set(dut.index.valid, 1)
            ctx.set(dut.index.payload, first)
            await ctx.tick().until(dut.index.ready)
            ctx.set(dut.index.valid, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(producer, background=True)
    if indices is not None:
        sim.add_testbench(index_feeder, background=True)
    sim.add_testbench(consumer)
    sim.run()

    results, k = [], 0
    for cmd, tensor in jobs:
        nb = -(-len(tensor) // lanes)
        mine = got[k:k + nb]
        k += nb
        n = len(tensor)
        flat = lambda f: np.array([f(p, j) for p in mine for j in range(lanes)], dtype=np.int64)
        res = dict(
            data=flat(lambda p, j: p.data[j]),
            relu=flat(lambda p, j: (p.relu >> j) & 1),
            sat=flat(lambda p, j: (p.sat >> j) & 1),
            keep=flat(lambda p, j: (p.keep >> j) & 1),
            last=[int(p.last) for p in mine],
            zero={int(p.zero) for p in mine},
            exp={int(p.exp) for p in mine},
        )
        if n == 0:                               # count = 0: no beats at all
            assert not mine
            results.append(None)
            continue
        assert res["keep"][:n].all() and not res["keep"][n:].any(), "keep must mark exactly the tensor"
        assert not res["data"][n:].any(), "lanes beyond count must carry 0"
        assert res["last"] == [0] * (nb - 1) + [1], "last must mark exactly the final beat"
        assert len(res["zero"]) == 1 and len(res["exp"]) == 1, "zero/exp must be constant over a tensor"
        res["zero"], res["exp"] = res["zero"].pop(), res["exp"].pop()
        for key in ("data", "relu", "sat"):
            res[key] = res[key][:n]
        results.append(res)
    return results


def cmd(mode, count, *, relu=1, shift=0, eta_log2=0, seed=0, step=0, layer=0):
    return dict(mode=mode, relu=relu, shift=shift, eta_log2=eta_log2, count=count,
                seed=seed, step=step, layer=layer)


# -------------------------------------------------------------------------------------------------
# Expected values (golden model only)
# -------------------------------------------------------------------------------------------------

def check_qa(cfg, c, p, res):
    a, relu_mask, sat_mask = quantize_activation(p, c["shift"], cfg.kA, relu=bool(c["relu"]))
    np.testing.assert_array_equal(res["data"], a, err_msg=f"Q_A data, shift={c['shift']} relu={c['relu']}")
    np.testing.assert_array_equal(res["sat"], sat_mask.astype(int), err_msg="Q_A saturation mask")
    np.testing.assert_array_equal(res["relu"], (p > 0).astype(int), err_msg="Q_A relu mask")
    assert res["zero"] == 0 and res["exp"] == 0


def check_qe(cfg, c, d, res):
    e, n = quantize_error(d, cfg.kE)
    np.testing.assert_array_equal(res["data"], e, err_msg=f"Q_E data (n={n})")
    assert res["zero"] == (n is None)
    assert res["exp"] == (0 if n is None else n)
    assert not res["sat"].any() and not res["relu"].any()


def check_qg(cfg, c, g, res):
    draws = sr_draws(c["seed"], c["step"], c["layer"], len(g), cfg.sr_bits)
    dw, q = quantize_gradient(g, c["eta_log2"], draws, cfg.sr_bits)
    np.testing.assert_array_equal(res["data"], dw, err_msg=f"Q_G data (q={q})")
    assert res["zero"] == (q is None)
    assert res["exp"] == (0 if q is None else q)


CHECK = {Mode.QA: check_qa, Mode.QE: check_qe, Mode.QG: check_qg}


def run_and_check(cfg, dut, jobs, seed, **kw):
    results = simulate(dut, jobs, seed=seed, **kw)
    for (c, t), res in zip(jobs, results):
        if res is not None:
                CHECK[c["mode"]](cfg, c, np.asarray(t, dtype=np.int64), res)


# -------------------------------------------------------------------------------------------------
# Tensor generators
# -------------------------------------------------------------------------------------------------

def qa_tensor(rng, aw, r, lim, n=60):
    big = (1 << (aw - 1)) - 1
    rr = min(r, aw - 2)
    vals = list(rng.integers(-big, big + 1, n // 3))                      # full range
    vals += list(rng.integers(-(lim + 2) << rr, (lim + 2) << rr, n // 3) if rr >= 0 else [])
    if r >= 1 and r <= aw - 3:
        half = 1 << (r - 1)
        for k in (0, 1, 2, 3, lim - 2, lim - 1, lim, -1, -2, -lim, -lim - 1):
            vals += [(k << r) + half, (k << r) - half]                         # ties, odd and even floors
    if r <= aw - 3 - (lim.bit_length()):
        for v in ((lim << r), (lim << r) + 1, (lim << r) - 1, -(lim << r), -(lim << r) - 1):
            vals.append(v)                                                     # saturation-mask edges
    vals += [0, 1, -1, big, -big, -big - 1]                                    # largest sums
    vals = [max(-big - 1, min(big, int(v))) for v in vals]
    rng.shuffle(vals)
    return np.array(vals, dtype=np.int64)


def scaled_tensor(rng, aw, m, n=48, ties_at=None):
    """A tensor with max |x| = m exactly; with ties_at = s, elements sitting on half-LSB ties of s.

    m = 2^(aw−1) is only reachable as −m (the one asymmetric code)."""
    top = min(m, (1 << (aw - 1)) - 1)
    vals = list(rng.integers(-m, top + 1, n))
    if ties_at is not None and ties_at >= 1:
        half = 1 << (ties_at - 1)
        for k in range(-4, 4):
            v = (k << ties_at) + half
            if -m <= v <= top:
                vals.append(v)
    vals.append(m if rng.random() < 0.5 and m == top else -m)
    rng.shuffle(vals)
    return np.array(vals, dtype=np.int64)


# -------------------------------------------------------------------------------------------------
# Tests
# -------------------------------------------------------------------------------------------------

CFG = WageConfig()                  # kA = kE = kG = 8, sr_bits = 16, η ∈ {8, 1, 1/8}


@pytest.mark.parametrize("aw,lanes", [(14, 4), (34, 4), (21, 3)])
def test_qa(aw, lanes):
    seed = seed_for(f"qa-{aw}-{lanes}")
    rng = np.random.default_rng(seed)
    dut = ShiftQuantizer(CFG, lanes, acc_width=aw)
    jobs = []
    for r in (0, 1, 2, 5, 6, aw - 2, aw, 63):
        for relu in (1, 0):
            t = qa_tensor(rng, aw, r, CFG.a_max)
            jobs.append((cmd(Mode.QA, len(t), relu=relu, shift=r), t))
    run_and_check(CFG, dut, jobs, seed)


@pytest.mark.parametrize("aw,lanes", [(14, 4), (34, 2), (20, 8), (20, 5), (34, 1)])   # max trees of 2, 1, 3, 3, 0 levels
def test_qe(aw, lanes):
    seed = seed_for(f"qe-{aw}-{lanes}")
    rng = np.random.default_rng(seed)
    dut = ShiftQuantizer(CFG, lanes, acc_width=aw)
    big = (1 << (aw - 1)) - 1
    maxima = [1, 2, 3, 5, 90, 127, 181, 182, 1000]                 # small: left shifts (n < kE−1)
    maxima += [sqrt2_threshold(n) + d for n in (9, aw - 3) for d in (0, 1)]
    maxima += [big, big + 1]
    jobs = []
    for m in maxima:
        from golden.quant import shift_exponent
        s = shift_exponent(min(m, big)) - (CFG.kE - 1)
        t = scaled_tensor(rng, aw, m, ties_at=s)
        jobs.append((cmd(Mode.QE, len(t)), t))
    jobs.append((cmd(Mode.QE, 37), np.zeros(37, dtype=np.int64)))  # all zero: zeros + flag
    jobs.append((cmd(Mode.QE, 1), np.array([-big])))
    run_and_check(CFG, dut, jobs, seed)


@pytest.mark.parametrize("cfg,aw,lanes,kw", [
    (CFG, 34, 4, {}),                               # one hash per beat (L = 4)
    (CFG, 20, 1, {}),                               # one hash per element, 4 draws reused
    (WageConfig(sr_bits=24, lr_schedule=((0, 2), (5, 0.25))), 30, 3, {}),   # L = 2, beats straddle hashes
    (WageConfig(sr_bits=5), 16, 2,                  # few SR bits: q > sr_bits truncates the fraction;
     dict(prng_rounds_per_stage=13, prng_key_stages=False)),                # 1-stage hash, 12-entry FIFO
    (CFG, 20, 2, dict(prng_split_rounds=False)),    # 17-stage hash (add and XOR in one stage), 28-entry FIFO
])
def test_qg(cfg, aw, lanes, kw):
    seed = seed_for(f"qg-{cfg.sr_bits}-{aw}-{lanes}")
    rng = np.random.default_rng(seed)
    dut = ShiftQuantizer(cfg, lanes, acc_width=aw, **kw)
    big = (1 << (aw - 1)) - 1
    jobs = []
    k = 0
    for eta in range(dut.eta_lo, dut.eta_hi + 1, max(1, (dut.eta_hi - dut.eta_lo) // 2)):
        for m in (1, 3, 6, 181, 182, 40_000, big, big + 1):      # q ≤ 0 (exact) up to q > sr_bits
            if m > big + 1:
                continue
            t = scaled_tensor(rng, aw, m, n=23 + k % 7)
            c = cmd(Mode.QG, len(t), eta_log2=eta, seed=int(rng.integers(0, 2**32)),
                    step=int(rng.integers(0, 2**32)), layer=k % 5)
            jobs.append((c, t))
            k += 1
    jobs.append((cmd(Mode.QG, 10, eta_log2=dut.eta_hi, seed=1, step=2, layer=3), np.zeros(10, dtype=np.int64)))
    run_and_check(cfg, dut, jobs, seed)


def test_qg_large_tensor_index_mapping():
    """Flat indices past one hash word and a non-zero element offset pattern: 1000 elements."""
    seed = seed_for("qg-large")
    rng = np.random.default_rng(seed)
    dut = ShiftQuantizer(CFG, 4, acc_width=24)
    g = rng.integers(-(1 << 22), 1 << 22, 1001)
    jobs = [(cmd(Mode.QG, len(g), eta_log2=3, seed=CFG.seed, step=7, layer=1), g)]
    run_and_check(CFG, dut, jobs, seed, p_in=0.1, p_out=0.1)


def test_mixed_back_to_back_and_count_zero():
    """Commands of all modes back to back (including count = 0) with heavy stalls."""
    seed = seed_for("mixed")
    rng = np.random.default_rng(seed)
    aw = 22
    dut = ShiftQuantizer(CFG, 4, acc_width=aw)
    jobs = []
    for k in range(9):
        mode = (Mode.QA, Mode.QE, Mode.QG)[k % 3]
        t = rng.integers(-(1 << (aw - 1)) + 1, 1 << (aw - 1), int(rng.integers(1, 14))) >> int(rng.integers(0, aw))
        jobs.append((cmd(mode, len(t), relu=k % 2, shift=int(rng.integers(0, 12)), eta_log2=int(rng.integers(-3, 4)),
                         seed=k, step=k * 3, layer=k), t))
        if k == 4:
            jobs.append((cmd(Mode.QA, 0), np.zeros(0, dtype=np.int64)))
    run_and_check(CFG, dut, jobs, seed, p_in=0.5, p_out=0.5)


def test_latency_and_throughput():
    """Without stalls pass 2 takes one beat per cycle and the first result appears `latency` later."""
    dut = ShiftQuantizer(CFG, 4, acc_width=20)
    t = np.arange(-200, 200, 1, dtype=np.int64) * 37
    beats = [t[k:k + 4].tolist() for k in range(0, len(t), 4)]
    for mode in (Mode.QA, Mode.QG, Mode.QE):
        ins, outs, got = [], [], []

        async def tb(ctx):
            ctx.set(dut.o.ready, 1)
            ctx.set(dut.cmd.payload, cmd(mode, len(t), shift=3, eta_log2=0, seed=5))
            ctx.set(dut.cmd.valid, 1)
            await ctx.tick().until(dut.cmd.ready)
            ctx.set(dut.cmd.valid, 0)
            queue = beats * (1 if mode == Mode.QA else 2)
            for cycle in range(1000):
                if queue:
                    ctx.set(dut.i.valid, 1)
                    ctx.set(dut.i.payload, {"data": queue[0]})
                else:
                    ctx.set(dut.i.valid, 0)
                _, _, ready, valid, payload = await ctx.tick().sample(dut.i.ready, dut.o.valid, dut.o.payload)
                if queue and ready:
                    queue.pop(0)
                    ins.append(cycle)
                if valid:
                    outs.append(cycle)
                    got.append([payload.data[j] for j in range(4)])
                if len(outs) == len(beats):
                    break

        sim = Simulator(dut)
        sim.add_clock(1e-8)
        sim.add_testbench(tb)
        sim.run()
        ins = ins[-len(beats):]                                    # pass 2
        assert ins == list(range(ins[0], ins[0] + len(beats))), "pass 2 must take one beat per cycle"
        assert outs == list(range(outs[0], outs[0] + len(beats))), "one result beat per cycle"
        assert outs[0] - ins[0] == dut.latency
        if mode == Mode.QA:
            want = quantize_activation(t, 3, CFG.kA)[0]
            np.testing.assert_array_equal(np.array(got).reshape(-1), want)
    q = _probe(CFG, 4, acc_width=20, prng_rounds_per_stage=13, prng_key_stages=False)
    assert q.latency == 6 and q.prng_latency == 1 and q.draw_depth == 12


@pytest.mark.parametrize("args,kwargs,exc,text", [
    ((None,), dict(acc_width=20), TypeError, "config=None"),
    ((CFG, 0), dict(acc_width=20), ValueError, "lanes=0"),
    ((CFG, 2.0), dict(acc_width=20), TypeError, "lanes=2.0"),
    ((CFG, 4), dict(acc_width=1), ValueError, "acc_width=1"),
    ((CFG, 4), dict(acc_width=65), ValueError, "acc_width=65"),
    ((CFG, 4), dict(acc_width=True), TypeError, "acc_width=True"),
    ((CFG, 4), dict(acc_width=20, eta_log2_range=(3, -3)), ValueError, "eta_log2_range=(3, -3)"),
    ((CFG, 4), dict(acc_width=20, eta_log2_range=3), TypeError, "eta_log2_range=3"),
    ((CFG, 4), dict(acc_width=20, prng_rounds_per_stage=0), ValueError, "prng_rounds_per_stage=0"),
    ((CFG, 4), dict(acc_width=20, prng_key_stages=None), TypeError, "prng_key_stages=None"),
    ((CFG, 4), dict(acc_width=20, prng_split_rounds="yes"), TypeError, "prng_split_rounds='yes'"),
    ((CFG, 4), dict(acc_width=20, prng_split_rounds=True, prng_rounds_per_stage=2), ValueError,
     "rounds_per_stage=2"),
    ((CFG, 257), dict(acc_width=20), ValueError, "lanes=257"),
])
def test_parameter_checks(args, kwargs, exc, text):
    with pytest.raises(exc, match=text.replace("(", r"\(").replace(")", r"\)")):
        ShiftQuantizer(*args, **kwargs)


def _probe(*args, **kwargs) -> ShiftQuantizer:
    """Build a quantizer only to read its derived widths (not elaborated: silence the lint)."""
    dut = ShiftQuantizer(*args, **kwargs)
    dut._MustUse__silence = True
    return dut


def test_widths_from_config():
    dut = _probe(CFG, 4, acc_width=34)
    assert (dut.eta_lo, dut.eta_hi) == (-3, 3)
    assert dut.out_width == 8 and dut.hashes == 1 and dut.latency == 6
    assert dut.prng_latency == 30 and dut.draw_depth == 41      # split rounds: Threefry's default
    split = _probe(CFG, 4, acc_width=34, prng_split_rounds=True)
    assert split.prng_latency == 30 and split.draw_depth == 41 and split.latency == 6
    whole = _probe(CFG, 4, acc_width=34, prng_split_rounds=False)
    assert whole.prng_latency == 17 and whole.draw_depth == 28 and whole.latency == 6
    assert _probe(WageConfig(sr_bits=24), 4, acc_width=34).hashes == 2
    assert _probe(CFG, 3, acc_width=34).hashes == 2
    assert _probe(CFG, 8, acc_width=34).hashes == 2
    # |ΔW| ≤ ⌊√2·8⌋ + 1 = 12 fits the 8-bit codes; η = 2^10 needs ⌊√2·1024⌋ + 1 = 1449: 12 signed bits
    assert _probe(CFG, 1, acc_width=34, eta_log2_range=(0, 10)).out_width == 12


@pytest.mark.parametrize("lanes", [4, 3, 16])
def test_qg_indexed_draws(lanes):
    """draw_index="stream": each beat's draws start at the index given for it (any alignment, any order)."""
    cfg = WageConfig(net="mlp")
    rng = random.Random(seed_for(f"qg-indexed-{lanes}"))
    dut = ShiftQuantizer(cfg, lanes=lanes, acc_width=32, draw_index="stream")
    jobs, firsts = [], []
    for t in range(3):
        n_beats = rng.randint(1, 12)
        g = [rng.choice([0, rng.randrange(-(1 << 20), 1 << 20), rng.randrange(-300, 300)])
             for _ in range(n_beats * lanes)]
        starts = [rng.choice([rng.randrange(1 << 20), rng.randrange(64) * lanes, (1 << 32) - lanes - rng.randrange(8)])
                  for _ in range(n_beats)]
        jobs.append((cmd(Mode.QG, len(g), eta_log2=rng.randint(-2, 3), seed=rng.randrange(1 << 32),
                         step=rng.randrange(1 << 20), layer=rng.randrange(4)), g))
        firsts.append(starts)
    results = simulate(dut, jobs, seed=rng.randrange(1 << 30), indices=[i for f in firsts for i in f])
    sensitive = []
    for (c, g), starts, res in zip(jobs, firsts, results):
        index = (np.array(starts, dtype=np.int64)[:, None] + np.arange(lanes)[None, :]).reshape(-1) % (1 << 32)
        draws = sr_draws(c["seed"], c["step"], c["layer"], 0, cfg.sr_bits, indices=index)
        dw, q = quantize_gradient(np.asarray(g, dtype=np.int64), c["eta_log2"], draws, cfg.sr_bits)
        np.testing.assert_array_equal(res["data"], dw, err_msg=f"indexed Q_G data (q={q})")
        # the same check with every index one off fails somewhere: the data depend on the indices
        shifted = sr_draws(c["seed"], c["step"], c["layer"], 0, cfg.sr_bits, indices=(index + 1) % (1 << 32))
        sensitive.append(not np.array_equal(
            quantize_gradient(np.asarray(g, dtype=np.int64), c["eta_log2"], shifted, cfg.sr_bits)[0], dw))
    assert any(sensitive)


def test_draw_index_option_is_checked():
    with pytest.raises(ValueError, match="draw_index='random'"):
        ShiftQuantizer(WageConfig(net="mlp"), lanes=4, acc_width=32, draw_index="random")
