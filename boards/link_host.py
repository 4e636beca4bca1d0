"""Host side of the reliable link (:mod:`boards.link`) in pure Python.

Three layers:

* :class:`LinkEndpoint` — the protocol without I/O ("sans-IO"): :meth:`~LinkEndpoint.send` queues a
  packet, :meth:`~LinkEndpoint.feed` takes received bytes, :meth:`~LinkEndpoint.poll` returns the
  bytes to transmit now (acknowledgements, new frames, retransmissions after a timeout or NAK) and
  completed packets collect in :attr:`~LinkEndpoint.packets`. Time comes from the ``clock`` callable
  (seconds from :func:`time.monotonic` by default; the simulator tests pass a clock-cycle counter),
  so the same object runs against real hardware and inside an Amaranth testbench.
* :class:`LinkHost` — an endpoint on a byte transport: any object with ``write(data: bytes)`` and
  ``read(n, timeout) -> bytes`` (up to ``n`` bytes, fewer or none when ``timeout`` seconds pass).
  Blocking :meth:`~LinkHost.connect`, :meth:`~LinkHost.send`, :meth:`~LinkHost.receive`,
  :meth:`~LinkHost.exchange`.
* :class:`SerialTransport` — a :class:`LinkHost` on a serial port (pyserial, imported when a port is
  opened) with the ``async exchange(words) -> words`` API of :class:`hw.engine.driver.AmaranthTransport`,
  so :class:`hw.engine.driver.EngineDriver` runs over it unchanged::

      transport = SerialTransport("/dev/ttyUSB0")          # 3 Mbaud, opens the link (RESET)
      driver = EngineDriver(program, transport)
      await driver.load_program()
      print(transport.stats["throughput_bytes_per_s"])
"""

from __future__ import annotations

import asyncio
import numbers
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from .link import (ACK, DATA, MAX_FRAME_WORDS, NAK, RESET, RESET_ACK, SEQ_MODULO, BadFrame, Frame, FrameParser,
                   encode_frame, frame_bytes, packet_frames)

__all__ = ["LinkEndpoint", "LinkStats", "LinkHost", "LinkTimeout", "SerialTransport", "SerialPortNotFound",
           "default_timeout_s"]

#: Largest window the protocol allows (sequence numbers are modulo 256; "ahead" and "behind" are
#: told apart by the half of the sequence space a number falls in).
MAX_PROTOCOL_WINDOW = 127


def _check_int(name, value, low, high=None):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}={value!r}: must be an integer")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name}={value!r}: must be an integer in {low}..{high}" if high is not None
                         else f"{name}={value!r}: must be an integer >= {low}")
    return int(value)


def _check_positive(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}={value!r}: must be a positive number")
    if not value > 0:
        raise ValueError(f"{name}={value!r}: must be a positive number")
    return value


@dataclass
class LinkStats:
    packets_tx: int = 0
    packets_rx: int = 0
    frames_tx: int = 0              # DATA frames sent the first time
    retransmissions: int = 0        # DATA frames sent again
    timeouts: int = 0
    naks_rx: int = 0
    payload_bytes_tx: int = 0       # payload of DATA frames sent the first time
    payload_bytes_rx: int = 0       # payload of DATA frames accepted
    line_bytes_tx: int = 0          # everything written, retransmissions and control frames included
    line_bytes_rx: int = 0
    duplicates: int = 0
    crc_errors: int = 0
    header_errors: int = 0
    violations: int = 0             # headers with a good CRC that break the format rules
    bad_acks: int = 0               # ACK/NAK of a frame never sent


