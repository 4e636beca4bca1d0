"""Machine encoding: the instruction records the program memory holds and the sequencer decodes.

Both instruction kinds, :class:`~hw.engine.isa.Instruction` (fully connected layers and the loss)
and :class:`~hw.engine.conv.ConvInstruction`, encode into one record of :data:`MACHINE_WORDS`
32-bit words (:func:`machine_layout`, first field in the lowest bits of word 0). The program memory
is a memory of 32-bit words; the sequencer loads one record at a time into its instruction
register (one word per cycle), so a wide record costs a few hundred cycles per instruction, not a
wide memory.

The program image stores each record as a *delta* of the one before it (:func:`encode_records`):
:data:`MASK_WORDS` words of mask (bit i of mask word j set: record word 32·j + i follows), then the
record words the mask names, lowest first. A word not named keeps the previous record's value in
the instruction register. The first record names every word (the register holds anything when a
RUN starts). The engine answers ``BAD_INSTRUCTION`` for a first record that does not, for mask bits
past the record and for a record cut off by the memory's end (:func:`decode_program` names them). Consecutive records differ in a few fields (the parts of a product in their
patterns' bases and limits), so LeNet-5's programs take about a fifth of the words that whole
records did, and the program memory holds that many more parts and staging records.

The record's operation is the engine's datapath mode (``Op``: FWD, LOSS, ERR, GRAD, END): a
convolution is a FWD/ERR/GRAD whose patterns are convolution patterns, plus the ``pool`` (FWD)
and ``unpool_dx``/``unpool_dy`` (ERR) stages. Every instruction has five pattern slots
(:mod:`hw.engine.slot`): ``a`` and ``b`` (operands), ``out`` (result rows), ``aux`` (the second
activation read of ERR and LOSS) and ``draw`` (GRAD: the flat index of each result word's first
weight, the stochastic-rounding draw index; the compiler emits it: :func:`hw.engine.compiler.fc_draw`
for a fully connected layer, the conv compiler's own for a convolution).
"""

from __future__ import annotations

import functools

from amaranth.lib import data

from .conv import ConvInstruction, ConvOp
from .isa import ADDR_BITS, QCOUNT_BITS, Instruction, Op
from .slot import slot_layout, slot_payload

__all__ = ["machine_layout", "MACHINE_BITS", "MACHINE_WORDS", "MASK_WORDS", "encode_instruction", "encode_program",
           "encode_records", "decode_program", "record_words", "ProgramImageError", "SLOTS"]

SLOTS = ("a", "b", "out", "aux", "draw")

_SCALARS = (("op", 4), ("layer", 8), ("relu", 1), ("shift", 6), ("qcount", QCOUNT_BITS), ("onehot", 16),
            ("pool", 1), ("unpool_dx", ADDR_BITS), ("unpool_dy", ADDR_BITS), ("stored", 2),
            ("part", 2), ("part_count", QCOUNT_BITS), ("sum_add", 1), ("sum_hold", 1))


@functools.cache
def _layout() -> data.StructLayout:
    fields = dict(_SCALARS)
    fields.update({name: slot_layout() for name in SLOTS})
    return data.StructLayout(fields)


_FIELDS: dict = {}


def _fields(layout: data.Layout) -> dict:
    """{key: (offset, nested layout or None, width)} of ``layout``'s fields, kept by identity
    (a layout's hash compares its whole structure; :func:`_layout` makes each one once)."""
    known = _FIELDS.get(id(layout))
    if known is None or known[0] is not layout:
        out = {}
        for key, field in layout:
            nested = field.shape if isinstance(field.shape, data.Layout) else None
            out[key] = (field.offset, nested, field.width)
        known = _FIELDS[id(layout)] = (layout, out)
    return known[1]


def _pack(layout: data.Layout, value) -> int:
    """``layout.const(value).as_bits()`` for a dict/list value of plain integers, with the same
    truncation of each field to its width, 30× faster (the compilers encode thousands of
    candidate records)."""
    fields, bits = _fields(layout), 0
    for key, item in (value.items() if isinstance(value, dict) else enumerate(value)):
        offset, nested, width = fields[key]
        item = _pack(nested, item) if nested is not None else int(item)
        bits |= (item & ((1 << width) - 1)) << offset
    return bits


