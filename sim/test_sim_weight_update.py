"""pytest entry points for the weight-update bench on Verilator (``sim/tb_weight_update.py``).

* ``test_golden_trace`` — both layers of the golden MLP trace (2 steps) in one 12 704-word × 16-lane
  memory: loads, every ΔW, read-back of every W_after and every served Wq, bit for bit.
* ``test_random_updates`` — 10^5 random update beats (depth 64 × 4 lanes, both weight_clip variants
  in two runs: kW-clip 10^5, kG-clip 2·10^4) with saturation, hazards and random read ranges.
* ``test_scoreboard_catches_one_flipped_bit`` — a flipped bit in one served beat is reported exactly,
  makes ``random_updates`` fail, and the same seed passes without it.
* ``test_ecp5_target_matches_with_primitive_models`` — ``target="ecp5"`` (the words in DP16KD with
  its output register) against the behavioural DP16KD of ``sim/ecp5_models.py``: random updates
  with hazards, bit for bit and with the same latency as the generic RAM.

The seed is printed by the runner; rerun with ``COCOTB_RANDOM_SEED=<seed>``.
"""

from __future__ import annotations

from golden.config import WageConfig
from hw.weight_update import WeightUpdate
from sim.ecp5_models import ecp5_model_files
from sim.runner import check_mutation_is_caught, run_cocotb

CFG = WageConfig(net="mlp")


def _params(dut: WeightUpdate, **kw) -> dict:
    return {"depth": dut.depth, "lanes": dut.lanes, "addr_width": dut.addr_width, "dw_width": dut.dw_width,
            "dw_max": dut.dw_max, "w_width": dut.w_width, "wq_width": dut.wq_width, "kW": dut.config.kW,
            "kG": dut.config.kG, "w_clip": dut.w_clip, **kw}


def _name(dut: WeightUpdate) -> str:
    return (f"weight_update_d{dut.depth}_l{dut.lanes}_{dut.config.weight_clip}"
            + ("_ecp5" if dut.target == "ecp5" else ""))


def test_golden_trace():
    cfg = WageConfig(net="mlp", batch_size=16)
    lanes = 16
    words = [layer.weights // lanes for layer in cfg.layers]        # 12 544 and 160
    dut = WeightUpdate(cfg, depth=sum(words), lanes=lanes)
    r = run_cocotb(dut, name=_name(dut), test_module="sim.tb_weight_update", testcase="golden_trace",
                   parameters=_params(dut, bases=[0, words[0]], stall=0.1, backpressure=0.1))
    assert r.passed == r.tests == 1


def test_random_updates():
    dut = WeightUpdate(CFG, depth=64, lanes=4)
    r = run_cocotb(dut, name=_name(dut), test_module="sim.tb_weight_update", testcase="random_updates",
                   parameters=_params(dut, updates=100_000, stall=0.2, backpressure=0.2))
    assert r.passed == r.tests == 1


def test_random_updates_paper_clip():
    dut = WeightUpdate(CFG.replace(weight_clip="kG"), depth=64, lanes=4)
    r = run_cocotb(dut, name=_name(dut), test_module="sim.tb_weight_update", testcase="random_updates",
                   parameters=_params(dut, updates=20_000, stall=0.3, backpressure=0.3))
    assert r.passed == r.tests == 1


def test_scoreboard_catches_one_flipped_bit():
    dut = WeightUpdate(CFG, depth=64, lanes=4)
    bit = 2 * dut.wq_width + 1                                   # lane 2, high bit of the code
    params = _params(dut, updates=3000, mutate=["serve", 70, bit], stall=0.2, backpressure=0.2)
    check_mutation_is_caught(dut, name=_name(dut), test_module="sim.tb_weight_update", testcase="random_updates",
                             parameters=params)


def test_ecp5_target_matches_with_primitive_models():
    # 5 lanes × 8 bits = 40 bits: two DP16KD in the 36-bit mode, the second one partly used
    dut = WeightUpdate(CFG, depth=64, lanes=5, target="ecp5")
    r = run_cocotb(dut, name=_name(dut), test_module="sim.tb_weight_update", testcase="random_updates",
                   build_args=ecp5_model_files(),
                   parameters=_params(dut, updates=20_000, stall=0.2, backpressure=0.2))
    assert r.passed == r.tests == 1
