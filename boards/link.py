"""Reliable link layer for the engine's host packets over a byte link (protocol and gateware).

A dropped or corrupted byte on the serial line must never pass unnoticed. This layer wraps the engine's 32-bit word streams (``host_layout()``:
``data`` + ``last``) in CRC-protected, sequence-numbered frames with acknowledgements and
retransmission (go-back-N with a window of 1–16 frames; window 1 is stop-and-wait). The protocol is
defined once, here; :mod:`boards.link_host` is the host side in pure Python, :class:`ReliableLink`
the gateware side. It sits between :mod:`boards.uart` and the engine::

    rx ─ UARTRx ─▶ rx_bytes ┐                    ┌─▶ to_engine   (words, ``last`` ends a packet)
                            │   ReliableLink     │
    tx ◀ UARTTx ◀ tx_bytes ─┘                    └── from_engine

Frame format (both directions)
------------------------------

======  ========  ===========================================================================
byte    field     meaning
======  ========  ===========================================================================
0       SYNC      0xA5
1       TYPE      bits 0–2 kind: 1 DATA, 2 ACK, 3 NAK, 4 RESET, 5 RESET_ACK; bit 7 END (DATA
                  only: this frame ends the packet); bits 3–6 are 0
2       SEQ       sequence number, modulo 256 (meaning depends on the kind, below)
3       LEN       number of payload words: 1..255 for DATA, 0 for every other kind
4, 5    HCRC      CRC-16/CCITT-FALSE of bytes 1..3, most significant byte first
6 ..    payload   LEN words, 4 bytes each, least significant byte first (DATA only)
+0, +1  FCRC      DATA only: CRC-16/CCITT-FALSE of bytes 1 .. 5 + 4·LEN (header, HCRC and
                  payload), most significant byte first
======  ========  ===========================================================================

A DATA frame is ``8 + 4·LEN`` bytes, every other frame 6 bytes. CRC-16/CCITT-FALSE: polynomial
0x1021, initial value 0xFFFF, not reflected, no final XOR (check value ``crc(b"123456789") ==
0x29B1``). Because the CRC is sent most significant byte first and has no final XOR, the CRC of the
covered bytes *followed by the CRC itself* is 0: receivers run the CRC over bytes 1..5 and check for
0 (header), and over bytes 1 .. end of frame and check for 0 (whole frame).

A packet of N words is sent as ``ceil(N / max_frame_words)`` DATA frames of consecutive sequence
numbers; the last one has END. Each frame is acknowledged on its own.

Synchronisation. The receiver hunts for SYNC, then reads the five header bytes; a header whose CRC
fails (a corrupted header, or a SYNC value that was really payload) sends it back to hunting. Only
a header that passes its CRC is believed, so a corrupted LEN cannot make the receiver swallow a
wrong number of bytes (except with probability 2**-16 per false header). A frame that lost bytes
runs into the next frame's bytes and fails its CRC; the receiver then hunts again and the frames
lost on the way are retransmitted. A receiver that is inside a frame and gets no byte for
``rx_idle_cycles`` (gateware) goes back to hunting, so a truncated last frame cannot leave it
waiting. After a bad header the gateware hunts from the byte after it (a SYNC among the five header
bytes is missed, and that frame is retransmitted); the Python receiver rescans from the byte after
a failed frame's SYNC instead.

Error detection. CRC-16/CCITT-FALSE has Hamming distance 4 up to 32,751 data bits, so within a frame
(at most 8,224 bits) every error of up to 3 flipped bits and every burst of up to 16 bits is
detected; anything else (several damaged bytes, a dropped or inserted byte shifting the rest) gets
through with probability about 2**-16 per damaged frame. A header of random bytes passes HCRC with
probability 2**-16 and must then still be well-formed (kind, LEN, reserved bits) to be acted on.

Sequence numbers and acknowledgements (go-back-N).

* The sender numbers DATA frames consecutively (mod 256) and keeps every frame until it is
  acknowledged; at most ``window`` frames are unacknowledged.
* ``ACK s`` (cumulative): every frame before ``s`` arrived; ``s`` is the next one expected.
* The receiver accepts only the frame it expects, and only with a good FCRC: it releases the words
  (to the engine, or to the host application) only after the whole frame passed its CRC. It then
  answers ``ACK expected+1``. A duplicate (a frame before the expected one) is dropped and
  re-acknowledged (``ACK expected``). A frame after the expected one (an earlier one was lost), or
  a frame with a good header but a bad FCRC whose SEQ is the expected one, gets ``NAK expected``,
  once per expected sequence number; afterwards only ``ACK expected``.
* ``NAK s`` = ``ACK s`` plus: retransmit from ``s`` now (go back). Without an acknowledgement the
  sender goes back to its oldest unacknowledged frame after its timeout; the timer restarts
  whenever that oldest frame changes, is sent again, or the sender goes back.
* The gateware receiver holds two whole frames (block RAM); when both are still waiting for the
  engine a third DATA frame is dropped without acknowledgement (``overflows``) and comes again.
* ``RESET s`` (from the host, when it opens the link): the receiver expects ``s`` next; the peer
  drops its unacknowledged frames and answers ``RESET_ACK t``, where ``t`` is the sequence number
  of its next DATA frame. The host sends nothing else until RESET_ACK arrives (it repeats RESET on
  timeout). This realigns both sequence spaces after either side restarted; the engine behind the
  link is not reset by it.

Protocol violations (a header that passes its CRC but breaks the rules above: an unknown kind,
reserved bits, DATA with LEN 0, another kind with LEN ≠ 0 or END, an ACK of a frame never sent)
set the gateware's sticky ``error`` and are otherwise ignored.

Throughput. A full DATA frame carries 1020 payload bytes in 1028 line bytes (99.2 %): at 3 Mbaud
(8N1, 300,000 bytes/s) 297.7 kB/s of payload each way, full duplex, as long as the window covers the
acknowledgement round trip (window 4: three frames, 10 ms at 3 Mbaud). Stop-and-wait (window 1)
pays frame + ACK (6 bytes) + turnaround per frame: 1020 / (1034 + 300 · turnaround_ms) of the line
rate, e.g. 76 % with a 1 ms turnaround, 17.5 % with the FTDI default latency timer of 16 ms. (From
the engine, stop-and-wait also waits for the engine to refill the single frame buffer: 255 clocks,
1.5 byte times at 50 MHz.)

Integration: :class:`boards.hostlink.UARTHostLink` joins :mod:`boards.uart`'s receiver and
transmitter to the byte ports and the engine to the word ports; its sticky ``error`` is
:attr:`ReliableLink.error` alone (line faults are recovered, not errors).

Python reference (used by :mod:`boards.link_host` and the tests): :func:`crc`, :func:`encode_frame`,
:func:`packet_frames`, :class:`Frame`, :class:`FrameParser`.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.engine.engine import host_layout

__all__ = ["SYNC", "DATA", "ACK", "NAK", "RESET", "RESET_ACK", "KINDS", "FLAG_END", "HEADER_BYTES",
           "CRC_BYTES", "MAX_FRAME_WORDS", "SEQ_MODULO", "MAX_WINDOW", "CRC_POLY", "CRC_INIT", "crc",
           "Frame", "BadFrame", "ParserStats", "encode_frame", "packet_frames", "FrameParser", "frame_bytes",
           "payload_efficiency", "ReliableLink", "suggested_timeout_cycles"]

SYNC = 0xA5
DATA, ACK, NAK, RESET, RESET_ACK = 1, 2, 3, 4, 5
KINDS = {DATA: "DATA", ACK: "ACK", NAK: "NAK", RESET: "RESET", RESET_ACK: "RESET_ACK"}
FLAG_END = 0x80
KIND_MASK = 0x07
HEADER_BYTES = 6
CRC_BYTES = 2
MAX_FRAME_WORDS = 255
SEQ_MODULO = 256
#: Largest gateware window (a power of two); the protocol itself allows up to 127.
MAX_WINDOW = 16
CRC_POLY = 0x1021
CRC_INIT = 0xFFFF
RX_SLOTS = 2                          # whole frames the gateware receiver buffers


def _crc_table():
    table = []
    for i in range(256):
        c = i << 8
        for _ in range(8):
            c = ((c << 1) ^ CRC_POLY) if c & 0x8000 else (c << 1)
        table.append(c & 0xFFFF)
    return table


_CRC_TABLE = _crc_table()


def crc(data: bytes | Iterable[int], value: int = CRC_INIT) -> int:
    """CRC-16/CCITT-FALSE of ``data`` (continue a running CRC by passing it as ``value``)."""
    for b in bytes(data):
        value = ((value << 8) & 0xFFFF) ^ _CRC_TABLE[((value >> 8) ^ b) & 0xFF]
    return value


def frame_bytes(words: int) -> int:
    """Bytes on the line of a DATA frame of ``words`` words (6 for a control frame, ``words=0``)."""
    return HEADER_BYTES + (4 * words + CRC_BYTES if words else 0)


def payload_efficiency(frame_words: int = MAX_FRAME_WORDS) -> float:
    """Payload bytes / line bytes of a stream of full DATA frames."""
    return 4 * frame_words / frame_bytes(frame_words)


@dataclass(frozen=True)
class Frame:
    kind: int
    seq: int
    words: tuple[int, ...] = ()
    end: bool = False

    def __repr__(self):
        e = " END" if self.end else ""
        return f"Frame({KINDS.get(self.kind, self.kind)} seq={self.seq} len={len(self.words)}{e})"


def _check_seq(seq):
    if isinstance(seq, bool) or not isinstance(seq, numbers.Integral) or not 0 <= seq < SEQ_MODULO:
        raise ValueError(f"seq={seq!r}: must be an integer in 0..255")


def encode_frame(kind: int, seq: int, words: Sequence[int] = (), end: bool = False) -> bytes:
    """The bytes of one frame (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}: must be one of {sorted(KINDS)} ({', '.join(KINDS.values())})")
    _check_seq(seq)
    words = list(words)
    if kind == DATA:
        if not 1 <= len(words) <= MAX_FRAME_WORDS:
            raise ValueError(f"len(words)={len(words)}: a DATA frame has 1..{MAX_FRAME_WORDS} words")
    elif words or end:
        raise ValueError(f"kind={KINDS[kind]}: only DATA frames have words or END")
    head = bytes((kind | (FLAG_END if end else 0), seq, len(words)))
    h = crc(head)
    body = bytearray(head) + h.to_bytes(2, "big")
    for i, w in enumerate(words):
        if isinstance(w, bool) or not isinstance(w, numbers.Integral) or not 0 <= w < 1 << 32:
            raise ValueError(f"words[{i}]={w!r}: must be an integer in 0..2**32-1")
        body += int(w).to_bytes(4, "little")
    if words:
        body += crc(body).to_bytes(2, "big")
    return bytes([SYNC]) + bytes(body)


