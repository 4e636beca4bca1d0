"""boards.link / boards.link_host: the reliable link layer (CRC, sequence numbers, ACK/NAK, go-back-N).

Byte level only (no UART bits). The gateware tests run :class:`ReliableLink` in the Amaranth
simulator with the Python :class:`LinkEndpoint` as its peer, through a seeded lossy channel model
(byte drops, bit flips, duplicated bytes, inserted garbage, delays) in both directions, and a
Python "engine" on the word side that answers each packet with every word + 1.
"""

import random
import sys
import time
import types
from collections import Counter, deque

import pytest
from amaranth.sim import Simulator

from boards.link import (ACK, DATA, FLAG_END, MAX_FRAME_WORDS, NAK, RESET, SYNC, Frame, FrameParser,
                         ReliableLink, crc, encode_frame, frame_bytes, packet_frames, payload_efficiency)
from boards.link_host import LinkEndpoint, LinkHost, SerialPortNotFound, SerialTransport
from tests.support import seed_for

#: Faults injected by every channel in this module, by kind, and by gateware tests alone (printed by
#: the last test); the lossy tests that ran.
FAULTS = Counter()
GATEWARE_FAULTS = Counter()
RAN = set()


# ------------------------------------------------------------------------------------ channel model

class LossyChannel:
    """One direction of a byte link, one byte per slot, with seeded faults.

    ``push`` applies per-byte faults (drop, bit flip, duplicate, garbage bytes inserted before it,
    a SYNC byte among them now and then); ``pop`` (once per byte slot) returns the next byte or None,
    and with probability ``p_delay`` stalls the line for 1..``delay_max`` slots first.
    ``flip_only_payload`` restricts bit flips to bytes 6.. of DATA frames as the channel sees them
    (for the test that disables the frame CRC)."""

    def __init__(self, rng, name, p_drop=0.0, p_flip=0.0, p_dup=0.0, p_garbage=0.0, p_delay=0.0,
                 delay_max=40, latency=0):
        self.rng, self.name = rng, name
        self.p = dict(drop=p_drop, flip=p_flip, dup=p_dup, garbage=p_garbage)
        self.p_delay, self.delay_max, self.latency = p_delay, delay_max, latency
        self.faults = Counter()
        self.queue = deque()
        self.stall = 0
        self.slot = 0

    def push(self, data: bytes):
        rng, p = self.rng, self.p
        for b in data:
            r = rng.random()
            due = self.slot + self.latency
            if r < p["drop"]:
                self.faults["drop"] += 1
                continue
            r -= p["drop"]
            if r < p["flip"]:
                self.faults["flip"] += 1
                b ^= 1 << rng.randrange(8)
            elif r - p["flip"] < p["dup"]:
                self.faults["dup"] += 1
                self.queue.append((due, b))
            elif r - p["flip"] - p["dup"] < p["garbage"]:
                self.faults["garbage"] += 1
                for _ in range(rng.randint(1, 3)):
                    self.queue.append((due, SYNC if rng.random() < 0.3 else rng.randrange(256)))
            self.queue.append((due, b))

    def pop(self):
        self.slot += 1
        if self.stall:
            self.stall -= 1
            return None
        if not self.queue or self.queue[0][0] > self.slot:
            return None
        if self.p_delay and self.rng.random() < self.p_delay:
            self.faults["delay"] += 1
            self.stall = self.rng.randint(1, self.delay_max)
            return None
        return self.queue.popleft()[1]

    @property
    def empty(self):
        return not self.queue

    def total(self):
        return sum(self.faults.values())


def fault_channel(rng, name, rate, **kw):
    """A channel with ``rate`` faults per byte, spread over the five kinds."""
    return LossyChannel(rng, name, p_drop=rate * 0.25, p_flip=rate * 0.25, p_dup=rate * 0.15,
                        p_garbage=rate * 0.15, p_delay=rate * 0.2, **kw)


def random_packets(rng, count, max_words):
    return [[rng.choice([0, 0xFFFFFFFF, SYNC, SYNC * 0x01010101, rng.randrange(1 << 32)])
             for _ in range(rng.randint(1, max_words))] for _ in range(count)]


def plus_one(packet):
    """The loopback engine's answer: every word + 1 (so an echo of the link itself cannot pass)."""
    return [(w + 1) & 0xFFFFFFFF for w in packet]


