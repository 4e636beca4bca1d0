"""A registered stream slice (skid buffer): cuts every combinational path through a stream joint.

:class:`SkidBuffer` sits between a producer (``i``) and a consumer (``o``) of one
:mod:`amaranth.lib.stream`. Both of its ports are driven from flip-flops: ``o.valid`` and
``o.payload`` are registers, and ``i.ready`` is the (registered) "skid slot empty" flag. So no
path runs from the consumer's ``ready`` back into the producer, nor from the producer's ``valid``
or payload forward into the consumer. Throughput is one beat per cycle (the second entry, the
skid slot, absorbs the beat accepted in the cycle the consumer stalls); latency is one cycle.

:class:`PingPongBuffer` has the same ports, timing and registered ``o.valid``/``i.ready``, but
keeps its two beats in slots that only the write side loads: the consumer's ``ready`` reaches a
pointer and two flags instead of a payload register's every bit. It suits a consumer whose ready
is deep logic; its payload comes out through a 2:1 multiplexer.

Stream rules: ``o.valid`` never depends on ``o.ready`` (it is a register), the payload holds until
taken, and beats leave in the order they came.
"""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, Value
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

__all__ = ["SkidBuffer", "PingPongBuffer", "tagged_skid"]


class _StreamBuffer(wiring.Component):
    """Ports of a one-cycle stream buffer: ``i`` in, ``o`` out, both of ``shape``."""

    def __init__(self, shape):
        self.shape = shape
        super().__init__({
            "i": In(stream.Signature(shape)),
            "o": Out(stream.Signature(shape)),
        })


class SkidBuffer(_StreamBuffer):
    @property
    def empty(self):
        """High while the buffer holds no beat."""
        return ~self.o.valid & self.i.ready

    def elaborate(self, platform):
        m = Module()
        # The payload registers have no reset (only the valid flags do): nothing reads them while
        # their flag is low, and a reset fanned out to every payload bit is a timing path of its own.
        skid = Signal.like(self.o.payload, name="skid", reset_less=True)
        out = Signal.like(self.o.payload, name="out", reset_less=True)
        skid_valid = Signal()
        m.d.comb += [self.i.ready.eq(~skid_valid), self.o.payload.eq(out)]
        # The payload registers load whatever is offered, valid or not, whenever their slot is free:
        # their enables are then one flag each (~skid_valid; the output's free), and neither the
        # producer's valid nor the consumer's ready reaches the slot's hundreds of enables. A slot
        # loaded without a beat is never read: its valid flag stays low.
        with m.If(~skid_valid):
            m.d.sync += skid.eq(self.i.payload)
        with m.If(~self.o.valid | self.o.ready):           # the output register is free this cycle
            with m.If(skid_valid):
                m.d.sync += [out.eq(skid), skid_valid.eq(0)]   # o.valid stays 1
            with m.Else():
                m.d.sync += [self.o.valid.eq(self.i.valid), out.eq(self.i.payload)]
        with m.Elif(self.i.valid & ~skid_valid):             # output stalled: the beat waits in the slot
            m.d.sync += skid_valid.eq(1)
        return m


class PingPongBuffer(_StreamBuffer):
    """A two-entry FIFO with the ports of :class:`SkidBuffer`, for a consumer whose ``ready`` is
    deep logic (a join of several streams): that ``ready`` reaches only the read pointer and two
    flags, never the payload registers' enables, which hang on write-side flip-flops alone (a
    :class:`SkidBuffer`'s output register loads on the consumer's ready: the join's logic fanned
    out to all of its bits). ``o.valid`` and ``i.ready`` are registers; the payload leaves through
    a 2:1 multiplexer whose select is a flip-flop. One beat per cycle, one cycle of latency."""

    @property
    def empty(self):
        """High while the buffer holds no beat."""
        return ~self.o.valid

    def elaborate(self, platform):
        m = Module()
        slots = [Signal.like(self.o.payload, name=f"slot{k}", reset_less=True) for k in range(2)]
        w_ptr, r_ptr = Signal(), Signal()
        full = Signal()                                    # two beats held
        m.d.comb += [self.i.ready.eq(~full), self.o.payload.eq(Mux(r_ptr, slots[1], slots[0]))]
        # The slot the write pointer names is free unless the buffer is full: it loads whatever is
        # offered (valid or not), so its enable is two flip-flops; a slot loaded without a beat is
        # never read, as the pointer only moves with a beat.
        for k in range(2):
            with m.If((w_ptr == k) & ~full):
                m.d.sync += slots[k].eq(self.i.payload)
        put = self.i.valid & ~full
        take = self.o.valid & self.o.ready
        with m.If(put):
            m.d.sync += w_ptr.eq(~w_ptr)
        with m.If(take):
            m.d.sync += r_ptr.eq(~r_ptr)
        # held beats: 0 (~o.valid), 1 (o.valid & ~full) or 2 (full)
        with m.If(put & ~take):
            m.d.sync += [self.o.valid.eq(1), full.eq(self.o.valid)]
        with m.Elif(take & ~put):
            m.d.sync += [full.eq(0), self.o.valid.eq(full)]
        return m


def tagged_skid(m: Module, name: str, source, tag):
    """``source`` (a stream the caller receives) through a :class:`SkidBuffer` added to ``m`` as
    ``name``, with ``tag`` (a value computed from the beat entering, e.g. an address compare; any
    width) registered beside it, so that what the tag decides starts at flip-flops. Returns the
    stream out, its head beat's tag and the buffer (for :attr:`SkidBuffer.empty`)."""
    tag = Value.cast(tag)
    buf = m.submodules[name] = SkidBuffer(data.StructLayout({"beat": source.payload.shape(), "tag": len(tag)}))
    m.d.comb += [buf.i.valid.eq(source.valid), buf.i.payload.beat.eq(source.payload), buf.i.payload.tag.eq(tag),
                 source.ready.eq(buf.i.ready)]
    out = stream.Signature(source.payload.shape()).create()
    m.d.comb += [out.valid.eq(buf.o.valid), out.payload.eq(buf.o.payload.beat), buf.o.ready.eq(out.ready)]
    return out, buf.o.payload.tag, buf
