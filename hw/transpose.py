"""On-the-fly transposition of L×L blocks of L-lane words (the engine's channel-major → column feed).

The engine stores tensors as words of ``lanes`` elements along the channel/K dimension; the
systolic array (:mod:`hw.mac_array`) wants one column per cycle across its rows. A block of L = ``lanes``
consecutive words (word r = row r) is therefore transposed on the way: output word j carries, in
lane r, lane j of input word r.

Interface
---------
``i`` — ``In(stream.Signature(layout))`` and ``o`` — ``Out(stream.Signature(layout))`` with
``layout = StructLayout({"data": ArrayLayout(signed(width), lanes), "last": 1})``:

* input words come in blocks of exactly L words; ``last`` marks the final word of the final block
  of a sequence and belongs on word L−1 of a block;
* the output carries each block transposed, L words, ``last`` on word L−1 of the transposed block
  whose input carried ``last``.

``error`` — ``Out(1)``, sticky until reset, high from the cycle after an accepted word r < L−1 of a
block carried ``last``.
Such a block is not lost: the unit stops taking input (``i.ready`` low) and completes the block
with L−1−r rows of zeros by itself, then emits it transposed (lanes r+1..L−1 of every output word
zero, ``last`` on its word L−1) as if it had been complete; the next word starts a new block.
With ``lanes = 1`` every word is its own block and the unit is a one-register pass-through.

Micro-architecture: one L×L bank that shifts in alternating directions
----------------------------------------------------------------------
A single L×L array of ``width``-bit registers, ``cell[ρ][c]``, in one of two modes:

* mode 0 (vertical): on a shift row ρ takes row ρ+1 and row L−1 takes the input word (lane c into
  column c); the output word is row 0 (lane c = ``cell[0][c]``);
* mode 1 (horizontal): on a shift column c takes column c+1 and column L−1 takes the input word
  (lane ρ into row ρ); the output word is column 0 (lane ρ = ``cell[ρ][0]``).

A block filled in one mode is stored as rows (word r in row r) or as columns (word r in column r),
and read out in the other mode, along the other axis, so it leaves transposed. The mode flips
when a block's L-th word (or padding row) shifts in, and from then on every shift that pushes a
word of the next block in pushes a column of the previous block out: while the next block fills
(in the new mode), the previous one drains from the same registers. Each shift moves all L² cells.

Why this and not a double buffer: it needs L²·width flip-flops and one LUT4 per bit (a 2:1 mux
between the two neighbours, three inputs, the shift enable being the flip-flop's clock enable),
with only neighbour-to-neighbour routing and no read multiplexer. A double buffer needs 2·L²·width
flip-flops, a write enable per row and bank, and a 2L:1 read multiplexer per output bit. Yosys
``synth_ecp5`` on the unit alone (no harness), width 8: this unit 200 LUT4 / 137 FF (L = 4),
599 / 523 (L = 8), 2199 / 2061 (L = 16); a plain double-buffer prototype (row-addressed banks,
``word_select`` read) 240 / 266, 1509 / 1036, 4579 / 4110 — about twice the slices (an ECP5
slice holds two LUT4s and two flip-flops). The price is a coupling between the two streams (below)
and one global control net: ``shift`` (a few gates from ``o.ready`` and ``i.valid``) is the clock
enable of all L²·width data flip-flops.

Flow control and timing
-----------------------
State: ``fill`` (words of the block being filled, 0..L−1), ``drain`` (words of the previous block
still to leave, 0..L; its next word is always the output cell row/column 0). A shift happens

* when ``drain`` > 0: exactly when an output word is taken (``o.valid & o.ready``); an offered
  input word (or padding row) enters in the same shift, and once the next block has started the
  output is only valid while one is offered (otherwise the shift would leave a hole in that block);
* when ``drain`` = 0: exactly when an input word is taken (or a padding row is inserted).

Hence ``i.ready = ~padding & (drain == 0 | o.ready)`` and ``o.valid = drain > 0 & (fill == 0 |
padding | i.valid)``: once the next block has started (``fill`` > 0), the previous block's words
leave in lock-step with the next block's words arriving (a word in, a word out), so an input gap
then also delays the output. A block followed by nothing (the end of a sequence, or a gap between
blocks) drains on its own, one word per cycle the consumer is ready. ``o.valid`` depends
combinationally on ``i.valid`` and ``i.ready`` on ``o.ready`` (neither on its own stream's other
signal, so the stream rules hold: ``o.valid`` stays high until taken because ``i.valid`` does,
and the output payload is register contents that move only on a transfer). ``o.valid`` never
depends on ``o.ready``.

Latency (exact): if word L−1 of a block (or its last padding row) shifts in in cycle t, the
block's output word 0 is valid in cycle t + 1 (:data:`LATENCY` = 1), whatever the consumer does;
word j leaves no earlier than cycle t + 1 + j. With input valid every cycle and output always
ready, a word enters and a word leaves every cycle: N blocks whose first word is accepted in cycle
0 are accepted in cycles 0..N·L−1 and leave in cycles L..N·L+L−1 (block n's output word j in
cycle (n+1)·L + j). After a ``last`` on word r < L−1 accepted in cycle t, the L−1−r padding rows
shift in during the following cycles in which a shift is possible (cycles t+1..t+L−1−r with an
always-ready consumer), and the next input word is accepted at the earliest in the cycle after the
last padding row.
"""

