"""Machine encoding: the instruction records the program memory holds and the sequencer decodes.

Both instruction kinds, :class:`~hw.engine.isa.Instruction` (fully connected layers and the loss)
and :class:`~hw.engine.conv.ConvInstruction`, encode into one record of :data:`MACHINE_WORDS`
32-bit words (:func:`machine_layout`, first field in the lowest bits of word 0). The program memory
is a memory of 32-bit words; the sequencer shifts one record at a time into its instruction
register (one word per cycle), so a wide record costs a few hundred cycles per instruction, not a
wide memory.

The record's operation is the engine's datapath mode (``Op``: FWD, LOSS, ERR, GRAD, END): a
convolution is a FWD/ERR/GRAD whose patterns are convolution patterns, plus the ``pool`` (FWD)
and ``unpool_dx``/``unpool_dy`` (ERR) stages. Every instruction has five pattern slots
(:mod:`hw.engine.slot`): ``a`` and ``b`` (operands), ``out`` (result rows), ``aux`` (the second
activation read of ERR and LOSS) and ``draw`` (GRAD: the flat index of each result word's first
weight, the stochastic-rounding draw index). A fully connected GRAD's draw pattern is its result
pattern rebased to 0 and scaled by L (its word at weight-store address a holds weights
(a − wbase)·L …); a convolution GRAD carries its own.
"""

from __future__ import annotations

from amaranth.lib import data

from .conv import ConvInstruction, ConvOp
from .isa import ADDR_BITS, QCOUNT_BITS, AddressPattern, Instruction, IsaError, Op
from .slot import slot_layout, slot_payload

__all__ = ["machine_layout", "MACHINE_BITS", "MACHINE_WORDS", "encode_instruction", "encode_program",
           "SLOTS"]

SLOTS = ("a", "b", "out", "aux", "draw")

_SCALARS = (("op", 4), ("layer", 8), ("relu", 1), ("shift", 6), ("qcount", QCOUNT_BITS), ("onehot", 16),
            ("pool", 1), ("unpool_dx", ADDR_BITS), ("unpool_dy", ADDR_BITS))


def _layout() -> data.StructLayout:
    fields = dict(_SCALARS)
    fields.update({name: slot_layout() for name in SLOTS})
    return data.StructLayout(fields)


MACHINE_BITS = _layout().size
MACHINE_WORDS = -(-MACHINE_BITS // 32)


def machine_layout() -> data.StructLayout:
    """Layout of one record (padded to :data:`MACHINE_WORDS` · 32 bits by the sequencer)."""
    return _layout()


_MACHINE_OP = {ConvOp.CONV_FWD: Op.FWD, ConvOp.CONV_ERR: Op.ERR, ConvOp.CONV_GRAD: Op.GRAD}


def _fc_draw(ins: Instruction, lanes: int) -> AddressPattern:
    """The draw pattern of a fully connected GRAD: element index (address − wbase)·L of each result word."""
    o = ins.out
    fields = dict(base=(o.base - ins.wbase) * lanes, s1=o.s1 * lanes, s2=o.s2 * lanes, sk=o.sk * lanes,
                  sr=o.sr * lanes, n1=o.n1, n2=o.n2, nk=o.nk, nr=o.nr, lim=o.lim, klim=o.klim, row_sel=o.row_sel)
    for name in ("base", "s1", "s2", "sk", "sr"):
        if not 0 <= fields[name] < 1 << ADDR_BITS:
            raise IsaError(f"GRAD layer {ins.layer}: draw pattern field {name}={fields[name]} (the result "
                           f"pattern's, times lanes={lanes}) does not fit {ADDR_BITS} bits")
    return AddressPattern(**fields)


def encode_instruction(ins, lanes: int) -> int:
    """One instruction (isa or conv) as a :data:`MACHINE_BITS`-bit integer."""
    if isinstance(ins, ConvInstruction):
        value = dict(op=_MACHINE_OP[ins.op], layer=ins.layer, relu=ins.relu, shift=ins.shift, qcount=ins.qcount,
                     pool=ins.pool, unpool_dx=ins.unpool_dx, unpool_dy=ins.unpool_dy)
        pats = {name: getattr(ins, name) for name in SLOTS}
    elif isinstance(ins, Instruction):
        value = dict(op=ins.op, layer=ins.layer, relu=ins.relu, shift=ins.shift, qcount=ins.qcount,
                     onehot=ins.onehot)
        pats = {name: getattr(ins, name) for name in SLOTS if name != "draw"}
        pats["draw"] = _fc_draw(ins, lanes) if ins.op == Op.GRAD else AddressPattern()
    else:
        raise TypeError(f"instruction={ins!r}: must be a hw.engine.isa.Instruction or a hw.engine.conv.ConvInstruction")
    value.update({name: slot_payload(p) for name, p in pats.items()})
    return machine_layout().const(value).as_bits()


def encode_program(instructions, lanes: int) -> list[int]:
    """The program memory image: :data:`MACHINE_WORDS` 32-bit words per instruction, low word first."""
    words = []
    for ins in instructions:
        v = encode_instruction(ins, lanes)
        words += [(v >> (32 * i)) & 0xFFFFFFFF for i in range(MACHINE_WORDS)]
    return words
