"""Compiler: memory map, fit check with named shortfalls, unsupported networks, layouts."""

from pathlib import Path

import numpy as np
import pytest

from golden import model as golden
from golden.config import WageConfig
from hw.engine.compiler import (FitError, Placement, UnsupportedNetwork, _external_reads, compile_network, plan_memory,
                                port_bound_cycles)
from hw.engine.config import EngineConfig, EngineConfigError
from hw.engine.isa import Op
from hw.engine.layout import LayoutError, MapLayout, WeightLayout


def test_mlp_program_and_memory_map():
    wage = WageConfig(net="mlp", batch_size=16)
    program = compile_network(EngineConfig(wage))
    ops = [(ins.op, ins.layer) for ins in program.instructions]
    assert ops == [(Op.FWD, 0), (Op.FWD, 1), (Op.LOSS, 1), (Op.ERR, 1), (Op.GRAD, 1), (Op.GRAD, 0), (Op.END, 0)]
    assert program.inputs.words == 16 * 49
    assert [w.words for w in program.weights] == [256 * 49, 10 * 16]
    assert program.usage["weights"] == (256 * 49 + 160, 16384)
    regions = sorted([(m.base, m.end) for m in [program.inputs, *program.activations]])
    assert all(a[1] <= b[0] for a, b in zip(regions, regions[1:]))        # no overlap


def test_too_small_memories_name_the_buffer_and_shortfall():
    wage = WageConfig(net="mlp", batch_size=16)
    with pytest.raises(FitError, match=r"weight_words: the network needs 12704 words .* \(12704 words short|"
                                       r"weight_words: .*12704.*short"):
        compile_network(EngineConfig(wage, weight_words=1))
    with pytest.raises(FitError, match=r"data_words: the network needs 1056 words \(inputs 784, A0 256, A1 16\), "
                                       r"the engine has 1000 \(56 words short\)"):
        compile_network(EngineConfig(wage, data_words=1000))
    with pytest.raises(FitError, match=r"data_words: the network needs 196736 words \(inputs 147456, A0 36864"):
        compile_network(EngineConfig(WageConfig(net="lenet5")))           # batch 128 LeNet-5 on chip
    with pytest.raises(FitError, match="labels: batch 16 needs 16 label words, label_words=8"):
        compile_network(EngineConfig(wage, label_words=8))
    # with an external memory the tensors that do not fit go there, until it is full too
    with pytest.raises(FitError, match=r"external_words: the network needs 364544 words \(inputs 147456, A0 36864, "
                                       r"E0 147456, E1 32768\), the engine has 100000 \(264544 words short\)"):
        compile_network(EngineConfig(WageConfig(net="lenet5"), data_words=16384, weight_words=1 << 16,
                                     external_words=100_000))
    # (W0 straddles: 840 of its 12,544 words fill the weight store after W1's 160)
    with pytest.raises(FitError, match=r"external_weight_words: the network needs 11704 words \(W0 11704\), "
                                       r"the engine has 11000 \(704 words short\)"):
        compile_network(EngineConfig(wage, weight_words=1000, external_weight_words=11000))


def test_the_first_weight_layer_that_does_not_fit_straddles_the_weight_store_boundary():
    """Layers that fit whole take the weight store first (program order); the first that does not
    takes its free words and continues in the external weight region's first words, the other
    spilled layers after it: no store word is idle while weights are read through the port."""
    wage = WageConfig(net="mlp", batch_size=16)
    config = EngineConfig(wage, weight_words=1000, external_weight_words=11704)
    program = compile_network(config)
    w0, w1 = program.weights
    assert (w1.base, w1.words) == (0, 160) and (w0.base, w0.words) == (160, 12544)
    assert program.straddled == {"W0": 840}
    assert program.usage["weights"] == (1000, 1000) and program.usage["external weights"] == (11704, 11704)
    assert "W0 straddles the weight store's boundary: 840 words on chip" in program.describe()
    # the straddler's reads beyond the boundary are the port's: 840 fewer words per read of W0
    whole = EngineConfig(wage, weight_words=160, external_weight_words=12544)
    assert compile_network(whole).straddled == {}
    reads = [_external_reads(ins.b, 16, limit) for ins, limit in
             ((program.instructions[0], 1000), (compile_network(whole).instructions[0], 160))]
    assert reads == [11704, 12544]
    # a layer spilled after the straddler starts behind its external part
    lenet = compile_network(EngineConfig(WageConfig(net="lenet5", batch_size=8), weight_words=2000,
                                         external_weight_words=1 << 16, data_words=1 << 15))
    assert [(w.base, w.words) for w in lenet.weights] == [(0, 64), (384, 3200), (3584, 32768), (64, 320)]
    assert lenet.straddled == {"W1": 1616}


