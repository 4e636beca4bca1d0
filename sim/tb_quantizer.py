"""cocotb bench for hw/quantizer.py (ShiftQuantizer) on Verilator; entry points in ``test_sim_quantizer.py``.

Every output beat is compared, in order, as the packed payload integer (lanes of codes, the relu /
sat / keep bit vectors, ``last``, ``zero``, ``exp``) by a :class:`sim.streams.Scoreboard`; expected
beats come from golden.quant / golden.prng (NumPy) or straight from a golden trace. Commands and
tensor beats are queued on two :class:`sim.streams.StreamSource` s (Q_E/Q_G tensors twice: the
store-then-quantise contract), the sink applies backpressure, all with seeded random stalls; the
sources and the sink check the stream rules. All randomness derives from ``cocotb.RANDOM_SEED``
(printed by the runner; rerun with ``COCOTB_RANDOM_SEED=<seed>``).

Tests (parameters from ``sim_params()``; the payload layouts come from the pytest side):

* ``golden_trace`` — the MLP trace (batch 16, embedded Fashion-MNIST, 2 steps): A from P
  (``shift = act_shift``, ReLU except the output layer), E_q from D·mask_sat (hidden) or D (output),
  ΔW from G with the step, layer and seed of the trace; codes, masks, n_E and q_G must equal the
  trace's.
* ``random_qa`` / ``random_qe`` / ``random_qg`` — at least ``vectors`` elements per mode in tensors of
  1..``max_tensor`` elements: uniform values, exact ties (half an LSB, odd and even floors),
  saturation edges, exponent thresholds ⌊√2·2^n⌋(+1), small maxima (left shifts, q ≤ 0), all-zero
  tensors and the largest sums ±(2^(acc_width−1)−1) and −2^(acc_width−1).
* ``mutation_detected`` — flips bit ``mutate[1]`` of output beat ``mutate[0]`` and checks that the
  scoreboard reports exactly that beat and bit. With ``mutate`` set, the random tests flip it too
  (and must fail).
"""

from __future__ import annotations

import json
import random

import cocotb
import numpy as np

from sim.streams import Scoreboard, ScoreboardMismatch, StreamSink, StreamSource, pack_lanes, reset_dut, sim_params

QA, QE, QG = 0, 1, 2
MODE_NAMES = {QA: "Q_A", QE: "Q_E", QG: "Q_G"}


# -------------------------------------------------------------------------------------------------
# Payload packing (field offsets/widths come from the Amaranth layouts, via the parameters)
# -------------------------------------------------------------------------------------------------

def pack_fields(spec: dict, values: dict) -> int:
    """Pack ``values`` by ``spec`` = {field: [offset, width]} (two's complement for negatives)."""
    out = 0
    for name, v in values.items():
        off, width = spec[name]
        v = int(v)
        if not -(1 << width) < v < (1 << width):
            raise ValueError(f"field {name}: {v} does not fit {width} bits")
        out |= (v & ((1 << width) - 1)) << off
    return out


def bits(mask) -> int:
    return sum(1 << j for j, b in enumerate(mask) if b)