class LinkEndpoint:
    """One end of the reliable link, without I/O (see the module docstring).

    ``timeout``: retransmission timeout in units of ``clock()``. It must cover the frames this side
    may have queued ahead of a retransmission (``window`` frames, all handed to the transport at
    once), one frame of the peer that its acknowledgement may wait behind, and the turnaround.
    ``check_crc=False`` is for tests only (see :class:`boards.link.FrameParser`).
    """

    def __init__(self, *, timeout: float, window: int = 4, max_frame_words: int = MAX_FRAME_WORDS,
                 clock: Callable[[], float] = time.monotonic, check_crc: bool = True):
        self.timeout = _check_positive("timeout", timeout)
        self.window = _check_int("window", window, 1, MAX_PROTOCOL_WINDOW)
        self.max_frame_words = _check_int("max_frame_words", max_frame_words, 1, MAX_FRAME_WORDS)
        if not callable(clock):
            raise TypeError(f"clock={clock!r}: must be a callable returning the time")
        self.clock = clock
        self.parser = FrameParser(check_crc=check_crc)
        self.stats = LinkStats()
        self.packets: deque[list[int]] = deque()
        # transmitter
        self._queue: deque[tuple[tuple[int, ...], bool]] = deque()   # frames not yet numbered
        self._frames: dict[int, bytes] = {}                         # seq -> frame, base <= seq < fill
        self.base = self.send_seq = self.send_hi = self.fill_seq = 0
        self._timer = clock()
        self._ctrl: tuple[int, int] | None = None                   # pending (ACK or NAK, seq)
        self._reset_ack: int | None = None                          # pending RESET_ACK seq
        # connection
        self.connecting = False
        self._reset_sent: float | None = None
        # receiver
        self.expected = 0
        self._nak_sent = False
        self._partial: list[int] = []

    # ---- application side ------------------------------------------------------------------------
    def send(self, words: Sequence[int]) -> None:
        """Queue one packet (1 or more 32-bit words)."""
        frames = packet_frames(words, self.max_frame_words)
        for i, w in enumerate(words):
            if isinstance(w, bool) or not isinstance(w, numbers.Integral) or not 0 <= w < 1 << 32:
                raise ValueError(f"words[{i}]={w!r}: must be an integer in 0..2**32-1")
        self._queue.extend(frames)
        self.stats.packets_tx += 1

    def connect(self) -> None:
        """Start the RESET handshake: frames not yet acknowledged are dropped, queued packets stay
        and go out once the peer's RESET_ACK arrives (:attr:`connecting` turns False)."""
        self._frames.clear()
        self.base = self.send_seq = self.send_hi = self.fill_seq
        self.connecting = True
        self._reset_sent = None
        self._ctrl = None

    @property
    def idle(self) -> bool:
        """Nothing queued, nothing unacknowledged, no control frame pending."""
        return (not self._queue and self.base == self.fill_seq and self._ctrl is None
                and self._reset_ack is None and not self.connecting)

    # ---- byte side -------------------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Process received bytes."""
        st = self.stats
        st.line_bytes_rx += len(data)
        for ev in self.parser.feed(data):
            if isinstance(ev, BadFrame):
                if (ev.seq - self.expected) % SEQ_MODULO == 0 and not self._nak_sent and not self.connecting:
                    self._request(NAK, self.expected)
                    self._nak_sent = True
            elif ev.kind == DATA:
                self._on_data(ev)
            elif ev.kind in (ACK, NAK):
                self._on_ack(ev.seq, ev.kind == NAK)
            elif ev.kind == RESET:
                self.expected, self._nak_sent, self._partial = ev.seq, False, []
                self._frames.clear()
                self.base = self.send_seq = self.send_hi = self.fill_seq
                self._reset_ack, self._ctrl = self.fill_seq, None
            elif ev.kind == RESET_ACK and self.connecting:
                self.expected, self._nak_sent, self._partial = ev.seq, False, []
                self.connecting = False
                self._timer = self.clock()
        p = self.parser.stats
        st.crc_errors, st.header_errors, st.violations = p.crc_errors, p.header_errors, p.violations

    def poll(self) -> bytes:
        """The bytes to transmit now (possibly none)."""
        now = self.clock()
        out = bytearray()
        if self.connecting:
            if self._reset_sent is None or now - self._reset_sent >= self.timeout:
                if self._reset_sent is not None:
                    self.stats.timeouts += 1
                out += encode_frame(RESET, self.fill_seq)
                self._reset_sent = now
        elif self.base != self.send_hi and now - self._timer >= self.timeout:
            self.send_seq = self.base
            self._timer = now
            self.stats.timeouts += 1
        if self._reset_ack is not None:
            out += encode_frame(RESET_ACK, self._reset_ack)
            self._reset_ack = None
        if self._ctrl is not None:
            out += encode_frame(*self._ctrl)
            self._ctrl = None
        if not self.connecting:
            while self._queue and (self.fill_seq - self.base) % SEQ_MODULO < self.window:
                words, end = self._queue.popleft()
                self._frames[self.fill_seq] = encode_frame(DATA, self.fill_seq, words, end)
                self.fill_seq = (self.fill_seq + 1) % SEQ_MODULO
            while self.send_seq != self.fill_seq:
                frame = self._frames[self.send_seq]
                out += frame
                if self.send_seq == self.send_hi:
                    self.send_hi = (self.send_hi + 1) % SEQ_MODULO
                    self.stats.frames_tx += 1
                    self.stats.payload_bytes_tx += frame[3] * 4
                else:
                    self.stats.retransmissions += 1
                if self.send_seq == self.base:
                    self._timer = now
                self.send_seq = (self.send_seq + 1) % SEQ_MODULO
        self.stats.line_bytes_tx += len(out)
        return bytes(out)

    # ---- protocol --------------------------------------------------------------------------------
    def _request(self, kind, seq):
        if kind == ACK and self._ctrl == (NAK, seq):
            return                                              # keep the NAK: it says more
        self._ctrl = (kind, seq)

    def _on_data(self, frame: Frame):
        if self.connecting:
            return                                              # the peer's old session
        rel = (frame.seq - self.expected) % SEQ_MODULO
        if rel == 0:
            self._partial.extend(frame.words)
            self.stats.payload_bytes_rx += 4 * len(frame.words)
            if frame.end:
                self.packets.append(self._partial)
                self._partial = []
                self.stats.packets_rx += 1
            self.expected = (self.expected + 1) % SEQ_MODULO
            self._nak_sent = False
            self._request(ACK, self.expected)
        elif rel < SEQ_MODULO // 2:                             # ahead: a frame before it was lost
            self._request(ACK if self._nak_sent else NAK, self.expected)
            self._nak_sent = True
        else:                                                   # behind: a duplicate
            self.stats.duplicates += 1
            self._request(ACK, self.expected)

    def _on_ack(self, s, nak):
        d = (s - self.base) % SEQ_MODULO
        h = (self.send_hi - self.base) % SEQ_MODULO
        sd = (self.send_seq - self.base) % SEQ_MODULO
        if nak:
            self.stats.naks_rx += 1
        if d != 0 and d <= h:
            for k in range(d):
                self._frames.pop((self.base + k) % SEQ_MODULO, None)
            self.base = s
            self._timer = self.clock()
            if sd < d:
                self.send_seq = s
        elif d != 0 and d < SEQ_MODULO // 2:
            self.stats.bad_acks += 1                            # acknowledges a frame never sent
        if nak and d < h:
            self.send_seq = s                                   # go back
            self._timer = self.clock()