def test_tensors_that_do_not_fit_go_to_the_external_memory():
    """Each tensor lives on chip or in the external memory, and at most one straddles the boundary
    (its external part first in the region); no two overlap."""
    wage = WageConfig(net="lenet5")
    program = compile_network(EngineConfig(wage, data_words=16384, weight_words=16384, external_words=1 << 19,
                                           external_weight_words=1 << 16))
    tensors = [program.inputs, *program.activations, *program.errors]
    on_chip = {t.name for t in tensors if t.end <= 16384}
    outside = [t for t in tensors if t.base >= 16384]
    straddling = [t for t in tensors if t.base < 16384 < t.end]
    assert on_chip and outside and len(on_chip) + len(outside) + len(straddling) == 1 + 2 * len(wage.layers)
    assert len(straddling) <= 1
    spans = sorted((max(t.base, 16384), t.end) for t in outside + straddling)     # one region, no overlap
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])) and spans[-1][1] <= 16384 + (1 << 19)
    assert program.usage["external"] == (sum(e - b for b, e in spans), 1 << 19)
    for pad in (program.errors, [program.inputs, *program.activations]):           # no overlap on chip
        chip = sorted((t.base, min(t.end, 16384)) for t in pad if t.base < 16384)
        assert all(a[1] <= b[0] for a, b in zip(chip, chip[1:]))
    w_out = [(max(w.base, 16384), w.end) for w in program.weights if w.end > 16384]   # (one may straddle)
    assert w_out and program.usage["external weights"][0] == sum(e - b for b, e in w_out)
    assert sum(w.base < 16384 < w.end for w in program.weights) <= 1


def test_spilled_errors_go_to_the_error_region_and_nothing_else_does():
    """With external_error_words the error tensors that spill whole sit in the data region's last
    words (from the region's first word, no overlap) and every activation, the input batch and a
    straddler's external part below it; the training step's instructions are the same but for
    addresses. Too small a region or too little room below it is refused, naming the field."""
    wage = WageConfig(net="lenet5", batch_size=32)
    plain = EngineConfig(wage, lanes=8, data_words=8192, weight_words=8192, external_words=1 << 18,
                         external_weight_words=1 << 16)
    config = plain.replace(external_error_words=1 << 17)
    assert config.external_error_base == 1 << 17
    program = compile_network(config, Placement())
    base = config.data_words + config.external_error_base
    outside_errors = [e for e in program.errors if e.base >= config.data_words]
    assert outside_errors, "the test wants errors that spill"
    assert all(base <= e.base and e.end <= config.data_words + config.external_words for e in outside_errors)
    spans = sorted((e.base, e.end) for e in outside_errors)
    assert spans[0][0] == base and all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    acts = [program.inputs, *(a for a in program.activations if a is not None)]
    assert all(t.end <= base for t in acts)
    assert program.usage["external errors"] == (spans[-1][1] - base, 1 << 17)
    before = compile_network(plain, Placement())
    assert len(before.instructions) == len(program.instructions)
    assert [i.op for i in before.instructions] == [i.op for i in program.instructions]
    need = program.usage["external errors"][0]
    with pytest.raises(FitError, match=rf"external_error_words: the network needs {need} words .* the engine has "
                                       rf"{need - 1} \(1 words short\)"):
        compile_network(plain.replace(external_error_words=need - 1), Placement())
    below = program.usage["external"][0]
    with pytest.raises(FitError, match=rf"external_words: the network needs {below} words .*the engine has "
                                       rf"{below - 1} \(the {1 << 18} external words less the error region's"):
        compile_network(plain.replace(external_error_words=(1 << 18) - below + 1), Placement())