def packet_frames(words: Sequence[int], max_frame_words: int = MAX_FRAME_WORDS) -> list[tuple[tuple[int, ...], bool]]:
    """Split a packet into (words, end) per DATA frame."""
    words = tuple(words)
    if not words:
        raise ValueError("words=[]: a packet has at least one word")
    out = []
    for start in range(0, len(words), max_frame_words):
        out.append((words[start:start + max_frame_words], start + max_frame_words >= len(words)))
    return out


@dataclass
class BadFrame:
    """A DATA frame whose header passed its CRC but whose FCRC failed."""
    seq: int


@dataclass
class ParserStats:
    header_errors: int = 0       # SYNC followed by a header that fails its CRC
    crc_errors: int = 0          # good header, bad frame CRC
    violations: int = 0          # good header CRC, but breaks the format rules
    frames: int = 0              # good frames
    skipped: int = 0             # bytes skipped while hunting for SYNC


class FrameParser:
    """Incremental receiver: :meth:`feed` any slice of the byte stream, get :class:`Frame` (good
    frames) and :class:`BadFrame` (good header, bad FCRC) events. After any failure it rescans from
    the byte after the failed frame's SYNC, so a frame that follows a damaged one is still found.

    ``check_crc=False`` (tests only) accepts DATA frames whatever their FCRC.
    """

    def __init__(self, check_crc: bool = True):
        self.check_crc = check_crc
        self.stats = ParserStats()
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes held (a partial frame, or bytes not yet scanned)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Frame | BadFrame]:
        self._buf += data
        buf, out, st = self._buf, [], self.stats
        i = 0
        while True:
            j = buf.find(SYNC, i)
            if j < 0:
                st.skipped += len(buf) - i
                i = len(buf)
                break
            st.skipped += j - i
            i = j
            if len(buf) - i < HEADER_BYTES:
                break
            if crc(buf[i + 1:i + HEADER_BYTES]) != 0:
                st.header_errors += 1
                i += 1
                continue
            t, seq, n = buf[i + 1], buf[i + 2], buf[i + 3]
            kind, end = t & KIND_MASK, bool(t & FLAG_END)
            bad = (t & 0x78) or kind not in KINDS or (n == 0 if kind == DATA else (n != 0 or end))
            if bad:
                st.violations += 1
                i += 1
                continue
            if kind != DATA:
                st.frames += 1
                out.append(Frame(kind, seq))
                i += HEADER_BYTES
                continue
            size = frame_bytes(n)
            if len(buf) - i < size:
                break
            if self.check_crc and crc(buf[i + 1:i + size]) != 0:
                st.crc_errors += 1
                out.append(BadFrame(seq))
                i += 1                                      # rescan inside: the next frame may start there
                continue
            p = buf[i + HEADER_BYTES:i + HEADER_BYTES + 4 * n]
            words = tuple(int.from_bytes(p[k:k + 4], "little") for k in range(0, 4 * n, 4))
            st.frames += 1
            out.append(Frame(DATA, seq, words, end))
            i += size
        del buf[:i]
        return out


