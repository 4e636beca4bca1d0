"""Machine encoding: every compiled instruction's record decodes, through the Amaranth layout the
sequencer uses, to the instruction's fields and pattern slots; the program image (delta records)
decodes to those records and names what is malformed."""

import pytest
from amaranth.lib import data

from golden.config import WageConfig
from hw.engine.compiler import compile_network
from hw.engine.config import EngineConfig
from hw.engine.conv import ConvInstruction, ConvOp
from hw.engine.encoding import (MACHINE_BITS, MACHINE_WORDS, MASK_WORDS, SLOTS, ProgramImageError,
                                decode_program, encode_instruction, encode_program, encode_records, machine_layout)
from hw.engine.isa import AddressPattern, IsaError, Op
from hw.engine.slot import slot_layout, slot_payload

PROGRAMS = {
    "mlp": EngineConfig(WageConfig(net="mlp", batch_size=16, seed=1), lanes=16, data_words=2048),
    "conv": EngineConfig(WageConfig(net="8C5-MP2-16C3p-MP2-32FC-10", input_shape=(1, 28, 28), batch_size=6,
                                    seed=1), lanes=8, data_words=16384),
}


def _slot_bits(pattern) -> int:
    return slot_layout().const(slot_payload(pattern)).as_bits()


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_records_decode_to_the_instruction(name):
    config = PROGRAMS[name]
    program = compile_network(config)
    L = config.lanes
    words = encode_program(program.instructions)
    assert MASK_WORDS + MACHINE_WORDS <= len(words) < (MASK_WORDS + MACHINE_WORDS) * len(program.instructions)
    assert all(0 <= w < 1 << 32 for w in words)
    records = decode_program(words)
    assert len(records) == len(program.instructions)
    for ins, value in zip(program.instructions, records):
        assert value < 1 << MACHINE_BITS
        view = data.Const(machine_layout(), value)
        if isinstance(ins, ConvInstruction):
            op = {ConvOp.CONV_FWD: Op.FWD, ConvOp.CONV_ERR: Op.ERR, ConvOp.CONV_GRAD: Op.GRAD}[ins.op]
            assert (view.pool, view.unpool_dx, view.unpool_dy) == (ins.pool, ins.unpool_dx, ins.unpool_dy)
        else:
            op = ins.op
            assert view.onehot == ins.onehot
        assert (view.op, view.layer, view.relu, view.shift, view.qcount) == (op, ins.layer, ins.relu, ins.shift,
                                                                           ins.qcount)
        for slot in SLOTS:
            assert view[slot].as_bits() == _slot_bits(getattr(ins, slot)), f"{ins} slot {slot}"


def test_fc_gradient_draws_are_the_rebased_result_pattern():
    config = PROGRAMS["mlp"]
    L = config.lanes
    program = compile_network(config)
    grad = next(i for i in program.instructions if i.op == Op.GRAD)
    wbase = program.weights[grad.layer].base
    view = data.Const(machine_layout(), encode_instruction(grad))
    draw = view.draw.p.simple
    out = grad.out
    assert view.draw.conv == 0 and draw.base == (out.base - wbase) * L == 0
    assert (draw.s1, draw.s2, draw.sr) == (out.s1 * L, out.s2 * L, out.sr * L)
    assert (draw.n1, draw.n2, draw.nr, draw.lim) == (out.n1, out.n2, out.nr, out.lim)
    address, _ = out.address_array(L)
    drawn, _ = AddressPattern(**{f: int(getattr(draw, f)) for f in ("base", "s1", "s2", "sk", "sr", "n1", "n2",
                                                                    "nk", "nr", "lim", "klim", "row_sel")}
                              ).address_array(L)
    assert ((address - wbase) * L == drawn).all()


def test_a_draw_pattern_that_does_not_fit_is_named():
    from hw.engine.compiler import fc_draw
    with pytest.raises(IsaError, match="GRAD layer 2: draw pattern field s1=67108864"):
        fc_draw(AddressPattern(base=0, s1=1 << 22, n1=2), 0, 16, layer=2)


def test_not_an_instruction_is_named():
    with pytest.raises(TypeError, match="instruction='FWD'"):
        encode_instruction("FWD")
    with pytest.raises(TypeError, match=r"instruction=\{'op': 1\}: must be"):     # (unhashable: not cached)
        encode_instruction({"op": 1})


def test_a_program_too_long_for_the_program_memory_is_named():
    from hw.engine.compiler import FitError
    need = len(encode_program(compile_network(PROGRAMS["mlp"]).instructions))
    config = PROGRAMS["mlp"].replace(program_words=need - 1)
    with pytest.raises(FitError, match=rf"program_words: the program needs {need} words \(7 instructions as "
                                       rf"delta records\), the engine has {need - 1} \(1 words short\)"):
        compile_network(config)
    compile_network(PROGRAMS["mlp"].replace(program_words=need))


def test_delta_records_carry_only_the_words_that_change():
    """The first record carries every word; a later one its mask and the words that differ (none for
    a repeat); decoding gives the records back."""
    a, b = 0x5 | 0x3 << (32 * 7), 0x5 | 0x9 << (32 * 7) | 0x1 << (32 * 200)
    image = encode_records([a, b, b])
    assert len(image) == (MASK_WORDS + MACHINE_WORDS) + (MASK_WORDS + 2) + MASK_WORDS
    second = image[MASK_WORDS + MACHINE_WORDS:]
    assert second[:MASK_WORDS] == [1 << 7, 0, 0, 0, 0, 0, 1 << (200 - 192)] and second[MASK_WORDS:MASK_WORDS + 2] == [9, 1]
    assert decode_program(image) == [a, b, b]


@pytest.mark.parametrize("image, message", [
    ([0] * MASK_WORDS, r"program word 0: the first record carries 0 of its 211 words \(it must carry all\)"),
    (encode_records([0])[:-1], r"program word 0: the record carries 211 words, 210 remain"),
    (encode_records([0]) + [0] * (MASK_WORDS - 1), rf"program word {MASK_WORDS + MACHINE_WORDS}: a record's mask needs "
                                                  rf"{MASK_WORDS} words, {MASK_WORDS - 1} remain"),
    (encode_records([0]) + [0] * (MASK_WORDS - 1) + [1 << 19],
     rf"program word {MASK_WORDS + MACHINE_WORDS}: mask bits past the record's 211 words \(0x1 << 211\)"),
])
def test_a_malformed_image_is_named(image, message):
    assert MACHINE_WORDS == 211            # (the messages name it)
    with pytest.raises(ProgramImageError, match=message):
        decode_program(image)
