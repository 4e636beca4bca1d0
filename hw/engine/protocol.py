"""The engine's host packet format (one 32-bit stream in, one out; ``last`` ends a packet).

Every request gets exactly one response packet. Words are 32 bits; a multi-word item (a scratchpad
word, an instruction) is sent least significant word first.

Request:   word 0  header  = command (bits 0–7) | target (bits 8–15) | tag (bits 16–31)
           then the command's arguments, then its payload

=============  =========================  ==============================  ===========================
command        arguments                  payload                         response after the header
=============  =========================  ==============================  ===========================
``WRITE`` 1    address, count             count items of the target       —
``READ`` 2     address, count             —                               count items of the target
``RUN`` 3      step, steps, log2 η        —                               cycles of this RUN (1 word)
``COUNTERS`` 4 —                          —                               :data:`COUNTERS` (1 word each)
``IDENT`` 5    —                          —                               :data:`IDENT` (1 word each)
=============  =========================  ==============================  ===========================

``IDENT`` says which engine answers: :data:`MAGIC`, :data:`FORMAT_VERSION` (of this packet format
and the program encoding), the fingerprint of the :class:`~hw.engine.config.EngineConfig` it was
built from (:meth:`~hw.engine.config.EngineConfig.fingerprint`), then lanes, data_words,
weight_words, label_words, program_words, the words per instruction record, external_words and external_weight_words. The driver checks
it before loading a program, so a program compiled for another build is refused with the
difference named instead of running with wrong numbers.

Response:  word 0  header  = command (bits 0–7) | status (bits 8–15) | tag (bits 16–31)

``RUN`` executes the loaded program ``steps`` times, the first with global step ``step`` (the
stochastic-rounding counter) and then step + 1, …, all with the given log2 η (signed).

Targets and their items (bits; ``L`` = lanes):

============  ==  ============================================================================
``PROGRAM``   0   one 32-bit word of the program image (:func:`hw.engine.encoding.encode_program`:
                  per instruction a delta record, a mask and the words that changed)
``ACT``       1   activation word: L × int8 data, then L ReLU-mask bits, then L saturation-mask bits,
                  then L 2-bit pool indices (which position of its 2×2 window a pooled value came from)
``ERR``       2   error word: L × int8
``WEIGHTS``   3   stored-weight word: L × signed kG bits (writes saturate to ±w_clip)
``LABELS``    4   one label (16 bits)
============  ==  ============================================================================

``ACT`` and ``ERR`` addresses run to data_words + external_words − 1: from data_words on they are
words of the external memory (:attr:`~hw.engine.config.EngineConfig.external_words`); ``WEIGHTS``
addresses likewise run to weight_words + external_weight_words − 1.

Errors: an unknown command (``BAD_COMMAND``) or target (``BAD_TARGET``), an address range beyond the
target (``OUT_OF_RANGE``), a packet that ends (``last``) before its arguments or payload are complete
(``TRUNCATED``: the items already complete were written), or one that goes on after them
(``TOO_LONG``: the extra words are dropped) get a response with that status and no payload; the
engine then takes the next packet. A ``RUN`` whose program holds an unknown opcode or runs off the
program memory answers ``BAD_INSTRUCTION``.
"""

from __future__ import annotations

import enum

__all__ = ["Command", "Target", "Status", "COUNTERS", "IDENT", "MAGIC", "FORMAT_VERSION", "item_bits", "item_words",
           "header", "ident_values"]


class Command(enum.IntEnum):
    WRITE = 1
    READ = 2
    RUN = 3
    COUNTERS = 4
    IDENT = 5


class Target(enum.IntEnum):
    PROGRAM = 0
    ACT = 1
    ERR = 2
    WEIGHTS = 3
    LABELS = 4


class Status(enum.IntEnum):
    OK = 0
    BAD_COMMAND = 1
    BAD_TARGET = 2
    OUT_OF_RANGE = 3
    TRUNCATED = 4
    TOO_LONG = 5
    BAD_INSTRUCTION = 6     # RUN: the program holds an unknown opcode or runs off the program memory


#: Counters returned by ``COUNTERS``, in order: total cycles spent in RUN, cycles per operation,
#: array beats (each feeds L×L multiply-accumulate slots), training steps completed, words read
#: from and written to the external memory (since reset, host traffic included).
COUNTERS = ("run_cycles", "fwd_cycles", "loss_cycles", "err_cycles", "grad_cycles", "array_beats", "steps",
            "ext_read_words", "ext_write_words")

#: Words of the ``IDENT`` response, in order.
IDENT = ("magic", "format_version", "fingerprint", "lanes", "data_words", "weight_words", "label_words",
         "program_words", "machine_words", "external_words", "external_weight_words")
MAGIC = 0x45474157                  # "WAGE", little-endian
FORMAT_VERSION = 6                  # 6: accumulated gradient parts (sum_add, sum_hold); 5: delta records in the program image; 4: the COPY_ACT operation; 3: IDENT external_words, COUNTERS ext words; 2: 32-bit program words

LABEL_BITS = 16
ARGUMENTS = {Command.WRITE: 2, Command.READ: 2, Command.RUN: 3, Command.COUNTERS: 0, Command.IDENT: 0}


def ident_values(config) -> dict[str, int]:
    """The ``IDENT`` words an engine built from ``config`` answers."""
    from .encoding import MACHINE_WORDS
    return {"magic": MAGIC, "format_version": FORMAT_VERSION, "fingerprint": config.fingerprint(),
            "lanes": config.lanes, "data_words": config.data_words, "weight_words": config.weight_words,
            "label_words": config.label_words, "program_words": config.program_words,
            "machine_words": MACHINE_WORDS, "external_words": config.external_words,
            "external_weight_words": config.external_weight_words}


def item_bits(target: Target, lanes: int, kG: int) -> int:
    return {Target.PROGRAM: 32, Target.ACT: 12 * lanes, Target.ERR: 8 * lanes,
            Target.WEIGHTS: kG * lanes, Target.LABELS: LABEL_BITS}[Target(target)]


def item_words(target: Target, lanes: int, kG: int) -> int:
    return -(-item_bits(target, lanes, kG) // 32)


def header(command: int, target_or_status: int, tag: int = 0) -> int:
    return (command & 0xFF) | (target_or_status & 0xFF) << 8 | (tag & 0xFFFF) << 16
