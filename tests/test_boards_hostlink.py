"""boards.hostlink: the UART host link (UART + reliable link layer) against a bit-level Python peer
on its pins (8 clocks per bit).

The peer (:class:`UartLinkPeer`) is the host: a :class:`boards.link_host.LinkEndpoint` clocked by
the simulation's cycle count, a bit-level UART transmitter on the link's ``rx`` pin and a receiver
on its ``tx`` pin, with seeded faults injected into both bit streams (flipped bits, dropped bytes,
bad stop bits). It is shared with ``tests/test_boards_top.py``.
"""

import random
from collections import Counter, deque

import pytest
from amaranth.sim import Simulator

from boards.link import ACK, DATA, NAK, SYNC, Frame, FrameParser, crc, encode_frame, frame_bytes, suggested_timeout_cycles
from boards.link_host import LinkEndpoint
from boards.hostlink import UARTHostLink
from tests.support import seed_for

CLK, BAUD = 8_000_000, 1_000_000
R = CLK // BAUD                                               # clocks per bit


def uart_wave(data, rng, stop_bits=None, gap_p=0.3):
    """Line level per clock for ``data`` sent 8N1 at exactly R clocks per bit, with random gaps."""
    wave = [1] * 10
    for i, byte in enumerate(data):
        if rng.random() < gap_p:
            wave += [1] * rng.randrange(1, 3 * R)
        stop = 1 if stop_bits is None else stop_bits[i]
        for bit in [0] + [(byte >> k) & 1 for k in range(8)] + [stop]:
            wave += [bit] * R
        if not stop:
            wave += [1] * R
    return wave + [1] * (2 * R)


class LinePeer:
    """Decodes the link's ``tx`` pin clock by clock: a falling edge starts a frame, bits are read at
    their middles; a 0 stop bit is recorded as a framing fault."""

    def __init__(self):
        self.bytes, self.faults = bytearray(), []
        self._prev, self._start, self.cycle = 1, None, 0

    def sample(self, level):
        c = self.cycle
        if self._start is None:
            if self._prev and not level:
                self._start, self._bits = c, []
        else:
            k, rem = divmod(c - self._start, R)
            if rem == R // 2:
                self._bits.append(level)
                if k == 9:
                    if self._bits[0] != 0 or self._bits[9] != 1:
                        self.faults.append(c)
                    self.bytes.append(sum(b << i for i, b in enumerate(self._bits[1:9])))
                    self._start = None
        self._prev = level
        self.cycle += 1


class UartLinkPeer:
    """The host end of the reliable link on the UART pins (see the module docstring).

    Call :meth:`clock` once per clock with the ``tx`` level sampled at that clock's edge, and drive
    the board's ``rx`` with :attr:`level` before the next one. ``tx_faults`` (host → board, applied to
    the bit stream the peer sends) and ``rx_faults`` (board → host, applied to the bits it samples)
    are per-byte probabilities: ``flip`` (one data bit inverted), ``drop`` (the byte is lost:
    not sent / not seen), ``stop`` (host → board only: a 0 stop bit, which the board's UART drops
    as a frame error). ``timeout`` is the endpoint's retransmission timeout in clocks."""

    def __init__(self, rng, *, timeout, window=4, max_frame_words=255, gap_p=0.0, tx_faults=None, rx_faults=None):
        self.rng, self.cycle = rng, 0
        self.endpoint = LinkEndpoint(timeout=timeout, window=window, max_frame_words=max_frame_words,
                                     clock=lambda: self.cycle)
        self.line = LinePeer()
        self.level = 1
        self.gap_p = gap_p
        self.tx_faults, self.rx_faults = dict(tx_faults or {}), dict(rx_faults or {})
        self.faults = Counter()
        self._bytes, self._wave = deque(), deque()

    @property
    def packets(self) -> deque:
        return self.endpoint.packets

    @property
    def stats(self):
        return self.endpoint.stats

    def _fault(self, faults):
        r = self.rng.random()
        for kind, p in faults.items():
            if r < p:
                return kind
            r -= p
        return None

    def _byte_wave(self, byte):
        fault = self._fault(self.tx_faults)
        if fault is not None:
            self.faults[f"tx_{fault}"] += 1
        if fault == "drop":
            return []
        if fault == "flip":
            byte ^= 1 << self.rng.randrange(8)
        stop = 0 if fault == "stop" else 1
        wave = [1] * self.rng.randrange(1, 3 * R) if self.gap_p and self.rng.random() < self.gap_p else []
        for bit in [0] + [(byte >> k) & 1 for k in range(8)] + [stop]:
            wave += [bit] * R
        return wave + ([1] * R if not stop else [])

    def clock(self, tx):
        self.cycle += 1
        line, n = self.line, len(self.line.bytes)
        line.sample(tx)
        if len(line.bytes) > n:
            byte, fault = line.bytes[-1], self._fault(self.rx_faults)
            if fault is not None:
                self.faults[f"rx_{fault}"] += 1
            if fault == "flip":
                byte ^= 1 << self.rng.randrange(8)
            if fault != "drop":
                self.endpoint.feed(bytes([byte]))
        if not self._wave:
            self._bytes.extend(self.endpoint.poll())
            while not self._wave and self._bytes:
                self._wave.extend(self._byte_wave(self._bytes.popleft()))
        self.level = self._wave.popleft() if self._wave else 1