class Bench:
    """Sources, sink and scoreboard around the DUT."""

    def __init__(self, dut, p: dict, seed: int, name: str, fail_fast: bool = True):
        self.dut, self.p = dut, p
        self.lanes, self.aw, self.ow = p["lanes"], p["acc_width"], p["out_width"]
        self.cmd_spec, self.out_spec = p["cmd_layout"], p["out_layout"]
        self.sb = Scoreboard(name, log=dut._log, fail_fast=fail_fast)
        self.received = 0
        self.expected = 0
        self.cmd_beats: list[int] = []                 # sent after the reset (see start())
        self.in_beats: list[int] = []
        self.elements = {QA: 0, QE: 0, QG: 0}
        self.special = {"ties": 0, "sat": 0, "zero_tensors": 0, "largest": 0}
        mutate = p.get("mutate")

        def check(value: int) -> None:
            if mutate is not None and self.received == mutate[0]:
                value ^= 1 << mutate[1]
            self.received += 1
            self.sb.compare("o", value)

        stall, bp = p.get("stall", 0.0), p.get("backpressure", 0.0)
        self.cmd = StreamSource(dut.clk, dut.cmd__valid, dut.cmd__ready, dut.cmd__payload,
                                rng=random.Random(seed + 1), stall_probability=stall, name="cmd")
        self.src = StreamSource(dut.clk, dut.i__valid, dut.i__ready, dut.i__payload,
                                rng=random.Random(seed + 2), stall_probability=stall, name="i")
        self.sink = StreamSink(dut.clk, dut.o__valid, dut.o__ready, dut.o__payload,
                               rng=random.Random(seed + 3), backpressure_probability=bp, callback=check,
                               name="o")

    def job(self, mode: int, x: np.ndarray, expect: dict, *, relu=1, shift=0, eta_log2=0, seed=0, step=0,
            layer=0) -> None:
        """Queue one command and its tensor; queue the expected beats.

        ``expect``: ``data`` (codes per element), optional ``relu``/``sat`` (per element),
        ``zero`` (bool) and ``exp`` (int)."""
        x = np.asarray(x, dtype=np.int64).reshape(-1)
        n, lanes = len(x), self.lanes
        self.cmd_beats.append(pack_fields(self.cmd_spec, dict(mode=mode, relu=relu, shift=shift, eta_log2=eta_log2,
                                                       count=n, seed=seed, step=step, layer=layer)))
        self.elements[mode] += n
        if n == 0:
            return
        pad = (-n) % lanes
        xs = np.concatenate([x, np.zeros(pad, dtype=np.int64)]).reshape(-1, lanes).tolist()
        beats = [pack_lanes(b, self.aw, signed=True) for b in xs]
        self.in_beats += beats if mode == QA else beats + beats     # Q_E/Q_G: two passes
        data = np.concatenate([np.asarray(expect["data"], dtype=np.int64).reshape(-1),
                               np.zeros(pad, dtype=np.int64)]).reshape(-1, lanes)
        zeros = np.zeros(n + pad, dtype=bool)
        relu_m = np.concatenate([np.asarray(expect.get("relu", zeros[:n]), dtype=bool).reshape(-1),
                                 zeros[:pad]]).reshape(-1, lanes)
        sat_m = np.concatenate([np.asarray(expect.get("sat", zeros[:n]), dtype=bool).reshape(-1),
                                zeros[:pad]]).reshape(-1, lanes)
        nb = len(data)
        spec, ow = self.out_spec, self.ow
        dpos = spec["data"][0]
        common = pack_fields(spec, dict(zero=int(expect.get("zero", 0)), exp=int(expect.get("exp", 0))))
        full_keep = (1 << lanes) - 1
        for k in range(nb):
            keep = full_keep if k < nb - 1 or pad == 0 else (1 << (lanes - pad)) - 1
            v = common | pack_fields(spec, dict(relu=bits(relu_m[k]), sat=bits(sat_m[k]), keep=keep,
                                                last=int(k == nb - 1)))
            v |= pack_lanes(data[k], ow, signed=True) << dpos
            self.sb.expect("o", v)
        self.expected += nb

    async def start(self) -> None:
        """Reset the DUT, then queue every command and beat (a source driving during reset would
        see beats "taken" by a design that is held in reset)."""
        await reset_dut(self.dut)
        self.cmd.send(self.cmd_beats)
        self.src.send(self.in_beats)

    async def run(self) -> None:
        await self.start()
        await self.sink.wait_count(self.expected)
        self.sb.check_empty()
        assert self.cmd.idle() and self.src.idle(), "the DUT did not consume every command/beat"
        self.dut._log.info("%s; elements %s; %d cycles", self.sb.report(),
                           {MODE_NAMES[k]: v for k, v in self.elements.items()}, self.sink.cycle)


# -------------------------------------------------------------------------------------------------
# Golden expectations
# -------------------------------------------------------------------------------------------------

def _golden():
    from golden.config import WageConfig
    from golden import prng, quant
    return WageConfig, prng, quant


def expect_qa(cfg, x, shift, relu):
    _, _, quant = _golden()
    a, relu_mask, sat_mask = quant.quantize_activation(x, shift, cfg.kA, relu=bool(relu))
    return dict(data=a, relu=x > 0, sat=sat_mask)


def expect_qe(cfg, x):
    _, _, quant = _golden()
    e, n = quant.quantize_error(x, cfg.kE)
    return dict(data=e, zero=n is None, exp=0 if n is None else n)


def expect_qg(cfg, x, eta, seed, step, layer):
    _, prng, quant = _golden()
    draws = prng.sr_draws(seed, step, layer, len(x), cfg.sr_bits)
    dw, q = quant.quantize_gradient(x, eta, draws, cfg.sr_bits)
    return dict(data=dw, zero=q is None, exp=0 if q is None else q)


# -------------------------------------------------------------------------------------------------
# Random tensors
# -------------------------------------------------------------------------------------------------