def test_the_mlp_input_batch_takes_the_whole_scratchpad_before_its_activations():
    """The MLP at batch 128 on the 85F-sized engine: its input batch (12,544 words, read 64 times
    per word) does not fit the 8,192-word activation scratchpad. Straddling after the tensors that
    fit whole, it got the 3,840 words A0 and A1 left (988,672 port-bound cycles); taking all 8,192
    in its turn, with A0 (read 5 times per word) and A1 external, the step needs 849,408 (first
    fit: 1,111,552). The convolution compiler does not offer that placement (its staging needs the
    free words)."""
    config = EngineConfig.load(Path(__file__).parent.parent / "benchmarks" / "configs" / "engine_mlp_l8_b128.json")
    program = compile_network(config)
    assert program.straddled == {"inputs": 8192, "W0": 7872}
    assert program.inputs.base == 0 and all(a.base >= 8192 for a in program.activations)
    assert port_bound_cycles(config, program.instructions) == 849_408
    after = compile_network(config, Placement(straddle="inputs"))
    assert after.straddled == {"inputs": 3840, "W0": 7872}
    assert port_bound_cycles(config, after.instructions) == 988_672
    assert port_bound_cycles(config, compile_network(config, Placement()).instructions) == 1_111_552


def test_the_most_read_spilled_tensor_straddles_when_that_saves_port_cycles():
    """LeNet-5 at batch 128 on 85F-sized scratchpads: first fit leaves conv2's error E1 (read 200
    times per word, by conv2's error and gradient products, each computed twice) wholly external;
    the chosen placement keeps its first 12,160 words in the error scratchpad's free words. The
    gradient product, which reads two external operands per beat, then reads 12,160 × 50 × 2
    fewer words: 1,216,000 fewer port-bound cycles. A network that fits on chip is placed by
    first fit."""
    config = EngineConfig(WageConfig(net="lenet5"), data_words=16384, weight_words=16384,
                          external_words=1 << 19, external_weight_words=1 << 16)
    program = compile_network(config)
    e1 = program.errors[1]
    assert (e1.base, e1.end) == (16384 - 12160, 16384 + 32768 - 12160)
    first_fit = plan_memory(config)
    assert first_fit.errors[1].base >= 16384
    unplaced = compile_network(config, Placement())
    assert unplaced.errors[1].base == first_fit.errors[1].base
    assert port_bound_cycles(config, unplaced.instructions) - port_bound_cycles(config, program.instructions) == 12160 * 50 * 2
    # the same network on chip: first fit, nothing straddles
    big = config.replace(data_words=1 << 18, external_words=0)
    assert all(t.end <= 1 << 18 for t in compile_network(big).errors)


def test_unsupported_networks_are_named():
    with pytest.raises(UnsupportedNetwork, match="layer 1 .*4 channels, not a multiple of lanes=8"):
        compile_network(EngineConfig(WageConfig(net="4C3-MP2-10", input_shape=(1, 8, 8), batch_size=4), lanes=8))
    with pytest.raises(UnsupportedNetwork, match="fan-in 784 is not a multiple of lanes=32"):
        compile_network(EngineConfig(WageConfig(net="mlp"), lanes=32))
    with pytest.raises(UnsupportedNetwork, match="output_quantize=False"):
        compile_network(EngineConfig(WageConfig(net="mlp", output_quantize=False)))


@pytest.mark.parametrize("kwargs, text", [
    (dict(lanes=12), "lanes=12: must be a power of two"), (dict(lanes=2), "lanes=2"),
    (dict(data_words=0), "data_words=0"), (dict(target="xilinx"), "target='xilinx'"),
    (dict(program_words=0), "program_words=0"),
    (dict(program_words=(1 << 16) + 1), "program_words=65537: must be an integer in 1..65536"),
    (dict(data_words=(1 << 20) + 1), r"data_words=1048577: must be an integer in 1..1048576"),
    (dict(weight_words=(1 << 20) + 1), "weight_words=1048577: must be an integer in 1..1048576"),
    (dict(wage="mlp"), "wage='mlp'"),
    (dict(external_words=-1), "external_words=-1: must be an integer in 0..16773120"),
    (dict(external_weight_words=1 << 24), "external_weight_words=16777216: must be an integer in 0..16760832"),
    (dict(data_words=1, external_words=(1 << 24) - 1, external_weight_words=2),
     "external_words \\+ external_weight_words = 16777217: the external memory has at most 2\\^24 words"),
    (dict(sum_words=-1), "sum_words=-1: must be an integer in 0..1048576"),
    (dict(sum_words=True), "sum_words=True"),
    (dict(external_sum_words=64), "external_sum_words=64: external sums need the external-memory port"),
    (dict(external_words=16, external_sum_words=1 << 24),
     "external_words \\+ external_weight_words \\+ external_sum_words = 16777232"),
])
def test_bad_engine_parameters_are_named(kwargs, text):
    args = dict(wage=WageConfig(net="mlp")) | kwargs
    with pytest.raises(EngineConfigError, match=text):
        EngineConfig(**args)