def plus_one(packet):
    return [(w + 1) & 0xFFFFFFFF for w in packet]


def make_link(activity_cycles=64, **kw):
    return UARTHostLink(CLK, BAUD, activity_cycles=activity_cycles, **kw)


def run_engine_loopback(dut, peer, requests, rng, *, ready_p=0.5, valid_p=0.7, max_cycles=400_000):
    """The peer connects (RESET) and sends ``requests``; a Python engine on the word side answers each
    packet with every word + 1 (random stalls both ways). One testbench drives everything. Returns
    the words seen on ``to_engine``, the replies, the status outputs seen (OR) and the link's counters."""
    res = {"engine": [], "replies": [], "seen": Counter(), "counters": {}, "cycles": 0}
    link = dut.link
    counters = [getattr(link, name) for name in link.COUNTERS]

    async def bench(ctx):
        te, fe = dut.to_engine, dut.from_engine
        last = {}

        def put(sig, value):
            if last.get(id(sig)) != value:
                last[id(sig)] = value
                ctx.set(sig, value)

        peer.endpoint.connect()
        sent = False
        engine_in, engine_out, fe_valid = [], deque(), False
        while len(res["replies"]) < len(requests) and res["cycles"] < max_cycles:
            if not sent and not peer.endpoint.connecting:
                for p in requests:
                    peer.endpoint.send(p)
                sent = True
            put(dut.rx, peer.level)
            put(te.ready, rng.random() < ready_p)
            if not fe_valid and engine_out and rng.random() < valid_p:
                w, l = engine_out[0]
                put(fe.payload, {"data": w, "last": l})
                put(fe.valid, 1)
                fe_valid = True
            _, _, tx, te_valid, te_ready, te_p, fe_ready, err, rxa, txa, retry = await ctx.tick().sample(
                dut.tx, te.valid, te.ready, te.payload, fe.ready, dut.error, dut.rx_active, dut.tx_active, dut.retry)
            res["cycles"] += 1
            peer.clock(tx)
            res["seen"].update(error=err, rx_active=rxa, tx_active=txa, retry=retry)
            if te_valid and te_ready:
                res["engine"].append((te_p.data, bool(te_p.last)))
                engine_in.append(te_p.data)
                if te_p.last:
                    answer = plus_one(engine_in)
                    engine_out.extend((w, i == len(answer) - 1) for i, w in enumerate(answer))
                    engine_in = []
            if fe_valid and fe_ready:
                engine_out.popleft()
                fe_valid = False
                put(fe.valid, 0)
            while peer.packets:
                res["replies"].append(peer.packets.popleft())
        res["counters"] = {name: ctx.get(c) for name, c in zip(link.COUNTERS, counters)}

    sim = Simulator(dut)
    sim.add_clock(1 / CLK)
    sim.add_testbench(bench)
    sim.run()
    return res


