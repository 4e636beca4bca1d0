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
    ('{"external_words": 64, "external_error_words": 65}', "external_error_words=65: must be an integer in 0..64"),
    ('{"external_error_words": true}', "external_error_words=True: must be an integer in 0..0"),
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
    over E2's words: 8 COPY records, 8 parts. Conv1's gradient product, both of whose operands
    spill (E0 and the input batch, 294,912 words each), runs in 43 batch bands of 3 images with
    E0's band staged over E2 (dead by then) and its sums accumulated; the input is read where it
    lives (at a word per cycle the port keeps up with one spilled operand per beat, so its copy
    would cost 294,912 cycles and save none). Fc1's forward product stages its input A1 in 6 batch bands (40, 24, 16, 16, 8 and
    8 images, each in words of A2 that the bands before have not written; the last 16 images read
    where they live). The port-bound estimate falls from 34,898,432 cycles (both operands through
    the port, before staging over consumed tensors) to 29,016,576 (conv2's error product in 54
    parts), 27,853,312 (108 parts, delta records), 27,263,488 with conv1's gradient bands,
    26,360,320 with fc1's forward bands, 26,065,408 with the input not staged in conv1's and
    26,046,976 with 1,024 of fc1's weight words in the weight store (the layer straddles its boundary)."""
    from hw.engine.compiler import compile_network, port_bound_cycles
    from hw.engine.isa import Op
    config = EngineConfig.load(BENCHMARK_CONFIGS / "engine_lenet5_l8_b128.json")
    program = compile_network(config)
    e0, e1, e2, e3 = program.errors
    assert (e2.base, e2.end) == (0, config.data_words) and e1.base >= config.data_words
    copies = [ins for ins in program.instructions if ins.op == Op.COPY]
    assert [(c.aux.base, c.out.base, c.out.n1 * c.out.nk) for c in copies[:8]] == \
        [(e1.base + ob, 0, 8192) for ob in range(8)]
    assert [(c.aux.base, c.out.base, c.aux.nk) for c in copies[8:]] == \
        [(e0.base + 6912 * n, 0, 6912) for n in range(42)] + [(e0.base + 6912 * 42, 0, 4608)]
    parts = [ins for ins in program.instructions if str(ins).startswith("CONV_GRAD layer 0 part")]
    assert [(p.sum_add, p.sum_hold) for p in parts] == [(0, 1)] + [(1, 1)] * 41 + [(1, 0)]
    assert sum(str(ins).startswith("CONV_GRAD layer 1 part") for ins in program.instructions) == 8   # not banded
    x = program.inputs
    assert [p.b.base for p in parts] == [x.base + 3 * 576 * x.words_per_position * n for n in range(43)]   # (folded: pad 0)
    assert not any(ins.op == Op.COPY_ACT and ins.layer == 0 for ins in program.instructions)
    assert program.overwritten == ("E2",)
    a1 = program.activations[1]
    bands = [(ins.aux.base - a1.base, ins.out.base, ins.out.nk) for ins in program.instructions
             if ins.op == Op.COPY_ACT and ins.layer == 2]
    assert bands == [(0, 2560, 5120), (5120, 4096, 3072), (8192, 5120, 2048), (10240, 6144, 2048),
                     (12288, 6656, 1024), (13312, 7168, 1024)]                   # 40, 24, 16, 16, 8, 8 images
    assert [ins.a.lim for ins in program.instructions if str(ins) == "FWD layer 2"] == [40, 24, 16, 16, 8, 8, 16]
    assert not any(str(ins).startswith("CONV_GRAD layer 2") for ins in program.instructions)   # (beats = words)
    assert port_bound_cycles(config, program.instructions) == 26_046_976
    assert port_bound_cycles(config, compile_network(config.replace(program_words=3072)).instructions) == 28_094_976