@pytest.mark.parametrize("flatten", [False, True])
def test_map_layout_round_trip(flatten):
    rng = np.random.default_rng(1)
    x = rng.integers(-127, 128, size=(3, 5, 4, 2))
    layout = MapLayout("x", 10, 3, 5, 4, 2, lanes=4, flatten=flatten)
    words = layout.pack(x)
    assert words.shape == (layout.words, 4)
    np.testing.assert_array_equal(layout.unpack(words), x)
    if not flatten:       # channels-last, 2 words per position, zero padding lanes
        assert layout.words_per_position == 2
        np.testing.assert_array_equal(words[0], x[0, :4, 0, 0])
        np.testing.assert_array_equal(words[1], [x[0, 4, 0, 0], 0, 0, 0])
    with pytest.raises(LayoutError, match=r"tensor of shape \(3, 5, 4\)"):
        layout.pack(x[..., 0])


@pytest.mark.parametrize("padding", [0, 1])
def test_tap_map_layout_is_the_im2col_of_the_input(padding):
    from hw.engine.layout import TapMapLayout
    rng = np.random.default_rng(2)
    x = rng.integers(-127, 128, size=(2, 2, 5, 4))
    layout = TapMapLayout.for_input("inputs", 0, 2, (2, 5, 4), kernel=3, padding=padding, lanes=4)
    ho, wo = 5 + 2 * padding - 2, 4 + 2 * padding - 2
    assert (layout.height, layout.width, layout.channels, layout.words_per_position) == (ho, wo, 18, 5)
    words = layout.pack(x)
    assert words.shape == (2 * ho * wo * 5, 4)
    feats = words.reshape(2, ho, wo, 20)
    for b, y, xx, i, j, c in [(0, 0, 0, 0, 0, 0), (1, ho - 1, wo - 1, 2, 2, 1), (0, 1, 1, 1, 2, 1)]:
        yy, xs = y + i - padding, xx + j - padding
        want = x[b, c, yy, xs] if 0 <= yy < 5 and 0 <= xs < 4 else 0
        assert feats[b, y, xx, (i * 3 + j) * 2 + c] == want
    assert (feats[..., 18:] == 0).all()                      # padding lanes
    np.testing.assert_array_equal(layout.unpack(words), x)
    with pytest.raises(LayoutError, match=r"inputs: tensor of shape \(2, 2, 5\)"):
        layout.pack(x[..., 0])


def test_weight_layout_is_channels_last_and_round_trips():
    wage = WageConfig(net="8C5-MP2-16C3p-MP2-32FC-10", input_shape=(1, 28, 28), seed=3)
    weights = golden.init_weights(wage)
    for i, ws in enumerate(weights):
        layout = WeightLayout.for_layer(wage, i, 0, lanes=4)
        words = layout.pack(ws)
        np.testing.assert_array_equal(layout.unpack(words), ws)
        flat = words.reshape(-1)
        # element index of each stored weight = the draw index (channels-last) when no lane is padding
        if layout.channels % 4 == 0:
            shape, axes = wage.draw_layout(i)
            order = np.arange(ws.size).reshape(shape).transpose(axes).reshape(ws.shape)
            idx = np.zeros(layout.words * 4, dtype=np.int64)
            idx[:] = -1
            for o in range(layout.rows):
                for w in range(layout.words_per_row):
                    base = layout.word_index_base(o, w)
                    idx[(o * layout.words_per_row + w) * 4:(o * layout.words_per_row + w + 1) * 4] = base + np.arange(4)
            np.testing.assert_array_equal(flat[idx], ws.reshape(-1)[np.argsort(order.reshape(-1))])


