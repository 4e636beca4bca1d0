"""The board's core with the SDRAM chip model on its SDRAM pins, for simulation.

:class:`BoardSDRAMSystem` is :class:`boards.top.EngineBoardCore` built with the SDRAM (serial
host link, engine, SDRAM controller: everything of :class:`~boards.top.EngineBoardTop` that runs
in the engine clock) with the checking chip model :class:`~boards.sdram_model.SDRAMModel` behind
one register each way on every SDRAM pin, where the top has its IOLOGIC flip-flops. Only the PLL,
the reset synchroniser, the I/O buffers and the inverted chip clock are left out. Its ports are
the serial pins, the status bits and the model's fault outputs (and, when the core's SDRAM has a
clock of its own, ``sdram_clk_freq``, that domain's ``sdram_clk`` and ``sdram_rst``, the model and
the pin registers in it; :attr:`BoardSDRAMSystem.domain_freqs`); ``sim/test_sim_board.py`` drives
it through a UART peer on Verilator, ``tests/test_boards_top.py`` through a bit-level peer in
Amaranth's simulator.
"""

from __future__ import annotations

from amaranth.hdl import Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from hw.engine.config import EngineConfig

from .sdram import clock_domain_freqs, clock_domain_side
from .sdram_model import SDRAMViolation
from .sdram_system import register_sdram_pins, sdram_chip_model
from .top import STATUS_BITS, EngineBoardCore

__all__ = ["BoardSDRAMSystem"]


class BoardSDRAMSystem(wiring.Component):
    """:class:`~boards.top.EngineBoardCore` (``sdram=True``) plus the SDRAM chip model.

    ``config`` must have external words. ``clk_freq``, ``baud`` and the keyword arguments go to
    :class:`~boards.top.EngineBoardCore` (``activity_cycles``, ``sdram_read_delay``,
    ``link_timeout_cycles``, ``sdram_clk_freq``). ``ext_fault`` is the model's sticky timing-violation flag,
    ``ext_fault_code`` the first rule broken and ``ext_fault_cycle`` when.
    """

    def __init__(self, config: EngineConfig, *, clk_freq: float, baud: int = 3_000_000, **core_kw):
        if not isinstance(config, EngineConfig) or not config.external_depth:
            self._MustUse__silence = True
            raise ValueError(f"config={config!r}: must be an EngineConfig with external words "
                             f"(external_words or external_weight_words)")
        try:
            self.core = EngineBoardCore(config, clk_freq=clk_freq, baud=baud, sdram=True, **core_kw)
        except (TypeError, ValueError):
            self._MustUse__silence = True
            raise
        self.config, self.clk_freq, self.baud = config, clk_freq, baud
        self.model = sdram_chip_model(self.core.sdram, self.core.sdram_clk_freq, config.external_depth)
        own = self.core.sdram_domain != "sync"
        super().__init__({
            **({f"{self.core.sdram_domain}_clk": In(1), f"{self.core.sdram_domain}_rst": In(1)} if own else {}),
            "rx": In(1, init=1),
            "tx": Out(1, init=1),
            "status": Out(len(STATUS_BITS)),
            "ext_fault": Out(1),
            "ext_fault_code": Out(SDRAMViolation),
            "ext_fault_cycle": Out(32),
        })

    @property
    def domain_freqs(self) -> dict[str, float]:
        """Each clock domain's frequency in Hz (``sync``: the engine's)."""
        return clock_domain_freqs(self.clk_freq, self.core.sdram_domain, self.core.sdram_clk_freq)

    def elaborate(self, platform):
        m = Module()
        m.submodules.core = core = self.core
        domain = core.sdram_domain
        own = {} if domain == "sync" else {"clk": getattr(self, f"{domain}_clk"), "rst": getattr(self, f"{domain}_rst")}
        side = clock_domain_side(m, domain, **own)
        side.submodules.model = model = self.model
        m.d.comb += [core.rx.eq(self.rx), self.tx.eq(core.tx), self.status.eq(core.status)]
        register_sdram_pins(side, core.sdram_pins, model.pins)
        m.d.comb += [self.ext_fault.eq(model.violation), self.ext_fault_code.eq(model.violation_code),
                     self.ext_fault_cycle.eq(model.violation_cycle)]
        return m