def scoreboard(sent, engine_words, replies, respond=plus_one):
    """Discrepancies between what the host sent, what reached the engine and what came back;
    empty when the link delivered everything exactly once, in order, bit-exact."""
    problems = []
    want_engine = [(w, i == len(p) - 1) for p in sent for i, w in enumerate(p)]
    if engine_words != want_engine:
        first = next((i for i, (a, b) in enumerate(zip(engine_words, want_engine)) if a != b),
                     min(len(engine_words), len(want_engine)))
        problems.append(f"engine side: {len(engine_words)} words, {len(want_engine)} expected, first "
                        f"difference at word {first}")
    want_replies = [respond(p) for p in sent]
    if replies != want_replies:
        first = next((i for i, (a, b) in enumerate(zip(replies, want_replies)) if a != b),
                     min(len(replies), len(want_replies)))
        problems.append(f"host side: {len(replies)} packets, {len(want_replies)} expected, first "
                        f"difference at packet {first}")
    return problems


# ------------------------------------------------------------------------------------ CRC and frames

def test_crc_check_values():
    assert crc(b"123456789") == 0x29B1                       # CRC-16/CCITT-FALSE check value
    assert crc(b"") == 0xFFFF
    assert crc(b"A") == 0xB915
    assert crc(bytes(range(256))) == crc(bytes(range(128)) + bytes(range(128, 256)))
    assert crc(bytes(range(128, 256)), crc(bytes(range(128)))) == crc(bytes(range(256)))
    for data in [b"123456789", b"\x00", bytes(range(40))]:   # residue: CRC over data + CRC (MSB first) = 0
        assert crc(data + crc(data).to_bytes(2, "big")) == 0


def test_frame_layout():
    f = encode_frame(DATA, 7, [0x04030201, 0xA5A5A5A5], end=True)
    assert len(f) == frame_bytes(2) == 6 + 8 + 2
    assert f[:4] == bytes([SYNC, DATA | FLAG_END, 7, 2])
    assert f[4:6] == crc(f[1:4]).to_bytes(2, "big")
    assert f[6:10] == bytes([1, 2, 3, 4])
    assert f[-2:] == crc(f[1:-2]).to_bytes(2, "big")
    a = encode_frame(ACK, 200)
    assert len(a) == 6 and a[:4] == bytes([SYNC, ACK, 200, 0])
    assert payload_efficiency() == pytest.approx(1020 / 1028)


def test_frame_encoder_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"kind=9"):
        encode_frame(9, 0)
    with pytest.raises(ValueError, match=r"seq=256"):
        encode_frame(ACK, 256)
    with pytest.raises(ValueError, match=r"len\(words\)=0"):
        encode_frame(DATA, 0, [])
    with pytest.raises(ValueError, match=r"len\(words\)=256"):
        encode_frame(DATA, 0, [0] * 256)
    with pytest.raises(ValueError, match=r"words\[1\]=-1"):
        encode_frame(DATA, 0, [0, -1])
    with pytest.raises(ValueError, match=r"kind=ACK: only DATA"):
        encode_frame(ACK, 0, [1])
    with pytest.raises(ValueError, match=r"words=\[\]"):
        packet_frames([])


def test_parser_round_trip_any_slicing():
    rng = random.Random(seed_for("link-parser-round-trip"))
    frames = []
    for seq in range(300):
        kind = rng.choice([DATA, DATA, ACK, NAK, RESET])
        if kind == DATA:
            n = rng.choice([1, 2, MAX_FRAME_WORDS, rng.randint(1, 40)])
            frames.append(Frame(DATA, seq % 256, tuple(rng.randrange(1 << 32) for _ in range(n)), rng.random() < 0.5))
        else:
            frames.append(Frame(kind, seq % 256))
    data = b"".join(encode_frame(f.kind, f.seq, f.words, f.end) for f in frames)
    p, got, i = FrameParser(), [], 0
    while i < len(data):
        step = rng.choice([1, 2, 7, 100, 5000])
        got += p.feed(data[i:i + step])
        i += step
    assert got == frames and p.pending == 0
    assert p.stats.header_errors == p.stats.crc_errors == p.stats.violations == 0


def test_parser_detects_every_single_byte_fault_and_resynchronises():
    """Each single fault in a frame (bit flip, drop, duplicate, garbage byte) loses at most that
    frame: the frame after it is always recovered, and a damaged frame is never reported good."""
    rng = random.Random(seed_for("link-parser-faults"))
    a = encode_frame(DATA, 1, [rng.randrange(1 << 32) for _ in range(5)], end=True)
    b = encode_frame(DATA, 2, [0xA5A5A5A5, 0x12345678])
    good_a = FrameParser().feed(a)[0]
    good_b = FrameParser().feed(b)[0]
    for pos in range(len(a)):
        variants = [a[:pos] + a[pos + 1:], a[:pos] + a[pos:pos + 1] * 2 + a[pos + 1:],
                    a[:pos] + bytes([rng.choice([SYNC, rng.randrange(256)])]) + a[pos:]]
        variants += [a[:pos] + bytes([a[pos] ^ (1 << k)]) + a[pos + 1:] for k in range(8)]
        for v in variants:
            events = FrameParser().feed(v + b)
            goods = [e for e in events if isinstance(e, Frame)]
            assert goods[-1] == good_b, (pos, v.hex())
            assert all(g in (good_a, good_b) for g in goods), (pos, v.hex())


