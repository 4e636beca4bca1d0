"""The engine's external-memory port: burst commands, write data and read data as three streams.

:class:`ExternalMemorySignature` is the port an initiator (the engine) drives and a memory (the
simulation model :class:`hw.engine.extmem_model.ExternalMemoryModel`, later an SDRAM controller)
answers. Word-addressed; a word is ``data_width`` bits (the engine's is one activation word,
:attr:`hw.engine.config.EngineConfig.external_width`).

* ``cmd`` (initiator → memory): ``addr`` (first word), ``count`` (words, 1..``max_burst``),
  ``write``.
* ``w`` (initiator → memory): the data of write commands, ``count`` words per write command, in
  command order. The words may arrive before or after their command; the memory waits for them.
* ``r`` (memory → initiator): the data of read commands, ``count`` words per read command, in
  command order.

The port is in order: every command sees the effect of every command accepted before it (a read
after a write to the same word returns the written data). Addresses at or above the memory's
depth are an error of the initiator; the model flags them.
"""

from __future__ import annotations

from amaranth.hdl import unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["ExternalMemorySignature", "command_layout", "MAX_BURST"]

#: Longest burst the engine issues (words per command).
MAX_BURST = 16


def command_layout(addr_bits: int, max_burst: int = MAX_BURST) -> data.StructLayout:
    return data.StructLayout({"addr": unsigned(addr_bits), "count": range(max_burst + 1), "write": 1})


class ExternalMemorySignature(wiring.Signature):
    """The external-memory port, seen from the initiator (see the module docstring)."""

    def __init__(self, addr_bits: int, data_width: int, max_burst: int = MAX_BURST):
        for name, value, high in (("addr_bits", addr_bits, 32), ("data_width", data_width, 4096),
                                  ("max_burst", max_burst, 256)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= high:
                raise ValueError(f"{name}={value!r}: must be an integer in 1..{high}")
        self.addr_bits, self.data_width, self.max_burst = addr_bits, data_width, max_burst
        super().__init__({
            "cmd": Out(stream.Signature(command_layout(addr_bits, max_burst))),
            "w": Out(stream.Signature(unsigned(data_width))),
            "r": In(stream.Signature(unsigned(data_width))),
        })

    def __eq__(self, other):
        return (type(other) is type(self) and other.addr_bits == self.addr_bits
                and other.data_width == self.data_width and other.max_burst == self.max_burst)

    def __hash__(self):
        return hash((type(self), self.addr_bits, self.data_width, self.max_burst))

    def __repr__(self):
        return f"ExternalMemorySignature({self.addr_bits}, {self.data_width}, max_burst={self.max_burst})"
