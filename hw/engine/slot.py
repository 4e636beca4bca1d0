"""Pattern slots: one engine address generator that walks either kind of pattern.

Every address stream of the engine (operands A and B, the auxiliary read, the result rows, the
gradient's draw indices) may walk a plain :class:`~hw.engine.isa.AddressPattern` (fully connected
layers) or a convolution :class:`~hw.engine.conv.ConvPattern` (im2col by address generation). A
*slot* holds one of them: :func:`slot_layout` is ``{conv: 1, p: union{simple, conv}}`` and
:func:`slot_payload` fills it from a Python pattern.

:class:`SlotGenerator` holds an :class:`~hw.engine.addrgen.AddressGenerator` and a
:class:`~hw.engine.conv_addrgen.ConvAddressGenerator`, hands each command to the one its ``conv``
bit names, and merges their beat streams (the layouts are the same). A command is taken only while
its generator takes commands and the other has nothing left to send (the convolution walk's
``drained``: it runs ahead into a FIFO), so beats of consecutive patterns never mix; a convolution
command may follow another at once, as may a plain one (each generator keeps its own order).
With ``conv=False`` (an engine whose network has no convolution) the convolution generator is not
built — it is most of a slot's logic — and the engine refuses conv instructions before they reach
a slot (``BAD_INSTRUCTION``). The merged stream leaves through a :class:`~hw.engine.skid.SkidBuffer`, so that the consumer's
``ready`` (often a join of several streams in the engine) reaches the generators' counters only
as a flip-flop: one cycle more from a command to its first beat, still one beat per cycle.
``digits`` sizes the convolution generator's odometers; with ``payload_held=True`` both generators
read the held payload instead of a copy, the sender holding ``cmd.payload`` from the handshake
until ``cmd.ready`` rises again (both: :class:`~hw.engine.conv_addrgen.ConvAddressGenerator`).
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from .addrgen import AddressGenerator, address_beat_layout
from .conv import MAX_DIGITS, ConvPattern
from .conv_addrgen import ConvAddressGenerator, check_digits, conv_pattern_layout, conv_pattern_payload
from .isa import GEN_FIELDS, AddressPattern, pattern_layout
from .skid import SkidBuffer

__all__ = ["slot_layout", "slot_payload", "SlotGenerator"]


def slot_layout() -> data.StructLayout:
    return data.StructLayout({"conv": 1, "p": data.UnionLayout({"simple": pattern_layout(),
                                                               "conv": conv_pattern_layout()})})


def slot_payload(pattern) -> dict:
    """The :func:`slot_layout` value of an AddressPattern or a ConvPattern."""
    if isinstance(pattern, ConvPattern):
        return {"conv": 1, "p": {"conv": conv_pattern_payload(pattern)}}
    if isinstance(pattern, AddressPattern):
        return {"conv": 0, "p": {"simple": {name: getattr(pattern, name) for name, _ in GEN_FIELDS}}}
    raise TypeError(f"pattern={pattern!r}: must be an AddressPattern or a ConvPattern")


def slot_rows(slot) -> "Value":
    """The ``nr`` count of a slot value (a transposed operand has nr = L)."""
    return Mux(slot.conv, slot.p.conv.nr, slot.p.simple.nr)


class SlotGenerator(wiring.Component):
    """Walks the pattern of a slot (see the module docstring)."""

    def __init__(self, lanes: int, *, conv: bool = True, payload_held: bool = False,
                 digits: tuple = (MAX_DIGITS, MAX_DIGITS)):
        for name, flag in (("conv", conv), ("payload_held", payload_held)):
            if not isinstance(flag, bool):
                self._MustUse__silence = True      # a rejected slot is not an "unused elaboratable"
                raise TypeError(f"{name}={flag!r}: must be True or False")
        check_digits(digits, self)
        self.lanes, self.conv, self.payload_held, self.digits = lanes, conv, payload_held, digits
        super().__init__({
            "cmd": In(stream.Signature(slot_layout())),
            "o": Out(stream.Signature(address_beat_layout())),
        })

    def elaborate(self, platform):
        m = Module()
        m.submodules.simple = simple = AddressGenerator(self.lanes, payload_held=self.payload_held)
        m.submodules.out = out = SkidBuffer(address_beat_layout())
        wiring.connect(m, out.o, wiring.flipped(self.o))
        if not self.conv:
            m.d.comb += [simple.cmd.payload.eq(self.cmd.payload.p.simple)]
            wiring.connect(m, simple.o, out.i)
            m.d.comb += [simple.cmd.valid.eq(self.cmd.valid), self.cmd.ready.eq(simple.cmd.ready)]
            return m
        m.submodules.conv = conv = ConvAddressGenerator(self.lanes, payload_held=self.payload_held,
                                                        digits=self.digits)
        # A command goes to its generator once the other has nothing left to send (the conv walk
        # runs ahead into its FIFO: `drained`); a conv command may follow a conv command at once.
        simple_drained = simple.cmd.ready & ~simple.o.valid
        pl = self.cmd.payload
        ready = Mux(pl.conv, conv.cmd.ready & simple_drained, simple.cmd.ready & conv.drained)
        m.d.comb += [
            simple.cmd.payload.eq(pl.p.simple), conv.cmd.payload.eq(pl.p.conv),
            simple.cmd.valid.eq(self.cmd.valid & ready & ~pl.conv),
            conv.cmd.valid.eq(self.cmd.valid & ready & pl.conv),
            self.cmd.ready.eq(ready),
            # at most one generator holds a beat (commands wait for both to drain)
            out.i.valid.eq(simple.o.valid | conv.o.valid),
            out.i.payload.eq(Mux(conv.o.valid, conv.o.payload.as_value(), simple.o.payload.as_value())),
            simple.o.ready.eq(out.i.ready), conv.o.ready.eq(out.i.ready),
        ]
        return m
