"""The external-memory port across two clock domains: the memory on its own clock.

:class:`ExternalMemoryCDC` carries an :class:`~hw.engine.extmem.ExternalMemorySignature` port from
the initiator's domain to a memory clocked on its own (the ULX3S's SDRAM runs faster than the
engine: its 16-bit bus, not the array, bounds most of a LeNet-5 step): one
:class:`~amaranth.lib.fifo.AsyncFIFO` per stream, ``cmd`` and ``w`` toward the memory, ``r``
back. Each stream keeps its order, so the port stays in order (a command still sees every
command accepted before it, and a write's data may still arrive before or after its command);
what changes is latency, a few cycles of each clock per crossing, which the engine's readers
cover with the reads they keep in flight. Every stream passes a :class:`~hw.engine.skid.SkidBuffer`
on each side of its FIFO: an AsyncFIFO's ``r_rdy``/``w_rdy`` come from its synchronised pointers
through a comparator and its ``r_en``/``w_en`` go into a counter, and on the ULX3S the FIFOs sit by the
SDRAM pins, far from the engine (unbuffered, the engine's read clients' ready logic in series with
both took the engine clock from 40.4 to 27.1 MHz).

The FIFOs empty when their writing domain resets (Amaranth's AsyncFIFO: a read-domain reset does
not); the reading side then copies the writing side's count through a synchroniser, so a reset
must last at least three cycles of the other domain's clock (shorter, and the reading side can keep
a stale count: ``sim/test_sim_smoke.py`` saw it). At power-on both domains start empty.
"""

from __future__ import annotations

from amaranth.hdl import DomainRenamer, Module
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from .extmem import MAX_BURST, ExternalMemorySignature, command_layout
from .skid import SkidBuffer

__all__ = ["ExternalMemoryCDC"]


class ExternalMemoryCDC(wiring.Component):
    """``initiator`` (domain ``initiator_domain``) to ``target`` (domain ``memory_domain``).

    Parameters
    ----------
    addr_bits, data_width, max_burst : int
        The port's (:class:`~hw.engine.extmem.ExternalMemorySignature`).
    memory_domain : str
        The memory's clock domain (not the initiator's).
    initiator_domain : str
        The initiator's clock domain.
    depth : int
        Words of each data FIFO (``w`` and ``r``; a power of two from 4 to 1024); the command
        FIFO holds 8 commands.
    """

    def __init__(self, addr_bits: int, data_width: int, max_burst: int = MAX_BURST, *,
                 memory_domain: str = "memory", initiator_domain: str = "sync", depth: int = 16):
        try:
            signature = ExternalMemorySignature(addr_bits, data_width, max_burst)
            for name, value in (("memory_domain", memory_domain), ("initiator_domain", initiator_domain)):
                if not isinstance(value, str) or not value:
                    raise ValueError(f"{name}={value!r}: must be a clock domain name")
            if memory_domain == initiator_domain:
                raise ValueError(f"memory_domain={memory_domain!r}: the same domain as the initiator's; "
                                 f"connect the port directly")
            if isinstance(depth, bool) or not isinstance(depth, int) or not 4 <= depth <= 1024 \
                    or depth & (depth - 1):
                raise ValueError(f"depth={depth!r}: must be a power of two from 4 to 1024")
        except ValueError:
            self._MustUse__silence = True      # a rejected generator is not an "unused elaboratable"
            raise
        self.addr_bits, self.data_width, self.max_burst = addr_bits, data_width, max_burst
        self.memory_domain, self.initiator_domain, self.depth = memory_domain, initiator_domain, depth
        super().__init__({"initiator": In(signature), "target": Out(signature)})

    def __repr__(self):
        return (f"ExternalMemoryCDC({self.addr_bits}, {self.data_width}, max_burst={self.max_burst}, "
                f"memory_domain={self.memory_domain!r}, initiator_domain={self.initiator_domain!r}, "
                f"depth={self.depth})")

    def elaborate(self, platform):
        m = Module()
        near, far = self.initiator_domain, self.memory_domain
        cmd_width = command_layout(self.addr_bits, self.max_burst).size
        m.submodules.cmd_fifo = cmd = fifo.AsyncFIFO(width=cmd_width, depth=8, w_domain=near, r_domain=far)
        m.submodules.w_fifo = w = fifo.AsyncFIFO(width=self.data_width, depth=self.depth,
                                                 w_domain=near, r_domain=far)
        m.submodules.r_fifo = r = fifo.AsyncFIFO(width=self.data_width, depth=self.depth,
                                                 w_domain=far, r_domain=near)

        def skid(name, width, domain):
            buffer = SkidBuffer(width)
            m.submodules[name] = buffer if domain == "sync" else DomainRenamer({"sync": domain})(buffer)
            return buffer

        for name, fifo_, source, sink, width, source_domain, sink_domain in (
                ("cmd", cmd, self.initiator.cmd, self.target.cmd, cmd_width, near, far),
                ("w", w, self.initiator.w, self.target.w, self.data_width, near, far),
                ("r", r, self.target.r, self.initiator.r, self.data_width, far, near)):
            into, out_of = skid(f"{name}_in", width, source_domain), skid(f"{name}_out", width, sink_domain)
            m.d.comb += [into.i.payload.eq(source.payload), into.i.valid.eq(source.valid), source.ready.eq(into.i.ready),
                         sink.payload.eq(out_of.o.payload), sink.valid.eq(out_of.o.valid), out_of.o.ready.eq(sink.ready)]
            wiring.connect(m, into.o, fifo_.w_stream)
            wiring.connect(m, fifo_.r_stream, out_of.i)
        return m