def test_packets_both_ways_through_the_pins():
    rng = random.Random(seed_for("hostlink-both-ways"))
    dut = make_link()
    requests = [[rng.randrange(1 << 32) for _ in range(n)] for n in [1, 3, 7, 2, 9]]
    peer = UartLinkPeer(rng, timeout=suggested_timeout_cycles(CLK, BAUD), gap_p=0.3)
    res = run_engine_loopback(dut, peer, requests, rng)
    assert res["engine"] == [(w, i == len(p) - 1) for p in requests for i, w in enumerate(p)]
    assert res["replies"] == [plus_one(p) for p in requests]
    assert peer.line.faults == []
    seen = {k: bool(v) for k, v in res["seen"].items()}
    assert seen == {"error": False, "rx_active": True, "tx_active": True, "retry": False}
    c = res["counters"]
    assert c["rx_frames"] == c["tx_frames"] == len(requests)
    assert c["retransmissions"] == c["crc_errors"] == c["header_errors"] == c["timeouts"] == 0


def test_line_faults_on_the_pins_are_recovered_bit_exactly():
    """Flipped bits, dropped bytes and bad stop bits in both UART bit streams (about 1 % of the
    bytes each way): every packet still reaches the engine once, in order, bit-exact, and every
    answer comes back; the link's counters show the recovery, ``retry`` flashes, ``error`` stays low."""
    rng = random.Random(seed_for("hostlink-line-faults"))
    host_words, packet_words = 3, 6            # host frames of up to 3 words: packets of 1 or 2 frames
    # The ACK of a frame may wait behind the peer's window of frames and one frame in the other direction.
    timeout = (4 * frame_bytes(host_words) + 2 * frame_bytes(packet_words)) * 10 * R + 500
    dut = make_link(timeout_cycles=timeout, retry_cycles=64)
    requests = [[rng.choice([0, SYNC, 0xFFFFFFFF, rng.randrange(1 << 32)]) for _ in range(rng.randint(1, packet_words))]
                for _ in range(14)]
    peer = UartLinkPeer(rng, timeout=timeout, max_frame_words=host_words,
                        tx_faults={"flip": 0.006, "drop": 0.004, "stop": 0.003},
                        rx_faults={"flip": 0.007, "drop": 0.005})
    res = run_engine_loopback(dut, peer, requests, rng, ready_p=0.8, valid_p=0.9)
    c, st = res["counters"], peer.stats
    print(f"{res['cycles']} cycles, faults {dict(peer.faults)}; board {c}; host {st}")
    assert res["engine"] == [(w, i == len(p) - 1) for p in requests for i, w in enumerate(p)]
    assert res["replies"] == [plus_one(p) for p in requests]
    assert sum(peer.faults.values()) >= 8
    assert c["crc_errors"] + c["header_errors"] > 0                     # damaged host frames were seen ...
    assert c["retransmissions"] > 0                                      # ... and board frames sent again
    assert st.crc_errors + st.header_errors > 0 and st.retransmissions > 0
    assert res["seen"]["retry"] and not res["seen"]["error"]


def run_bad_input(data, stop_bits=None, activity_cycles=64, retry_cycles=64, wave=None):
    """Send raw bytes, or a ``wave`` (to_engine always ready; the link's receiver hunts again after
    500 idle clocks); return per-clock (error, rx_active, retry), the words and the frames the link
    sent back."""
    rng = random.Random(seed_for("hostlink-bad-input"))
    dut = make_link(activity_cycles, retry_cycles=retry_cycles, timeout_cycles=2000)
    wave = (wave or uart_wave(data, rng, stop_bits, gap_p=0.0)) + [1] * (max(activity_cycles, retry_cycles) + 20 * R * 10)
    trace, words, line = [], [], LinePeer()

    async def bench(ctx):
        ctx.set(dut.to_engine.ready, 1)
        for level in wave:
            ctx.set(dut.rx, level)
            _, _, err, rxa, retry, valid, payload, tx = await ctx.tick().sample(
                dut.error, dut.rx_active, dut.retry, dut.to_engine.valid, dut.to_engine.payload, dut.tx)
            trace.append((err, rxa, retry))
            line.sample(tx)
            if valid:
                words.append((payload.data, payload.last))

    sim = Simulator(dut)
    sim.add_clock(1 / CLK)
    sim.add_testbench(bench)
    sim.run()
    return trace, words, FrameParser().feed(bytes(line.bytes))