class Gen:
    def __init__(self, rng: np.random.Generator, aw: int, bench: Bench):
        self.rng, self.aw, self.bench = rng, aw, bench
        self.big = (1 << (aw - 1)) - 1

    def size(self, max_tensor: int) -> int:
        r = self.rng.random()
        if r < 0.15:
            return int(self.rng.integers(1, 9))                   # tiny, partial last beats
        return int(self.rng.integers(9, max_tensor + 1))

    def clip(self, v):
        return np.clip(v, -self.big - 1, self.big)

    def qa_tensor(self, n: int, r: int, lim: int) -> np.ndarray:
        rng, big = self.rng, self.big
        kind = rng.integers(0, 5, n)
        scale = min((lim + 2) << min(r, self.aw), self.big)
        v = np.where(kind == 0, rng.integers(-big, big + 1, n), rng.integers(-scale, scale + 1, n))
        if 1 <= r <= self.aw - 2:                                  # ties: k·2^r ± 2^(r−1), odd and even k
            k = rng.integers(-lim - 2, lim + 2, n)
            ties = (k << r) + (1 << (r - 1))
            ok = (kind == 2) & (np.abs(ties) <= big)
            v = np.where(ok, ties, v)
            self.bench.special["ties"] += int(ok.sum())
        edges = np.array([lim << r, (lim << r) + 1, (lim << r) - 1, -(lim << r), -(lim << r) - 1,
                          ((2 * lim + 1) << r) >> 1, -(((2 * lim + 1) << r) >> 1),
                          ((2 * lim - 1) << r) >> 1] if r < self.aw - 8 else [big, -big], dtype=np.int64)
        pick = kind == 3
        v = np.where(pick, edges[rng.integers(0, len(edges), n)], v)
        self.bench.special["sat"] += int(pick.sum())
        specials = np.array([0, 1, -1, big, -big, -big - 1], dtype=np.int64)
        pick = kind == 4
        v = np.where(pick, specials[rng.integers(0, len(specials), n)], v)
        self.bench.special["largest"] += int((pick & (np.abs(v) >= big)).sum())
        return self.clip(v)

    def max_tensor(self, n: int, kE: int) -> np.ndarray:
        """Tensor for Q_E/Q_G: a chosen max |x| (random exponent, thresholds, extremes), ties for the
        exponent's shift, sometimes all zero."""
        _, _, quant = _golden()
        rng, big = self.rng, self.big
        r = rng.random()
        if r < 0.04:
            self.bench.special["zero_tensors"] += 1
            return np.zeros(n, dtype=np.int64)
        if r < 0.10:
            m = big + int(rng.integers(0, 2))                      # largest sums (−2^(aw−1) too)
            self.bench.special["largest"] += 1
        else:
            e = int(rng.integers(0, self.aw - 1))
            if rng.random() < 0.3:
                m = quant.sqrt2_threshold(e) + int(rng.integers(0, 2))
            else:
                m = int(rng.integers(1 << e, (2 << e)))
            m = min(m, big)
        top = min(m, big)
        v = rng.integers(-m, top + 1, n)
        s = quant.shift_exponent(min(m, big)) - (kE - 1)
        if s >= 1:
            k = rng.integers(-(m >> s) - 1, (m >> s) + 1, n)
            ties = (k << s) + (1 << (s - 1))
            ok = (rng.random(n) < 0.25) & (ties >= -m) & (ties <= top)
            v = np.where(ok, ties, v)
            self.bench.special["ties"] += int(ok.sum())
        v[int(rng.integers(0, n))] = -m if (m > big or rng.random() < 0.5) else m
        return v.astype(np.int64)


# -------------------------------------------------------------------------------------------------
# Tests
# -------------------------------------------------------------------------------------------------

def _setup(dut, name: str, salt: int):
    p = sim_params()
    WageConfig, _, _ = _golden()
    cfg = WageConfig.from_dict(p["config"])
    seed = cocotb.RANDOM_SEED + salt
    bench = Bench(dut, p, seed, name)
    dut._log.info("%s: seed %d (cocotb.RANDOM_SEED %d + %d)", name, seed, cocotb.RANDOM_SEED, salt)
    return p, cfg, bench, np.random.default_rng(seed)


async def _random_mode(dut, mode: int, salt: int):
    p, cfg, bench, rng = _setup(dut, f"random_{MODE_NAMES[mode]}", salt)
    gen = Gen(rng, p["acc_width"], bench)
    lo, hi = p["eta_range"]
    total = 0
    while total < p["vectors"]:
        n = gen.size(p["max_tensor"])
        if mode == QA:
            r = int(rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 13, p["acc_width"] - 2, p["acc_width"], 63]))
            relu = int(rng.random() < 0.7)
            x = gen.qa_tensor(n, r, cfg.a_max)
            bench.job(QA, x, expect_qa(cfg, x, r, relu), relu=relu, shift=r)
        elif mode == QE:
            x = gen.max_tensor(n, cfg.kE)
            bench.job(QE, x, expect_qe(cfg, x))
        else:
            x = gen.max_tensor(n, cfg.kE)
            eta = int(rng.integers(lo, hi + 1))
            seed, step, layer = (int(v) for v in rng.integers(0, 2**32, 3))
            layer %= 64
            bench.job(QG, x, expect_qg(cfg, x, eta, seed, step, layer), eta_log2=eta, seed=seed, step=step,
                      layer=layer)
        total += n
    if mode == QA:                                              # a count = 0 command in the middle of the run
        bench.job(QA, np.zeros(0, dtype=np.int64), dict(data=[]))
        x = gen.qa_tensor(5, 3, cfg.a_max)
        bench.job(QA, x, expect_qa(cfg, x, 3, 1), shift=3)
    await bench.run()
    dut._log.info("special cases: %s", bench.special)