# ------------------------------------------------------------------------------------ Python vs Python

def run_python_pair(rng, packets, rate, window=4, max_frame_words=16, timeout=1500, max_slots=3_000_000):
    """Two endpoints over two lossy channels, one byte per slot each way; B answers word + 1."""
    t = [0]
    clock = lambda: t[0]  # noqa: E731
    a = LinkEndpoint(timeout=timeout, window=window, max_frame_words=max_frame_words, clock=clock)
    b = LinkEndpoint(timeout=timeout, window=window, max_frame_words=max_frame_words, clock=clock)
    ab, ba = fault_channel(rng, "a->b", rate), fault_channel(rng, "b->a", rate)
    a.connect()
    for p in packets:
        a.send(p)
    b_got, replies = [], []
    while t[0] < max_slots and len(replies) < len(packets):
        t[0] += 1
        ab.push(a.poll())
        ba.push(b.poll())
        x = ab.pop()
        if x is not None:
            b.feed(bytes([x]))
        y = ba.pop()
        if y is not None:
            a.feed(bytes([y]))
        while b.packets:
            p = b.packets.popleft()
            b_got.append(p)
            b.send(plus_one(p))
        while a.packets:
            replies.append(a.packets.popleft())
    for ch in (ab, ba):
        FAULTS.update(ch.faults)
    return b_got, replies, a, b, ab.total() + ba.total()


@pytest.mark.parametrize("window", [1, 4])
def test_python_endpoints_over_a_lossy_channel(window):
    rng = random.Random(seed_for(f"link-python-pair-w{window}"))
    packets = random_packets(rng, 150, 60)
    b_got, replies, a, b, faults = run_python_pair(rng, packets, rate=0.01, window=window)
    print(f"window {window}: {faults} faults, A {a.stats}, B {b.stats}")
    assert b_got == packets
    assert replies == [plus_one(p) for p in packets]
    assert faults >= 300
    RAN.add(f"python-{window}")
    assert a.stats.retransmissions > 0 and b.stats.retransmissions > 0
    assert a.stats.crc_errors + b.stats.crc_errors > 0


# ------------------------------------------------------------------------------------ gateware harness

