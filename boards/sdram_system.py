"""The engine with the board's SDRAM behind its external-memory port, for simulation.

:class:`EngineSDRAMSystem` has the ports of :class:`hw.engine.system.EngineSystem` (the engine's host
streams and ``ext_fault``) but serves the port as the ULX3S does: the
:class:`~boards.sdram.SDRAMController` built for the configuration, and the checking chip model
:class:`~boards.sdram_model.SDRAMModel` behind one register each way on every pin (the board top's
I/O registers, hence ``read_delay`` :data:`boards.top.SDRAM_READ_DELAY`). The engine runs on
``clk_freq`` (domain ``sync``); the SDRAM, its controller and the chip model on ``sdram_freq``, from
which the controller's timing in cycles follows: by default the same clock, the port connected
directly; a different one puts them in the domain ``sdram`` (ports ``sdram_clk``, ``sdram_rst``;
:attr:`EngineSDRAMSystem.domain_freqs`) behind an :class:`~hw.engine.extcdc.ExternalMemoryCDC`. ``ext_fault``
is the model's sticky timing-violation flag (``ext_fault_code``: which rule, ``ext_fault_cycle``: when, in
SDRAM cycles). The simulations and ``benchmarks/engine_throughput.py
--memory sdram`` run it: the engine's cycle counts with the SDRAM's real bandwidth.

``sdram_<command>`` (:data:`SDRAM_COUNTS`) count the commands the chip receives, for the
benchmark's account of where the SDRAM's cycles go: ``reads``/``writes`` (column commands, one
16-bit beat each), ``activates`` (row misses, refresh aside), ``precharges`` (single-bank and
all-bank) and ``read_to_write`` (a WRITE whose previous column command was a READ: each such turn
can idle the bus up to CL + 2 cycles), from :class:`SDRAMCommandCounters` on the chip's pins, so
the board's controller carries none of them.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.engine.config import EngineConfig
from hw.engine.engine import Engine, host_layout

from .sdram import (COMMANDS, SDRAMGeometry, SDRAMTiming, clock_domain_freqs, clock_domain_side, connect_engine_sdram,
                    engine_sdram, sdram_clock_domain)
from .sdram_model import SDRAMModel, SDRAMViolation
from .top import SDRAM_READ_DELAY

__all__ = ["EngineSDRAMSystem", "SDRAMCommandCounters", "SDRAM_COUNTS", "sdram_chip_model", "register_sdram_pins"]

#: The command counters of :class:`EngineSDRAMSystem` (ports ``sdram_<name>``, 32 bits, wrapping).
SDRAM_COUNTS = ("reads", "writes", "activates", "precharges", "read_to_write")


def sdram_chip_model(controller, clk_freq: float, words: int | None = None) -> SDRAMModel:
    """The chip model for ``controller`` (an :class:`~boards.sdram.SDRAMController`) at ``clk_freq``:
    the datasheet timing, and storage for the rows that hold words ``0 … words − 1`` (default: every
    word the controller can address). The engine touches only its ``external_depth`` words, so a
    model sized to them flags any access beyond them as NOT_STORED."""
    g = SDRAMGeometry()
    if words is None:
        words = 1 << len(controller.port.cmd.payload.addr)
    rows = -(-(words * controller.beats) // (1 << (g.col_bits + g.bank_bits)))
    return SDRAMModel(SDRAMTiming().cycles(clk_freq), stored_row_bits=max(0, (rows - 1).bit_length()))


def register_sdram_pins(m: Module, controller_pins, chip_pins) -> None:
    """One register each way on every SDRAM pin between the controller and the chip model, where
    :class:`boards.top.EngineBoardTop` has its IOLOGIC flip-flops."""
    for name, member in controller_pins.signature.members.items():
        ctrl, chip = getattr(controller_pins, name), getattr(chip_pins, name)
        m.d.sync += chip.eq(ctrl) if member.flow == wiring.Out else ctrl.eq(chip)


class SDRAMCommandCounters(wiring.Component):
    """Counts the commands on an SDRAM's command pins (:data:`SDRAM_COUNTS`; 32 bits, wrapping)."""

    def __init__(self):
        super().__init__({**{pin: In(1, init=1) for pin in ("cs_n", "ras_n", "cas_n", "we_n")},
                          **{name: Out(32) for name in SDRAM_COUNTS}})

    def elaborate(self, platform):
        m = Module()
        code = Cat(self.we_n, self.cas_n, self.ras_n)

        def is_(name):
            ras, cas, we = COMMANDS[name]
            return ~self.cs_n & (code == (ras << 2 | cas << 1 | we))

        last_was_read = Signal()
        with m.If(is_("READ") | is_("WRITE")):
            m.d.sync += last_was_read.eq(is_("READ"))
        for name, event in [("reads", is_("READ")), ("writes", is_("WRITE")), ("activates", is_("ACTIVE")),
                            ("precharges", is_("PRECHARGE")), ("read_to_write", is_("WRITE") & last_was_read)]:
            m.d.sync += getattr(self, name).eq(getattr(self, name) + event)
        return m