def test_max_reduction_covers_every_product():
    mlp = EngineConfig(WageConfig(net="mlp", batch_size=16))
    assert mlp.max_reduction == 784                     # forward fan-in; error 16; gradient batch 16
    assert EngineConfig(WageConfig(net="mlp", batch_size=1000)).max_reduction == 1000
    lenet = EngineConfig(WageConfig(net="lenet5", batch_size=128), lanes=16)
    assert lenet.max_reduction == 128 * 24 * 24         # the first conv's gradient: B·Ho·Wo


def test_store_then_quantise_is_chosen_per_product():
    """Rows that fit the sum buffer: on chip; else external when the product's beats outnumber the
    words its sums would move; else compute-twice. The array beats count a stored product once."""
    from hw.engine.compiler import array_beats, result_rows
    from hw.engine.isa import STORE_CHIP, STORE_EXTERNAL
    wage = WageConfig(net="mlp", batch_size=128)
    base = EngineConfig(wage, lanes=16, data_words=1 << 14, weight_words=1 << 14)
    twice = compile_network(base)
    rows = {str(i): result_rows(i, 16) for i in twice.instructions if i.op in (Op.ERR, Op.GRAD)}
    assert rows == {"ERR layer 1": 2048, "GRAD layer 1": 256, "GRAD layer 0": 12544}
    mixed = compile_network(base.replace(sum_words=2048, external_words=16, external_sum_words=1 << 16))
    where = {str(i): i.stored for i in mixed.instructions if i.op in (Op.ERR, Op.GRAD)}
    # GRAD 0 reduces over 128 samples in 8 beats of 16 per row: 100,352 beats > 2 · 12,544 rows · 3 words
    assert mixed.config.sum_chunks == 3
    assert where == {"ERR layer 1": STORE_CHIP, "GRAD layer 1": STORE_CHIP, "GRAD layer 0": STORE_EXTERNAL}
    # at batch 64 its 50,176 beats are fewer than the 75,264 words: it computes twice
    small = compile_network(base.replace(wage=wage.replace(batch_size=64), sum_words=2048, external_words=16,
                                         external_sum_words=1 << 16))
    assert {str(i): i.stored for i in small.instructions if i.op == Op.GRAD}["GRAD layer 0"] == 0
    assert array_beats(mixed) < array_beats(twice)


def test_a_spilled_gradient_operand_is_staged_block_by_block():
    """LeNet-5 at batch 128 with its sums external: conv2's gradient reads E1 (spilled) once per
    weight word; staged — a COPY of each output-channel block's 8,192 words into the error
    scratchpad's free words before that block's part — only A0's taps are spilled beats. That beats
    straddling E1 (7,528,704 port-bound cycles against 8,034,816), so first fit with staging wins.
    A program memory too small for the extra records gets the product whole. (1,536 program words
    hold this step with conv2's error product in 9 row bands: 1,477 words of delta records.)"""
    config = EngineConfig(WageConfig(net="lenet5"), data_words=16384, weight_words=16384, external_words=1 << 19,
                          external_weight_words=1 << 16, external_sum_words=110592, program_words=1536)
    program = compile_network(config)
    assert program.straddled == {"W2": 12800} and program.errors[1].base >= 16384
    grad = [ins for ins in program.instructions if ins.op == Op.COPY or str(ins).startswith("CONV_GRAD layer 1")]
    assert [getattr(ins, "part", None) for ins in grad] == [None, 1, None, 2, None, 2, None, 2, 3]
    e1 = program.errors[1]
    stage = program.usage["err"][0]
    for ob, copy in enumerate(grad[0:8:2]):
        assert (copy.aux.base, copy.aux.sk, copy.aux.n1 * copy.aux.nk) == (e1.base + ob, 4, 8192)
        assert (copy.out.base, copy.out.sk, copy.out.n1 * copy.out.nk) == (stage, 1, 8192)
    assert all(part.a.base == stage and part.a.n1 == 1 for part in grad[1:8:2])
    assert port_bound_cycles(config, program.instructions) == 7_528_704
    straddled = compile_network(config, Placement(straddle="E1"))
    assert straddled.straddled == {"E1": 12160, "W2": 12800}
    assert port_bound_cycles(config, straddled.instructions) == 8_034_816
    small = compile_network(config.replace(program_words=1280))
    assert not any(ins.op == Op.COPY for ins in small.instructions)

