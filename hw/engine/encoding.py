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
weight, the stochastic-rounding draw index; the compiler emits it: :func:`hw.engine.compiler.fc_draw`
for a fully connected layer, the conv compiler's own for a convolution).
"""

from __future__ import annotations

from amaranth.lib import data

from .conv import ConvInstruction, ConvOp
from .isa import ADDR_BITS, QCOUNT_BITS, Instruction, Op
from .slot import slot_layout, slot_payload

__all__ = ["machine_layout", "MACHINE_BITS", "MACHINE_WORDS", "encode_instruction", "encode_program",
           "SLOTS"]

SLOTS = ("a", "b", "out", "aux", "draw")

_SCALARS = (("op", 4), ("layer", 8), ("relu", 1), ("shift", 6), ("qcount", QCOUNT_BITS), ("onehot", 16),
            ("pool", 1), ("unpool_dx", ADDR_BITS), ("unpool_dy", ADDR_BITS), ("stored", 2),
            ("part", 2), ("part_count", QCOUNT_BITS))


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


def encode_instruction(ins) -> int:
    """One instruction (isa or conv) as a :data:`MACHINE_BITS`-bit integer."""
    if isinstance(ins, ConvInstruction):
        value = dict(op=_MACHINE_OP[ins.op], layer=ins.layer, relu=ins.relu, shift=ins.shift, qcount=ins.qcount,
                     stored=ins.stored, part=ins.part, part_count=ins.part_count, pool=ins.pool, unpool_dx=ins.unpool_dx, unpool_dy=ins.unpool_dy)
        pats = {name: getattr(ins, name) for name in SLOTS}
    elif isinstance(ins, Instruction):
        value = dict(op=ins.op, layer=ins.layer, relu=ins.relu, shift=ins.shift, qcount=ins.qcount,
                     onehot=ins.onehot, stored=ins.stored)
        pats = {name: getattr(ins, name) for name in SLOTS}
    else:
        raise TypeError(f"instruction={ins!r}: must be a hw.engine.isa.Instruction or a hw.engine.conv.ConvInstruction")
    value.update({name: slot_payload(p) for name, p in pats.items()})
    return machine_layout().const(value).as_bits()


def encode_program(instructions) -> list[int]:
    """The program memory image: :data:`MACHINE_WORDS` 32-bit words per instruction, low word first."""
    words = []
    for ins in instructions:
        v = encode_instruction(ins)
        words += [(v >> (32 * i)) & 0xFFFFFFFF for i in range(MACHINE_WORDS)]
    return words
