"""EngineConfig: its JSON round trip (what ``python -m hw.build --config FILE`` reads)."""

from pathlib import Path

import pytest

from golden.config import WageConfig
from hw.engine.config import EngineConfig, EngineConfigError


#: the configurations the benchmarks and the README name
BENCHMARK_CONFIGS = Path(__file__).parent.parent / "benchmarks" / "configs"


def test_json_round_trip(tmp_path):
    config = EngineConfig(WageConfig(net="mlp", batch_size=16, seed=3), lanes=8, data_words=2048,
                          weight_words=8192, external_words=100, target="ecp5")
    assert EngineConfig.from_json(config.to_json()) == config
    config.save(tmp_path / "engine.json")
    loaded = EngineConfig.load(tmp_path / "engine.json")
    assert loaded == config and loaded.fingerprint() == config.fingerprint()


def test_missing_keys_take_defaults():
    assert EngineConfig.from_dict({}) == EngineConfig(WageConfig())
    assert EngineConfig.from_dict({"lanes": 8}).lanes == 8


@pytest.mark.parametrize("text, message", [
    ('{"lanes": 3}', "lanes=3"),
    ('{"lanse": 8}', "unknown engine configuration keys ['lanse']"),
    ('{"wage": {"kW": 99}}', "wage: kW=99"),
    ('{"wage": {"nett": "mlp"}}', "wage: unknown configuration keys ['nett']"),
    ('[1, 2]', "must be a JSON object, got list"),
    ('{"lanes": ', "not valid JSON"),
])
def test_bad_json_names_the_value(text, message):
    with pytest.raises(EngineConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        EngineConfig.from_json(text)


def test_unreadable_file_names_it(tmp_path):
    with pytest.raises(EngineConfigError, match="cannot read engine configuration file .*nope.json"):
        EngineConfig.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text('{"lanes": 5}')
    with pytest.raises(EngineConfigError, match=r"bad.json: lanes=5"):
        EngineConfig.load(tmp_path / "bad.json")


def test_slot_digits_are_what_the_compiled_patterns_use():
    """Each slot's convolution walk gets the most (pos, tap) digits any compiled pattern in it has."""
    from hw.engine.compiler import compile_network
    from hw.engine.conv import ConvPattern
    from hw.engine.encoding import SLOTS
    config = EngineConfig.load("benchmarks/configs/engine_lenet5_l8.json")
    assert config.slot_digits == {"a": (5, 3), "b": (3, 3), "out": (4, 3), "aux": (4, 1), "draw": (1, 2)}
    for ins in compile_network(config).instructions:
        for name in SLOTS:
            p = getattr(ins, name)
            if isinstance(p, ConvPattern):
                assert len(p.pos_radix) <= config.slot_digits[name][0]
                assert len(p.tap_radix) <= config.slot_digits[name][1]
    mlp = EngineConfig(WageConfig(net="mlp", input_shape=(1, 28, 28)))
    assert not mlp.has_conv and set(mlp.slot_digits.values()) == {(1, 1)}


@pytest.mark.parametrize("path", sorted((BENCHMARK_CONFIGS).glob("*.json")),
                         ids=lambda p: p.stem)
def test_benchmark_configs_fit_and_compile(path):
    """Every configuration the benchmarks and the README name still fits its memories."""
    from hw.engine.compiler import compile_network
    config = EngineConfig.load(path)
    assert compile_network(config).instructions


def test_lenet5_batch_128_config_stores_the_large_two_pass_products():
    """The 85F batch-128 configuration is sized so that no large error or gradient product computes
    twice (its external sums hold conv2's error product's rows): the point of its
    external_sum_words. (fc2's small error product computes twice, the compiler's choice.)"""
    from hw.engine.compiler import array_beats, compile_network, two_pass_products
    config = EngineConfig.load(BENCHMARK_CONFIGS / "engine_lenet5_l8_b128.json")
    program = compile_network(config)
    large = [ins for ins in program.instructions if ins.op in two_pass_products() and ins.layer <= 2]
    assert len(large) >= 4 and all(ins.stored for ins in large)       # conv1, conv2 and fc1
    short = config.replace(external_sum_words=config.external_sum_words // 2)
    assert array_beats(compile_network(short)) > array_beats(program)


def test_lenet5_batch_128_config_stages_e1_over_the_consumed_e2():
    """On 8,192-word scratchpads E2 (fc1's error, 8,192 words) fills the error scratchpad and E1
    (65,536 words) spills, so no free words hold one of E1's 8,192-word output-channel blocks; but
    E2 is read for the last time before conv2's gradient, so that product stages E1 block by block
    over E2's words: 8 COPY records, 8 parts. The port-bound estimate falls from 34,898,432 cycles
    (both operands through the port, measured before staging over consumed tensors) to 29,016,576
    (with conv2's error product in 54 parts, what 16,384 words held as whole records), and to
    27,853,312 with delta records (108 parts; at a word per cycle the forward products run whole,
    below)."""
    from hw.engine.compiler import compile_network, port_bound_cycles
    from hw.engine.isa import Op
    config = EngineConfig.load(BENCHMARK_CONFIGS / "engine_lenet5_l8_b128.json")
    program = compile_network(config)
    e0, e1, e2, e3 = program.errors
    assert (e2.base, e2.end) == (0, config.data_words) and e1.base >= config.data_words
    copies = [ins for ins in program.instructions if ins.op == Op.COPY]
    assert [(c.aux.base, c.out.base, c.out.n1 * c.out.nk) for c in copies] == \
        [(e1.base + ob, 0, 8192) for ob in range(8)]
    assert program.overwritten == ("E2",)
    assert port_bound_cycles(config, program.instructions) == 27_853_312
    assert port_bound_cycles(config, compile_network(config.replace(program_words=3072)).instructions) == 28_410_368


def test_lenet5_batch_128_stages_by_the_memory_rate():
    """The b128 configuration at a word per cycle and its twin for the ULX3S's SDRAM
    (external_cycles_per_word = 7) compile to different programs, each the lower port-bound
    estimate at its rate.

    On the SDRAM every spilled operand a product re-reads is staged: conv1's forward product reads
    the input batch (294,912 words, 2,304 per image) once, in 43 bands of 3 images, instead of once
    per output-channel block (1,179,648); conv2's forward product A0 (73,728 words) in 10 bands of
    14 images instead of 6,553,600 words; conv2's error product E1 (65,536 words) from 8 COPY
    records of 16 images into E2's dead words, in 8 bands × 54 parts (8 × 108 would not fit 16,384
    words), instead of once per valid tap. The estimate at 7 cycles a word falls from 194,874,880
    to 111,816,192; at a word per cycle the staged program would cost 28,795,392 against the whole
    products' 27,853,312 (a port of a word per cycle keeps up with one spilled operand per beat,
    and the copies and coarser parts cost). The 22,528-word configuration (whole records needed it
    for 10 forward bands and 54 parts) takes conv2's error product staged in 8 bands of its finest
    108 parts: the same array beats with E1 read once, 27,771,392. The finish record's band digit
    gives the out and aux walks a fifth digit."""
    from hw.engine.compiler import MemoryPlan, compile_network, port_bound_cycles, tensor_reads
    from hw.engine.isa import Op
    config = EngineConfig.load(BENCHMARK_CONFIGS / "engine_lenet5_l8_b128.json")
    sdram = EngineConfig.load(BENCHMARK_CONFIGS / "engine_lenet5_l8_b128_sdram.json")
    assert sdram == config.replace(external_cycles_per_word=7)
    program, whole = compile_network(sdram), compile_network(config)
    assert [port_bound_cycles(sdram, p.instructions) for p in (program, whole)] == [111_816_192, 194_874_880]
    assert [port_bound_cycles(config, p.instructions) for p in (program, whole)] == [28_795_392, 27_853_312]
    assert not any(ins.op in (Op.COPY_ACT,) for ins in whole.instructions)
    assert sum(str(ins).startswith("CONV_ERR layer 1 part") for ins in whole.instructions) == 108

    x, a0, e1 = program.inputs, program.activations[0], program.errors[1]
    bands = [ins for ins in program.instructions if ins.op == Op.COPY_ACT]
    assert [(c.layer, c.aux.base, c.out.base, c.out.nk) for c in bands] == \
        [(0, x.base + 6912 * n, 0, 6912) for n in range(42)] + [(0, x.base + 6912 * 42, 0, 4608)] + \
        [(1, a0.base + 8064 * n, 0, 8064) for n in range(9)] + [(1, a0.base + 72576, 0, 1152)]
    copies = [ins for ins in program.instructions if ins.op == Op.COPY]
    assert [(c.aux.base, c.aux.nk, c.out.base) for c in copies[:8]] == [(e1.base + 8192 * n, 8192, 0) for n in range(8)]
    assert len(copies) == 16 and program.overwritten == ("E2",)             # and conv2's gradient blocks
    assert sum(str(ins).startswith("CONV_ERR layer 1 part") for ins in program.instructions) == 8 * 54

    def forward_reads(program, name):
        plan = MemoryPlan(program.inputs, program.activations, program.errors, program.weights, program.usage)
        loss = next(n for n, ins in enumerate(program.instructions) if ins.op == Op.LOSS)
        return tensor_reads(plan, program.instructions[:loss], config.lanes)[name]
    assert [forward_reads(p, "inputs") for p in (program, whole)] == [294_912, 1_179_648]
    assert [forward_reads(p, "A0") for p in (program, whole)] == [73_728, 6_553_600]

    finest = compile_network(EngineConfig.load(BENCHMARK_CONFIGS / "engine_lenet5_l8_b128_staged.json"))
    assert finest.config == config.replace(program_words=22528)
    assert sum(ins.op == Op.COPY for ins in finest.instructions) == 8 + 8
    assert sum(str(ins).startswith("CONV_ERR layer 1 part") for ins in finest.instructions) == 8 * 108
    assert port_bound_cycles(config, finest.instructions) == 27_771_392
    assert (sdram.slot_digits["out"], sdram.slot_digits["aux"]) == ((5, 3), (5, 1))
    with pytest.raises(EngineConfigError, match=r"external_cycles_per_word=0: must be an integer in 1\.\.1024"):
        config.replace(external_cycles_per_word=0)
