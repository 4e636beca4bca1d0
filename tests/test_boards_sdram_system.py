"""boards.sdram_system: the engine training through the SDRAM controller and the checking chip model.

The small convolutional network of tests/test_hw_engine.py with its input batch, E0 and the W1
weights outside (CONV_SPILL_CONFIG) trains two steps with the board's SDRAM behind the port instead
of the generic memory model: every activation, mask, pool index, error and weight equals the
word-level model and golden, and the chip model saw no timing violation.
"""

import pytest

from boards.sdram_system import EngineSDRAMSystem
from tests.test_hw_engine import CONV_CONFIG, CONV_SPILL_CONFIG, conv_mismatches, run_conv_steps


@pytest.fixture(scope="module")
def sdram_steps():
    systems = []

    def system(config):
        systems.append(EngineSDRAMSystem(config, clk_freq=50e6))
        return systems[-1]

    return (*run_conv_steps(CONV_SPILL_CONFIG, system), systems[0])


def test_spilled_tensors_train_bit_exactly_through_the_sdram(sdram_steps):
    program, got, want, system = sdram_steps
    for s in range(2):
        assert conv_mismatches(got[s], want[s]) == [], f"step {s}"
    assert [got[s]["ext_fault"] for s in range(2)] == [0, 0], f"the SDRAM model flagged {[got[s].get('ext_fault_code') for s in range(2)]}"
    c0, c1 = got[0]["counters"], got[1]["counters"]
    assert c1["ext_read_words"] > c0["ext_read_words"] > 0 and c1["ext_write_words"] > c0["ext_write_words"]
    assert system.model.stored_row_bits == 2    # 2**11 addressable words x 3 columns = 6,144: rows 0-2 of 4 x 512


def test_one_wrong_bit_through_the_sdram_is_caught(sdram_steps):
    program, got, want, _ = sdram_steps
    bad = {**want[1], "E0": want[1]["E0"].copy()}
    bad["E0"][2, 3] ^= 1
    assert conv_mismatches(got[1], bad) == ["E0"]


def test_a_configuration_without_external_words_is_refused():
    with pytest.raises(ValueError, match="must be an EngineConfig with external words"):
        EngineSDRAMSystem(CONV_CONFIG, clk_freq=50e6)
