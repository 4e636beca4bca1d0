"""The word-level engine model against the golden model: compiler memory map, address patterns, dataflow."""

import dataclasses

import numpy as np
import pytest

from golden import model as golden
from golden.config import WageConfig
from golden.data import load_dataset
from hw.engine.compiler import compile_network
from hw.engine.config import EngineConfig
from hw.engine.isa import Op
from hw.engine.model import EngineModel
from tests.support import train_model_and_golden


@pytest.fixture(scope="module")
def embedded():
    return load_dataset("embedded")


def train_both(wage, program, embedded, steps, eta_log2=3, check=True):
    return train_model_and_golden(EngineModel(program), wage, program, embedded, steps, eta_log2, check)


@pytest.mark.parametrize("batch, lanes, net", [(16, 16, "mlp"), (20, 16, "mlp"), (9, 8, "64FC-32FC-10"),
                                               (5, 4, "12FC-10")])
def test_model_matches_golden_bit_for_bit(embedded, batch, lanes, net):
    kwargs = {} if net == "mlp" else {"input_shape": (1, 28, 28)}
    wage = WageConfig(net=net, batch_size=batch, seed=11, **kwargs)
    program = compile_network(EngineConfig(wage, lanes=lanes))
    assert train_both(wage, program, embedded, steps=4) == set()


def test_a_wrong_stride_is_caught(embedded):
    """The comparison fails when one address pattern is off by one word."""
    wage = WageConfig(net="mlp", batch_size=16, seed=2)
    program = compile_network(EngineConfig(wage))
    k = next(i for i, ins in enumerate(program.instructions) if ins.op == Op.GRAD)
    bad = program.instructions[k]
    program.instructions[k] = dataclasses.replace(bad, b=dataclasses.replace(bad.b, sk=bad.b.sk + 1))
    assert any(name.startswith("W") for name in train_both(wage, program, embedded, steps=2, check=False))


def test_weights_round_trip_through_the_layout():
    wage = WageConfig(net="mlp", batch_size=8, seed=4)
    engine = EngineModel(compile_network(EngineConfig(wage)))
    weights = golden.init_weights(wage)
    engine.load_weights(weights)
    for got, want in zip(engine.read_weights(), weights):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("net, shape, data_words, weight_words", [("mlp", (1, 28, 28), 200, 1000),
                                                                  ("mlp", (1, 28, 28), 600, 1000),
                                                                  ("4C3p-MP2-8C3-10", (1, 28, 28), 2000, 40)])
def test_spilled_tensors_train_bit_for_bit(embedded, net, shape, data_words, weight_words):
    """Scratchpads and weight store too small for the network: the tensors and weight layers that
    do not fit live in the external memory (addresses ≥ data_words, ≥ weight_words) and the step
    is unchanged. (The MLP's first layer's weights straddle the weight store's boundary; with 600
    data words its input batch takes them all and its activations go outside.)"""
    from hw.engine.conv import ConvEngineModel
    wage = WageConfig(net=net, batch_size=6, seed=3, input_shape=shape)
    program = compile_network(EngineConfig(wage, lanes=4, data_words=data_words, external_words=1 << 15,
                                          weight_words=weight_words, external_weight_words=1 << 16))
    tensors = [program.inputs] + [a for a in program.activations if a is not None] + program.errors
    assert any(t.base >= data_words for t in tensors) and any(t.end <= data_words for t in tensors)
    assert any(w.end > weight_words for w in program.weights) and any(w.base < weight_words for w in program.weights)
    if net == "mlp":
        assert program.straddled == ({"E0": 200, "W0": 360} if data_words == 200 else {"inputs": 600, "W0": 360})
    engine = (ConvEngineModel if "C" in net.split("-")[0] else EngineModel)(program)
    assert train_model_and_golden(engine, wage, program, embedded, steps=2) == set()


