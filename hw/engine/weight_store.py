"""The engine's stored weights: the weight-update unit on chip, the external memory beyond it.

:class:`WeightStore` has the ports of :class:`hw.weight_update.WeightUpdate` (``update``, ``load``,
``serve_cmd``/``serve``, ``readback_cmd``/``readback``) with engine-wide addresses
(:data:`~hw.engine.isa.ADDR_BITS`); the engine issues single-word serve and readback commands
(``count`` = 1). Words below ``weight_words`` are the on-chip unit's. With
``EngineConfig.external_weight_words`` > 0, word ``weight_words + k`` is external word
``external_words + k`` (the weights' region follows the data's), reached through four clients
of the engine's :class:`~hw.engine.extport.ExternalPort`:

* ``ext_serve`` / ``ext_readback`` — reads (:class:`~hw.engine.extport.TieredReader`: in order
  with the on-chip words; a served word is quantised to Wq here, with the unit's own
  ``forward_code``);
* ``ext_rmw`` and ``ext_write`` — an update of an external word reads Ws, then writes
  clip(Ws − ΔWs) (the unit's ``clip``); a load writes clip(w). Every word is updated once per GRAD,
  so no update waits for another's write; ``idle`` is high when every accepted update and load
  has been handed to the port or the unit (the port is in order, so the next instruction's reads
  see it). Updates and loads enter through skid buffers that decide their tier as they enter.
"""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.wiring import In, Out

from hw.weight_update import WeightUpdate

from .config import EngineConfig
from .extport import EXT_CREDITS, TieredReader, read_client_signature, write_client_signature
from .isa import ADDR_BITS
from .skid import SkidBuffer, tagged_skid

__all__ = ["WeightStore"]


