"""Chunk framing of the engine's 32-bit host packets over a byte link (host side and gateware).

Format (the same in both directions). A packet of 32-bit words (:mod:`hw.engine.protocol`; on the
engine's streams the last word carries ``last``) is sent as one or more *chunks*::

    byte 0      n = number of words in this chunk, 1..255
    byte 1      flags: bit 0 = this chunk ends the packet; bits 1..7 reserved, 0
    bytes 2..   n words, each 4 bytes, least significant byte first

A packet of N words is ``ceil(N / 255)`` chunks: full chunks of 255 words, the rest in the final
chunk, which alone has the end flag. There is no empty packet and no empty chunk.

Errors. A header with ``n = 0`` or a reserved flag bit set is a framing error. The gateware
:class:`ChunkDecoder` pulses ``error`` for one clock after consuming the bad header's byte 1 and
skips the chunk: with ``n = 0`` the next byte is taken as the next header; with ``n > 0`` (bad
flags) its ``n`` words are consumed and dropped. Words of the same packet already sent on are not
taken back, and nothing here re-synchronises a link that has lost its byte alignment: that (CRC,
sequence numbers, retransmission) is the job of a layer wrapped around this one. The host-side
:class:`PacketDecoder` raises :class:`FramingError` instead.

Host side (pure Python): :func:`encode_packet`, :class:`PacketDecoder`. Gateware:
:class:`ChunkDecoder` (bytes to words), :class:`ChunkEncoder` (words to bytes).
"""

from __future__ import annotations

from collections.abc import Sequence

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.engine.engine import host_layout

__all__ = ["MAX_CHUNK_WORDS", "FLAG_LAST", "FramingError", "encode_packet", "PacketDecoder",
           "ChunkDecoder", "ChunkEncoder"]

MAX_CHUNK_WORDS = 255
FLAG_LAST = 0x01
_WORD_LIMIT = 1 << 32


class FramingError(ValueError):
    """A chunk header the format does not allow; ``offset`` (bytes since the decoder was made) and
    ``byte`` name the offending byte."""

    def __init__(self, message, offset, byte, packets=()):
        super().__init__(message)
        self.offset = offset
        self.byte = byte
        #: Packets completed by the same :meth:`PacketDecoder.feed` call before the error.
        self.packets = list(packets)


def encode_packet(words: Sequence[int]) -> bytes:
    """The chunks of one packet."""
    words = list(words)
    if not words:
        raise ValueError("words=[]: a packet has at least one word")
    for i, w in enumerate(words):
        if isinstance(w, bool) or not isinstance(w, int) or not 0 <= w < _WORD_LIMIT:
            raise ValueError(f"words[{i}]={w!r}: must be an integer in 0..2**32-1")
    out = bytearray()
    for start in range(0, len(words), MAX_CHUNK_WORDS):
        chunk = words[start:start + MAX_CHUNK_WORDS]
        out += bytes((len(chunk), FLAG_LAST if start + MAX_CHUNK_WORDS >= len(words) else 0))
        for w in chunk:
            out += w.to_bytes(4, "little")
    return bytes(out)


class PacketDecoder:
    """Incremental decoder: :meth:`feed` any slice of the byte stream, get the packets it completes.

    On a bad header :meth:`feed` raises :class:`FramingError` (naming the stream offset and the
    byte; the packets completed earlier in the same call are in its ``packets``); the decoder then
    drops the partial packet and the rest of that call's data and expects a chunk header next.
    """

    def __init__(self):
        self.offset = 0                 # bytes consumed since construction
        self.reset()

    def reset(self):
        self._packet: list[int] = []
        self._header: list[int] = []    # bytes of the chunk header seen so far
        self._left = 0                  # words still to come in this chunk
        self._end = False
        self._word = bytearray()

    @property
    def idle(self) -> bool:
        """True between packets (no partial chunk or packet held)."""
        return not self._packet and not self._header and self._left == 0

    def feed(self, data: bytes) -> list[list[int]]:
        done: list[list[int]] = []
        for b in bytes(data):
            offset = self.offset
            self.offset += 1
            if self._left == 0:
                self._header.append(b)
                if len(self._header) < 2:
                    continue
                n, flags = self._header
                self._header = []
                if n == 0 or flags & ~FLAG_LAST:
                    self.reset()
                    if n == 0:
                        at, bad, what = offset - 1, n, "word count 0"
                    else:
                        at, bad, what = offset, flags, f"reserved flag bits set ({flags & ~FLAG_LAST:#04x})"
                    raise FramingError(f"byte {bad:#04x} at offset {at}: chunk header with {what}", at, bad, done)
                self._left, self._end = n, bool(flags & FLAG_LAST)
                continue
            self._word.append(b)
            if len(self._word) == 4:
                self._packet.append(int.from_bytes(self._word, "little"))
                self._word = bytearray()
                self._left -= 1
                if self._left == 0 and self._end:
                    done.append(self._packet)
                    self._packet = []
        return done


