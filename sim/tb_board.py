"""cocotb bench for the board's core on Verilator: serial link, engine, SDRAM controller and chip model,
driven through a faulty serial line (pytest entry points: ``sim/test_sim_board.py``).

The design is :class:`sim.board_harness.UARTPeerHarness` around
:class:`boards.board_system.BoardSDRAMSystem`. :class:`UARTPeer` is the host: the link's Python
end (:class:`boards.link_host.LinkEndpoint`, clocked by the simulation's cycle count) on the
harness's byte FIFOs, with the ``async exchange(words)`` API of every other transport, so
:class:`hw.engine.driver.EngineDriver` and :func:`boards.train.train_and_check` run over it
unchanged. It injects seeded faults (:class:`LineFaults`) into both directions:

* in bursts of consecutive bytes sent (host → board), each byte ``drop`` (never sent), ``flip``
  (one data bit inverted), ``dup`` (sent twice) or ``delay`` (the line idles before it, up to
  ``max_delay_cycles``);
* in bursts of bytes received (board → host): the same four (a delayed byte holds back the ones
  after it);
* line glitches on both wires (``glitch_bytes``: one every that many byte times on average, each
  inverting the line for 0.3–2.5 bit times): bit flips anywhere in a UART frame, start and stop
  bits included, or a byte out of nothing on an idle line.

Tests (parameters from ``sim_params()``): ``link_storm`` runs ``commands`` random commands
(writes and reads of ACT words on chip and in the SDRAM, of WEIGHTS — saturated to ±w_clip — and
LABELS, IDENT, COUNTERS, and requests the engine must refuse: out of range, unknown target)
under ``storm`` faults until at least ``min_faults`` faults were injected, each command checked
against a reference memory, then trains ``steps`` MLP steps under ``train`` faults with
:func:`boards.train.train_and_check` (every weight equal to golden after every step). The SDRAM
model must flag no timing violation; the harness's receiver must not have overflowed.
``mutate`` = [layer, index] corrupts one weight the host reads back after the first step: the
step must be reported as diverged (the check can fail).
"""

from __future__ import annotations

import random
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import cocotb
import numpy as np
from cocotb.triggers import ReadOnly, RisingEdge, Timer
from cocotb.utils import get_sim_time

from sim.streams import ScoreboardMismatch, read_int, sim_params, wait_reset
from sim.tb_engine import engine_config
from boards.link_host import LinkTimeout

FAULT_KINDS = ("drop", "flip", "dup", "delay")


@dataclass
class LineFaults:
    """Seeded faults on the serial line (see the module docstring).

    ``rate``: bursts started per byte, each direction; a burst damages 1 to ``burst`` consecutive
    bytes, each with one fault of ``kinds`` (``drop``, ``flip``, ``dup``, ``delay``) drawn uniformly
    (line noise comes in bursts; several faults in one frame cost one recovery). ``delay`` idles the
    line for one byte time up to ``max_delay_cycles``. ``glitch_bytes``: mean byte times between
    glitches on each wire (0: none)."""
    rate: float = 0.0
    burst: int = 1
    kinds: tuple = FAULT_KINDS
    max_delay_cycles: int = 2000
    glitch_bytes: float = 0.0

    @classmethod
    def from_dict(cls, d: dict | None) -> "LineFaults":
        d = dict(d or {})
        if "kinds" in d:
            d["kinds"] = tuple(d["kinds"])
        return cls(**d)


@dataclass
class _Hold:
    until: float
    data: deque = field(default_factory=deque)


