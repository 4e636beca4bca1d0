"""The engine with the board's SDRAM behind its external-memory port, for simulation.

:class:`EngineSDRAMSystem` has the ports of :class:`hw.engine.system.EngineSystem` (the engine's host
streams and ``ext_fault``) but serves the port as the ULX3S does: the
:class:`~boards.sdram.SDRAMController` built for the configuration, and the checking chip model
:class:`~boards.sdram_model.SDRAMModel` behind one register each way on every pin (the board top's
I/O registers, hence ``read_delay`` :data:`boards.top.SDRAM_READ_DELAY`). The engine and the SDRAM
share the clock ``clk_freq``, from which the controller's timing in cycles follows. ``ext_fault``
is the model's sticky timing-violation flag (``ext_fault_code``: which rule, ``ext_fault_cycle``: when). The simulations and ``benchmarks/engine_throughput.py
--memory sdram`` run it: the engine's cycle counts with the SDRAM's real bandwidth.
"""

from __future__ import annotations

from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from hw.engine.config import EngineConfig
from hw.engine.engine import Engine, host_layout

from .sdram import SDRAMGeometry, SDRAMTiming, connect_engine_port, engine_sdram
from .sdram_model import SDRAMModel, SDRAMViolation
from .top import SDRAM_READ_DELAY

__all__ = ["EngineSDRAMSystem"]


class EngineSDRAMSystem(wiring.Component):
    def __init__(self, config: EngineConfig, clk_freq: float):
        if not isinstance(config, EngineConfig) or not config.external_depth:
            self._MustUse__silence = True
            raise ValueError(f"config={config!r}: must be an EngineConfig with external words")
        self.config, self.clk_freq = config, clk_freq
        try:
            self.controller = engine_sdram(config, clk_freq, read_delay=SDRAM_READ_DELAY)
        except (TypeError, ValueError):
            self._MustUse__silence = True
            raise
        # store every row the controller can address (2**addr_bits words): it may activate a row
        # beyond the rows that hold the words the engine uses (seen with 1,280 words of 3 columns)
        g = SDRAMGeometry()
        addr_bits = len(self.controller.port.cmd.payload.addr)
        beats = (1 << addr_bits) * self.controller.beats
        rows = -(-beats // (1 << (g.col_bits + g.bank_bits)))
        self.model = SDRAMModel(SDRAMTiming().cycles(clk_freq), stored_row_bits=max(0, (rows - 1).bit_length()))
        self.engine = Engine(config)
        super().__init__({
            "host_in": In(stream.Signature(host_layout())),
            "host_out": Out(stream.Signature(host_layout())),
            "ext_fault": Out(1),
            "ext_fault_code": Out(SDRAMViolation),      # the first rule broken, and when
            "ext_fault_cycle": Out(32),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = engine = self.engine
        m.submodules.controller = controller = self.controller
        m.submodules.model = model = self.model
        wiring.connect(m, wiring.flipped(self.host_in), engine.host_in)
        wiring.connect(m, engine.host_out, wiring.flipped(self.host_out))
        connect_engine_port(m, engine.ext, controller.port)
        for name, member in controller.pins.signature.members.items():       # the top's I/O registers
            ctrl, chip = getattr(controller.pins, name), getattr(model.pins, name)
            m.d.sync += chip.eq(ctrl) if member.flow == wiring.Out else ctrl.eq(chip)
        m.d.comb += [self.ext_fault.eq(model.violation), self.ext_fault_code.eq(model.violation_code),
                     self.ext_fault_cycle.eq(model.violation_cycle)]
        return m