def suggested_timeout_cycles(clk_freq: float, baud: int, peer_window: int = 4, turnaround_s: float = 0.02) -> int:
    """A retransmission timeout (clocks) for :class:`ReliableLink` on a UART at ``baud`` (8N1).

    The gateware timer restarts when its oldest unacknowledged frame starts, so it must cover that
    frame, the peer's frames that may be queued ahead of the acknowledgement (the host hands up to
    ``peer_window`` frames to its serial driver at once), one more frame of slack, and
    ``turnaround_s`` for the host (USB latency, scheduling). Full 255-word frames are assumed."""
    byte_s = 10 / baud
    seconds = (peer_window + 2) * frame_bytes(MAX_FRAME_WORDS) * byte_s + turnaround_s
    return int(seconds * clk_freq) + 1


# ------------------------------------------------------------------------------------------ gateware

def _crc_matrix():
    """For each bit of the next CRC value, the (crc bits, byte bits) it is the XOR of (the CRC is
    linear over GF(2) in the register and the data byte)."""
    def step(value, byte):
        for i in range(7, -1, -1):
            fb = ((value >> 15) ^ (byte >> i)) & 1
            value = ((value << 1) & 0xFFFF) ^ (CRC_POLY if fb else 0)
        return value
    rows = []
    for out in range(16):
        rows.append(([i for i in range(16) if step(1 << i, 0) >> out & 1],
                     [i for i in range(8) if step(0, 1 << i) >> out & 1]))
    return rows