class UARTPeer:
    """The host end of the serial link on :class:`sim.board_harness.UARTPeerHarness` (module docstring).

    ``timeout_cycles``: the endpoint's retransmission timeout; ``exchange_cycles``: how long an
    exchange may take before it fails; ``ahead``: bytes kept queued in the harness's transmit FIFO
    (few, so that a delay or an acknowledgement is not stuck behind many bytes)."""

    def __init__(self, dut, rng: random.Random, *, period_ns: float, bit_cycles: float, timeout_cycles: int,
                 exchange_cycles: int, faults: LineFaults | None = None, ahead: int = 16):
        from boards.link_host import LinkEndpoint
        self.dut, self.rng = dut, rng
        self.period_ns, self.bit_cycles = period_ns, bit_cycles
        self.byte_cycles = 10 * bit_cycles
        self.endpoint = LinkEndpoint(timeout=timeout_cycles, clock=self.cycle)
        self.exchange_cycles = exchange_cycles
        self.faults = faults or LineFaults()
        self.ahead = ahead
        self.injected = Counter()
        self._txq: deque[int] = deque()
        self._tx_hold_until = 0.0
        self._rx_hold: _Hold | None = None
        self._running = False
        self.bytes_tx = self.bytes_rx = 0
        self.bursts = 0
        self._burst_left: dict[str, int] = {}
        self.verbose = False

    def cycle(self) -> float:
        return get_sim_time("ns") / self.period_ns

    @property
    def total_faults(self) -> int:
        return sum(self.injected.values())

    def start(self):
        self._running = True
        self.dut.peer_tx__valid.value = 0
        self.dut.peer_rx__ready.value = 0
        self.dut.rx_glitch.value = 0
        self.dut.tx_glitch.value = 0
        cocotb.start_soon(self._pump())
        cocotb.start_soon(self._glitcher(self.dut.rx_glitch, "rx_line_glitch"))
        cocotb.start_soon(self._glitcher(self.dut.tx_glitch, "tx_line_glitch"))

    def stop(self):
        self._running = False

    # ---- faults ----------------------------------------------------------------------------------
    def _draw(self, direction: str) -> str | None:
        f = self.faults
        left = self._burst_left.get(direction, 0)
        if left == 0 and f.rate and self.rng.random() < f.rate:
            left = self.rng.randint(1, f.burst)
            self.bursts += 1
        if left == 0:
            return None
        self._burst_left[direction] = left - 1
        return self.rng.choice(f.kinds)

    def _delay(self) -> float:
        return self.rng.uniform(self.byte_cycles, self.faults.max_delay_cycles)

    async def _glitcher(self, line, name):
        while self._running:
            mean = self.faults.glitch_bytes
            if not mean:
                await Timer(round(1000 * self.byte_cycles * self.period_ns), unit="ns")
                continue
            wait = self.rng.expovariate(1 / (mean * self.byte_cycles))
            await Timer(max(1, round(wait * self.period_ns)), unit="ns")
            if not self._running or not self.faults.glitch_bytes:
                continue
            line.value = 1
            await Timer(max(1, round(self.rng.uniform(0.3, 2.5) * self.bit_cycles * self.period_ns)), unit="ns")
            line.value = 0
            self.injected[name] += 1

    def _damage(self, byte: int, direction: str) -> tuple[str | None, list[int]]:
        """One byte through ``direction``'s faults: the fault drawn, and the bytes that arrive."""
        kind = self._draw(direction)
        if kind is None:
            return None, [byte]
        self.injected[f"{direction}_{kind}"] += 1
        if kind == "flip":
            byte ^= 1 << self.rng.randrange(8)
        return kind, {"drop": [], "dup": [byte, byte]}.get(kind, [byte])

    def _queue_tx(self, data: bytes):
        for byte in data:
            kind, arriving = self._damage(byte, "tx")
            if kind == "delay":
                self._txq.append(-int(self._delay()))        # negative: idle the line this many cycles
            self._txq.extend(arriving)

    def _received(self, data: list[int]):
        now = self.cycle()
        out = bytearray()
        for byte in data:
            kind, arriving = self._damage(byte, "rx")
            if kind == "delay" and self._rx_hold is None:
                self._rx_hold = _Hold(now + self._delay())
            (self._rx_hold.data if self._rx_hold is not None else out).extend(arriving)
        if out:
            self.endpoint.feed(bytes(out))

    def _release_rx(self):
        if self._rx_hold is not None and self.cycle() >= self._rx_hold.until:
            data, self._rx_hold = bytes(self._rx_hold.data), None
            if data:
                self.endpoint.feed(data)

    # ---- the byte pump ---------------------------------------------------------------------------
    async def _pump(self):
        dut, edge, ro = self.dut, RisingEdge(self.dut.clk), ReadOnly()
        while self._running:
            await edge
            await ro
            rx_level, tx_level = read_int(dut.peer_rx_level), read_int(dut.peer_tx_level)
            await edge
            self._release_rx()
            self._queue_tx(self.endpoint.poll())
            now = self.cycle()
            pushes = []
            while self._txq and now >= self._tx_hold_until and len(pushes) < self.ahead - tx_level:
                item = self._txq.popleft()
                if item < 0:                             # a delay: once the FIFO has drained, idle
                    self._tx_hold_until = now + (tx_level + len(pushes)) * self.byte_cycles - item
                    break
                pushes.append(item)
            received = []
            for i in range(max(rx_level, len(pushes))):
                if i < len(pushes):
                    dut.peer_tx__valid.value = 1
                    dut.peer_tx__payload.value = pushes[i]
                elif i == len(pushes):
                    dut.peer_tx__valid.value = 0
                dut.peer_rx__ready.value = int(i < rx_level)
                if i < rx_level:
                    await ro
                    received.append(read_int(dut.peer_rx__payload))
                await edge
            dut.peer_tx__valid.value = 0
            dut.peer_rx__ready.value = 0
            self.bytes_tx += len(pushes)
            self.bytes_rx += len(received)
            if received:
                self._received(received)
                continue                                 # acknowledge at once
            if not pushes:
                wait = 4 * self.byte_cycles
                if self._rx_hold is not None:
                    wait = min(wait, max(1.0, self._rx_hold.until - self.cycle()))
                await Timer(max(1, round(wait * self.period_ns)), unit="ns")

    # ---- the transport API -----------------------------------------------------------------------
    async def connect(self):
        ep = self.endpoint
        ep.connect()
        deadline = self.cycle() + self.exchange_cycles
        while ep.connecting:
            if self.cycle() > deadline:
                raise LinkTimeout(f"no RESET_ACK within {self.exchange_cycles} cycles")
            await Timer(round(8 * self.byte_cycles * self.period_ns), unit="ns")

    async def exchange(self, words: list[int]) -> list[int]:
        ep = self.endpoint
        ep.send(words)
        start, wall = self.cycle(), time.monotonic()
        deadline = start + self.exchange_cycles
        while not ep.packets:
            if self.cycle() > deadline:
                raise LinkTimeout(f"no response within {self.exchange_cycles} cycles "
                                  f"({ep.stats.retransmissions} retransmissions, {ep.stats.timeouts} timeouts so far)")
            await Timer(round(4 * self.byte_cycles * self.period_ns), unit="ns")
        reply = ep.packets.popleft()
        if self.verbose:
            cycles, seconds = self.cycle() - start, time.monotonic() - wall
            self.dut._log.info(f"exchange {words[0]:#010x}: {len(words)} words out, {len(reply)} back, "
                               f"{cycles:.0f} cycles in {seconds:.2f} s ({cycles / max(seconds, 1e-9):.0f} cycles/s)")
        return reply

    @property
    def stats(self) -> dict:
        from dataclasses import asdict
        st = asdict(self.endpoint.stats)
        seconds = self.cycle() * self.period_ns * 1e-9
        st["seconds"] = seconds                          # simulated time, for boards.train's figures
        st["throughput_bytes_per_s"] = (st["payload_bytes_tx"] + st["payload_bytes_rx"]) / seconds if seconds else 0.0
        return st


