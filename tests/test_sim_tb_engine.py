"""The engine testbench's grouping of a program into units that run alone (per-instruction figures)."""

from golden.config import WageConfig
from hw.engine.compiler import compile_network
from hw.engine.config import EngineConfig
from hw.engine.isa import Op
from sim.tb_engine import _units


def test_units_keep_a_product_in_parts_with_its_staging_copies():
    """LeNet-5 at batch 128 with external sums (1,536 program words): conv2's error product in 9
    bands and a finish record is one unit, its gradient product (4 COPY records, 4 parts, a finish
    record) another; every other instruction runs alone, and no record is lost or reordered."""
    config = EngineConfig(WageConfig(net="lenet5"), data_words=16384, weight_words=16384, external_words=1 << 19,
                          external_weight_words=1 << 16, external_sum_words=110592, program_words=1536)
    program = compile_network(config)
    units = _units(program.instructions)
    assert [len(u) for u in units] == [1] * 9 + [10, 9, 1, 1]
    assert units[10][0].op == Op.COPY and str(units[10][-1]) == "CONV_GRAD layer 1 finish"
    assert sum(units, []) == program.instructions


def test_units_keep_a_forward_product_in_bands_together():
    """The b128 step for the SDRAM: conv1's forward product in 43 batch bands and conv2's in 10 (a
    COPY_ACT and a CONV_FWD each), and fc1's in 6 staged bands and a last one that reads A1 where it
    lives, are one unit each, so their per-instruction figures are the whole products'."""
    from pathlib import Path
    config = EngineConfig.load(Path(__file__).parent.parent / "benchmarks" / "configs"
                               / "engine_lenet5_l8_b128_sdram.json")
    program = compile_network(config)
    units = _units(program.instructions)
    assert [len(u) for u in units[:4]] == [86, 20, 13, 1]
    assert [str(ins) for ins in units[2]] == ["COPY_ACT layer 2", "FWD layer 2"] * 6 + ["FWD layer 2"]
    assert str(units[3][0]) == "FWD layer 3"
    assert [str(ins) for ins in units[0]] == ["COPY_ACT layer 0", "CONV_FWD layer 0 +pool"] * 43
    assert [str(ins) for ins in units[1]] == ["COPY_ACT layer 1", "CONV_FWD layer 1 +pool"] * 10
    assert sum(units, []) == program.instructions