class EngineSDRAMSystem(wiring.Component):
    """See the module docstring. ``clk_freq``: the engine's clock in Hz; ``sdram_freq``: the
    SDRAM's (default ``clk_freq``). :attr:`domain_freqs` maps each clock domain to its frequency."""

    def __init__(self, config: EngineConfig, clk_freq: float, sdram_freq: float | None = None):
        try:
            if not isinstance(config, EngineConfig) or not config.external_depth:
                raise ValueError(f"config={config!r}: must be an EngineConfig with external words")
            for name, value in (("clk_freq", clk_freq), ("sdram_freq", sdram_freq)):
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                          or not 0 < value < float("inf")):
                    raise ValueError(f"{name}={value!r}: must be a clock frequency in Hz above 0")
            self.config, self.clk_freq = config, clk_freq
            self.sdram_freq = clk_freq if sdram_freq is None else sdram_freq
            self.controller = engine_sdram(config, self.sdram_freq, read_delay=SDRAM_READ_DELAY)
        except (TypeError, ValueError):
            self._MustUse__silence = True
            raise
        self.model = sdram_chip_model(self.controller, self.sdram_freq, config.external_depth)
        self.engine = Engine(config)
        #: The SDRAM side's clock domain: "sync" (the engine's clock) or "sdram" (its own).
        self.sdram_domain = sdram_clock_domain(clk_freq, self.sdram_freq)
        super().__init__({
            "host_in": In(stream.Signature(host_layout())),
            "host_out": Out(stream.Signature(host_layout())),
            "ext_fault": Out(1),
            "ext_fault_code": Out(SDRAMViolation),      # the first rule broken, and when
            "ext_fault_cycle": Out(32),
            **{f"sdram_{name}": Out(32) for name in SDRAM_COUNTS},
            **({"sdram_clk": In(1), "sdram_rst": In(1)} if self.sdram_domain != "sync" else {}),
        })

    @property
    def domain_freqs(self) -> dict[str, float]:
        """Each clock domain's frequency in Hz (``sync``: the engine's)."""
        return clock_domain_freqs(self.clk_freq, self.sdram_domain, self.sdram_freq)

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = engine = self.engine
        own = {} if self.sdram_domain == "sync" else {"clk": self.sdram_clk, "rst": self.sdram_rst}
        sdram = clock_domain_side(m, self.sdram_domain, **own)           # where the SDRAM side's logic goes
        sdram.submodules.controller = controller = self.controller
        sdram.submodules.model = model = self.model
        wiring.connect(m, wiring.flipped(self.host_in), engine.host_in)
        wiring.connect(m, engine.host_out, wiring.flipped(self.host_out))
        connect_engine_sdram(m, engine.ext, controller, self.sdram_domain)
        register_sdram_pins(sdram, controller.pins, model.pins)
        m.d.comb += [self.ext_fault.eq(model.violation), self.ext_fault_code.eq(model.violation_code),
                     self.ext_fault_cycle.eq(model.violation_cycle)]
        sdram.submodules.counters = counters = SDRAMCommandCounters()
        m.d.comb += [getattr(counters, pin).eq(getattr(model.pins, pin)) for pin in ("cs_n", "ras_n", "cas_n", "we_n")]
        m.d.comb += [getattr(self, f"sdram_{name}").eq(getattr(counters, name)) for name in SDRAM_COUNTS]
        return m
