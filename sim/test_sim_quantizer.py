"""pytest entry points for the ShiftQuantizer bench on Verilator (``sim/tb_quantizer.py``).

Designs: 4 lanes × 32-bit sums with the project configuration (kA = kE = 8, sr_bits = 16: one
Threefry hash per beat), and 3 lanes × 24-bit sums with sr_bits = 24 (two draws per hash, beats
straddling hashes: two Threefry pipelines). Each runs ≥ 10^5 random elements per mode (fewer on the
second design) with random stalls on all three streams; the first also reproduces the golden MLP
trace (A, E_q, ΔW, n_E, q_G of two steps). The mutation check flips one output bit: the bench must
report exactly that beat and bit, a random test must fail on it, and the same seed passes without it.

The seed is printed by the runner; rerun with ``COCOTB_RANDOM_SEED=<seed>``.
"""

from __future__ import annotations

import pytest

from golden.config import WageConfig
from hw.quantizer import ShiftQuantizer
from sim.runner import RESULTS, check_mutation_is_caught, run_cocotb

CFG = WageConfig()
RANDOM = ["random_qa", "random_qe", "random_qg"]


def _spec(layout) -> dict:
    return {name: [field.offset, field.width] for name, field in layout}


def _params(dut: ShiftQuantizer, **kw) -> dict:
    return {"lanes": dut.lanes, "acc_width": dut.acc_width, "out_width": dut.out_width,
            "config": dut.config.to_dict(), "eta_range": [dut.eta_lo, dut.eta_hi],
            "cmd_layout": _spec(dut.cmd_layout), "out_layout": _spec(dut.out_layout),
            "vectors": 100_000, "max_tensor": 1500, "stall": 0.2, "backpressure": 0.2, **kw}


def _name(dut: ShiftQuantizer) -> str:
    return f"shift_quantizer_l{dut.lanes}_a{dut.acc_width}_sr{dut.sr_bits}"


def test_random_100k_per_mode():
    dut = ShiftQuantizer(CFG, 4, acc_width=32)
    r = run_cocotb(dut, name=_name(dut), test_module="sim.tb_quantizer", testcase=RANDOM,
                   parameters=_params(dut))
    assert r.passed == r.tests == 3


def test_golden_trace():
    dut = ShiftQuantizer(CFG, 4, acc_width=32)
    r = run_cocotb(dut, name=_name(dut), test_module="sim.tb_quantizer", testcase="golden_trace",
                   parameters=_params(dut, stall=0.05, backpressure=0.05))
    assert r.passed == r.tests == 1
    assert "golden trace reproduced" in r.log.read_text()


def test_two_hashes_per_beat():
    cfg = WageConfig(sr_bits=24)
    dut = ShiftQuantizer(cfg, 3, acc_width=24)
    assert dut.hashes == 2
    r = run_cocotb(dut, name=_name(dut), test_module="sim.tb_quantizer", testcase=RANDOM,
                   parameters=_params(dut, vectors=20_000, max_tensor=700, stall=0.3, backpressure=0.3))
    assert r.passed == r.tests == 3


def test_scoreboard_catches_one_flipped_bit():
    dut = ShiftQuantizer(CFG, 4, acc_width=32)
    bit = 2 * dut.out_width + 3                              # lane 2, bit 3 of the code in beat 123
    params = _params(dut, vectors=3000, max_tensor=300, mutate=[123, bit])
    # beat 123, bit `bit` is flipped on its way to the scoreboard
    check_mutation_is_caught(dut, name=_name(dut), test_module="sim.tb_quantizer", testcase="random_qa",
                             parameters=params)


@pytest.fixture(autouse=True, scope="module")
def _summary():
    yield
    for r in RESULTS:
        if r.name.startswith("shift_quantizer"):
            print(r.summary())