def test_staged_gradient_operands_train_bit_for_bit(embedded):
    """A spilled error operand staged block by block (COPY records, then the gradient product in
    parts with its sums stored, then a finish record) gives the same step as the whole product:
    LeNet-style network at batch 6, 4 lanes, 6,000-word scratchpads, first fit: E0 (6,912 words)
    spills and conv1's gradient stages it in two blocks of 3,456."""
    from hw.engine.compiler import Placement
    from hw.engine.conv import ConvEngineModel
    wage = WageConfig(net="8C5-MP2-16C5-MP2-32FC-10", batch_size=6, seed=5, input_shape=(1, 28, 28))
    config = EngineConfig(wage, lanes=4, data_words=6000, external_words=1 << 15, weight_words=1 << 14,
                          sum_words=1 << 12, external_sum_words=1 << 14)
    program = compile_network(config, Placement())
    copies = [ins for ins in program.instructions if ins.op == Op.COPY]
    assert copies and all(ins.aux.base >= config.data_words for ins in copies)      # a spilled source
    assert all(ins.out.base < config.data_words for ins in copies)                   # staged on chip
    assert train_model_and_golden(ConvEngineModel(program), wage, program, embedded, steps=2) == set()


def test_a_gradient_operand_is_staged_over_errors_already_consumed(embedded):
    """No free block in the error scratchpad (E2, E3 and E0's straddling first 214 words fill its
    1,000 words), but when conv2's gradient runs E2 and E3 have been read for the last time, so E1
    is staged over E2's words and the step is unchanged. Staged over E0's on-chip words instead
    (E0 is written by conv2's error product and read by conv1's gradient after it), the weights
    come out wrong: the liveness rule is what keeps the step exact."""
    from hw.engine.compiler import Placement
    from hw.engine.conv import PART_FIRST, PART_NEXT, ConvEngineModel
    wage = WageConfig(net="8C5-MP2-16C5-MP2-512FC-10", batch_size=6, seed=5, input_shape=(1, 28, 28))
    config = EngineConfig(wage, lanes=4, data_words=1000, external_words=1 << 16, weight_words=1 << 16,
                          sum_words=1 << 12, external_sum_words=1 << 14, program_words=16384)
    program = compile_network(config, Placement(straddle="E0"))
    e0, e1, e2, e3 = program.errors
    assert program.straddled == {"E0": 214} and (e2.base, e2.end, e3.end, e0.base) == (0, 768, 786, 786)
    assert program.usage["err"][0] == config.data_words and e1.base >= config.data_words
    copies = [ins for ins in program.instructions if ins.op == Op.COPY]
    assert [(c.out.base, c.out.n1 * c.out.nk) for c in copies] == [(0, 384)] * 4      # E2's words
    assert program.overwritten == ("E2",) and "E2 is overwritten by tile staging" in program.describe()
    assert train_model_and_golden(ConvEngineModel(program), wage, program, embedded, steps=2) == set()

    def moved(ins, base=616):            # [616, 1000): over E0's on-chip words, which are live
        if ins.op == Op.COPY:
            return dataclasses.replace(ins, out=dataclasses.replace(ins.out, base=base))
        if str(ins).startswith("CONV_GRAD layer 1") and ins.part in (PART_FIRST, PART_NEXT):
            return dataclasses.replace(ins, a=dataclasses.replace(ins.a, base=base))
        return ins
    clobbered = dataclasses.replace(program, instructions=[moved(ins) for ins in program.instructions])
    assert sum(ins.a.base == 616 for ins in clobbered.instructions if str(ins).startswith("CONV_GRAD layer 1")) == 4
    assert "W0" in train_model_and_golden(ConvEngineModel(clobbered), wage, clobbered, embedded, steps=2, check=False)

    # the driver refuses to read E2 back as E2 (its words hold E1's last staged block), before it
    # sends anything
    import asyncio

    from hw.engine.driver import EngineDriver

    class Unreachable:
        async def exchange(self, words):
            raise AssertionError(f"sent {words[:1]}")
    with pytest.raises(ValueError, match=r"E2: the step's tile staging overwrites its words .* read\(Target.ERR, 0, 768\)"):
        asyncio.run(EngineDriver(program, Unreachable()).read_err(e2))