# ---- the command storm --------------------------------------------------------------------------
class Storm:
    """Random commands with a reference memory: every command must complete with the right answer,
    or be refused with the status the engine must give (``checked`` counts them)."""

    def __init__(self, driver, config, rng: random.Random):
        from hw.engine.protocol import Target, item_bits
        self.driver, self.config, self.rng = driver, config, rng
        self.lanes, self.kG = config.lanes, config.wage.kG
        self.act_bits = item_bits(Target.ACT, self.lanes, self.kG)
        self.ref: dict[tuple[int, int], int] = {}
        self.checked = Counter()

    def _weights_item(self):
        w_clip, kG = self.config.wage.w_clip, self.kG
        lanes = [self.rng.randrange(-(1 << (kG - 1)), 1 << (kG - 1)) for _ in range(self.lanes)]
        raw = sum((v & ((1 << kG) - 1)) << (kG * i) for i, v in enumerate(lanes))
        clipped = sum((max(-w_clip, min(w_clip, v)) & ((1 << kG) - 1)) << (kG * i) for i, v in enumerate(lanes))
        return raw, clipped

    def _region(self, depth: int, on_chip: int, count: int) -> int:
        """A start address: half the time on chip, half in the SDRAM (external) part."""
        if on_chip < depth and self.rng.random() < 0.5:
            return self.rng.randrange(on_chip, depth - count + 1)
        return self.rng.randrange(0, min(on_chip, depth) - count + 1)

    async def one(self):
        from hw.engine.driver import EngineError
        from hw.engine.protocol import IDENT, Status, Target, ident_values
        d, c, rng = self.driver, self.config, self.rng
        op = rng.choices(["w_act", "r_act", "w_wts", "r_wts", "w_lab", "r_lab", "ident", "counters", "bad"],
                         weights=[6, 6, 4, 4, 2, 2, 1, 1, 2])[0]
        count = rng.randrange(1, 13)
        act_depth, wts_depth = c.data_words + c.external_words, c.weight_words + c.external_weight_words
        if op in ("w_act", "r_act"):
            base = self._region(act_depth, c.data_words, count)
            if op == "w_act":
                items = [rng.getrandbits(self.act_bits) for _ in range(count)]
                await d.write(Target.ACT, base, items)
                self.ref.update({(Target.ACT, base + i): v for i, v in enumerate(items)})
            else:
                await self._check_read(Target.ACT, base, count)
        elif op in ("w_wts", "r_wts"):
            base = self._region(wts_depth, c.weight_words, count)
            if op == "w_wts":
                pairs = [self._weights_item() for _ in range(count)]
                await d.write(Target.WEIGHTS, base, [raw for raw, _ in pairs])
                self.ref.update({(Target.WEIGHTS, base + i): v for i, (_, v) in enumerate(pairs)})
            else:
                await self._check_read(Target.WEIGHTS, base, count)
        elif op in ("w_lab", "r_lab"):
            count = min(count, c.label_words)
            base = rng.randrange(0, c.label_words - count + 1)
            if op == "w_lab":
                items = [rng.getrandbits(16) for _ in range(count)]
                await d.write(Target.LABELS, base, items)
                self.ref.update({(Target.LABELS, base + i): v for i, v in enumerate(items)})
            else:
                await self._check_read(Target.LABELS, base, count)
        elif op == "ident":
            got = await d.identify()
            assert got == ident_values(c), f"IDENT answered {got}"
            assert list(got) == list(IDENT)
        elif op == "counters":
            await d.counters()
        else:
            which = rng.randrange(2)
            try:
                if which == 0:
                    await d.read(Target.ACT, act_depth - count + 1 + rng.randrange(count), count)
                else:
                    await d.request(1, 9, (0, 1), (0,))           # WRITE to target 9: no such target
            except EngineError as e:
                want = Status.OUT_OF_RANGE if which == 0 else Status.BAD_TARGET
                assert e.status == want, f"refused with {e}, expected status {want.name}"
            else:
                raise AssertionError("a request the engine must refuse was answered OK")
        self.checked[op] += 1

    async def _check_read(self, target, base, count):
        got = await self.driver.read(target, base, count)
        for i, v in enumerate(got):
            want = self.ref.get((target, base + i))
            if want is not None:
                assert v == want, (f"READ {target.name} address {base + i}: got {v:#x}, wrote {want:#x} "
                                   f"(differs in bits {[b for b in range((v ^ want).bit_length()) if (v ^ want) >> b & 1]})")
                self.checked["words_compared"] += 1


