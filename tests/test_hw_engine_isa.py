"""Engine instructions: field checks, address patterns (the machine encoding: test_hw_engine_encoding)."""

import pytest

from hw.engine.isa import AddressPattern, Instruction, IsaError, Op, RowSel


def test_pattern_order_and_validity():
    p = AddressPattern(base=100, s1=50, s2=10, sk=3, sr=1, n1=2, n2=2, nk=2, nr=2, lim=3, row_sel=RowSel.T1)
    got = list(p.addresses(lanes=2))
    assert len(got) == p.length == 16
    assert got[0] == (100, True) and got[1] == (101, True)
    # t1 = 1: rows 2, 3 → row 3 is beyond lim = 3
    assert got[8] == (150, True) and got[9] == (151, False)
    address, valid = p.address_array(lanes=2)
    assert [(int(a), bool(v)) for a, v in zip(address.reshape(-1), valid.reshape(-1))] == got
    q = AddressPattern(sk=1, nk=4, klim=2)
    assert [v for _, v in q.addresses(4)] == [True, True, False, False]


@pytest.mark.parametrize("kwargs, text", [
    (dict(op=10), "op=10"), (dict(op=Op.FWD, shift=64), "shift=64"), (dict(op=Op.FWD, layer=-1), "layer=-1"),
    (dict(op=Op.FWD, qcount=1 << 32), "qcount=4294967296"),
])
def test_bad_instruction_fields_are_named(kwargs, text):
    with pytest.raises(IsaError, match=text):
        Instruction(**kwargs)


def test_bad_pattern_fields_are_named():
    with pytest.raises(IsaError, match="n1=65536"):
        AddressPattern(n1=1 << 16)
    with pytest.raises(IsaError, match="row_sel=3"):
        AddressPattern(row_sel=3)


def test_stored_and_parts_are_checked():
    from hw.engine.conv import PART_FIRST, ConvInstruction, ConvOp
    with pytest.raises(IsaError, match="stored=3: must be one of"):
        Instruction(Op.ERR, stored=3)
    with pytest.raises(IsaError, match="stored=1 with op FWD: only ERR and GRAD store their sums"):
        Instruction(Op.FWD, stored=1)
    with pytest.raises(IsaError, match="stored=2 with op CONV_FWD"):
        ConvInstruction(ConvOp.CONV_FWD, stored=2)
    with pytest.raises(IsaError, match="part=1 with op CONV_ERR, stored=0: only a store-then-quantise CONV_ERR"):
        ConvInstruction(ConvOp.CONV_ERR, part=PART_FIRST)
    assert ConvInstruction(ConvOp.CONV_ERR, stored=1, part=PART_FIRST).part == PART_FIRST
    assert ConvInstruction(ConvOp.CONV_GRAD, stored=2, part=PART_FIRST).part == PART_FIRST
    with pytest.raises(IsaError, match="part=1 with op CONV_FWD, stored=0: only a store-then-quantise CONV_ERR or CONV_GRAD"):
        ConvInstruction(ConvOp.CONV_FWD, part=PART_FIRST)


def test_copy_is_an_operation_and_encodes():
    """COPY (tile staging): an isa operation with a source (aux) and a destination (out) pattern."""
    from hw.engine.encoding import encode_instruction
    copy = Instruction(Op.COPY, layer=1, aux=AddressPattern(100, sk=4, nk=8), out=AddressPattern(7, sk=1, nk=8))
    assert str(copy) == "COPY layer 1" and Op.NAMES[Op.COPY] == "COPY"
    assert encode_instruction(copy) & 0xF == Op.COPY                  # the record's first field
    with pytest.raises(IsaError, match="stored=1 with op COPY"):
        Instruction(Op.COPY, stored=1)