class ChunkDecoder(wiring.Component):
    """Bytes to words: ``last`` is set on the final word of a chunk with the end flag.

    Consumes header and the first three bytes of a word at once; the fourth byte waits until the
    (registered) output word is free. ``error`` pulses for one clock, registered, after a bad header
    (see the module docstring for what is skipped).
    """

    def __init__(self):
        super().__init__({
            "bytes": In(stream.Signature(8)),
            "words": Out(stream.Signature(host_layout())),
            "error": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        left = Signal(8)                # words still to come in this chunk
        end = Signal()                  # this chunk ends the packet
        drop = Signal()                 # this chunk's words are discarded (bad flags)
        index = Signal(2)               # byte of the current word
        low = Signal(24)                # its bytes 0..2
        b = self.bytes.payload
        take = Signal()
        m.d.comb += take.eq(self.bytes.valid & self.bytes.ready)

        m.d.sync += self.error.eq(0)
        with m.If(self.words.valid & self.words.ready):
            m.d.sync += self.words.valid.eq(0)

        with m.FSM():
            with m.State("COUNT"):
                m.d.comb += self.bytes.ready.eq(1)
                with m.If(take):
                    m.d.sync += left.eq(b)
                    m.next = "FLAGS"
            with m.State("FLAGS"):
                m.d.comb += self.bytes.ready.eq(1)
                with m.If(take):
                    m.d.sync += [end.eq(b[0]), drop.eq(b[1:] != 0), index.eq(0)]
                    with m.If((left == 0) | (b[1:] != 0)):
                        m.d.sync += self.error.eq(1)
                    with m.If(left == 0):
                        m.next = "COUNT"
                    with m.Else():
                        m.next = "WORD"
            with m.State("WORD"):
                m.d.comb += self.bytes.ready.eq((index != 3) | drop | ~self.words.valid | self.words.ready)
                with m.If(take):
                    m.d.sync += [index.eq(index + 1), low.eq(Cat(low[8:], b))]
                    with m.If(index == 3):
                        m.d.sync += left.eq(left - 1)
                        with m.If(~drop):
                            m.d.sync += [self.words.valid.eq(1),
                                         self.words.payload.data.eq(Cat(low, b)),
                                         self.words.payload.last.eq(end & (left == 1))]
                        with m.If(left == 1):
                            m.next = "COUNT"
        return m


class ChunkEncoder(wiring.Component):
    """Words to bytes. A chunk's count goes out first, so words wait in a 256-deep FIFO (block RAM)
    until their chunk is complete: 255 words, or up to a word with ``last``. Chunk lengths and end
    flags queue in a small FIFO beside it, so the FIFO keeps filling while earlier chunks are sent
    and the output runs at one byte per clock when the consumer allows."""

    FIFO_DEPTH = 256
    CHUNK_QUEUE = 4

    def __init__(self):
        super().__init__({
            "words": In(stream.Signature(host_layout())),
            "bytes": Out(stream.Signature(8)),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.words = words = fifo.SyncFIFOBuffered(width=32, depth=self.FIFO_DEPTH)
        m.submodules.chunks = chunks = fifo.SyncFIFOBuffered(width=9, depth=self.CHUNK_QUEUE)

        # Input side: words enter the FIFO; a chunk closes at 255 words or at `last`.
        open_words = Signal(8)          # words of the chunk still open
        put = Signal()
        close = Signal()
        i = self.words
        m.d.comb += [
            i.ready.eq(words.w_rdy & chunks.w_rdy),
            put.eq(i.valid & i.ready),
            close.eq(put & (i.payload.last | (open_words == MAX_CHUNK_WORDS - 1))),
            words.w_en.eq(put),
            words.w_data.eq(i.payload.data),
            chunks.w_en.eq(close),
            chunks.w_data.eq(Cat((open_words + 1)[:8], i.payload.last)),
        ]
        with m.If(put):
            m.d.sync += open_words.eq(open_words + 1)
            with m.If(close):
                m.d.sync += open_words.eq(0)

        # Output side: header, flags, then the chunk's words, low byte first.
        o = self.bytes
        left = Signal(8)
        end = Signal()
        index = Signal(2)
        take = Signal()
        m.d.comb += take.eq(o.valid & o.ready)
        with m.FSM():
            with m.State("COUNT"):
                m.d.comb += [o.valid.eq(chunks.r_rdy), o.payload.eq(chunks.r_data[:8]),
                             chunks.r_en.eq(take)]
                with m.If(take):
                    m.d.sync += [left.eq(chunks.r_data[:8]), end.eq(chunks.r_data[8])]
                    m.next = "FLAGS"
            with m.State("FLAGS"):
                m.d.comb += [o.valid.eq(1), o.payload.eq(end)]
                with m.If(take):
                    m.d.sync += index.eq(0)
                    m.next = "WORD"
            with m.State("WORD"):
                m.d.comb += [o.valid.eq(words.r_rdy), o.payload.eq(words.r_data.word_select(index, 8)),
                             words.r_en.eq(take & (index == 3))]
                with m.If(take):
                    m.d.sync += index.eq(index + 1)
                    with m.If(index == 3):
                        m.d.sync += left.eq(left - 1)
                        with m.If(left == 1):
                            m.next = "COUNT"
        return m