MACHINE_BITS = _layout().size
MACHINE_WORDS = -(-MACHINE_BITS // 32)
MASK_WORDS = -(-MACHINE_WORDS // 32)          # words of a record's delta mask


class ProgramImageError(ValueError):
    """A program image that is not a sequence of delta records (the message names where)."""


def machine_layout() -> data.StructLayout:
    """Layout of one record (padded to :data:`MACHINE_WORDS` · 32 bits by the sequencer)."""
    return _layout()


_MACHINE_OP = {ConvOp.CONV_FWD: Op.FWD, ConvOp.CONV_ERR: Op.ERR, ConvOp.CONV_GRAD: Op.GRAD}


def encode_instruction(ins) -> int:
    """One instruction (isa or conv) as a :data:`MACHINE_BITS`-bit integer."""
    if not isinstance(ins, (ConvInstruction, Instruction)):
        raise TypeError(f"instruction={ins!r}: must be a hw.engine.isa.Instruction or a hw.engine.conv.ConvInstruction")
    return _encode(ins)


@functools.lru_cache(maxsize=4096)
def _encode(ins) -> int:
    # (cached: the compilers size many candidate programs that share their instructions)
    if isinstance(ins, ConvInstruction):
        value = dict(op=_MACHINE_OP[ins.op], layer=ins.layer, relu=ins.relu, shift=ins.shift, qcount=ins.qcount,
                     stored=ins.stored, part=ins.part, part_count=ins.part_count, pool=ins.pool, unpool_dx=ins.unpool_dx, unpool_dy=ins.unpool_dy,
                     sum_add=ins.sum_add, sum_hold=ins.sum_hold)
    else:
        value = dict(op=ins.op, layer=ins.layer, relu=ins.relu, shift=ins.shift, qcount=ins.qcount,
                     onehot=ins.onehot, stored=ins.stored)
    value.update({name: slot_payload(getattr(ins, name)) for name in SLOTS})
    return _pack(_layout(), value)


def record_words(record: int) -> list[int]:
    """A record value (:func:`encode_instruction`) as its :data:`MACHINE_WORDS` 32-bit words, low first."""
    return [(record >> (32 * i)) & 0xFFFFFFFF for i in range(MACHINE_WORDS)]


def encode_records(records) -> list[int]:
    """The program image of record values (see the module docstring): each record as its mask
    and the words that differ from the previous record's, the first record whole."""
    image, previous = [], None
    for record in records:
        words = record_words(record)
        carried = [i for i, w in enumerate(words) if previous is None or previous[i] != w]
        mask = sum(1 << i for i in carried)
        image += [(mask >> (32 * j)) & 0xFFFFFFFF for j in range(MASK_WORDS)] + [words[i] for i in carried]
        previous = words
    return image


def encode_program(instructions) -> list[int]:
    """The program memory image of ``instructions`` (delta records, :func:`encode_records`)."""
    return encode_records(encode_instruction(ins) for ins in instructions)


def decode_program(image) -> list[int]:
    """The record values of a program image, as the engine loads them; raises
    :class:`ProgramImageError` where the engine answers BAD_INSTRUCTION (a first record that does
    not carry every word, mask bits past the record, a record cut short by the image's end)."""
    image = list(image)
    records, words, at = [], None, 0
    while at < len(image):
        if at + MASK_WORDS > len(image):
            raise ProgramImageError(f"program word {at}: a record's mask needs {MASK_WORDS} words, "
                                    f"{len(image) - at} remain")
        mask = sum(w << (32 * j) for j, w in enumerate(image[at:at + MASK_WORDS]))
        if mask >> MACHINE_WORDS:
            raise ProgramImageError(f"program word {at}: mask bits past the record's {MACHINE_WORDS} words "
                                    f"({mask >> MACHINE_WORDS:#x} << {MACHINE_WORDS})")
        carried = [i for i in range(MACHINE_WORDS) if mask >> i & 1]
        if words is None and len(carried) != MACHINE_WORDS:
            raise ProgramImageError(f"program word {at}: the first record carries {len(carried)} of its "
                                    f"{MACHINE_WORDS} words (it must carry all)")
        body = at + MASK_WORDS
        if body + len(carried) > len(image):
            raise ProgramImageError(f"program word {at}: the record carries {len(carried)} words, "
                                    f"{len(image) - body} remain")
        words = list(words or [0] * MACHINE_WORDS)
        for n, i in enumerate(carried):
            words[i] = image[body + n]
        records.append(sum(w << (32 * i) for i, w in enumerate(words)))
        at = body + len(carried)
    return records