def test_a_spilled_input_map_is_staged_in_batch_bands(embedded):
    """conv2's input A0 (8C5 + pool at batch 6 and 4 lanes: 1,728 words, 288 per image) does not
    fit the 1,200-word activation scratchpad. While conv2's forward product runs, A2 (768 words at
    384) is not yet written, so its words and the free ones hold two images: three bands, each a
    COPY_ACT and a CONV_FWD over the staged words. The port reads A0 once per word instead of once
    per tap and output-channel block, and the step equals golden's. Staged over A1's words instead
    (written by the bands themselves), the weights come out wrong. The memory is slow (4 cycles a
    word): at a word per cycle the port keeps up with the whole product, and the compiler does not
    stage (EngineConfig.external_cycles_per_word)."""
    from hw.engine.compiler import MemoryPlan, tensor_reads
    from hw.engine.conv import ConvEngineModel, compile_conv_fwd
    wage = WageConfig(net="8C5-MP2-16C5-MP2-512FC-10", batch_size=6, seed=5, input_shape=(1, 28, 28))
    config = EngineConfig(wage, lanes=4, data_words=1200, external_words=1 << 16, weight_words=1 << 16,
                          sum_words=1 << 12, external_sum_words=1 << 14, program_words=1 << 15,
                          external_cycles_per_word=4)
    program = compile_network(config)
    assert not any(ins.op == Op.COPY_ACT for ins in compile_network(config.replace(external_cycles_per_word=1)).instructions)
    a0, a1, a2 = program.activations[:3]
    assert a0.base >= config.data_words and a0.words == 1728 and (a1.base, a1.end, a2.base) == (0, 384, 384)
    loss = next(n for n, ins in enumerate(program.instructions) if ins.op == Op.LOSS)
    copies = [ins for ins in program.instructions[:loss] if ins.op == Op.COPY_ACT]
    assert [(c.aux.base - a0.base, c.out.base, c.out.nk) for c in copies] == [(576 * b, 384, 576) for b in range(3)]
    whole = compile_conv_fwd(wage, 1, a0, program.weights[1], a1, 4)
    address, valid = whole.a.address_array(4)
    spilled_reads = int(((address >= a0.base) & (address < a0.end) & valid).sum())
    plan = MemoryPlan(program.inputs, program.activations, program.errors, program.weights, program.usage)
    forward = program.instructions[:loss]
    assert tensor_reads(plan, forward, 4)["A0"] == a0.words and spilled_reads == 76800      # 44 per word
    assert train_model_and_golden(ConvEngineModel(program), wage, program, embedded, steps=2) == set()

    def moved(ins, base=0):              # over A1, which the bands write
        if ins.op == Op.COPY_ACT:
            return dataclasses.replace(ins, out=dataclasses.replace(ins.out, base=base))
        if str(ins).startswith("CONV_FWD layer 1"):
            return dataclasses.replace(ins, a=dataclasses.replace(ins.a, base=ins.a.base - 384 + base))
        return ins
    clobbered = dataclasses.replace(program, instructions=[moved(ins) for ins in forward] + program.instructions[loss:])
    assert "W1" in train_model_and_golden(ConvEngineModel(clobbered), wage, clobbered, embedded, steps=2, check=False)


