"""boards.catalog: the default engine of a board variant for each memory, and the refusals."""

import pytest

from boards.catalog import MEMORIES, SDRAM_ENGINES, SDRAM_FREQ_MHZ, VARIANT_ENGINES, BoardError, get_board
from hw.engine.compiler import compile_network


def test_bram_is_the_default_and_sdram_picks_the_sdram_engine():
    ulx3s = get_board("ulx3s")
    assert MEMORIES == ("bram", "sdram")
    assert ulx3s.default_config("85F") is ulx3s.default_config("85F", "bram") is VARIANT_ENGINES["85F"]
    assert ulx3s.default_config(None, "bram") is VARIANT_ENGINES["85F"]
    sdram = ulx3s.default_config("85f", memory="sdram")
    assert sdram is SDRAM_ENGINES["85F"] and ulx3s.default_config(None, "sdram") is sdram
    assert (sdram.data_words, sdram.weight_words, sdram.external_words, sdram.external_weight_words) == \
        (1024, 1024, 4096, 32768)
    assert sdram.wage == VARIANT_ENGINES["85F"].wage and sdram.lanes == VARIANT_ENGINES["85F"].lanes
    assert sdram.external_depth > 0 and sdram.target == "ecp5" and SDRAM_FREQ_MHZ == 40.0
    compile_network(sdram)                                  # the MLP fits its memories


def test_unknown_memory_is_refused_with_the_choices():
    with pytest.raises(BoardError, match=r"memory='ddr3': must be one of bram, sdram"):
        get_board("ulx3s").default_config("85F", "ddr3")


def test_a_board_without_sdram_has_no_sdram_engine():
    with pytest.raises(BoardError, match=r"memory='sdram': board 'ecpix5' has no SDR SDRAM"):
        get_board("ecpix5").default_config("85F", "sdram")


def test_a_part_without_an_sdram_engine_names_the_parts_with_one():
    with pytest.raises(BoardError, match=r"memory='sdram': the ulx3s 45F has no SDRAM engine; parts with one: 85F$"):
        get_board("ulx3s").default_config("45F", "sdram")


def test_the_shipped_convolutional_configuration_trains_its_network_on_chip():
    """boards/configs/ulx3s_85f_conv.json (built and routed with --placer static, README): an engine
    with convolution, every tensor on chip, whose network fits its memories."""
    from pathlib import Path

    from hw.engine.config import EngineConfig
    config = EngineConfig.load(Path(__file__).parent.parent / "boards" / "configs" / "ulx3s_85f_conv.json")
    assert config.has_conv and config.target == "ecp5" and config.external_depth == 0
    assert (config.lanes, config.wage.net, config.batch) == (8, "8C5-MP2-16C5-MP2-32FC-10", 4)
    compile_network(config)
