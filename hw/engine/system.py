"""The engine with a simulated external memory behind its port: what the simulations run.

:class:`EngineSystem` has the engine's host streams. With an external memory in the config
(:attr:`~hw.engine.config.EngineConfig.external_depth` > 0) an
:class:`~hw.engine.extmem_model.ExternalMemoryModel` of that many words answers the engine's
external-memory port, with the given latency and bandwidth (:class:`ExternalTiming`); on a board the
same port is served by the SDRAM controller instead. ``ext_fault`` is the model's out-of-range flag.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Module
from amaranth.lib import stream, wiring
from amaranth.lib.wiring import In, Out

from .config import EngineConfig
from .engine import Engine, host_layout
from .extmem_model import ExternalMemoryModel
from .isa import ADDR_BITS

__all__ = ["EngineSystem", "ExternalTiming"]


@dataclass(frozen=True)
class ExternalTiming:
    """The simulated external memory's timing (see :class:`~hw.engine.extmem_model.ExternalMemoryModel`):
    read latency in cycles, cycles per word on its data bus, dead cycles per burst command."""
    latency: int = 20
    cycles_per_word: int = 1
    command_cycles: int = 0


class EngineSystem(wiring.Component):
    def __init__(self, config: EngineConfig, timing: ExternalTiming = ExternalTiming()):
        if not isinstance(timing, ExternalTiming):
            raise TypeError(f"timing={timing!r}: must be a hw.engine.system.ExternalTiming")
        self.engine = Engine(config)
        self.config, self.timing = config, timing
        self.memory = None
        if config.external_depth:
            self.memory = ExternalMemoryModel(config.external_depth, config.external_width, addr_bits=ADDR_BITS,
                                              latency=timing.latency, cycles_per_word=timing.cycles_per_word,
                                              command_cycles=timing.command_cycles)
        super().__init__({
            "host_in": In(stream.Signature(host_layout())),
            "host_out": Out(stream.Signature(host_layout())),
            "ext_fault": Out(1),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.engine = engine = self.engine
        wiring.connect(m, wiring.flipped(self.host_in), engine.host_in)
        wiring.connect(m, engine.host_out, wiring.flipped(self.host_out))
        if self.memory is not None:
            m.submodules.memory = memory = self.memory
            wiring.connect(m, engine.ext, memory.port)
            m.d.comb += self.ext_fault.eq(memory.fault)
        return m