class WeightStore(wiring.Component):
    def __init__(self, config: EngineConfig):
        self.config = config
        L = config.lanes
        self.unit = unit = WeightUpdate(config.wage, config.weight_words, L, target=config.target)
        self.external = config.external_weight_words > 0
        addr = unsigned(ADDR_BITS)
        self.update_layout = data.StructLayout({"addr": addr, "dw": unit.update_layout["dw"].shape})
        self.load_layout = data.StructLayout({"addr": addr, "w": unit.word_layout})
        self.cmd_layout = data.StructLayout({"start": addr, "count": range(2)})
        members = {
            "update": In(stream.Signature(self.update_layout)),
            "load": In(stream.Signature(self.load_layout)),
            "serve_cmd": In(stream.Signature(self.cmd_layout)),
            "serve": Out(stream.Signature(unit.serve_layout)),
            "readback_cmd": In(stream.Signature(self.cmd_layout)),
            "readback": Out(stream.Signature(unit.readback_layout)),
            "idle": Out(1),
        }
        if self.external:
            ew = config.external_width
            members.update({"ext_serve": Out(read_client_signature(ADDR_BITS, ew)),
                            "ext_readback": Out(read_client_signature(ADDR_BITS, ew)),
                            "ext_rmw": Out(read_client_signature(ADDR_BITS, ew)),
                            "ext_write": Out(write_client_signature(ADDR_BITS, ew))})
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        m.submodules.unit = unit = self.unit
        if not self.external:
            # field by field: the unit's addresses are narrower (its depth's), so the layouts differ
            for ours, theirs, fields in ((self.update, unit.update, ("addr", "dw")), (self.load, unit.load, ("addr", "w")),
                                         (self.serve_cmd, unit.serve_cmd, ("start", "count")),
                                         (self.readback_cmd, unit.readback_cmd, ("start", "count"))):
                m.d.comb += [theirs.valid.eq(ours.valid), ours.ready.eq(theirs.ready)]
                m.d.comb += [getattr(theirs.payload, f).eq(getattr(ours.payload, f)) for f in fields]
            wiring.connect(m, unit.serve, wiring.flipped(self.serve))
            wiring.connect(m, unit.readback, wiring.flipped(self.readback))
            m.d.comb += self.idle.eq(1)
            return m

        cfg, L, kG = self.config, self.config.lanes, self.config.wage.kG
        D, base = cfg.weight_words, cfg.external_words
        word_bits = L * kG

        def lanes_of(value):
            return [value[i * kG:(i + 1) * kG].as_signed() for i in range(L)]

        def wq_of(ext_word):
            return Cat(*(unit.forward_code(w) for w in lanes_of(ext_word)))

        # ---- serve and readback: tiered single-word reads ----------------------------------------
        for name, cmd, out, unit_cmd, unit_out, width, convert in (
                ("serve", self.serve_cmd, self.serve, unit.serve_cmd, unit.serve,
                 L * unit.wq_width, wq_of),
                ("readback", self.readback_cmd, self.readback, unit.readback_cmd, unit.readback, word_bits, None)):
            # (registered: the tier compares and the response's routing start at flip-flops; both
            # readers were on failing paths of the 8-lane engine, -8.4 to -9.2 ns, placed)
            tier = TieredReader(ADDR_BITS, width, cfg.external_width, D, ext_base=base, ext_convert=convert,
                                registered=True)
            m.submodules[f"{name}_tier"] = tier
            field = "wq" if name == "serve" else "w"
            m.d.comb += [tier.req.valid.eq(cmd.valid), tier.req.payload.eq(cmd.payload.start), cmd.ready.eq(tier.req.ready),
                         unit_cmd.valid.eq(tier.chip.req.valid), unit_cmd.payload.start.eq(tier.chip.req.payload),
                         unit_cmd.payload.count.eq(1), tier.chip.req.ready.eq(unit_cmd.ready),
                         tier.chip.resp.valid.eq(unit_out.valid),
                         tier.chip.resp.payload.eq(getattr(unit_out.payload, field).as_value()),
                         unit_out.ready.eq(tier.chip.resp.ready),
                         out.valid.eq(tier.resp.valid), getattr(out.payload, field).eq(tier.resp.payload),
                         out.payload.last.eq(1), tier.resp.ready.eq(out.ready)]
            wiring.connect(m, tier.ext, wiring.flipped(getattr(self, f"ext_{name}")))

        # ---- update: on chip, or read-modify-write of the external word --------------------------
        # The update's tier is decided as it enters a skid buffer, so the rmw queue's write enable
        # (LUT RAM, fanned out) and the port's request start at flip-flops, not at a 24-bit compare
        # (a failing class of 512 endpoints at 8 lanes after placement)
        upd, upd_ext, update_in = tagged_skid(m, "update_in", self.update, self.update.payload.addr >= D)
        # rmw_q holds every update accepted whose write is not yet handed to the port, so its room is
        # the read credit (rmw_data, as deep, always has room for the data of the reads in flight)
        m.submodules.rmw_q = rmw_q = fifo.SyncFIFO(width=self.update_layout.size, depth=EXT_CREDITS)
        m.submodules.rmw_data = rmw_data = fifo.SyncFIFOBuffered(width=cfg.external_width, depth=EXT_CREDITS)
        rd = self.ext_rmw
        # The reads go out through a skid buffer, so the queue's write enable (64 words of LUT RAM)
        # waits on its registered room, not on the port's arbitration (−6.0 ns at 8 lanes, placed).
        # The queue still bounds the reads in flight: each read has its entry from the cycle it is
        # asked for.
        m.submodules.rmw_req = rmw_req = SkidBuffer(unsigned(ADDR_BITS))
        wiring.connect(m, rmw_req.o, wiring.flipped(rd.req))
        ext_ok = rmw_q.w_rdy & rmw_req.i.ready
        m.d.comb += [
            unit.update.valid.eq(upd.valid & ~upd_ext), unit.update.payload.addr.eq(upd.payload.addr),
            unit.update.payload.dw.eq(upd.payload.dw),
            rmw_req.i.valid.eq(upd.valid & upd_ext & rmw_q.w_rdy),
            rmw_req.i.payload.eq(upd.payload.addr - D + base),
            rmw_q.w_en.eq(upd.valid & upd_ext & ext_ok), rmw_q.w_data.eq(upd.payload.as_value()),
            upd.ready.eq(Mux(upd_ext, ext_ok, unit.update.ready)),
            rmw_data.w_en.eq(rd.resp.valid), rmw_data.w_data.eq(rd.resp.payload), rd.resp.ready.eq(rmw_data.w_rdy),
        ]
        head = data.View(self.update_layout, rmw_q.r_data)
        ws = lanes_of(rmw_data.r_data)
        new = Cat(*(unit.clip(w - dw) for w, dw in zip(ws, head.dw)))
        # The writes leave through a skid buffer: the read-modify-write (the queue's LUT-RAM read,
        # the subtract and clip of every lane) ends at its registers, not in the port's write
        # FIFO (−9.0 ns at 8 lanes, placed), and the queue's read enable waits on its room alone.
        m.submodules.wr_q = wr_q = SkidBuffer(self.ext_write.req.payload.shape())
        wiring.connect(m, wr_q.o, wiring.flipped(self.ext_write.req))
        wr = wr_q.i
        rmw_valid = rmw_q.r_rdy & rmw_data.r_rdy
        # Loads too: their tier compare sat in front of the unit's arbitration and, through the
        # serve sequencer's command ready, the serve command buffer's enables (−9.5 ns, placed).
        load, load_ext, load_in = tagged_skid(m, "load_in", self.load, self.load.payload.addr >= D)
        loaded = Cat(*(unit.clip(w) for w in lanes_of(load.payload.w.as_value())))
        m.d.comb += [
            unit.load.valid.eq(load.valid & ~load_ext), unit.load.payload.addr.eq(load.payload.addr),
            unit.load.payload.w.eq(load.payload.w),
        ]
        # one write client: read-modify-write results first (loads come from the host, between runs)
        with m.If(rmw_valid):
            m.d.comb += [wr.valid.eq(1), wr.payload.addr.eq(head.addr - D + base), wr.payload.data.eq(new),
                         rmw_q.r_en.eq(wr.ready), rmw_data.r_en.eq(wr.ready),
                         load.ready.eq(~load_ext & unit.load.ready)]
        with m.Else():
            m.d.comb += [wr.valid.eq(load.valid & load_ext), wr.payload.addr.eq(load.payload.addr - D + base),
                         wr.payload.data.eq(loaded),
                         load.ready.eq(Mux(load_ext, wr.ready, unit.load.ready))]
        m.d.comb += self.idle.eq(~rmw_q.r_rdy & update_in.empty & load_in.empty & wr_q.empty)  # (rmw_req empties before rmw_q)
        return m