def test_gradient_bands_accumulate_the_whole_products_sums(embedded):
    """The same network's conv2 gradient product (A0 and E1 both spilled) runs in 2 batch bands of
    3 images, each staging its E1 and A0 words, the second adding its rows to the first's stored
    sums; only the second's (the finished sums) enter the quantiser. Two steps equal golden's.
    The model refuses a program whose flags are wrong instead of computing other numbers: a last
    part that holds its rows (none enter the quantiser), or a second part that does not add (its
    rows follow the first's)."""
    from hw.engine.conv import ConvEngineModel, PART_FIRST, PART_NEXT
    from hw.engine.model import ModelError
    wage = WageConfig(net="8C5-MP2-16C5-MP2-512FC-10", batch_size=6, seed=5, input_shape=(1, 28, 28))
    config = EngineConfig(wage, lanes=4, data_words=1200, external_words=1 << 16, weight_words=1 << 16,
                          sum_words=1 << 12, external_sum_words=1 << 14, program_words=1 << 15,
                          external_cycles_per_word=4)
    program = compile_network(config)
    a0, e1 = program.activations[0], program.errors[1]
    assert a0.base >= config.data_words and e1.end > config.data_words
    parts = [n for n, ins in enumerate(program.instructions) if str(ins).startswith("CONV_GRAD layer 1 part")]
    assert [(program.instructions[n].part, program.instructions[n].sum_add, program.instructions[n].sum_hold)
            for n in parts] == [(PART_FIRST, 0, 1), (PART_NEXT, 1, 0)]
    assert [program.instructions[n].a.pos_radix for n in parts] == [(3, 8, 8)] * 2
    staged = [(str(ins), ins.aux.base, ins.aux.nk) for ins in program.instructions[parts[0] - 2:parts[1]]
              if ins.op in Op.COPIES]
    assert staged == [("COPY layer 1", e1.base, 768), ("COPY_ACT layer 1", a0.base, 864),
                      ("COPY layer 1", e1.base + 768, 768), ("COPY_ACT layer 1", a0.base + 864, 864)]
    assert train_model_and_golden(ConvEngineModel(program), wage, program, embedded, steps=2) == set()

    for n, field in ((parts[1], "sum_hold"), (parts[1], "sum_add")):
        flipped = list(program.instructions)
        flipped[n] = dataclasses.replace(flipped[n], **{field: 1 - getattr(flipped[n], field)})
        wrong = dataclasses.replace(program, instructions=flipped)
        with pytest.raises(ModelError, match=r"CONV_GRAD layer 1 finish: the rows that entered the quantiser"):
            train_model_and_golden(ConvEngineModel(wrong), wage, wrong, embedded, steps=1, check=False)


def test_fc_gradient_stages_its_spilled_input_in_column_blocks(embedded):
    """A fully connected gradient product whose input (A2, 768 words) spills runs in 4 parts, each
    after a COPY_ACT of up to 36 input words of every image into the 216 scratchpad words above A1
    (A3's, read for the last time by LOSS, and the free ones); the tiles run input word first, so every part's rows are whole sums and the finish
    record walks them in the whole product's order. Two steps equal golden's; a part whose staged
    operand is read one word off is caught; with A2 on chip the product runs whole."""
    from hw.engine.conv import PART_FINISH, PART_FIRST, PART_NEXT, ConvEngineModel
    wage = WageConfig(net="8C5-MP2-16C5-MP2-512FC-10", batch_size=6, seed=5, input_shape=(1, 28, 28))
    config = EngineConfig(wage, lanes=4, data_words=600, external_words=1 << 16, weight_words=1 << 16,
                          sum_words=1 << 12, external_sum_words=1 << 14, program_words=1 << 15,
                          external_cycles_per_word=4)
    program = compile_network(config)
    a2 = program.activations[2]
    assert a2.base >= config.data_words
    grad = [(n, ins) for n, ins in enumerate(program.instructions) if "GRAD layer 3" in str(ins)]
    assert [ins.part for _, ins in grad] == [PART_FIRST] + [PART_NEXT] * 3 + [PART_FINISH]
    copies = [program.instructions[n - 1] for n, ins in grad[:-1]]
    assert [(ins.op, ins.aux.base, ins.aux.n1, ins.aux.nk, ins.out.base) for ins in copies] == \
        [(Op.COPY_ACT, a2.base + 36 * k, 6, n, 384) for k, n in enumerate((36, 36, 36, 20))]
    assert [ins.part_count for _, ins in grad[:-1]] == [n * 3 * 16 for n in (36, 36, 36, 20)]
    assert "A3" in program.overwritten
    assert train_model_and_golden(ConvEngineModel(program), wage, program, embedded, steps=2) == set()

    n, part = grad[1]
    off = list(program.instructions)
    off[n] = dataclasses.replace(part, b=dataclasses.replace(part.b, base=part.b.base + 1))
    wrong = dataclasses.replace(program, instructions=off)
    assert "W3" in train_model_and_golden(ConvEngineModel(wrong), wage, wrong, embedded, steps=1, check=False)

    on_chip = compile_network(config.replace(data_words=1200))
    assert on_chip.activations[2].end <= 1200
    assert [str(ins) for ins in on_chip.instructions if "GRAD layer 3" in str(ins)] == ["GRAD layer 3"]


