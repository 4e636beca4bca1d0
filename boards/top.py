"""Board top level: the engine behind the serial host link, clocked by a PLL, with status LEDs.

:class:`EngineBoardCore` is everything that runs in the engine's clock domain — the
:class:`~boards.hostlink.UARTHostLink` (UART + the reliable link layer, :mod:`boards.link`) joined to the
:class:`~hw.engine.engine.Engine`'s host streams, and the status bits — with plain ``rx``/``tx``
ports, so it simulates without a platform. :class:`EngineBoardTop` adds what needs the board: the
ECP5 PLL from the board's oscillator to the requested clock (:mod:`boards.pll`), the reset (button or
PLL not locked, synchronised), and the pins of the serial port and the LEDs; nextpnr derives the
engine clock's constraint from the oscillator's and the PLL's dividers.

External memory. A configuration with external words (``external_words`` /
``external_weight_words``) gets the :class:`~boards.sdram.SDRAMController` behind the engine's
external-memory port, on a board that has SDR SDRAM (:attr:`boards.catalog.Board.sdram`). The top
puts every SDRAM pin through an I/O register (IOLOGIC flip-flops: one output register on the
command, address, DQM, DQ-out and DQ-enable pins, one input register on DQ-in, hence the
controller's ``read_delay`` of 2) and drives the chip's clock from a DDR output register as the
engine clock inverted (``SDRAM_CLOCK_PHASE``): the chip samples commands half a cycle after they
leave their registers, clear of both edges. Read capture has not been checked on a board: the
controller samples DQ ``CL + read_delay`` cycles after a READ leaves its register, which is right for
the simulation's chip model (clocked with the controller, one register each way), but the board's
chip answers half a cycle earlier (its inverted clock) plus the ECP5's clock-to-pad and pad-to-register
delays and the chip's tAC/tOH, which were not measured, so on paper the data's valid window may miss
that edge by a cycle at some clocks. ``python -m boards.train`` reads the weights back right after
writing them and stops before any step if they differ; ``python -m hw.build --sdram-read-delay``
(``sdram_read_delay`` here) moves the sampling edge. ``sdram_mhz`` gives the SDRAM its own clock, the
PLL's second output (domain ``sdram``: the controller, its pin registers and the chip's clock), the
engine's port crossing to it through an :class:`~hw.engine.extcdc.ExternalMemoryCDC`: the 16-bit
bus, which bounds most of a LeNet-5 step, then runs faster than the engine can close timing.

Status bits, in LED order (a board with fewer LEDs shows the first ones):

0. heartbeat: toggles about once a second (the engine clock runs);
1. ready: the PLL is locked and the design is out of reset;
2. host → board bytes seen recently; 3. board → host bytes sent recently;
4. link error (sticky until reset): a protocol violation on the reliable link — a frame with a good
   header CRC that breaks the frame rules, or an acknowledgement of a frame never sent; i.e. the
   host does not speak this link protocol. Line faults are not errors, the link recovers from them;
5. link retry (held for a quarter of a second): the link recovered from a line fault — a frame was
   retransmitted or received again, failed its CRC, or a byte had a bad stop bit.

The ULX3S shows all six on its eight LEDs (LED 6 and 7 stay off); the ECPIX-5 shows them on the
first two of its four RGB LEDs (red, green, blue of LED 0 = bits 0–2, of LED 1 = bits 3–5).
"""

from __future__ import annotations

from amaranth.hdl import Cat, ClockDomain, ClockSignal, Elaboratable, Module, ResetSignal, Signal
from amaranth.lib import io, wiring
from amaranth.lib.cdc import FFSynchronizer, ResetSynchronizer
from amaranth.lib.wiring import In, Out

from hw.engine.config import EngineConfig
from hw.engine.engine import Engine

from .hostlink import UARTHostLink
from .pll import ECP5PLL
from .sdram import SDRAMPinsSignature, clock_domain_side, connect_engine_sdram, engine_sdram, sdram_clock_domain

__all__ = ["EngineBoardCore", "EngineBoardTop", "STATUS_BITS", "SDRAM_READ_DELAY"]

#: Clocks between the controller's pin registers and its DQ sample added by the top's I/O registers.
SDRAM_READ_DELAY = 2

STATUS_BITS = ("heartbeat", "ready", "rx_active", "tx_active", "link_error", "link_retry")


