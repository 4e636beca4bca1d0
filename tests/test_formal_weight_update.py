"""Formal proofs of hw/weight_update.py (formal/weight_update_formal.py) through SymbiYosys.

Each case must PASS (k-induction, smtbmc + z3): stored weights never leave ±w_clip, served codes
follow the Wq rule for every Ws, output FIFOs never overflow. Each mutant must FAIL, and on the
property group meant to catch it — otherwise a vacuous harness would pass too.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_spec = importlib.util.spec_from_file_location("weight_update_formal", ROOT / "formal" / "weight_update_formal.py")
wuf = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(wuf)

pytestmark = pytest.mark.skipif(not (wuf.BIN / "yowasp-sby").exists(), reason="yowasp-sby not installed")


@pytest.mark.parametrize("case", sorted(wuf.CASES))
def test_proof_passes(case):
    status, failed, secs, log = wuf.run_sby(case)
    print(f"{case}: {status} in {secs:.1f} s")
    assert status == "PASS", f"{case}: {status}, failed groups {sorted(failed)}\n{log[-4000:]}"


@pytest.mark.parametrize("name", sorted(wuf.MUTANTS))
def test_mutant_fails(name):
    case, mutate, group = wuf.MUTANTS[name]
    status, failed, secs, log = wuf.run_sby(case, mutate)
    print(f"mutant {name}: {status} on {sorted(failed)} in {secs:.1f} s")
    assert status == "FAIL", f"mutant {name} was not caught: {status}\n{log[-4000:]}"
    assert group in failed, f"mutant {name} failed on {sorted(failed)}, expected {group!r}"


def test_wq_rule_matches_golden():
    """The harness's independent Wq condition agrees with golden.quant.forward_weights (in Python:
    exactly the golden code satisfies it for every kG-bit Ws, for several bit widths)."""
    import numpy as np
    from amaranth.hdl import Module, Signal, signed
    from amaranth.sim import Simulator
    from golden.quant import forward_weights

    for kW, kG in ((2, 8), (3, 8), (4, 6), (5, 5), (2, 3)):
        m = Module()
        ws, q, ok = Signal(signed(kG)), Signal(signed(kW)), Signal()
        m.d.comb += ok.eq(wuf.wq_rule(ws, q, kW, kG))
        sim = Simulator(m)
        result = {}

        async def tb(ctx):
            for w in range(-(1 << (kG - 1)), 1 << (kG - 1)):
                ctx.set(ws, w)
                good = []
                for c in range(-(1 << (kW - 1)), 1 << (kW - 1)):
                    ctx.set(q, c)
                    if ctx.get(ok):
                        good.append(c)
                result[w] = good
        sim.add_testbench(tb)
        sim.run()
        ws_all = np.arange(-(1 << (kG - 1)), 1 << (kG - 1))
        expect = forward_weights(ws_all, kW, kG)
        assert all(result[int(w)] == [int(e)] for w, e in zip(ws_all, expect)), (kW, kG)