def _check_clean(dut):
    assert read_int(dut.ext_fault) == 0, (f"the SDRAM model flagged violation {read_int(dut.ext_fault_code)} "
                                          f"at cycle {read_int(dut.ext_fault_cycle)}")
    status = read_int(dut.status)
    assert not status >> 4 & 1, "the link's error bit is set (a protocol violation)"


async def _bench(dut, p: dict) -> None:
    """The storm, then the training steps (module docstring); raises on anything wrong."""
    from boards.train import train_and_check
    from golden.data import load_dataset
    from hw.engine.compiler import compile_network
    from hw.engine.driver import EngineDriver

    seed = cocotb.RANDOM_SEED
    rng = random.Random(seed)
    log = dut._log
    config = engine_config(p)
    program = compile_network(config)
    await wait_reset(dut)
    peer = UARTPeer(dut, rng, period_ns=p["period_ns"], bit_cycles=p["bit_cycles"],
                    timeout_cycles=p["host_timeout_cycles"], exchange_cycles=p["exchange_cycles"],
                    faults=LineFaults.from_dict(p.get("storm")))
    peer.verbose = bool(p.get("verbose"))
    peer.start()
    await peer.connect()
    log.info(f"link open at cycle {peer.cycle():.0f}")
    storm_transport = peer if p.get("mutate_reads_after") is None else _CorruptReads(peer, p["mutate_reads_after"])
    driver = EngineDriver(program, storm_transport)
    storm = Storm(driver, config, rng)
    t0, n = peer.cycle(), 0
    while n < p["commands"] or peer.total_faults < p["min_faults"]:
        await storm.one()
        n += 1
        if n % p.get("log_every", 100) == 0:
            log.info(f"{n} commands, {peer.total_faults} faults so far, cycle {peer.cycle():.0f}")
    st = peer.endpoint.stats
    log.info(f"storm: {n} commands in {peer.cycle() - t0:.0f} cycles, checked {dict(storm.checked)}; faults "
             f"{dict(peer.injected)} (total {peer.total_faults}, {peer.bursts} bursts); host link: {st.retransmissions} retransmissions, "
             f"{st.timeouts} timeouts, {st.crc_errors} CRC errors, {st.header_errors} header errors, "
             f"{st.duplicates} duplicates, {st.naks_rx} NAKs received; host receiver frame errors "
             f"{read_int(dut.peer_rx_frame_errors)}")
    assert peer.total_faults >= p["min_faults"]
    storm_faults = peer.total_faults
    _check_clean(dut)

    peer.faults = LineFaults.from_dict(p.get("train"))
    steps = p["steps"]
    data = load_dataset("embedded")
    mutate = p.get("mutate")
    transport = peer if mutate is None else _CorruptWeightRead(peer, program, *mutate)
    t0, before = peer.cycle(), peer.stats
    results = await train_and_check(transport, program, data.train_images, data.train_labels, steps,
                                    eta_log2=p.get("eta_log2"), report=lambda r: log.info(r.line()))
    for r in results:
        if not r.ok:
            raise ScoreboardMismatch(f"step {r.step} diverged from golden: {r.divergence}")
    assert len(results) == steps
    _check_clean(dut)
    assert read_int(dut.peer_rx_overflow) == 0, "the harness's receive FIFO overflowed (a bench bug)"
    peer.stop()
    st = peer.stats
    train_s = (peer.cycle() - t0) * p["period_ns"] * 1e-9
    payload = sum(st[k] - before[k] for k in ("payload_bytes_tx", "payload_bytes_rx"))
    log.info(f"PASS: {n} commands and {steps} training steps through the link; {peer.total_faults} faults injected "
             f"({storm_faults} in the storm; {dict(peer.injected)}); every weight equal to golden; link "
             f"{st['retransmissions']} retransmissions, {st['timeouts']} timeouts; {peer.bytes_tx} bytes sent, "
             f"{peer.bytes_rx} received in {peer.cycle():.0f} cycles; training phase "
             f"{payload} payload bytes in {train_s:.3f} s simulated, {payload / train_s / 1000:.1f} kB/s")
    if p.get("out"):
        import json
        report = {"commands": n, "faults": dict(peer.injected), "storm_faults": storm_faults, "cycles": peer.cycle(),
                  "train_seconds_simulated": train_s, "train_payload_bytes": payload,
                  "train_payload_bytes_per_s": payload / train_s, "link": st,
                  # per step: the link's figures over the batch, RUN and read-back, in simulated seconds
                  "steps": [{"step": r.step, "words": r.words, "engine_cycles": r.engine_cycles,
                             "wall_seconds": r.seconds, **(r.link or {})} for r in results]}
        with open(p["out"], "w") as f:
            json.dump(report, f, indent=1)