def run_gateware(packets, rng, *, host_rate=0.0, dev_rate=0.0, window=4, host_window=4, max_frame_words=16,
                 host_frame_words=16, check_crc=True, ready_p=0.7, tx_ready_p=0.85, valid_p=0.85, latency=0,
                 max_cycles=400_000, host_channel=None, dev_channel=None, extra_cycles=200, timeout=None,
                 respond=plus_one):
    """The gateware link with the Python endpoint as the host, both through lossy channels.

    The host sends all ``packets`` (after the RESET handshake); the word side answers each one with
    every word + 1 (random stalls on both word streams and on ``tx_bytes.ready``). Each channel moves
    at most one byte per clock (the byte rate is the unit of time here; the link's word side is four
    times faster, as with a real UART by far). Returns a dict with the words seen on the engine side,
    the host's replies, the link's counters, the faults and the cycles."""
    worst = max(frame_bytes(max_frame_words), frame_bytes(host_frame_words))
    if timeout is None:
        timeout = (max(window, host_window) + 2) * worst + 2 * latency + 400
    dut = ReliableLink(timeout_cycles=timeout, window=window, max_frame_words=max_frame_words,
                       rx_idle_cycles=timeout // 4, check_crc=check_crc)
    cycle = [0]
    host = LinkEndpoint(timeout=timeout, window=host_window, max_frame_words=host_frame_words,
                        clock=lambda: cycle[0])
    h2d = host_channel or fault_channel(rng, "host->fpga", host_rate, latency=latency)
    d2h = dev_channel or fault_channel(rng, "fpga->host", dev_rate, latency=latency)
    host.connect()
    for p in packets:
        host.send(p)
    res = {"engine": [], "replies": [], "cycles": 0, "done_cycle": None, "packet_cycles": [], "reply_cycles": []}

    async def bench(ctx):
        rx, tx, te, fe = dut.rx_bytes, dut.tx_bytes, dut.to_engine, dut.from_engine
        last = {}

        def put(sig, value):                           # ctx.set only on change (each set settles)
            if last.get(id(sig)) != value:
                last[id(sig)] = value
                ctx.set(sig, value)

        engine_in, engine_out = [], deque()            # words of the packet being received; answers
        fe_valid, te_ready, tx_ready = False, True, True
        tail = None
        while cycle[0] < max_cycles:
            b = h2d.pop()
            put(rx.valid, b is not None)
            if b is not None:
                put(rx.payload, b)
            if rng.random() < 0.25:
                te_ready = rng.random() < ready_p
            if rng.random() < 0.25:
                tx_ready = rng.random() < tx_ready_p
            put(te.ready, te_ready)
            put(tx.ready, tx_ready)
            if not fe_valid and engine_out and rng.random() < valid_p:
                w, l = engine_out[0]
                put(fe.payload, {"data": w, "last": l})
                put(fe.valid, True)
                fe_valid = True
            _, _, rx_ready, tx_valid, tx_byte, te_valid, te_p, fe_ready = await ctx.tick().sample(
                rx.ready, tx.valid, tx.payload, te.valid, te.payload, fe.ready)
            cycle[0] += 1
            assert b is None or rx_ready, "rx_bytes.ready went low"
            if tx_valid and tx_ready:
                d2h.push(bytes([tx_byte]))
            if te_valid and te_ready:
                res["engine"].append((te_p.data, bool(te_p.last)))
                engine_in.append(te_p.data)
                if te_p.last:
                    answer = respond(engine_in)
                    engine_out.extend((w, i == len(answer) - 1) for i, w in enumerate(answer))
                    res["packet_cycles"].append(cycle[0])
                    engine_in = []
            if fe_valid and fe_ready:
                engine_out.popleft()
                fe_valid = False
                put(fe.valid, False)
            y = d2h.pop()
            if y is not None:
                host.feed(bytes([y]))
            h2d.push(host.poll())
            while host.packets:
                res["replies"].append(host.packets.popleft())
                res["reply_cycles"].append(cycle[0])
            if tail is None and len(res["replies"]) >= len(packets):
                tail = cycle[0] + extra_cycles                 # a little longer: nothing more may arrive
                res["done_cycle"] = cycle[0]
            if tail is not None and cycle[0] >= tail:
                break
        res["counters"] = {name: ctx.get(getattr(dut, name)) for name in ReliableLink.COUNTERS}
        res["error"] = ctx.get(dut.error)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    t0 = time.monotonic()
    sim.run()
    res["seconds"] = time.monotonic() - t0
    res["cycles"] = cycle[0]
    res["host"] = host.stats
    res["faults"] = {"host->fpga": dict(h2d.faults), "fpga->host": dict(d2h.faults)}
    res["fault_total"] = h2d.total() + d2h.total()
    res["problems"] = scoreboard(packets, res["engine"], res["replies"], respond)
    for counter in (FAULTS, GATEWARE_FAULTS):
        counter.update(h2d.faults)
        counter.update(d2h.faults)
    print(f"{res['cycles']} cycles in {res['seconds']:.1f} s, faults {res['faults']}, "
          f"link {res['counters']}, error {res['error']}, host {res['host']}")
    return res


# ------------------------------------------------------------------------------------ gateware tests

def check_clean(res, packets):
    assert res["problems"] == [], res["problems"]
    assert res["error"] == 0
    assert len(res["replies"]) == len(packets)


def test_gateware_link_both_ways_through_a_lossy_channel():
    """The key test: packets both ways through a faulty channel, each direction with every fault
    kind; everything arrives exactly once, in order, bit-exact, and nothing corrupted reaches the
    word side (the scoreboard compares every word the engine took)."""
    rng = random.Random(seed_for("link-gateware-lossy"))
    packets = random_packets(rng, 100, 40)
    res = run_gateware(packets, rng, host_rate=0.012, dev_rate=0.012, max_cycles=300_000)
    check_clean(res, packets)
    c = res["counters"]
    assert c["crc_errors"] > 0 and c["header_errors"] > 0            # damage seen and counted
    assert c["retransmissions"] > 0 and c["timeouts"] > 0              # and recovered from
    assert res["host"].crc_errors > 0 and res["host"].retransmissions > 0
    assert c["rx_frames"] == c["tx_frames"] == sum(len(packet_frames(p, 16)) for p in packets)
    for direction in res["faults"].values():
        assert set(direction) == {"drop", "flip", "dup", "garbage", "delay"}
    assert res["fault_total"] >= 600
    RAN.add("gateware")


def test_gateware_stop_and_wait_with_long_packets():
    """Window 1 both ways and full 255-word frames: packets of several frames (END only on the
    last), faults in both directions."""
    rng = random.Random(seed_for("link-gateware-stop-and-wait"))
    packets = [[rng.randrange(1 << 32) for _ in range(n)] for n in (1, 255, 256, 600, 3)]
    res = run_gateware(packets, rng, host_rate=0.0007, dev_rate=0.0007, window=1, host_window=1,
                       max_frame_words=255, host_frame_words=255, max_cycles=300_000)
    check_clean(res, packets)
    assert res["counters"]["retransmissions"] + res["host"].retransmissions > 0
    assert res["fault_total"] >= 5


def test_gateware_window_2_and_duplicates():
    """ACKs lost on the way back make the host send frames again that already arrived: the link
    drops and re-acknowledges them (``duplicates``), and the engine still sees every word once."""
    rng = random.Random(seed_for("link-gateware-duplicates"))
    packets = random_packets(rng, 30, 12)
    back = LossyChannel(rng, "fpga->host", p_drop=0.03, p_flip=0.01)
    res = run_gateware(packets, rng, host_rate=0.004, dev_channel=back, window=2, host_window=2,
                       max_frame_words=4, host_frame_words=4, max_cycles=200_000)
    check_clean(res, packets)
    assert res["counters"]["duplicates"] > 0


def flip_payload_channel(rng, name, p_flip):
    """Bit flips in DATA payload bytes only (frame bytes 6 .. end - 2): the header CRC still holds, so
    only the frame CRC stands between a flipped bit and the engine."""
    ch = LossyChannel(rng, name)

    def push(data, ch=ch):
        i = 0
        while i < len(data):
            if data[i] == SYNC and i + 6 <= len(data) and data[i + 1] & 7 == DATA:
                size = frame_bytes(data[i + 3])
                frame = bytearray(data[i:i + size])
                for k in range(6, len(frame) - 2):
                    if rng.random() < p_flip:
                        frame[k] ^= 1 << rng.randrange(8)
                        ch.faults["flip"] += 1
                ch.queue.extend((ch.slot, b) for b in frame)
                i += size
            else:
                ch.queue.append((ch.slot, data[i]))
                i += 1
    ch.push = push
    return ch


@pytest.mark.parametrize("check_crc", [True, False])
def test_scoreboard_catches_corruption_when_the_crc_check_is_disabled(check_crc):
    """The test can fail: with the frame CRC check disabled (a test-only knob), flipped payload bits
    reach the engine and the scoreboard reports it; with the check on, the same channel is harmless."""
    rng = random.Random(seed_for("link-gateware-no-crc"))
    packets = random_packets(rng, 20, 30)
    res = run_gateware(packets, rng, host_channel=flip_payload_channel(rng, "host->fpga", 0.01),
                       check_crc=check_crc, max_cycles=60_000)
    assert res["faults"]["host->fpga"]["flip"] > 0
    if check_crc:
        check_clean(res, packets)
        assert res["counters"]["crc_errors"] > 0
    else:
        assert any(p.startswith("engine side") for p in res["problems"]), res["problems"]
        assert res["counters"]["crc_errors"] == 0


def test_gateware_resynchronises_after_a_host_restart():
    """A second host endpoint (the host program restarted, sequence numbers at 0 again) opens the
    link with RESET while the gateware's sequence numbers are elsewhere; the link works again."""
    rng = random.Random(seed_for("link-gateware-reset"))
    dut = ReliableLink(timeout_cycles=2000, window=4, max_frame_words=8)
    cycle = [0]
    hosts = [LinkEndpoint(timeout=2000, window=4, max_frame_words=8, clock=lambda: cycle[0]) for _ in range(2)]
    first = random_packets(rng, 7, 20)
    second = random_packets(rng, 5, 20)
    got = {0: [], 1: []}
    engine_words = []

    async def bench(ctx):
        h2d, d2h = deque(), deque()
        for k, (host, packets) in enumerate(zip(hosts, (first, second))):
            host.connect()
            for p in packets:
                host.send(p)
            engine_in, engine_out = [], deque()
            ctx.set(dut.tx_bytes.ready, 1)
            ctx.set(dut.to_engine.ready, 1)
            while len(got[k]) < len(packets) and cycle[0] < 100_000:
                b = h2d.popleft() if h2d else None
                ctx.set(dut.rx_bytes.valid, b is not None)
                ctx.set(dut.rx_bytes.payload, b or 0)
                offered = bool(engine_out)
                ctx.set(dut.from_engine.valid, offered)
                if offered:
                    ctx.set(dut.from_engine.payload, {"data": engine_out[0][0], "last": engine_out[0][1]})
                _, _, tv, tb, ev, ep, fr = await ctx.tick().sample(
                    dut.tx_bytes.valid, dut.tx_bytes.payload, dut.to_engine.valid, dut.to_engine.payload,
                    dut.from_engine.ready)
                cycle[0] += 1
                if tv:
                    d2h.append(tb)
                if ev:
                    engine_words.append((ep.data, bool(ep.last)))
                    engine_in.append(ep.data)
                    if ep.last:
                        engine_out.extend((w, i == len(engine_in) - 1) for i, w in enumerate(plus_one(engine_in)))
                        engine_in = []
                if offered and fr:
                    engine_out.popleft()
                if d2h:
                    host.feed(bytes([d2h.popleft()]))
                h2d.extend(host.poll())
                got[k].extend(host.packets)
                host.packets.clear()
            assert not host.connecting
        ctx.set(dut.rx_bytes.valid, 0)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    assert got[0] == [plus_one(p) for p in first]
    assert got[1] == [plus_one(p) for p in second]
    assert engine_words == [(w, i == len(p) - 1) for p in first + second for i, w in enumerate(p)]
    assert hosts[1].expected != 0                          # the gateware's sequence numbers were elsewhere


def run_bytes(dut, chunks, engine_ready=True, drain=200):
    """Feed byte chunks into ``rx_bytes`` (a chunk is bytes, or an int: that many idle clocks);
    returns (words seen on ``to_engine``, bytes sent on ``tx_bytes``, per-clock ``error``)."""
    words, sent, errors = [], bytearray(), []

    async def bench(ctx):
        ctx.set(dut.to_engine.ready, engine_ready)
        ctx.set(dut.tx_bytes.ready, 1)
        for chunk in chunks + [drain]:
            items = [None] * chunk if isinstance(chunk, int) else list(chunk)
            for b in items:
                ctx.set(dut.rx_bytes.valid, b is not None)
                ctx.set(dut.rx_bytes.payload, b or 0)
                _, _, tv, tb, ev, ep, err = await ctx.tick().sample(
                    dut.tx_bytes.valid, dut.tx_bytes.payload, dut.to_engine.valid, dut.to_engine.payload, dut.error)
                if tv:
                    sent.append(tb)
                if ev and engine_ready:
                    words.append((ep.data, bool(ep.last)))
                errors.append(err)

    sim = Simulator(dut)
    sim.add_clock(1e-8)
    sim.add_testbench(bench)
    sim.run()
    return words, bytes(sent), errors


def test_gateware_truncated_frame_does_not_swallow_the_next_one():
    """A frame that lost its tail, then silence longer than ``rx_idle_cycles``: the receiver hunts
    again, so the next (good) frame is taken, not eaten as the rest of the truncated one. Without
    the silence it is eaten (the CRC fails, nothing reaches the engine) and NAKed."""
    good = encode_frame(DATA, 0, [0x11223344, 0x55667788], end=True)
    cut = encode_frame(DATA, 0, [0xDEADBEEF, 0xCAFEF00D], end=True)[:-5]
    dut = ReliableLink(timeout_cycles=400, rx_idle_cycles=50)
    words, sent, _ = run_bytes(dut, [cut, 60, good])
    assert words == [(0x11223344, False), (0x55667788, True)]
    assert [f for f in FrameParser().feed(sent)] == [Frame(ACK, 1)]
    dut = ReliableLink(timeout_cycles=400, rx_idle_cycles=50)
    words, sent, _ = run_bytes(dut, [cut, 10, good])
    assert words == []
    assert [f for f in FrameParser().feed(sent)] == [Frame(NAK, 0)]


def test_gateware_protocol_violation_sets_sticky_error():
    """A header with a good CRC but an unknown kind sets ``error`` for good; frames still work."""
    head = bytes([7, 0, 0])
    bad = bytes([SYNC]) + head + crc(head).to_bytes(2, "big")
    good = encode_frame(DATA, 0, [5], end=True)
    dut = ReliableLink(timeout_cycles=400)
    words, sent, errors = run_bytes(dut, [good, 20, bad, 20, encode_frame(DATA, 1, [6], end=True)])
    first = errors.index(1)
    assert first > len(good) + 20 and all(errors[first:])
    assert words == [(5, True), (6, True)]
    assert FrameParser().feed(sent) == [Frame(ACK, 1), Frame(ACK, 2)]


def test_gateware_acknowledges_duplicates_and_naks_gaps():
    """Directed: frame 0, frame 0 again (duplicate: re-ACK 1), frame 2 (gap: NAK 1), frame 3 (ACK 1
    only: one NAK per expected frame), frame 1, 2: everything once, in order."""
    f = {k: encode_frame(DATA, k, [100 + k], end=True) for k in range(4)}
    dut = ReliableLink(timeout_cycles=400)
    words, sent, errors = run_bytes(dut, [f[0], 30, f[0], 30, f[2], 30, f[3], 30, f[1], 30, f[2], 30])
    assert words == [(100, True), (101, True), (102, True)]
    assert FrameParser().feed(sent) == [Frame(ACK, 1), Frame(ACK, 1), Frame(NAK, 1), Frame(ACK, 1),
                                        Frame(ACK, 2), Frame(ACK, 3)]
    assert not any(errors)


# ------------------------------------------------------------------------------------ throughput

BAUD = 3_000_000


def measure(direction, window, latency):
    """Payload bytes per byte time of full 255-word frames (1 byte per clock in the simulator), one
    direction, the other carrying one-word answers (like WRITE) or one-word requests (like READ)."""
    rng = random.Random(seed_for(f"link-throughput-{direction}-{window}-{latency}"))
    n = 6
    common = dict(window=window, host_window=window, max_frame_words=255, host_frame_words=255, ready_p=1.0,
                  tx_ready_p=1.0, valid_p=1.0, latency=latency, max_cycles=60_000)
    if direction == "to_engine":
        packets = [[rng.randrange(1 << 32) for _ in range(255)] for _ in range(n)]
        res = run_gateware(packets, rng, respond=lambda p: [len(p)], **common)
        marks = res["packet_cycles"]
    else:
        packets = [[k] for k in range(n)]
        res = run_gateware(packets, rng, respond=lambda p: [(p[0] * 7919 + i) & 0xFFFFFFFF for i in range(255)],
                           **common)
        marks = res["reply_cycles"]
    check_clean(res, packets)
    return (n - 1) * 1020 / (marks[-1] - marks[0])


def test_throughput():
    """Effective payload rate with full frames: window 4 streams at the frame efficiency (1020 of
    1028 bytes) despite a turnaround of 300 byte times (1 ms at 3 Mbaud); stop-and-wait pays the
    turnaround on every frame."""
    rows = []
    for direction in ("to_engine", "from_engine"):
        for window, latency in ((1, 0), (1, 150), (4, 150)):
            eff = measure(direction, window, latency)
            rows.append((direction, window, latency, eff))
            print(f"{direction:11s} window {window} turnaround {2 * latency:3d} byte times: {eff:.3f} of the "
                  f"line rate = {eff * BAUD / 10 / 1000:.1f} kB/s payload at 3 Mbaud")
    for direction, window, latency, eff in rows:
        # Stop-and-wait: frame + ACK + turnaround per frame; from the engine also the time to fill
        # the one frame buffer again (255 words at one word per clock = 255 byte times here, where
        # a byte takes one clock; about 1.5 byte times at 50 MHz and 3 Mbaud).
        fill = 255 if direction == "from_engine" else 0
        stop_and_wait = 1020 / (1028 + 6 + 2 * latency + fill)
        if window == 1:
            assert eff == pytest.approx(stop_and_wait, rel=0.03)
        else:
            assert eff > 0.97


# ------------------------------------------------------------------------------------ parameters

def test_gateware_parameters_validated():
    for kwargs, exc, text in [
        (dict(timeout_cycles=0), ValueError, r"timeout_cycles=0: must be an integer >= 2"),
        (dict(timeout_cycles=1.5), TypeError, r"timeout_cycles=1\.5"),
        (dict(timeout_cycles=100, window=0), ValueError, r"window=0"),
        (dict(timeout_cycles=100, window=3), ValueError, r"window=3: must be a power of two"),
        (dict(timeout_cycles=100, window=32), ValueError, r"window=32"),
        (dict(timeout_cycles=100, max_frame_words=0), ValueError, r"max_frame_words=0"),
        (dict(timeout_cycles=100, max_frame_words=256), ValueError, r"max_frame_words=256"),
        (dict(timeout_cycles=100, rx_idle_cycles=100), ValueError,
         r"rx_idle_cycles=100: must be below timeout_cycles=100"),
        (dict(timeout_cycles=100, rx_idle_cycles=0), ValueError, r"rx_idle_cycles=0"),
        (dict(timeout_cycles=100, check_crc=0), TypeError, r"check_crc=0"),
    ]:
        with pytest.raises(exc, match=text):
            ReliableLink(**kwargs)
    link = ReliableLink(timeout_cycles=1000)
    link._MustUse__silence = True
    assert "ReliableLink(timeout_cycles=1000, window=4, max_frame_words=255, rx_idle_cycles=250)" == repr(link)


def test_host_parameters_validated():
    for kwargs, exc, text in [
        (dict(timeout=0), ValueError, r"timeout=0: must be a positive number"),
        (dict(timeout=1, window=0), ValueError, r"window=0: must be an integer in 1\.\.127"),
        (dict(timeout=1, window=128), ValueError, r"window=128"),
        (dict(timeout=1, max_frame_words=256), ValueError, r"max_frame_words=256"),
        (dict(timeout=1, clock=5), TypeError, r"clock=5"),
    ]:
        with pytest.raises(exc, match=text):
            LinkEndpoint(**kwargs)
    with pytest.raises(TypeError, match=r"has no write\(\) method"):
        LinkHost(object(), timeout=1)
    ep = LinkEndpoint(timeout=1)
    with pytest.raises(ValueError, match=r"words\[1\]=4294967296"):
        ep.send([1, 1 << 32])


# ------------------------------------------------------------------------------------ serial port

class FakePort:
    def __init__(self, device, description):
        self.device, self.description = device, description


def fake_serial_modules(ports, serial_cls=None):
    serial = types.ModuleType("serial")
    tools = types.ModuleType("serial.tools")
    list_ports = types.ModuleType("serial.tools.list_ports")
    list_ports.comports = lambda: [FakePort(*p) for p in ports]

    class SerialException(OSError):
        pass

    def default_serial(port, *args, **kwargs):
        raise SerialException(f"[Errno 2] could not open port {port}")

    serial.SerialException = SerialException
    serial.Serial = serial_cls or default_serial
    serial.tools = tools
    tools.list_ports = list_ports
    return {"serial": serial, "serial.tools": tools, "serial.tools.list_ports": list_ports}


def test_serial_transport_names_the_missing_port_and_lists_the_others(monkeypatch):
    for name, module in fake_serial_modules([("/dev/ttyUSB7", "FT231X USB UART"), ("/dev/ttyS0", "n/a")]).items():
        monkeypatch.setitem(sys.modules, name, module)
    with pytest.raises(SerialPortNotFound, match=r"serial port '/dev/ttyNOPE' does not exist; serial ports found: "
                                                 r"/dev/ttyS0, /dev/ttyUSB7 \(FT231X USB UART\)") as e:
        SerialTransport("/dev/ttyNOPE")
    assert isinstance(e.value, FileNotFoundError)
    for name, module in fake_serial_modules([]).items():
        monkeypatch.setitem(sys.modules, name, module)
    with pytest.raises(SerialPortNotFound, match=r"'/dev/ttyNOPE' does not exist; no serial ports found"):
        SerialTransport("/dev/ttyNOPE")


def test_serial_transport_without_pyserial(monkeypatch):
    monkeypatch.setitem(sys.modules, "serial", None)                 # import serial -> ImportError
    with pytest.raises(ModuleNotFoundError, match=r"pyserial is not installed.*pip install pyserial"):
        SerialTransport("/dev/ttyUSB0")


def test_serial_transport_exchanges_packets_with_a_peer(monkeypatch):
    """SerialTransport over a fake pyserial port whose other end is a Python endpoint answering
    word + 1, with a few bytes lost: the async exchange API and the stats."""
    rng = random.Random(seed_for("link-serial-peer"))

    class PeerSerial:
        def __init__(self, port, baud, timeout=None):
            self.timeout, self.port = timeout, port
            self.peer = LinkEndpoint(timeout=0.05, window=4)
            self.to_host = bytearray()
            self.sent = 0

        def _run_peer(self):
            while self.peer.packets:
                self.peer.send(plus_one(self.peer.packets.popleft()))
            self.to_host += self.peer.poll()

        def write(self, data):
            self.sent += 1
            if self.sent % 7 == 3:                                    # every 7th write loses a byte
                k = rng.randrange(len(data))
                data = data[:k] + data[k + 1:]
            self.peer.feed(data)
            self._run_peer()

        @property
        def in_waiting(self):
            return len(self.to_host)

        def read(self, n):
            self._run_peer()
            if not self.to_host:
                time.sleep(min(self.timeout or 0, 0.001))
                self._run_peer()
            out = bytes(self.to_host[:n])
            del self.to_host[:n]
            return out

        def close(self):
            pass

    for name, module in fake_serial_modules([("/dev/ttyFAKE0", "peer")], PeerSerial).items():
        monkeypatch.setitem(sys.modules, name, module)
    import asyncio

    with SerialTransport("/dev/ttyFAKE0", timeout=0.05) as transport:
        packets = random_packets(rng, 12, 300)

        async def run():
            return [await transport.exchange(p) for p in packets]

        assert asyncio.run(run()) == [plus_one(p) for p in packets]
        st = transport.stats
    assert st["payload_bytes_tx"] == st["payload_bytes_rx"] == 4 * sum(map(len, packets))
    assert st["retransmissions"] > 0
    assert st["throughput_bytes_per_s"] > 0 and st["seconds"] > 0


def test_fault_total():
    """Runs last: the faults the lossy tests of this module injected (>= 1000 when they all ran)."""
    print(f"faults injected in this module: {sum(FAULTS.values())} {dict(FAULTS)}; by the gateware tests: "
          f"{sum(GATEWARE_FAULTS.values())} {dict(GATEWARE_FAULTS)}")
    if RAN >= {"python-1", "python-4", "gateware"}:
        assert sum(FAULTS.values()) >= 1000
        assert sum(GATEWARE_FAULTS.values()) >= 600
