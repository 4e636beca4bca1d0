"""Engine instructions: encoding round trip, field checks, address patterns."""

import random

import pytest
from amaranth.lib import data

from hw.engine.isa import (GEN_FIELDS, INSTRUCTION_BITS, AddressPattern, Instruction, IsaError, Op, RowSel,
                           instruction_layout)
from tests.support import seed_for


def random_pattern(rng):
    return AddressPattern(**{name: rng.randrange(1 << width) if name != "row_sel" else rng.randrange(3)
                             for name, width in GEN_FIELDS})


def test_encode_decode_round_trip():
    rng = random.Random(seed_for("isa"))
    for _ in range(200):
        ins = Instruction(rng.choice(list(Op.NAMES)), layer=rng.randrange(256), relu=rng.randrange(2),
                          shift=rng.randrange(64), qcount=rng.randrange(1 << 32), wbase=rng.randrange(1 << 24),
                          onehot=rng.randrange(1 << 16), a=random_pattern(rng), b=random_pattern(rng),
                          out=random_pattern(rng), aux=random_pattern(rng))
        word = ins.encode()
        assert 0 <= word < 1 << INSTRUCTION_BITS
        assert Instruction.decode(word) == ins


def test_amaranth_layout_has_the_encoder_bit_positions():
    layout = instruction_layout()
    assert layout.size == INSTRUCTION_BITS
    ins = Instruction(Op.GRAD, layer=3, qcount=77, wbase=5, b=AddressPattern(base=9, nk=4, row_sel=RowSel.T2))
    view = data.Const(layout, ins.encode())
    assert view.op == Op.GRAD and view.layer == 3 and view.qcount == 77 and view.wbase == 5
    assert view.b.base == 9 and view.b.nk == 4 and view.b.row_sel == RowSel.T2


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
    (dict(op=9), "op=9"), (dict(op=Op.FWD, shift=64), "shift=64"), (dict(op=Op.FWD, layer=-1), "layer=-1"),
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
    with pytest.raises(IsaError, match="more than"):
        Instruction.decode(1 << INSTRUCTION_BITS)
