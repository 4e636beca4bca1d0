"""pytest entry points for the MAC-array bench on Verilator (``sim/tb_mac_array.py``).

Arrays: 4×4 and 16×16 int8 (gradient Eᵀ·X; max_reduction = lenet5's gradient K at batch 128 for the
16×16, so its accumulators are the real 32 bits), 8×8 ternary (forward X·Tᵀ and error E·T;
max_reduction = lenet5's largest fan-in, 1024). Each runs random tiles, random ragged shapes through
``hw.tiling`` and the golden MLP trace with random stalls on both streams. Together they run
≥ 10^4 random tiles. Further: the scoreboard catches one flipped output bit, and the ``ecp5``
target (MULT18X18D, DP16KD) simulates bit-exactly, with the same latency, against the behavioural
models of those primitives in ``sim/ecp5_models.py``.

The seed is printed by the runner; rerun with ``COCOTB_RANDOM_SEED=<seed>``.
"""

from __future__ import annotations

import pytest

from golden.config import WageConfig
from hw.mac_array import MacArray
from hw.tiling import max_reductions
from sim.ecp5_models import ecp5_model_files
from sim.runner import RESULTS, check_mutation_is_caught, run_cocotb

CFG = WageConfig()
LENET = max_reductions(WageConfig(net="lenet5", batch_size=128))
BENCH = ["random_tiles", "random_shapes", "golden_trace"]


def _params(dut: MacArray, **kw) -> dict:
    return {"rows": dut.rows, "cols": dut.cols, "mode": dut.mode, "a_width": dut.a_width,
            "b_width": dut.b_width, "acc_width": dut.accumulator_width,
            "max_reduction": dut.max_reduction, **kw}


def _name(dut: MacArray) -> str:
    return f"mac_array_{dut.mode}_{dut.rows}x{dut.cols}" + ("_ecp5" if dut.target == "ecp5" else "")


def test_int8_4x4():
    dut = MacArray(CFG, 4, 4, mode="int8", max_reduction=48)
    r = run_cocotb(dut, name=_name(dut), test_module="sim.tb_mac_array", testcase=BENCH,
                   parameters=_params(dut, tiles=7000, kmax=24, kmax_full=48, shapes=12,
                                      products=["gradient"], trace_layers=[1], stall=0.2, backpressure=0.25))
    assert r.passed == r.tests == 3


def test_int8_16x16():
    dut = MacArray(CFG, 16, 16, mode="int8", max_reduction=LENET["gradient"])
    assert dut.accumulator_width == 32
    r = run_cocotb(dut, name=_name(dut), test_module="sim.tb_mac_array", testcase=BENCH,
                   parameters=_params(dut, tiles=2000, kmax=40, shapes=4, products=["gradient"],
                                      stall=0.1, backpressure=0.2))
    assert r.passed == r.tests == 3


def test_ternary_8x8():
    dut = MacArray(CFG, 8, 8, mode="ternary", max_reduction=LENET["forward"])
    r = run_cocotb(dut, name=_name(dut), test_module="sim.tb_mac_array", testcase=BENCH,
                   parameters=_params(dut, tiles=3000, kmax=32, kmax_full=1024, shapes=8,
                                      products=["forward", "error"], stall=0.2, backpressure=0.25))
    assert r.passed == r.tests == 3


def test_scoreboard_catches_one_flipped_bit():
    dut = MacArray(CFG, 4, 4, mode="int8", max_reduction=48)
    bit = 3 * dut.accumulator_width + 5                      # lane 3, bit 5 of the 41st row
    params = _params(dut, tiles=60, kmax=8, mutate=[40, bit])
    # row 40, bit `bit` is flipped on its way to the scoreboard
    check_mutation_is_caught(dut, name=_name(dut), test_module="sim.tb_mac_array", testcase="random_tiles",
                             parameters=params)


# ---------------------------------------------------------------------------------------------
# target="ecp5" against behavioural MULT18X18D and DP16KD models
# ---------------------------------------------------------------------------------------------

def test_ecp5_target_matches_with_primitive_models():
    dut = MacArray(CFG, 3, 4, mode="int8", max_reduction=40, target="ecp5")
    r = run_cocotb(dut, name=_name(dut), test_module="sim.tb_mac_array", build_args=ecp5_model_files(),
                   testcase=["random_tiles", "random_shapes"],
                   parameters=_params(dut, tiles=400, kmax=20, kmax_full=40, shapes=4,
                                      stall=0.2, backpressure=0.25))
    assert r.passed == r.tests == 2


@pytest.fixture(autouse=True, scope="module")
def _summary():
    yield
    for r in RESULTS:
        if r.name.startswith("mac_array"):
            print(r.summary())
