"""Reading tensors along an address pattern: block-RAM reader, pattern reader, operand feeder.

* :class:`RamReader` turns a :class:`hw.bram.BlockRam` read port (latency 2, always enabled) into a
  request/response pair of streams, in order, with at most ``depth`` words requested and not yet
  taken (so its FIFO never overflows and a stalled consumer stalls the requests, not the RAM).
* :class:`PatternReader` walks a pattern slot (an :class:`~hw.engine.isa.AddressPattern` or a
  :class:`~hw.engine.conv.ConvPattern`; :class:`~hw.engine.slot.SlotGenerator`), sends one request
  per beat, and joins each response with the pattern beat's flags, kept in a FIFO meanwhile. A valid
  beat requests its address; an invalid one (padding, a batch or channel tail: its address may lie
  anywhere, e.g. wrapped below 0 to 2^24 − k) requests :data:`INVALID_ADDRESS` (2^24 − 1) instead,
  whose data the consumer discards (zeroes). A :class:`~hw.engine.extport.TieredReader` answers
  that address in order without reading either tier, so invalid beats never reach the external
  port and never wait behind it, while every beat still gets one response in order. Any memory with an in-order request/response interface works: a
  :class:`RamReader`, or the weight store's serve port (one-word serve commands).
* :class:`OperandFeeder` is a pattern reader whose words become array operands: invalid words are
  zero, the tile's last word carries ``last``, and a transposed operand (nr = L) goes through a
  :class:`hw.transpose.StreamTransposer` so that L words, one per array row, become L beats.
  Its response input and its output are :class:`~hw.engine.skid.SkidBuffer` s (registered valid,
  payload and ready), so neither the engine's routing of memory responses nor its join of the two
  operand streams reaches into the reader, the transposer or the memories; so are a
  :class:`PatternReader`'s request output (the memory's ready stops there) and the transposer's
  input (its shift enable fans out to every cell).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.bram import READ_LATENCY
from hw.transpose import StreamTransposer

from .conv import MAX_DIGITS
from .conv_addrgen import check_digits
from .isa import ADDR_BITS, COUNT_BITS
from .skid import SkidBuffer
from .slot import SlotGenerator, slot_layout

__all__ = ["RamReader", "PatternReader", "OperandFeeder", "operand_layout", "INVALID_ADDRESS"]

#: Pattern beats requested and not yet joined with their response, by default: covers the weight
#: store's serve path (command skid buffer, issue, read latency 6, response skid buffers) so that it
#: runs at one word per cycle. Behind an external-memory port the round trip is longer (a read
#: at latency 20 returns after about 28 cycles): there the engine gives its readers
#: :data:`hw.engine.extport.EXT_CREDITS` (16 held one operand at 16/30 ≈ 0.53 words per cycle).
FLAG_DEPTH = 16

#: The address an invalid pattern beat requests (its response is discarded): the top of the
#: address space, which no memory holds; a :class:`~hw.engine.extport.TieredReader` answers it
#: without reading anything, a plain RAM reads the word it wraps to.
INVALID_ADDRESS = (1 << ADDR_BITS) - 1


def operand_layout(lanes: int) -> data.StructLayout:
    return data.StructLayout({"data": data.ArrayLayout(signed(8), lanes), "last": 1})


class RamReader(wiring.Component):
    """Request/response streams over a BlockRam read port (see the module docstring)."""

    def __init__(self, width: int, depth: int = 4):
        self.width, self.depth = width, depth
        super().__init__({
            "req": In(stream.Signature(unsigned(ADDR_BITS))),
            "resp": Out(stream.Signature(unsigned(width))),
            "r_addr": Out(ADDR_BITS),
            "r_data": In(width),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.buf = buf = fifo.SyncFIFO(width=self.width, depth=self.depth)
        pending = Signal(range(self.depth + 1))            # requested and not yet taken
        in_flight = Signal(READ_LATENCY)
        take_req = self.req.valid & self.req.ready
        take_resp = self.resp.valid & self.resp.ready
        m.d.comb += [
            self.req.ready.eq(pending < self.depth),
            self.r_addr.eq(self.req.payload),
            buf.w_en.eq(in_flight[-1]),
            buf.w_data.eq(self.r_data),
            self.resp.valid.eq(buf.r_rdy),
            self.resp.payload.eq(buf.r_data),
            buf.r_en.eq(self.resp.ready),
        ]
        m.d.sync += [in_flight.eq(Mux(take_req, 1, 0) | (in_flight << 1)),
                     pending.eq(pending + take_req - take_resp)]
        return m


def pattern_beat_layout(word_shape) -> data.StructLayout:
    return data.StructLayout({"word": word_shape, "valid": 1, "t1": COUNT_BITS, "t2": COUNT_BITS,
                              "tile_last": 1, "last": 1})


class PatternReader(wiring.Component):
    """Reads the words of an address pattern through ``req``/``resp`` (see the module docstring);
    at most ``outstanding`` beats requested and not yet answered; ``payload_held`` and ``digits``
    as :class:`~hw.engine.slot.SlotGenerator`."""

    def __init__(self, lanes: int, word_shape, *, conv: bool = True, outstanding: int = FLAG_DEPTH,
                 payload_held: bool = False, digits: tuple = (MAX_DIGITS, MAX_DIGITS)):
        if not isinstance(outstanding, int) or outstanding < 2:
            self._MustUse__silence = True      # a rejected generator is not an "unused elaboratable"
            raise ValueError(f"outstanding={outstanding!r}: must be an integer >= 2")
        check_digits(digits, self)
        self.lanes, self.word_shape, self.conv, self.outstanding = lanes, word_shape, conv, outstanding
        self.payload_held, self.digits = payload_held, digits
        super().__init__({
            "cmd": In(stream.Signature(slot_layout())),
            "req": Out(stream.Signature(unsigned(ADDR_BITS))),
            "resp": In(stream.Signature(word_shape)),
            "o": Out(stream.Signature(pattern_beat_layout(word_shape))),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.gen = gen = SlotGenerator(self.lanes, conv=self.conv, payload_held=self.payload_held,
                                               digits=self.digits)
        flag_layout = data.StructLayout({"valid": 1, "t1": COUNT_BITS, "t2": COUNT_BITS, "tile_last": 1,
                                         "last": 1})
        m.submodules.flags = flags = fifo.SyncFIFO(width=flag_layout.size, depth=self.outstanding)
        wiring.connect(m, wiring.flipped(self.cmd), gen.cmd)
        # Requests leave through a skid buffer: the memory's ready (a TieredReader's address
        # compares, the external port's credits) no longer reaches the flag FIFO's write enable
        # and the generator (the 8-lane engine's worst class into LUT RAM after placement).
        m.submodules.req_out = req_out = SkidBuffer(unsigned(ADDR_BITS))
        wiring.connect(m, req_out.o, wiring.flipped(self.req))
        beat = gen.o.payload
        m.d.comb += [
            req_out.i.valid.eq(gen.o.valid & flags.w_rdy),
            req_out.i.payload.eq(Mux(beat.valid, beat.addr, INVALID_ADDRESS)),    # see the module docstring
            gen.o.ready.eq(req_out.i.ready & flags.w_rdy),
            flags.w_en.eq(req_out.i.valid & req_out.i.ready),
            flags.w_data.eq(Cat(beat.valid, beat.t1, beat.t2, beat.tile_last, beat.last)),   # flag_layout order
        ]
        f = data.View(flag_layout, flags.r_data)
        m.d.comb += [
            self.o.valid.eq(self.resp.valid & flags.r_rdy),
            self.o.payload.word.eq(self.resp.payload),
            self.o.payload.valid.eq(f.valid), self.o.payload.t1.eq(f.t1), self.o.payload.t2.eq(f.t2),
            self.o.payload.tile_last.eq(f.tile_last), self.o.payload.last.eq(f.last),
            self.resp.ready.eq(self.o.ready & flags.r_rdy),
            flags.r_en.eq(self.o.ready & self.resp.valid),
        ]
        return m


class OperandFeeder(wiring.Component):
    """Array operand words along a pattern: zero where invalid, ``last`` on a tile's final word,
    through the transposer when ``transposed`` (held static while a pattern runs) is high;
    ``outstanding``, ``payload_held`` and ``digits`` as :class:`PatternReader`."""

    def __init__(self, lanes: int, *, conv: bool = True, outstanding: int = FLAG_DEPTH, payload_held: bool = False,
                 digits: tuple = (MAX_DIGITS, MAX_DIGITS)):
        check_digits(digits, self)
        self.lanes, self.conv, self.outstanding, self.payload_held = lanes, conv, outstanding, payload_held
        self.digits = digits
        word = data.ArrayLayout(signed(8), lanes)
        super().__init__({
            "cmd": In(stream.Signature(slot_layout())),
            "transposed": In(1),
            "req": Out(stream.Signature(unsigned(ADDR_BITS))),
            "resp": In(stream.Signature(word)),
            "o": Out(stream.Signature(operand_layout(lanes))),
        })

    def elaborate(self, platform):
        m = Module()
        L = self.lanes
        m.submodules.reader = reader = PatternReader(L, data.ArrayLayout(signed(8), L), conv=self.conv,
                                                     outstanding=self.outstanding, payload_held=self.payload_held,
                                                     digits=self.digits)
        m.submodules.transposer = tr = StreamTransposer(L, 8)
        wiring.connect(m, wiring.flipped(self.cmd), reader.cmd)
        m.d.comb += [
            self.req.valid.eq(reader.req.valid), self.req.payload.eq(reader.req.payload),
            reader.req.ready.eq(self.req.ready),
        ]
        m.submodules.resp = resp = SkidBuffer(data.ArrayLayout(signed(8), L))
        wiring.connect(m, wiring.flipped(self.resp), resp.i)
        wiring.connect(m, resp.o, reader.resp)
        beat = reader.o.payload
        word = Mux(beat.valid, beat.word.as_value(), 0)
        m.submodules.out = out = SkidBuffer(operand_layout(L))
        wiring.connect(m, out.o, wiring.flipped(self.o))
        # The transposer takes its words from a skid buffer: its shift enable fans out to all
        # L·L·8 cells, and the reader's join (response valid, flag FIFO level, the mode) in front
        # of it was a failing class of 1,024 endpoints at 8 lanes.
        m.submodules.tr_in = tr_in = SkidBuffer(tr.i.payload.shape())
        wiring.connect(m, tr_in.o, tr.i)
        # The transposer's ready is the output buffer's room whatever the mode, so its shift enable
        # (fanned out to L·L·8 cells) starts at flip-flops of its own: it holds no word when not
        # transposing (`transposed` is static while a pattern runs and every block drains).
        m.d.comb += tr.o.ready.eq(out.i.ready)
        with m.If(self.transposed):
            m.d.comb += [
                tr_in.i.valid.eq(reader.o.valid), tr_in.i.payload.data.eq(word),
                tr_in.i.payload.last.eq(beat.tile_last), reader.o.ready.eq(tr_in.i.ready),
                out.i.valid.eq(tr.o.valid), out.i.payload.data.eq(tr.o.payload.data),
                out.i.payload.last.eq(tr.o.payload.last),
            ]
        with m.Else():
            m.d.comb += [
                out.i.valid.eq(reader.o.valid), out.i.payload.data.eq(word),
                out.i.payload.last.eq(beat.tile_last), reader.o.ready.eq(out.i.ready),
            ]
        return m