def test_a_bad_stop_bit_loses_the_frame_but_is_no_error():
    """A UART frame error inside a frame drops that byte: the frame is one byte short, nothing of it
    reaches the engine, and after ``rx_idle_cycles`` the receiver hunts again and takes the frame's
    retransmission. ``retry`` flashes; ``error`` (protocol violations only) stays low."""
    rng = random.Random(seed_for("hostlink-bad-stop"))
    frame = encode_frame(DATA, 0, [0x01020304], end=True)
    first = uart_wave(frame, rng, [1] * 7 + [0] + [1] * (len(frame) - 8), gap_p=0.0)     # byte 7: stop bit 0
    trace, words, replies = run_bad_input(None, wave=first + [1] * 600 + uart_wave(frame, rng, gap_p=0.0))
    assert words == [(0x01020304, 1)]
    assert replies == [Frame(ACK, 1)]
    assert not any(e for e, _, _ in trace)
    retry = [r for _, _, r in trace]
    on = retry.index(1)
    assert 10 + 7 * 10 * R < on < 10 + 8 * 10 * R + 2 * R                 # at the bad stop bit
    assert not any(retry[len(first):])                                     # only then, and off again


def test_error_goes_high_on_a_protocol_violation_and_stays():
    """A header with a good CRC but an unknown kind: ``error`` rises and stays; frames still work."""
    head = bytes([7, 0, 0])
    bad = bytes([SYNC]) + head + crc(head).to_bytes(2, "big")
    trace, words, replies = run_bad_input(bad + encode_frame(DATA, 0, [7], end=True))
    errors = [e for e, _, _ in trace]
    first = errors.index(1)
    assert 6 * 10 * R < first < 7 * 10 * R and all(errors[first:])
    assert words == [(7, 1)] and replies == [Frame(ACK, 1)]


def test_rx_activity_is_stretched_and_falls_back():
    activity = 200
    frame = encode_frame(DATA, 0, [5], end=True)
    trace, _, _ = run_bad_input(frame, activity_cycles=activity)
    active = [a for _, a, _ in trace]
    assert not active[0]
    assert not any(active[-10:])                                  # off again once the link is quiet
    on = [i for i, a in enumerate(active) if a]
    assert on[-1] - on[0] >= (len(frame) - 1) * 10 * R + activity  # from the first byte to the stretch after the last
    assert all(active[on[0]:on[-1] + 1])
    assert not any(r for _, _, r in trace)                         # a clean frame is no retry


def test_parameters_validated():
    for kwargs, exc, text in [
        (dict(activity_cycles=0), ValueError, r"activity_cycles=0"),
        (dict(activity_cycles=1.5), TypeError, r"activity_cycles=1\.5"),
        (dict(retry_cycles=0), ValueError, r"retry_cycles=0"),
        (dict(timeout_cycles=1), ValueError, r"timeout_cycles=1: must be an integer >= 2"),
    ]:
        with pytest.raises(exc, match=text):
            UARTHostLink(CLK, BAUD, **kwargs)
    with pytest.raises(ValueError, match=r"clk_freq=8000000, baud=2000000: clk_freq/baud = 4"):
        UARTHostLink(CLK, 2 * BAUD)
    link = UARTHostLink(50e6, 3_000_000)
    link._MustUse__silence = link.link._MustUse__silence = True   # inspected, not elaborated
    assert (link.clk_freq, link.baud, link.activity_cycles) == (50e6, 3_000_000, 1 << 20)
    assert link.timeout_cycles == suggested_timeout_cycles(50e6, 3_000_000) == 2_028_001
    assert link.retry_cycles == 12_500_000                         # a quarter of a second
    assert ("UARTHostLink(clk_freq=50000000.0, baud=3000000, activity_cycles=1048576, retry_cycles=12500000, "
            "timeout_cycles=2028001)") == repr(link)