#: 8×8 inputs, batch 8, 56-word scratchpads and a memory of 4 cycles a word: fc1's input A0 (72
#: words) and its output A1 (64) spill, fc2's output A2 (24) is on chip. Both forward products
#: run in 2 staged batch bands of 4 images; fc2's bands stage over A2's words of the images not yet
#: written (the second band in the 12 words above the first band's rows). Fc2's gradient product
#: stages A1 in 2 column blocks (7 input words and 1) over A2, read for the last time by LOSS.
FC_BANDS_WAGE = WageConfig(net="4C3-MP2-32FC-10", input_shape=(1, 8, 8), batch_size=8, seed=7)
FC_BANDS_CONFIG = EngineConfig(FC_BANDS_WAGE, lanes=4, data_words=56, weight_words=64, label_words=8,
                               external_words=4096, external_weight_words=1024, sum_words=256,
                               external_sum_words=4096, external_cycles_per_word=4)


def test_fc_forward_bands_stage_in_words_the_output_has_not_reached(embedded):
    """Fully connected forward products in batch bands (conv.compile_fc_fwd_staged): each band a
    COPY_ACT of its images' input words, then a FWD over those images reading them there. Fc2's
    output A2 is on chip, so its second band stages in the words of A2's images the first band
    did not write. Two steps equal golden's; a band that writes its rows one image too low (over
    the first band's) is caught."""
    from hw.engine.conv import ConvEngineModel
    program = compile_network(FC_BANDS_CONFIG)
    a0, a1, a2 = program.activations
    loss = next(n for n, ins in enumerate(program.instructions) if ins.op == Op.LOSS)
    forward = [ins for ins in program.instructions[:loss] if ins.layer > 0]
    assert [(str(ins), ins.aux.base, ins.out.base) if ins.op == Op.COPY_ACT else (str(ins), ins.a.base, ins.out.base, ins.a.lim)
            for ins in forward] == [
        ("COPY_ACT layer 1", a0.base, 0), ("FWD layer 1", 0, a1.base, 4),
        ("COPY_ACT layer 1", a0.base + 36, 0), ("FWD layer 1", 0, a1.base + 32, 4),
        ("COPY_ACT layer 2", a1.base, 12), ("FWD layer 2", 12, a2.base, 4),
        ("COPY_ACT layer 2", a1.base + 32, 24), ("FWD layer 2", 24, a2.base + 12, 4)]
    assert a2.base == 0 and a1.base >= FC_BANDS_CONFIG.data_words and a0.base >= FC_BANDS_CONFIG.data_words
    blocks = [(ins.aux.base, ins.aux.nk, ins.out.base) for ins in program.instructions[loss:]
              if ins.op == Op.COPY_ACT and ins.layer == 2]
    assert blocks == [(a1.base, 7, 0), (a1.base + 7, 1, 0)]
    images = cropped(embedded)
    assert train_model_and_golden(ConvEngineModel(program), FC_BANDS_WAGE, program, images, steps=2) == set()

    n = next(n for n, ins in enumerate(program.instructions) if ins is forward[-1])
    low = list(program.instructions)
    low[n] = dataclasses.replace(forward[-1], out=dataclasses.replace(forward[-1].out, base=forward[-1].out.base - 3))
    wrong = dataclasses.replace(program, instructions=low)
    # (E2 is not compared: conv1's gradient bands stage E0 over it)
    assert "E2" in program.overwritten
    assert {"W2"} <= train_model_and_golden(ConvEngineModel(wrong), FC_BANDS_WAGE, wrong, images, steps=1,
                                                check=False)


def cropped(embedded):
    """The embedded images' middle 8×8."""
    import types
    return types.SimpleNamespace(train_images=embedded.train_images[:, :, 10:18, 10:18],
                                 train_labels=embedded.train_labels)