from __future__ import annotations

from amaranth.hdl import Const, Module, Mux, Signal, signed
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["LATENCY", "StreamTransposer", "transposer_layout"]

#: Cycles from a block's final row shifting in to its first transposed word being valid.
LATENCY = 1
MAX_WIDTH = 64


def transposer_layout(lanes: int, width: int) -> data.StructLayout:
    """The payload layout of both streams: ``{data: ArrayLayout(signed(width), lanes), last: 1}``."""
    return data.StructLayout({"data": data.ArrayLayout(signed(width), lanes), "last": 1})


def _check_int(name, value, lo, hi, what):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name}={value!r}: must be {what}")
    if not lo <= value <= hi:
        raise ValueError(f"{name}={value!r}: must be {what}")


class StreamTransposer(wiring.Component):
    """Transposes each block of ``lanes`` words of ``lanes`` signed ``width``-bit lanes (see the module docstring).

    Parameters
    ----------
    lanes : int
        L ≥ 1: lanes per word and words per block (1 = a one-register pass-through).
    width : int
        Bits per lane, 1..64.
    """

    def __init__(self, lanes: int, width: int):
        try:
            _check_int("lanes", lanes, 1, float("inf"), "a positive integer")
            _check_int("width", width, 1, MAX_WIDTH, f"an integer in 1..{MAX_WIDTH}")
        except (TypeError, ValueError):
            self._MustUse__silence = True         # never built: no "created but never used" warning
            raise
        self._lanes, self._width = lanes, width
        self.layout = transposer_layout(lanes, width)
        super().__init__({
            "i": In(stream.Signature(self.layout)),
            "o": Out(stream.Signature(self.layout)),
            "error": Out(1),
        })

    lanes = property(lambda self: self._lanes)
    width = property(lambda self: self._width)

    def __repr__(self):
        return f"StreamTransposer(lanes={getattr(self, '_lanes', '?')}, width={getattr(self, '_width', '?')})"

    def elaborate(self, platform):
        m = Module()
        n, w = self._lanes, self._width

        cells = [[Signal(signed(w), name=f"cell_{r}_{c}", reset_less=True) for c in range(n)] for r in range(n)]
        mode = Signal()                       # 0: shift rows up (fill rows), 1: shift columns left
        fill = Signal(range(n))               # words of the block being filled
        drain = Signal(range(n + 1))          # words of the previous block still to leave
        padding = Signal()                    # completing a block cut short by an early `last`
        fill_last = Signal()                  # the block being filled carries `last`
        drain_last = Signal()                 # the draining block carries `last`

        draining = drain != 0
        src_valid = padding | self.i.valid
        m.d.comb += [
            self.i.ready.eq(~padding & (~draining | self.o.ready)),
            self.o.valid.eq(draining & ((fill == 0) | src_valid)),
            self.o.payload.last.eq(drain_last & (drain == 1)),
        ]
        for k in range(n):
            m.d.comb += self.o.payload.data[k].eq(Mux(mode, cells[k][0], cells[0][k]))

        shift = Signal()
        m.d.comb += shift.eq(Mux(draining, self.o.valid & self.o.ready, src_valid))
        word_in = shift & src_valid           # a row of the filling block (input word or padding)
        taken = self.i.valid & self.i.ready
        row_in = [Mux(padding, Const(0, signed(w)), self.i.payload.data[k]) for k in range(n)]

        with m.If(shift):
            for r in range(n):
                for c in range(n):
                    down = cells[r + 1][c] if r + 1 < n else row_in[c]
                    left = cells[r][c + 1] if c + 1 < n else row_in[r]
                    m.d.sync += cells[r][c].eq(Mux(mode, left, down))

        with m.If(word_in):
            with m.If(fill == n - 1):                     # the block is complete: flip, start draining it
                m.d.sync += [fill.eq(0), mode.eq(~mode), drain.eq(n), padding.eq(0),
                             drain_last.eq(fill_last | (taken & self.i.payload.last)), fill_last.eq(0)]
            with m.Else():
                m.d.sync += fill.eq(fill + 1)
                with m.If(taken & self.i.payload.last):  # early `last`: pad the block with zero rows
                    m.d.sync += [padding.eq(1), fill_last.eq(1), self.error.eq(1)]
                with m.If(shift & draining):
                    m.d.sync += drain.eq(drain - 1)
        with m.Elif(shift & draining):                    # the previous block drains on its own
            m.d.sync += drain.eq(drain - 1)
        return m