_CRC_MATRIX = _crc_matrix()


class _CrcStep(wiring.Component):
    """One byte of CRC-16/CCITT-FALSE, combinational: ``next`` = CRC register ``value`` advanced by
    ``byte`` (one XOR tree per bit). A submodule of its own, so the simulator re-evaluates it only
    when its inputs change."""

    def __init__(self):
        super().__init__({"value": In(16), "byte": In(8), "next": Out(16)})

    def elaborate(self, platform):
        m = Module()
        bits = []
        for crc_bits, byte_bits in _CRC_MATRIX:
            terms = [self.value[i] for i in crc_bits] + [self.byte[i] for i in byte_bits]
            x = terms[0]
            for t in terms[1:]:
                x = x ^ t
            bits.append(x)
        m.d.comb += self.next.eq(Cat(*bits))
        return m


class _Timer(wiring.Component):
    """Counts clocks up to ``limit - 1`` and holds there (``expired``); ``clear`` restarts it from 0.
    A submodule of its own so that the simulator does not re-evaluate the link's logic every clock."""

    def __init__(self, limit):
        self.limit = limit
        super().__init__({"clear": In(1), "expired": Out(1)})

    def elaborate(self, platform):
        m = Module()
        count = Signal(range(self.limit))
        m.d.comb += self.expired.eq(count == self.limit - 1)
        with m.If(self.clear):
            m.d.sync += count.eq(0)
        with m.Elif(~self.expired):
            m.d.sync += count.eq(count + 1)
        return m


def _crc_step(m, name, value, byte):
    """Instantiate a :class:`_CrcStep` in ``m``; returns its ``next``."""
    m.submodules[name] = step = _CrcStep()
    m.d.comb += [step.value.eq(value), step.byte.eq(byte)]
    return step.next


def _positive_int(name, value, *, low=1, high=None, note=""):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={value!r}: must be an integer{note}")
    if value < low or (high is not None and value > high):
        rng = f"in {low}..{high}" if high is not None else f">= {low}"
        raise ValueError(f"{name}={value!r}: must be an integer {rng}{note}")
    return int(value)