def default_timeout_s(baud: int, window: int = 4, max_frame_words: int = MAX_FRAME_WORDS,
                      turnaround_s: float = 0.05) -> float:
    """Host retransmission timeout: ``window`` frames of ours and one of the peer's at ``baud``
    (8N1, 10 bits a byte), plus ``turnaround_s`` (USB serial adapters buffer for milliseconds)."""
    return (window + 2) * frame_bytes(max_frame_words) * 10 / baud + turnaround_s


class LinkTimeout(TimeoutError):
    """No answer from the peer within the time allowed (the message says what was waited for)."""


class LinkHost:
    """A :class:`LinkEndpoint` on a byte transport (``write(bytes)``, ``read(n, timeout) -> bytes``)."""

    def __init__(self, transport, *, timeout: float, window: int = 4, max_frame_words: int = MAX_FRAME_WORDS,
                 poll_interval: float = 0.002, clock: Callable[[], float] = time.monotonic):
        for name in ("write", "read"):
            if not callable(getattr(transport, name, None)):
                raise TypeError(f"transport={transport!r}: has no {name}() method")
        self.transport = transport
        self.poll_interval = _check_positive("poll_interval", poll_interval)
        self.endpoint = LinkEndpoint(timeout=timeout, window=window, max_frame_words=max_frame_words, clock=clock)
        self.clock = clock

    def _pump(self, wait: float):
        ep = self.endpoint
        out = ep.poll()
        if out:
            self.transport.write(out)
        data = self.transport.read(4096, wait)
        if data:
            ep.feed(data)
            out = ep.poll()                                     # acknowledge at once
            if out:
                self.transport.write(out)

    def connect(self, timeout: float = 2.0) -> None:
        ep = self.endpoint
        ep.connect()
        deadline = self.clock() + timeout
        while ep.connecting:
            if self.clock() > deadline:
                raise LinkTimeout(f"no RESET_ACK within {timeout} s: is the board configured with the "
                                  f"reliable link, and at the same baud rate?")
            self._pump(self.poll_interval)

    def send(self, words: Sequence[int]) -> None:
        self.endpoint.send(words)
        self._pump(0)

    def receive(self, timeout: float = 10.0) -> list[int]:
        ep = self.endpoint
        deadline = self.clock() + timeout
        while not ep.packets:
            if self.clock() > deadline:
                raise LinkTimeout(f"no packet within {timeout} s ({ep.stats.retransmissions} retransmissions, "
                                  f"{ep.stats.timeouts} timeouts so far)")
            self._pump(self.poll_interval)
        return ep.packets.popleft()

    def exchange(self, words: Sequence[int], timeout: float = 10.0) -> list[int]:
        self.send(words)
        return self.receive(timeout)