@cocotb.test()
async def random_qa(dut):
    await _random_mode(dut, QA, 11)


@cocotb.test()
async def random_qe(dut):
    await _random_mode(dut, QE, 22)


@cocotb.test()
async def random_qg(dut):
    await _random_mode(dut, QG, 33)


@cocotb.test()
async def golden_trace(dut):
    """The MLP trace: A from P, E_q from D·mask, ΔW from G — all must equal the trace."""
    p, cfg_unused, bench, rng = _setup(dut, "golden_trace", 44)
    WageConfig, _, _ = _golden()
    from golden.data import load_dataset
    from golden.trace import make_trace
    cfg = WageConfig(net="mlp", batch_size=16)
    assert (cfg.kA, cfg.kE, cfg.sr_bits) == (WageConfig.from_dict(p["config"]).kA,
                                            WageConfig.from_dict(p["config"]).kE,
                                            WageConfig.from_dict(p["config"]).sr_bits)
    ds = load_dataset("embedded")
    steps = p.get("trace_steps", 2)
    tr = make_trace(cfg, ds.train_images, ds.train_labels, steps)
    meta = json.loads(str(tr["meta"]))
    checked = []
    for s in range(steps):
        for layer in cfg.layers:
            pre = f"s{s}/l{layer.index}"
            P = tr[f"{pre}/P"]
            big = 1 << (p["acc_width"] - 1)
            for key in ("P", "D", "G"):
                assert np.abs(tr[f"{pre}/{key}"]).max() < big, f"{pre}/{key} exceeds acc_width"
            # Q_A: A from P (ReLU except the output layer)
            if f"{pre}/A" in tr:
                relu = 0 if layer.last else 1
                exp_relu = tr[f"{pre}/mask_relu"] if not layer.last else P > 0
                bench.job(QA, P, dict(data=tr[f"{pre}/A"], relu=exp_relu, sat=tr[f"{pre}/mask_sat"]),
                          relu=relu, shift=cfg.act_shift(layer))
                checked.append(f"{pre}/A")
            # Q_E: E_q from D·mask_sat (hidden layers) or D (output layer)
            D = tr[f"{pre}/D"]
            d_in = D if layer.last else D * tr[f"{pre}/mask_sat"]
            n_e = tr.get(f"{pre}/n_E")
            bench.job(QE, d_in, dict(data=tr[f"{pre}/E_q"], zero=n_e is None, exp=0 if n_e is None else int(n_e)))
            checked.append(f"{pre}/E_q")
            # Q_G: ΔW from G with the trace's step, layer, seed, η; q must be the trace's q_G
            G = tr[f"{pre}/G"]
            q_g = tr.get(f"{pre}/q_G")
            bench.job(QG, G, dict(data=tr[f"{pre}/dW"], zero=q_g is None, exp=0 if q_g is None else int(q_g)),
                      eta_log2=meta["eta_log2"][s], seed=cfg.seed, step=s, layer=layer.index)
            checked.append(f"{pre}/dW")
    await bench.run()
    dut._log.info("golden trace reproduced: %s", ", ".join(checked))


@cocotb.test()
async def mutation_detected(dut):
    """Flip one output bit: the scoreboard must report exactly that beat and bit, and nothing else."""
    p = sim_params()
    WageConfig, _, _ = _golden()
    cfg = WageConfig.from_dict(p["config"])
    beat, bit = p["mutate"]
    seed = cocotb.RANDOM_SEED + 55
    bench = Bench(dut, p, seed, "mutation", fail_fast=False)
    rng = np.random.default_rng(seed)
    gen = Gen(rng, p["acc_width"], bench)
    while bench.expected <= beat + 10:
        x = gen.qa_tensor(200, 4, cfg.a_max)
        bench.job(QA, x, expect_qa(cfg, x, 4, 1), shift=4)
    await bench.start()
    await bench.sink.wait_count(bench.expected)
    assert len(bench.sb.mismatches) == 1, f"expected exactly one mismatch, got {bench.sb.mismatches[:3]}"
    msg = bench.sb.mismatches[0]
    assert f"'o' beat {beat}:" in msg and f"(bit {bit})" in msg, msg
    try:
        bench.sb.check_empty()
    except ScoreboardMismatch:
        pass
    else:
        raise AssertionError("check_empty() must fail after a mismatch")
    dut._log.info("mutation detected as expected: %s", msg)