def test_lenet5_batch_128_stages_by_the_memory_rate():
    """The b128 configuration at a word per cycle and its twin for the ULX3S's SDRAM
    (external_cycles_per_word = 7, and an error region the controller keeps narrow) compile to different programs, each the lower port-bound
    estimate at its rate.

    On the SDRAM every spilled operand a product re-reads is staged: conv1's forward product reads
    the input batch (294,912 words, 2,304 per image) once, in 43 bands of 3 images, instead of once
    per output-channel block (1,179,648); conv2's forward product A0 (73,728 words) in 10 bands of
    14 images instead of 6,553,600 words; conv2's error product E1 (65,536 words) from 8 COPY
    records of 16 images into E2's dead words, instead of once per valid tap. Both gradient
    products run in batch bands with accumulated sums: conv2's in 10 bands of 14 images (A0 read
    once instead of 6.55 million words, E1 once more), conv1's in 43 of 3. Fc1's gradient product
    stages A1 (16,384 words) in 2 column blocks of 64 input words over A2's dead words, instead of
    reading it once per output block (1,048,576). With those records the error product's bands take
    9 parts each (8 × 9), not 54. Fc1's forward product stages A1 in batch bands as at a word per
    cycle (see above). The estimate at 7 cycles a word falls from 182,130,176 (the word-per-cycle
    program, which reads conv1's input in place in its gradient bands) to 51,863,552 (52,092,928
    before fc1's weights straddled the weight store, 58,415,104 before fc1's forward bands, 64,591,872 before its gradient
    blocks, 111,816,192 before the gradient bands); at a word per cycle the SDRAM program would cost
    29,995,520 against 26,046,976. The
    22,528-word configuration takes conv2's error product staged in 8 bands of its finest 108 parts
    (and fc1's forward bands)."""
    from hw.engine.compiler import MemoryPlan, compile_network, port_bound_cycles, tensor_reads
    from hw.engine.isa import Op
    config = EngineConfig.load(BENCHMARK_CONFIGS / "engine_lenet5_l8_b128.json")
    sdram = EngineConfig.load(BENCHMARK_CONFIGS / "engine_lenet5_l8_b128_sdram.json")
    assert sdram == config.replace(external_cycles_per_word=7, external_error_words=1 << 19)   # (errors narrow)
    program, whole = compile_network(sdram), compile_network(config)
    assert [port_bound_cycles(sdram, p.instructions) for p in (program, whole)] == [51_863_552, 182_130_176]
    assert [port_bound_cycles(config, p.instructions) for p in (program, whole)] == [29_995_520, 26_046_976]
    assert not any(ins.op == Op.COPY_ACT and ins.layer == 1 for ins in whole.instructions)
    assert sum(str(ins).startswith("CONV_ERR layer 1 part") for ins in whole.instructions) == 108

    x, a0, e0, e1 = program.inputs, program.activations[0], program.errors[0], program.errors[1]
    loss = next(n for n, ins in enumerate(program.instructions) if ins.op == Op.LOSS)
    bands = [ins for ins in program.instructions if ins.op == Op.COPY_ACT]
    forward = [(c.layer, c.aux.base, c.out.base, c.out.nk) for c in bands[:sum(
        ins.op == Op.COPY_ACT for ins in program.instructions[:loss])]]
    a0_bands = [(1, a0.base + 8064 * n, 0, 8064) for n in range(9)] + [(1, a0.base + 72576, 0, 1152)]
    x_bands = [(0, x.base + 6912 * n, 0, 6912) for n in range(42)] + [(0, x.base + 6912 * 42, 0, 4608)]
    a1 = program.activations[1].base
    a1_bands = [(2, a1 + offset, base, words) for offset, base, words in
                ((0, 2560, 5120), (5120, 4096, 3072), (8192, 5120, 2048), (10240, 6144, 2048), (12288, 6656, 1024),
                 (13312, 7168, 1024))]
    assert forward == x_bands + a0_bands + a1_bands
    a1_blocks = [(2, program.activations[1].base + 64 * n, 0, 64) for n in range(2)]
    assert [(c.layer, c.aux.base, c.out.base, c.out.nk) for c in bands[len(forward):]] == a1_blocks + a0_bands + x_bands
    copies = [(c.layer, c.aux.base, c.aux.nk) for c in program.instructions if c.op == Op.COPY]
    assert copies == [(1, e1.base + 8192 * n, 8192) for n in range(8)] + \
        [(1, e1.base + 7168 * n, 7168) for n in range(9)] + [(1, e1.base + 64512, 1024)] + \
        [(0, e0.base + 6912 * n, 6912) for n in range(42)] + [(0, e0.base + 6912 * 42, 4608)]
    assert program.overwritten == ("E2", "A2")
    assert sum(str(ins).startswith("CONV_ERR layer 1 part") for ins in program.instructions) == 8 * 9
    for layer, bands in ((1, 10), (0, 43)):
        parts = [ins for ins in program.instructions if str(ins).startswith(f"CONV_GRAD layer {layer} part")]
        assert [(p.sum_add, p.sum_hold) for p in parts] == [(0, 1)] + [(1, 1)] * (bands - 2) + [(1, 0)]

    def reads(program, name, backward=False):
        plan = MemoryPlan(program.inputs, program.activations, program.errors, program.weights, program.usage)
        loss = next(n for n, ins in enumerate(program.instructions) if ins.op == Op.LOSS)
        part = program.instructions[loss:] if backward else program.instructions[:loss]
        return tensor_reads(plan, part, config.lanes)[name]
    assert [reads(p, "inputs") for p in (program, whole)] == [294_912, 1_179_648]
    assert [reads(p, "A0") for p in (program, whole)] == [73_728, 6_553_600]
    # backward: A0 (its masks for conv2's error product, then the gradient bands) and E1 (the error
    # bands, then the gradient bands)
    assert [reads(p, "A0", True) for p in (program, whole)] == [368_640, 6_848_512]
    assert [reads(p, "E1", True) for p in (program, whole)] == [131_072, 6_619_136]
    # A1: fc1's gradient blocks (once) and conv2's error product's pool indices (twice)
    assert [reads(p, "A1", True) for p in (program, whole)] == [49_152, 1_081_344]
    # forward, both programs: fc1's bands copy 112 images (14,336 words), the last 16 read per output block
    assert [reads(p, "A1") for p in (program, whole)] == [145_408, 145_408]

    finest = compile_network(EngineConfig.load(BENCHMARK_CONFIGS / "engine_lenet5_l8_b128_staged.json"))
    assert finest.config == config.replace(program_words=22528)
    assert sum(ins.op == Op.COPY for ins in finest.instructions) == 8 + 8 + 43
    assert sum(str(ins).startswith("CONV_ERR layer 1 part") for ins in finest.instructions) == 8 * 108
    assert port_bound_cycles(config, finest.instructions) == 25_965_056
    assert (finest.config.slot_digits["out"], finest.config.slot_digits["aux"]) == ((5, 3), (5, 1))
    with pytest.raises(EngineConfigError, match=r"external_cycles_per_word=0: must be an integer in 1\.\.1024"):
        config.replace(external_cycles_per_word=0)