class SerialPortNotFound(FileNotFoundError):
    """The serial port does not exist (the message lists the ports that do)."""


def _import_serial():
    try:
        import serial
        import serial.tools.list_ports as list_ports
    except ImportError as e:
        raise ModuleNotFoundError(
            "pyserial is not installed in this Python environment, so no serial port can be opened "
            "(install it with `pip install pyserial`)") from e
    return serial, list_ports


def _port_list(list_ports) -> str:
    ports = sorted(list_ports.comports(), key=lambda p: p.device)
    if not ports:
        return "no serial ports found"
    return "serial ports found: " + ", ".join(
        f"{p.device} ({p.description})" if getattr(p, "description", None) not in (None, "", "n/a") else p.device
        for p in ports)


class _PySerialBytes:
    """pyserial as a ``write`` / ``read(n, timeout)`` byte transport."""

    def __init__(self, ser):
        self.ser = ser

    def write(self, data: bytes):
        self.ser.write(data)

    def read(self, n: int, timeout: float) -> bytes:
        self.ser.timeout = timeout
        first = self.ser.read(1)
        if not first:
            return b""
        waiting = min(self.ser.in_waiting, n - 1)
        return first + (self.ser.read(waiting) if waiting else b"")


class SerialTransport:
    """The engine's packets over the reliable link on a serial port.

    ``exchange(words)`` (async) sends one request packet and returns the engine's response, like
    :class:`hw.engine.driver.AmaranthTransport`. ``stats`` has the link counters plus
    ``seconds`` (time spent in exchanges) and ``throughput_bytes_per_s`` (payload bytes both ways /
    ``seconds``). Opening runs the RESET handshake (``connect=False`` skips it).

    Raises :class:`ModuleNotFoundError` if pyserial is missing and :class:`SerialPortNotFound`
    (listing the ports that exist) if ``port`` does not exist.
    """

    def __init__(self, port: str, baud: int = 3_000_000, *, window: int = 4, timeout: float | None = None,
                 exchange_timeout: float = 30.0, connect: bool = True, connect_timeout: float = 2.0):
        _check_int("baud", baud, 1)
        _check_int("window", window, 1, MAX_PROTOCOL_WINDOW)
        self.port, self.baud = port, int(baud)
        self.exchange_timeout = _check_positive("exchange_timeout", exchange_timeout)
        serial, list_ports = _import_serial()
        known = {p.device for p in list_ports.comports()}
        if port not in known and not os.path.exists(port):
            raise SerialPortNotFound(f"serial port {port!r} does not exist; {_port_list(list_ports)}")
        try:
            self._serial = serial.Serial(port, self.baud, timeout=0)
        except (OSError, getattr(serial, "SerialException", OSError)) as e:
            raise SerialPortNotFound(f"cannot open serial port {port!r} ({e}); {_port_list(list_ports)}") from e
        low_latency = getattr(self._serial, "set_low_latency_mode", None)
        if low_latency is not None:                     # Linux: ask the USB serial driver not to sit
            try:                                        # on received bytes (FTDI: 16 ms by default)
                low_latency(True)
            except (OSError, ValueError, NotImplementedError):
                pass
        self.link = LinkHost(_PySerialBytes(self._serial),
                             timeout=timeout if timeout is not None else default_timeout_s(self.baud, window),
                             window=window)
        self._seconds = 0.0
        if connect:
            self.link.connect(connect_timeout)

    def exchange_blocking(self, words: list[int]) -> list[int]:
        t0 = time.monotonic()
        try:
            return self.link.exchange(words, self.exchange_timeout)
        finally:
            self._seconds += time.monotonic() - t0

    async def exchange(self, words: list[int]) -> list[int]:
        return await asyncio.to_thread(self.exchange_blocking, list(words))

    @property
    def stats(self) -> dict:
        st = asdict(self.link.endpoint.stats)
        payload = st["payload_bytes_tx"] + st["payload_bytes_rx"]
        st["seconds"] = self._seconds
        st["throughput_bytes_per_s"] = payload / self._seconds if self._seconds else 0.0
        return st

    def close(self):
        self._serial.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