@cocotb.test()
async def link_storm(dut):
    """Random commands under heavy line faults, then MLP training steps through the link, bit-exact."""
    await _bench(dut, sim_params())


@cocotb.test()
async def read_mutation_detected(dut):
    """With ``mutate_reads_after`` = n, one bit of every READ answer after n exchanges is flipped:
    the storm's reference memory must catch it."""
    p = sim_params()
    try:
        await _bench(dut, p)
    except AssertionError as e:
        text = str(e)
        assert text.startswith("READ ") and "differs in bits [5]" in text, text
        dut._log.info(f"reported as expected: {text}")
        return
    raise AssertionError("the flipped bit in the READ answers was not reported")


@cocotb.test()
async def weight_mutation_detected(dut):
    """With ``mutate`` = [layer, word] set, step 0 is reported diverged at ``expect`` (layer and
    weight index), and only that weight."""
    p = sim_params()
    try:
        await _bench(dut, p)
    except ScoreboardMismatch as e:
        text = str(e)
        assert f"step 0 diverged from golden: {p['expect']}:" in text and "(1 of the layer's" in text, text
        dut._log.info(f"reported as expected: {text}")
        return
    raise AssertionError("the flipped weight bit was not reported")


class _CorruptReads:
    """Flips bit 5 of the first item of every READ answer after ``after`` exchanges."""

    def __init__(self, peer, after: int):
        self.peer, self.after, self.exchanges = peer, after, 0

    async def exchange(self, words):
        from hw.engine.protocol import Command
        reply = await self.peer.exchange(words)
        self.exchanges += 1
        if self.exchanges > self.after and (words[0] & 0xFF) == Command.READ and len(reply) > 1:
            reply = [reply[0], reply[1] ^ 1 << 5, *reply[2:]]
        return reply


class _CorruptWeightRead:
    """Flips bit 3 of word ``word`` of layer ``layer``'s weights the first time the host reads them back."""

    def __init__(self, peer, program, layer, word):
        from hw.engine.protocol import Command, Target
        self.peer, self.layout = peer, program.weights[layer]
        self.word, self.done = word, False
        self._read = Command.READ | Target.WEIGHTS << 8

    @property
    def stats(self):
        return self.peer.stats

    async def exchange(self, words):
        reply = await self.peer.exchange(words)
        if (not self.done and (words[0] & 0xFFFF) == self._read and words[1] == self.layout.base):
            reply = list(reply)
            reply[1 + self.word] ^= 1 << 3
            self.done = True
        return reply