class ReliableLink(wiring.Component):
    """Gateware end of the reliable link (see the module docstring for the protocol).

    Parameters
    ----------
    timeout_cycles : int
        Retransmission timeout in clocks (:func:`suggested_timeout_cycles` for a UART rate; at
        50 MHz, 3 Mbaud and a host window of 4 that is 2,028,001 clocks, 40.6 ms).
    window : int
        Unacknowledged DATA frames the transmitter may have (1, 2, 4, 8 or 16; 1 = stop-and-wait).
        The transmit buffer is ``window × 256`` words of block RAM.
    max_frame_words : int
        Largest DATA frame this side sends (1..255). The receiver takes any length.
    rx_idle_cycles : int or None
        A receiver inside a frame that sees no byte for this many clocks hunts for SYNC again.
        Default ``timeout_cycles // 4``; must be below ``timeout_cycles``.
    check_crc : bool
        Test-only: ``False`` accepts DATA frames whatever their frame CRC (the header CRC is still
        checked). It exists so a test can show that its scoreboard catches corrupted words.

    Ports: ``rx_bytes``/``tx_bytes`` (bytes, to and from the UART; ``rx_bytes.ready`` is always 1,
    the receiver never stalls the line), ``to_engine``/``from_engine`` (``host_layout()`` words).
    Status (saturating 16-bit counters): ``rx_frames`` (DATA frames accepted), ``tx_frames`` (DATA
    frames sent the first time), ``retransmissions`` (DATA frames sent again), ``timeouts``,
    ``crc_errors`` (good header, bad frame CRC), ``header_errors`` (SYNC followed by a bad header:
    damage or resynchronisation), ``duplicates`` (frames received again), ``overflows`` (expected
    frames dropped because both receive buffers were waiting for the engine); ``error`` is sticky
    (protocol violations).
    """

    COUNTERS = ("rx_frames", "tx_frames", "retransmissions", "timeouts", "crc_errors", "header_errors",
                "duplicates", "overflows")

    def __init__(self, *, timeout_cycles: int, window: int = 4, max_frame_words: int = MAX_FRAME_WORDS,
                 rx_idle_cycles: int | None = None, check_crc: bool = True):
        try:
            self.timeout_cycles = _positive_int("timeout_cycles", timeout_cycles, low=2)
            self.window = _positive_int("window", window, high=MAX_WINDOW,
                                        note=" and a power of two (1, 2, 4, 8, 16)")
            if self.window & (self.window - 1):
                raise ValueError(f"window={window!r}: must be a power of two (1, 2, 4, 8, 16)")
            self.max_frame_words = _positive_int("max_frame_words", max_frame_words, high=MAX_FRAME_WORDS)
            if rx_idle_cycles is None:
                rx_idle_cycles = max(1, self.timeout_cycles // 4)
            self.rx_idle_cycles = _positive_int("rx_idle_cycles", rx_idle_cycles)
            if self.rx_idle_cycles >= self.timeout_cycles:
                raise ValueError(f"rx_idle_cycles={rx_idle_cycles!r}: must be below timeout_cycles="
                                 f"{self.timeout_cycles} (a receiver stuck in a truncated frame must be "
                                 f"hunting again before the retransmission arrives)")
            if not isinstance(check_crc, bool):
                raise TypeError(f"check_crc={check_crc!r}: must be a bool")
            self.check_crc = check_crc
        except (TypeError, ValueError):
            self._MustUse__silence = True      # a rejected generator is not an "unused elaboratable"
            raise
        members = {
            "rx_bytes": In(stream.Signature(8)),
            "tx_bytes": Out(stream.Signature(8)),
            "to_engine": Out(stream.Signature(host_layout())),
            "from_engine": In(stream.Signature(host_layout())),
            "error": Out(1),
        }
        members.update({name: Out(16) for name in self.COUNTERS})
        super().__init__(members)

    def __repr__(self):
        if not hasattr(self, "check_crc"):
            return "ReliableLink(<rejected parameters>)"
        return (f"ReliableLink(timeout_cycles={self.timeout_cycles}, window={self.window}, "
                f"max_frame_words={self.max_frame_words}, rx_idle_cycles={self.rx_idle_cycles}"
                f"{'' if self.check_crc else ', check_crc=False'})")

    def elaborate(self, platform):
        m = Module()

        def bump(counter, cond=1):
            with m.If(cond & (counter != 0xFFFF)):
                m.d.sync += counter.eq(counter + 1)

        # Events from the receiver to the transmitter: registered one-clock pulses (a register
        # between the receiver's CRC check and the transmitter's window logic keeps that path short).
        ack_evt, ack_nak, ack_seq = Signal(), Signal(), Signal(8)        # ACK/NAK frame received
        reset_evt = Signal()                                              # RESET frame received
        req_valid, req_nak, req_seq = Signal(), Signal(), Signal(8)       # please send ACK/NAK
        m.d.sync += [ack_evt.eq(0), reset_evt.eq(0), req_valid.eq(0)]

        # ============================================================ receiver
        rx = self.rx_bytes
        m.d.comb += rx.ready.eq(1)
        got = rx.valid
        b = rx.payload
        hcrc, fcrc = Signal(16), Signal(16)
        hcrc_n, fcrc_n = Signal(16), Signal(16)
        m.d.comb += [hcrc_n.eq(_crc_step(m, "rx_hcrc", hcrc, b)), fcrc_n.eq(_crc_step(m, "rx_fcrc", fcrc, b))]
        r_type, r_seq, r_len = Signal(8), Signal(8), Signal(8)
        cnt = Signal(3)
        widx, bidx, wshift = Signal(8), Signal(2), Signal(24)
        discard = Signal()
        expected, nak_sent = Signal(8), Signal()
        m.submodules.rx_idle = rx_idle = _Timer(self.rx_idle_cycles)
        idle_expired = rx_idle.expired
        m.d.comb += rx_idle.clear.eq(got)

        # Receive buffer: RX_SLOTS whole frames in a ring; frames are written at wr_ptr and drained
        # to the engine from rd_ptr.
        m.submodules.rx_mem = rx_mem = Memory(shape=32, depth=RX_SLOTS * 256, init=[])
        rwp = rx_mem.write_port()
        rrp = rx_mem.read_port()
        wr_ptr, rd_ptr = Signal(), Signal()
        count = Signal(range(RX_SLOTS + 1))
        meta_len = Array(Signal(8, name=f"rx_len{i}") for i in range(RX_SLOTS))
        meta_end = Array(Signal(name=f"rx_end{i}") for i in range(RX_SLOTS))
        accept, drained = Signal(), Signal()
        m.d.sync += count.eq(count + accept - drained)

        kind = r_type[:3]
        rel = Signal(8)                                       # SEQ relative to the expected one
        m.d.comb += rel.eq(r_seq - expected)
        frame_ok = Signal()
        m.d.comb += frame_ok.eq((fcrc_n == 0) if self.check_crc else 1)

        with m.FSM(name="rx"):
            with m.State("HUNT"):
                with m.If(got & (b == SYNC)):
                    m.d.sync += [hcrc.eq(CRC_INIT), fcrc.eq(CRC_INIT), cnt.eq(0)]
                    m.next = "HEADER"
            with m.State("HEADER"):
                with m.If(got):
                    m.d.sync += [hcrc.eq(hcrc_n), fcrc.eq(fcrc_n), cnt.eq(cnt + 1)]
                    with m.Switch(cnt):
                        with m.Case(0):
                            m.d.sync += r_type.eq(b)
                        with m.Case(1):
                            m.d.sync += r_seq.eq(b)
                        with m.Case(2):
                            m.d.sync += r_len.eq(b)
                        with m.Case(4):
                            m.next = "HUNT"
                            with m.If(hcrc_n != 0):
                                bump(self.header_errors)
                            with m.Elif(r_type[3:7] != 0):
                                m.d.sync += self.error.eq(1)
                            with m.Elif(kind == DATA):
                                with m.If(r_len == 0):
                                    m.d.sync += self.error.eq(1)
                                with m.Else():
                                    m.d.sync += [widx.eq(0), bidx.eq(0), discard.eq(count == RX_SLOTS)]
                                    m.next = "PAYLOAD"
                            with m.Elif((r_len != 0) | r_type[7]):
                                m.d.sync += self.error.eq(1)
                            with m.Elif((kind == ACK) | (kind == NAK)):
                                m.d.sync += [ack_evt.eq(1), ack_nak.eq(kind == NAK), ack_seq.eq(r_seq)]
                            with m.Elif(kind == RESET):
                                m.d.sync += [reset_evt.eq(1), expected.eq(r_seq), nak_sent.eq(0)]
                            with m.Elif(kind != RESET_ACK):           # RESET_ACK: we never send RESET
                                m.d.sync += self.error.eq(1)
                with m.Elif(idle_expired):
                    m.next = "HUNT"
            with m.State("PAYLOAD"):
                with m.If(got):
                    m.d.sync += [fcrc.eq(fcrc_n), bidx.eq(bidx + 1)]
                    with m.If(bidx == 3):
                        m.d.comb += [rwp.en.eq(~discard), rwp.addr.eq(Cat(widx, wr_ptr)),
                                     rwp.data.eq(Cat(wshift, b))]
                        m.d.sync += widx.eq(widx + 1)
                        with m.If(widx + 1 == r_len):
                            m.d.sync += cnt.eq(0)
                            m.next = "FCRC"
                    with m.Else():
                        m.d.sync += wshift.eq(Cat(wshift[8:], b))
                with m.Elif(idle_expired):
                    m.next = "HUNT"
            with m.State("FCRC"):
                with m.If(got):
                    m.d.sync += [fcrc.eq(fcrc_n), cnt.eq(cnt + 1)]
                    with m.If(cnt == 1):
                        m.next = "HUNT"
                        with m.If(~frame_ok):
                            bump(self.crc_errors)
                            with m.If((rel == 0) & ~nak_sent):
                                m.d.sync += [req_valid.eq(1), req_nak.eq(1), req_seq.eq(expected),
                                             nak_sent.eq(1)]
                        with m.Elif(rel == 0):
                            with m.If(discard):
                                bump(self.overflows)
                            with m.Else():
                                m.d.comb += accept.eq(1)
                                m.d.sync += [req_valid.eq(1), req_nak.eq(0), req_seq.eq(expected + 1),
                                             wr_ptr.eq(wr_ptr + 1), meta_len[wr_ptr].eq(r_len),
                                             meta_end[wr_ptr].eq(r_type[7]), expected.eq(expected + 1),
                                             nak_sent.eq(0)]
                                bump(self.rx_frames)
                        with m.Elif(rel < 128):                   # ahead: an earlier frame was lost
                            m.d.sync += [req_valid.eq(1), req_nak.eq(~nak_sent), req_seq.eq(expected),
                                         nak_sent.eq(1)]
                        with m.Else():                            # behind: a duplicate
                            bump(self.duplicates)
                            m.d.sync += [req_valid.eq(1), req_nak.eq(0), req_seq.eq(expected)]
                with m.Elif(idle_expired):
                    m.next = "HUNT"

        # Drain: a frame at rd_ptr goes to the engine word by word (read latency 1).
        out = self.to_engine
        d_active, d_end, out_last = Signal(), Signal(), Signal()
        d_left = Signal(9)
        d_idx = Signal(8)
        rd_en = Signal()
        m.d.comb += [rd_en.eq(~out.valid | out.ready), rrp.en.eq(rd_en), rrp.addr.eq(Cat(d_idx, rd_ptr)),
                     out.payload.data.eq(rrp.data), out.payload.last.eq(out_last)]
        with m.If(rd_en):
            with m.If(d_active):
                m.d.sync += [out.valid.eq(1), out_last.eq(d_end & (d_left == 1)),
                             d_idx.eq(d_idx + 1), d_left.eq(d_left - 1)]
                with m.If(d_left == 1):
                    m.d.comb += drained.eq(1)
                    m.d.sync += [d_active.eq(0), rd_ptr.eq(rd_ptr + 1)]
            with m.Else():
                m.d.sync += out.valid.eq(0)
        with m.If(~d_active & (count != 0)):
            m.d.sync += [d_active.eq(1), d_left.eq(meta_len[rd_ptr]), d_end.eq(meta_end[rd_ptr]), d_idx.eq(0)]

        # ============================================================ transmitter
        W = self.window
        sb = W.bit_length() - 1

        def slot(seq):
            return seq[:sb] if sb else Const(0, 1)

        m.submodules.tx_mem = tx_mem = Memory(shape=32, depth=max(W, 2) * 256, init=[])
        twp = tx_mem.write_port()
        trp = tx_mem.read_port()
        base, send_seq, send_hi, fill_seq = Signal(8), Signal(8), Signal(8), Signal(8)
        t_len_arr = Array(Signal(8, name=f"tx_len{i}") for i in range(W))
        t_end_arr = Array(Signal(name=f"tx_end{i}") for i in range(W))
        fidx = Signal(8)
        cur_seq = Signal(8)
        sending_data = Signal()
        inflight = Signal(8)
        m.d.comb += inflight.eq(fill_seq - base)

        # Fill: words from the engine into the slot of frame fill_seq.
        fe = self.from_engine
        fill_ok = Signal()
        m.d.comb += fill_ok.eq((inflight < W) & ~(sending_data & (slot(fill_seq) == slot(cur_seq))))
        m.d.comb += fe.ready.eq(fill_ok)
        put = Signal()
        m.d.comb += [put.eq(fe.valid & fe.ready), twp.en.eq(put), twp.addr.eq(Cat(fidx, slot(fill_seq))),
                     twp.data.eq(fe.payload.data)]
        with m.If(put):
            with m.If(fe.payload.last | (fidx == self.max_frame_words - 1)):
                m.d.sync += [t_len_arr[slot(fill_seq)].eq(fidx + 1), t_end_arr[slot(fill_seq)].eq(fe.payload.last),
                             fill_seq.eq(fill_seq + 1), fidx.eq(0)]
            with m.Else():
                m.d.sync += fidx.eq(fidx + 1)

        # Pending control frames: one ACK/NAK (the latest; an ACK does not replace a NAK of the same
        # sequence number) and one RESET_ACK.
        cp_valid, cp_nak, cp_seq = Signal(), Signal(), Signal(8)
        ra_pending, ra_seq = Signal(), Signal(8)

        # Retransmission timer: runs while a sent frame is unacknowledged.
        # The restart request is registered (timing): the timer restarts one clock late, and
        # cannot fire while a restart is pending.
        m.submodules.tx_timer = tx_timer = _Timer(self.timeout_cycles)
        t_reset = Signal()
        running = Signal()
        t_fire = Signal()
        t_clear = Signal()
        m.d.comb += [running.eq(base != send_hi),
                     t_fire.eq(running & tx_timer.expired & ~t_clear & ~ack_evt & ~reset_evt),
                     tx_timer.clear.eq(t_clear)]
        m.d.sync += t_clear.eq(t_reset | ~running | t_fire)

        # Byte sequencer.
        o = self.tx_bytes
        load = Signal()
        have = Signal()
        byte = Signal(8)
        m.d.comb += load.eq(~o.valid | o.ready)
        with m.If(load):
            m.d.sync += o.valid.eq(have)
            with m.If(have):
                m.d.sync += o.payload.eq(byte)
        step = Signal()
        m.d.comb += step.eq(load & have)

        t_type, t_seq, t_len = Signal(8), Signal(8), Signal(8)
        t_slot = Signal(max(sb, 1))
        thcrc, tfcrc = Signal(16), Signal(16)
        thcrc_n, tfcrc_n = Signal(16), Signal(16)
        m.d.comb += [thcrc_n.eq(_crc_step(m, "tx_hcrc", thcrc, byte)), tfcrc_n.eq(_crc_step(m, "tx_fcrc", tfcrc, byte))]
        tpos = Signal(3)
        t_widx, t_bidx, t_wbuf = Signal(9), Signal(2), Signal(24)
        t_rdata = Signal(32)                  # the read port's word, registered once more (timing)
        m.d.comb += [trp.en.eq(1), trp.addr.eq(Cat(t_widx[:8], t_slot))]
        m.d.sync += t_rdata.eq(trp.data)

        start_data = Signal()
        with m.FSM(name="tx"):
            with m.State("IDLE"):
                begin = [thcrc.eq(CRC_INIT), tfcrc.eq(CRC_INIT), tpos.eq(0), t_widx.eq(0)]
                with m.If(ra_pending):
                    m.d.sync += begin + [t_type.eq(RESET_ACK), t_seq.eq(ra_seq), t_len.eq(0), ra_pending.eq(0)]
                    m.next = "HEADER"
                with m.Elif(cp_valid):
                    m.d.sync += begin + [t_type.eq(Mux(cp_nak, NAK, ACK)), t_seq.eq(cp_seq), t_len.eq(0),
                                         cp_valid.eq(0)]
                    m.next = "HEADER"
                with m.Elif((send_seq != fill_seq) & ~ack_evt & ~reset_evt & ~t_fire):
                    m.d.comb += start_data.eq(1)
                    s = slot(send_seq)
                    m.d.sync += begin + [t_type.eq(DATA | Mux(t_end_arr[s], FLAG_END, 0)), t_seq.eq(send_seq),
                                         t_len.eq(t_len_arr[s]), t_slot.eq(s), cur_seq.eq(send_seq),
                                         sending_data.eq(1), send_seq.eq(send_seq + 1)]
                    with m.If(send_seq == send_hi):
                        m.d.sync += send_hi.eq(send_hi + 1)
                        bump(self.tx_frames)
                    with m.Else():
                        bump(self.retransmissions)
                    with m.If(send_seq == base):
                        m.d.comb += t_reset.eq(1)
                    m.next = "HEADER"
            with m.State("HEADER"):
                m.d.comb += have.eq(1)
                with m.Switch(tpos):
                    with m.Case(0):
                        m.d.comb += byte.eq(SYNC)
                    with m.Case(1):
                        m.d.comb += byte.eq(t_type)
                    with m.Case(2):
                        m.d.comb += byte.eq(t_seq)
                    with m.Case(3):
                        m.d.comb += byte.eq(t_len)
                    with m.Case(4):
                        m.d.comb += byte.eq(thcrc[8:])
                    with m.Default():
                        m.d.comb += byte.eq(thcrc[:8])
                with m.If(step):
                    m.d.sync += tpos.eq(tpos + 1)
                    with m.If((tpos >= 1) & (tpos <= 3)):
                        m.d.sync += thcrc.eq(thcrc_n)
                    with m.If(tpos >= 1):
                        m.d.sync += tfcrc.eq(tfcrc_n)
                    with m.If(tpos == 5):
                        m.d.sync += t_bidx.eq(0)
                        with m.If(t_len == 0):
                            m.next = "IDLE"
                        with m.Else():
                            m.next = "PAYLOAD"
            with m.State("PAYLOAD"):
                # Word k's address is set at its predecessor's byte 0, at least four clocks before
                # its own byte 0 (the header is six bytes): t_rdata (two clocks) is ready in time.
                m.d.comb += [have.eq(1), byte.eq(Mux(t_bidx == 0, t_rdata[:8], t_wbuf[:8]))]
                with m.If(step):
                    m.d.sync += [tfcrc.eq(tfcrc_n), t_bidx.eq(t_bidx + 1)]
                    with m.If(t_bidx == 0):
                        m.d.sync += [t_wbuf.eq(t_rdata[8:]), t_widx.eq(t_widx + 1)]
                    with m.Else():
                        m.d.sync += t_wbuf.eq(t_wbuf >> 8)
                    with m.If((t_bidx == 3) & (t_widx == t_len)):
                        m.d.sync += tpos.eq(0)
                        m.next = "FCRC"
            with m.State("FCRC"):
                m.d.comb += [have.eq(1), byte.eq(Mux(tpos == 0, tfcrc[8:], tfcrc[:8]))]
                with m.If(step):
                    m.d.sync += tpos.eq(tpos + 1)
                    with m.If(tpos == 1):
                        m.d.sync += sending_data.eq(0)
                        m.next = "IDLE"

        # New control requests (after the IDLE block, so a request in the clock a pending one is
        # taken is kept).
        with m.If(req_valid & ~(cp_valid & cp_nak & ~req_nak & (cp_seq == req_seq))):
            m.d.sync += [cp_valid.eq(1), cp_nak.eq(req_nak), cp_seq.eq(req_seq)]

        # Timer and go-back on timeout.
        with m.If(t_fire):
            m.d.sync += send_seq.eq(base)
            bump(self.timeouts)

        # Acknowledgements (after the timer: an ACK in the clock the timer fires wins; t_fire
        # excludes ack_evt anyway).
        d, h, sd = Signal(8), Signal(8), Signal(8)
        m.d.comb += [d.eq(ack_seq - base), h.eq(send_hi - base), sd.eq(send_seq - base)]
        with m.If(ack_evt):
            with m.If((d != 0) & (d <= h)):
                m.d.sync += base.eq(ack_seq)
                m.d.comb += t_reset.eq(1)
                with m.If(sd < d):
                    m.d.sync += send_seq.eq(ack_seq)
            with m.Elif((d != 0) & (d < 128)):
                m.d.sync += self.error.eq(1)                  # acknowledges a frame never sent
            with m.If(ack_nak & (d < h)):
                m.d.sync += send_seq.eq(ack_seq)              # go back
                m.d.comb += t_reset.eq(1)

        # RESET from the peer: drop the unacknowledged frames, answer with our next sequence number.
        with m.If(reset_evt):
            m.d.sync += [base.eq(fill_seq), send_seq.eq(fill_seq), send_hi.eq(fill_seq),
                         ra_pending.eq(1), ra_seq.eq(fill_seq), cp_valid.eq(0)]
        return m