class EngineBoardCore(wiring.Component):
    """The engine and its serial host link in one clock domain (``sync``); see the module docstring.

    ``activity_cycles`` and ``link_timeout_cycles`` go to :class:`~boards.hostlink.UARTHostLink`
    (``activity_cycles``, ``timeout_cycles``; default: theirs). ``sdram_clk_freq``: the SDRAM's
    clock in Hz when it differs from ``clk_freq``; the SDRAM controller then runs in the domain
    ``sdram``, which the parent defines, behind the port's clock crossing."""

    def __init__(self, config: EngineConfig, *, clk_freq: float, baud: int = 3_000_000,
                 activity_cycles: int | None = None, sdram: bool = False,
                 sdram_read_delay: int = SDRAM_READ_DELAY, link_timeout_cycles: int | None = None,
                 sdram_clk_freq: float | None = None):
        if not isinstance(config, EngineConfig) or (config.external_depth and not sdram):
            self._MustUse__silence = True      # a rejected generator is not an "unused elaboratable"
        if not isinstance(config, EngineConfig):
            raise TypeError(f"config={config!r}: must be a hw.engine.config.EngineConfig")
        if config.external_depth and not sdram:
            raise ValueError(f"external_words={config.external_words}, external_weight_words="
                             f"{config.external_weight_words}: this board has no SDR SDRAM for the engine's "
                             f"external memory; build a configuration that fits on chip (both 0)")
        self.config = config
        self.clk_freq, self.baud = clk_freq, baud
        kw = {} if activity_cycles is None else {"activity_cycles": activity_cycles}
        if link_timeout_cycles is not None:
            kw["timeout_cycles"] = link_timeout_cycles
        self.sdram = None
        self.sdram_clk_freq = clk_freq if sdram_clk_freq is None else sdram_clk_freq
        #: The SDRAM controller's clock domain: "sync", or "sdram" on a clock of its own.
        self.sdram_domain = sdram_clock_domain(clk_freq, self.sdram_clk_freq)
        members = {"rx": In(1, init=1), "tx": Out(1, init=1), "status": Out(len(STATUS_BITS))}
        if config.external_depth:
            try:
                self.sdram = engine_sdram(config, self.sdram_clk_freq, read_delay=sdram_read_delay)
            except (TypeError, ValueError):
                self._MustUse__silence = True
                raise
            members["sdram_pins"] = Out(SDRAMPinsSignature())
        self.link = UARTHostLink(clk_freq, baud, **kw)
        self.engine = Engine(config)
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.link = link = self.link
        m.submodules.engine = engine = self.engine
        m.d.comb += [link.rx.eq(self.rx), self.tx.eq(link.tx)]
        wiring.connect(m, link.to_engine, engine.host_in)
        wiring.connect(m, engine.host_out, link.from_engine)
        if self.sdram is not None:
            side = clock_domain_side(m, self.sdram_domain, name="sdram")
            side.submodules.controller = sdram = self.sdram
            connect_engine_sdram(m, engine.ext, sdram, self.sdram_domain)
            wiring.connect(m, sdram.pins, wiring.flipped(self.sdram_pins))
        half_second = max(1, int(self.clk_freq // 2))
        beat_count = Signal(range(half_second))
        heartbeat = Signal()
        with m.If(beat_count == half_second - 1):
            m.d.sync += [beat_count.eq(0), heartbeat.eq(~heartbeat)]
        with m.Else():
            m.d.sync += beat_count.eq(beat_count + 1)
        ready = Signal(init=0)
        m.d.sync += ready.eq(1)                            # 0 only while in reset
        m.d.comb += self.status.eq(Cat(heartbeat, ready, link.rx_active, link.tx_active, link.error, link.retry))
        return m


class EngineBoardTop(Elaboratable):
    """The whole design for one board (an Elaboratable for ``platform.build``).

    ``board``: a :class:`boards.catalog.Board`; ``freq_mhz``: the engine clock requested (the PLL's
    nearest, :attr:`pll_params`); ``baud``: the host serial rate; ``sdram_mhz``: the SDRAM's own
    clock (the PLL's second output; None: the engine's), for a configuration with external words;
    ``sdram_read_delay``: the controller's ``read_delay`` (the module docstring's read capture).
    """

    def __init__(self, config: EngineConfig, board, *, freq_mhz: float, baud: int = 3_000_000,
                 clock_in_mhz: float, sdram_mhz: float | None = None, sdram_read_delay: int = SDRAM_READ_DELAY):
        self.board, self.config = board, config
        try:
            if sdram_mhz is not None and not config.external_depth:
                raise ValueError(f"sdram_mhz={sdram_mhz!r}: this configuration has no external words, "
                                 f"so no SDRAM to clock")
            if sdram_read_delay != SDRAM_READ_DELAY and not config.external_depth:
                raise ValueError(f"sdram_read_delay={sdram_read_delay!r}: this configuration has no external "
                                 f"words, so no SDRAM to read")
            self.pll = ECP5PLL(clock_in_mhz, freq_mhz, sdram_mhz)
            self.pll_params = p = self.pll.params
            self.core = EngineBoardCore(config, clk_freq=p.f_out_mhz * 1e6, baud=baud,
                                        sdram=board.sdram is not None, sdram_read_delay=sdram_read_delay,
                                        sdram_clk_freq=None if p.f_out2_mhz is None else p.f_out2_mhz * 1e6)
        except (TypeError, ValueError):
            self._MustUse__silence = True      # a rejected design is not an "unused elaboratable"
            if hasattr(self, "pll"):
                self.pll._MustUse__silence = True
            raise

    def elaborate(self, platform):
        m = Module()
        board = self.board

        def buffer(name, direction, port):
            m.submodules[name] = buf = io.Buffer(direction, port)
            return buf

        clk_in = buffer("clk_in", "i", platform.request(board.clock, 0, dir="-"))
        m.submodules.pll = pll = self.pll
        m.d.comb += pll.clk_in.eq(clk_in.i)
        m.domains.sync = ClockDomain("sync")
        m.d.comb += ClockSignal("sync").eq(pll.clk_out)
        # No constraint on the PLL output here: nextpnr derives it from the oscillator's constraint and
        # the EHXPLLL dividers ("Derived frequency constraint of ... for net core.clk").
        reset_request = ~pll.locked
        if board.reset is not None:
            reset_request = reset_request | buffer("reset_in", "i", platform.request(board.reset, 0, dir="-")).i
        m.submodules.reset_sync = ResetSynchronizer(reset_request, domain="sync")
        if self.core.sdram_domain != "sync":
            m.domains.sdram = ClockDomain(self.core.sdram_domain)
            m.d.comb += ClockSignal(self.core.sdram_domain).eq(pll.clk_out2)
            # Synchronised, then one more register; the core hands it on to the controller and to the
            # clock-domain crossing through reset chains of their own (boards.sdram.local_reset_domain:
            # one register driving them all sat 17 ns of routing from the controller at 75 MHz).
            domain = self.core.sdram_domain
            requested, held = Signal(init=1), Signal(init=1, reset_less=True)
            m.submodules.sdram_reset_sync = FFSynchronizer(reset_request, requested, o_domain=domain, init=1)
            m.d[domain] += held.eq(requested)
            m.d.comb += ResetSignal(domain).eq(held)

        m.submodules.core = core = self.core
        uart = platform.request(board.uart, 0, dir="-")
        m.d.comb += [core.rx.eq(buffer("uart_rx", "i", uart.rx).i), buffer("uart_tx", "o", uart.tx).o.eq(core.tx)]

        if core.sdram is not None:
            self._sdram_pins(m, platform.request(board.sdram, 0, dir="-"), core.sdram_pins, core.sdram_domain)

        name, count, colours = board.leds
        outputs = []
        for i in range(count):
            led = platform.request(name, i, dir="-")
            ports = [led] if not colours else [getattr(led, c) for c in colours]
            outputs.extend(buffer(f"{name}{i}{c}", "o", port).o for c, port in zip(colours or ("",), ports))
        for i, out in enumerate(outputs[:len(STATUS_BITS)]):
            m.d.comb += out.eq(core.status[i])
        return m

    @staticmethod
    def _sdram_pins(m: Module, res, pins, domain: str = "sync") -> None:
        """Every SDRAM pin through an IOLOGIC register clocked by ``domain``, the controller's; the
        chip clock is that clock inverted."""
        m.submodules.sdram_clk = clk = io.DDRBuffer("o", res.clk, o_domain=domain)
        m.d.comb += clk.o.eq(0b10)                # low after the rising edge, high after the falling one
        # The active-low pins are PinsN in amaranth-boards (``cs``, ``ras``, ...): ``~`` gives the raw
        # pin, driven straight from the controller's active-low signal.
        for name, port, value in (("clk_en", res.clk_en, pins.cke), ("cs", ~res.cs, pins.cs_n),
                                  ("ras", ~res.ras, pins.ras_n), ("cas", ~res.cas, pins.cas_n),
                                  ("we", ~res.we, pins.we_n), ("ba", res.ba, pins.ba), ("a", res.a, pins.a),
                                  ("dqm", res.dqm, pins.dqm)):
            m.submodules[f"sdram_{name}"] = buf = io.FFBuffer("o", port, o_domain=domain)
            m.d.comb += buf.o.eq(value)
        m.submodules.sdram_dq = dq = io.FFBuffer("io", res.dq, i_domain=domain, o_domain=domain)
        m.d.comb += [dq.o.eq(pins.dq_o), dq.oe.eq(pins.dq_oe), pins.dq_i.eq(dq.i)]
