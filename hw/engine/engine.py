"""The training engine: scratchpads, array, quantiser, weight store, sequencer and host port.

:class:`Engine` executes the programs of :mod:`hw.engine.compiler` and speaks the packet format of
:mod:`hw.engine.protocol` on ``host_in``/``host_out`` (32-bit streams, ``last`` ends a packet).

Blocks (``L`` = ``config.lanes``)

* activation scratchpad — :class:`hw.bram.BlockRam` of ``data_words`` words {L × int8, L ReLU-mask
  bits, L saturation-mask bits, L 2-bit pool indices}; error scratchpad — ``data_words`` words of L × int8;
* weight store — :class:`~hw.engine.weight_store.WeightStore`: a :class:`hw.weight_update.WeightUpdate`
  (``weight_words`` words of L stored weights, the rest in the external memory;
  serves Wq, applies ΔW);
* :class:`hw.mac_array.MacArray` L×L int8 (``config.target``: MULT18X18D on ECP5), accumulators
  sized from ``config.max_reduction``; :class:`hw.quantizer.ShiftQuantizer` with L lanes;
* operand feeders A and B and the auxiliary reader (:mod:`hw.engine.feeder`), the result and draw
  generators; each walks a pattern slot (:mod:`hw.engine.slot`: a plain or a convolution pattern)
  where it stands in the instruction register (all but the draw generator keep no copy);
* the pool stage (:class:`~hw.engine.pool.WindowPool`, FWD with ``pool``) before the quantiser and
  the unpool stage (:class:`~hw.engine.unpool.Unpool`, ERR with ``unpool_dx``) after it;
* the sum buffer (``config.sum_words`` > 0): :class:`hw.bram.BlockRam` of result rows (L
  accumulator-width sums) for store-then-quantise ERR/GRAD records; with external sums
  (``config.external_sum_words`` > 0) a row queue, a writer that sends each row as
  ``config.sum_chunks`` external words and a reader that joins them again (on the error writer's
  port client, which is idle in the passes that use it, and sharing the error reader's through a
  :class:`~hw.engine.extport.SharedReadClient`);
* the program memory (``program_words`` 32-bit words; :mod:`hw.engine.encoding` records of
  delta records: a mask of MASK_WORDS words, then the record words that differ from the previous
  record's; the fetch reads the mask, then visits every record word in turn, one per cycle,
  loading those the mask names through a stage of registers and keeping the others,
  MASK_WORDS + MACHINE_WORDS + 6 cycles per record) and the labels.

One finite-state machine parses host packets and, for ``RUN``, sequences the program: for each
instruction it fetches the record, loads the patterns into the generators and the command into the
quantiser (pass 1; for GRAD also the draw pattern into its generator, whose addresses are the draw
indices the quantiser prefetches), for the two-pass operations loads the patterns again (pass 2;
streams keep the order, so pass 2 queues behind pass 1) — or, for a record with ``stored``, only
the aux and result patterns, pass 2's rows coming back from the sum buffer or the external sums
that pass 1 filled (store-then-quantise: the array runs once; external reads start once every
row's words have been issued to the port, which keeps order) — and waits until the result generator's
last row has been written (and the unpool stage has written its four words). An error product in
parts (:mod:`hw.engine.conv`, ``part``) runs pass 1 over several records, each waiting only until
its rows have entered the quantiser, and pass 2 in its finish record; a RUN that stops inside
one (a bad record) first feeds the quantiser the zero rows its command still expects (FLUSH).
A gradient product comes in parts too, one per output-channel block, each after a COPY record that
stages its block of the spilled error operand in the error scratchpad (tile staging; COPY moves one
word per cycle from the ``aux`` pattern's addresses to the ``out`` pattern's and may run inside an
open product; its cycles count with the gradient phase). A forward product whose input map is spilled
runs in batch bands, each after a COPY_ACT record that stages the band's input words (whole
activation words: values, masks, pool indices) in the activation scratchpad (its cycles count
with the forward phase; after the step's LOSS, with the gradient phase). A gradient product in
batch bands accumulates its stored sums across its parts: a part with ``sum_add`` joins each
array row with the stored row it replaces (read ahead from row 0) and stores the sum; a part with
``sum_hold`` stores its rows without the quantiser, which sees only the last band's finished sums.
Memory ports are routed by the running operation:

==========  ======================  ======================  ===================  ====================
operation   feeder A                feeder B                auxiliary reader     results to
==========  ======================  ======================  ===================  ====================
FWD         act, transposed         weights (Wq), transp.   —                    [pool →] act (A,
                                                                                 masks, pool index)
LOSS        —                       —                       act (A_out, sat)      err (× sat)
ERR         err, transposed         weights (Wq), direct    act (producer masks,  err (× relu)
                                                            pool index)           [→ unpool]
GRAD        err, direct             act, direct             —                    weight updates
COPY        —                       —                       err (the source)     err (the stage)
COPY_ACT    —                       —                       act (the source)     act (the stage)
==========  ======================  ======================  ===================  ====================

A convolution is the same operation with convolution patterns (im2col by address generation:
the operand generators walk the input map's taps; padding and batch tails are invalid beats,
read as zero words).
"""

from __future__ import annotations

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from hw.bram import BlockRam
from hw.mac_array import MacArray
from hw.quantizer import Mode, ShiftQuantizer

from .config import EngineConfig
from .encoding import MACHINE_BITS, MACHINE_WORDS, MASK_WORDS, SLOTS, machine_layout
from .extmem import ExternalMemorySignature
from .extport import EXT_CREDITS, ExternalPort, SharedReadClient, TieredReader, TieredWriter
from .feeder import FLAG_DEPTH, OperandFeeder, PatternReader, RamReader
from .conv import PART_FINISH, PART_FIRST, PART_NEXT, PART_WHOLE
from .isa import ADDR_BITS, STORE_CHIP, STORE_EXTERNAL, Op
from .pool import WindowPool
from .protocol import ARGUMENTS, COUNTERS, IDENT, LABEL_BITS, Command, Status, Target, ident_values, item_bits
from .skid import PingPongBuffer, SkidBuffer
from .slot import SlotGenerator, slot_rows
from .unpool import Unpool
from .weight_store import WeightStore

__all__ = ["Engine", "host_layout"]

#: Staging registers between the program RAM and the instruction register (each feeds about 26
#: of the record's 211 words).
FETCH_GROUPS = 8


def host_layout() -> data.StructLayout:
    return data.StructLayout({"data": 32, "last": 1})


def registered_write(m: Module, ram: BlockRam, en, addr, data_) -> None:
    """Drive ``ram``'s write port from registers loaded with ``en``, ``addr`` and ``data_`` (a write
    lands a cycle later). Only the enable has a reset: the reset net reaches every register that
    has one (a failing class of its own at 8 lanes), and address and data mean nothing without it."""
    w_addr = Signal.like(ram.w_addr, reset_less=True)
    w_data = Signal.like(ram.w_data, reset_less=True)
    m.d.sync += [ram.w_en.eq(en), w_addr.eq(addr), w_data.eq(data_)]
    m.d.comb += [ram.w_addr.eq(w_addr), ram.w_data.eq(w_data)]


def onehot_cases(order, *values) -> tuple[str, ...]:
    """``Case`` patterns, one per value in ``values``, of ``Cat`` of one flag per element of
    ``order`` (the first element is the lowest bit): each pattern tests its own flag alone."""
    n = len(order)
    return tuple("-" * (n - 1 - order.index(v)) + "1" + "-" * order.index(v) for v in values)


class Engine(wiring.Component):
    def __init__(self, config: EngineConfig):
        if not isinstance(config, EngineConfig):
            self._MustUse__silence = True      # a rejected generator is not an "unused elaboratable"
            raise TypeError(f"config={config!r}: must be a hw.engine.config.EngineConfig")
        self.config = config
        L = config.lanes
        self.act_layout = data.StructLayout({"data": data.ArrayLayout(signed(8), L), "relu": L, "sat": L,
                                             "pool": data.ArrayLayout(2, L)})
        self.err_layout = data.ArrayLayout(signed(8), L)
        members = {
            "host_in": In(stream.Signature(host_layout())),
            "host_out": Out(stream.Signature(host_layout())),
        }
        if config.external_depth:
            members["ext"] = Out(ExternalMemorySignature(ADDR_BITS, config.external_width))
        super().__init__(members)

    def elaborate(self, platform):
        m = Module()
        cfg, wage, L = self.config, self.config.wage, self.config.lanes
        shift_l = L.bit_length() - 1

        # ---- blocks ------------------------------------------------------------------------------
        m.submodules.act = act = BlockRam(self.act_layout.size, cfg.data_words, target=cfg.target)
        m.submodules.err = err = BlockRam(self.err_layout.size, cfg.data_words, target=cfg.target)
        m.submodules.wu = wu = WeightStore(cfg)
        m.submodules.act_ram_rd = act_ram_rd = RamReader(self.act_layout.size)
        m.submodules.err_ram_rd = err_ram_rd = RamReader(self.err_layout.size)
        m.d.comb += [act.r_addr.eq(act_ram_rd.r_addr), act_ram_rd.r_data.eq(act.r_data),
                     err.r_addr.eq(err_ram_rd.r_addr), err_ram_rd.r_data.eq(err.r_data)]
        # Data memory ports as the datapath sees them: act_rd/err_rd (request/response) and the write
        # strobes act_w*/err_w* with their ready. With an external memory, addresses ≥ data_words go
        # through the port (hw.engine.extport); without one, straight to the block RAMs (ready = 1).
        act_wv, err_wv = Signal(), Signal()
        act_wa, err_wa = Signal(ADDR_BITS), Signal(ADDR_BITS)
        act_wd, err_wd = Signal(self.act_layout.size), Signal(self.err_layout.size)
        act_wready, err_wready = Signal(init=1), Signal(init=1)
        writes_idle = Signal(init=1)
        ext_read_words, ext_write_words = Signal(32), Signal(32)
        if cfg.external_depth:
            ew = cfg.external_width
            # registered: requests and responses pass skid buffers, the tier decided as a request
            # enters (the routed requests' select and the responses' consumers stop at registers)
            m.submodules.act_rd = act_rd = TieredReader(ADDR_BITS, self.act_layout.size, ew, cfg.data_words,
                                                        registered=True)
            m.submodules.err_rd = err_rd = TieredReader(ADDR_BITS, self.err_layout.size, ew, cfg.data_words,
                                                        registered=True)
            m.submodules.act_wr = act_wr = TieredWriter(ADDR_BITS, self.act_layout.size, ew, cfg.data_words,
                                                        registered=True)
            m.submodules.err_wr = err_wr = TieredWriter(ADDR_BITS, self.err_layout.size, ew, cfg.data_words,
                                                        registered=True)
            weights_out = cfg.external_weight_words > 0
            # External sums share the error reader's and writer's port clients (below), so the
            # port's arbitration keeps 8 clients (10: 87 → 73 MHz placed alone on the 85F).
            m.submodules.ext_port = ext_port = ExternalPort(ADDR_BITS, ew, readers=5 if weights_out else 2,
                                                            writers=3 if weights_out else 2)
            for tier, ram_rd in ((act_rd, act_ram_rd), (err_rd, err_ram_rd)):
                wiring.connect(m, tier.chip.req, ram_rd.req)
                wiring.connect(m, tier.chip.resp, ram_rd.resp)
            wiring.connect(m, act_rd.ext, ext_port.rd0)
            wiring.connect(m, act_wr.ext, ext_port.wr0)
            if not cfg.external_sum_words:
                wiring.connect(m, err_rd.ext, ext_port.rd1)
                wiring.connect(m, err_wr.ext, ext_port.wr1)
            if weights_out:
                wiring.connect(m, wu.ext_serve, ext_port.rd2)
                wiring.connect(m, wu.ext_readback, ext_port.rd3)
                wiring.connect(m, wu.ext_rmw, ext_port.rd4)
                wiring.connect(m, wu.ext_write, ext_port.wr2)
            wiring.connect(m, ext_port.port, wiring.flipped(self.ext))
            # Each writer behind its skid buffer (registered=True), its scratchpad writes registered
            # (as without a port): the tier compare and the port's ready no longer reach back into
            # the quantiser's and the unpool stage's output handshakes (the 8-lane 85F engine's
            # deepest chain). A word in a buffer counts as a write not yet issued.
            for wr, ram, v, a, d, rdy in ((act_wr, act, act_wv, act_wa, act_wd, act_wready),
                                          (err_wr, err, err_wv, err_wa, err_wd, err_wready)):
                m.d.comb += [wr.i.valid.eq(v), wr.i.payload.addr.eq(a), wr.i.payload.data.eq(d), rdy.eq(wr.i.ready)]
                registered_write(m, ram, wr.chip_en, wr.chip_addr, wr.chip_data)
            m.d.comb += writes_idle.eq(ext_port.writes_idle & wu.idle & act_wr.idle & err_wr.idle)
            with m.If(self.ext.r.valid & self.ext.r.ready):
                m.d.sync += ext_read_words.eq(ext_read_words + 1)
            with m.If(self.ext.w.valid & self.ext.w.ready):
                m.d.sync += ext_write_words.eq(ext_write_words + 1)
        else:
            act_rd, err_rd = act_ram_rd, err_ram_rd
            # Write ports registered: the host's write path (bounds check → address mux → bank
            # select → DP16KD write enable) was the 8-lane 85F engine's critical path (16.1 ns). A
            # word now lands one cycle later; nothing reads a word in the cycle after its write.
            for ram, v, a, d in ((act, act_wv, act_wa, act_wd), (err, err_wv, err_wa, err_wd)):
                registered_write(m, ram, v, a, d)
        m.submodules.array = array = MacArray(wage, L, L, mode="int8", max_reduction=cfg.max_reduction,
                                              target=cfg.target)
        acc_width = max(array.accumulator_width, 10)
        assert acc_width == cfg.accumulator_width
        m.submodules.quant = quant = ShiftQuantizer(wage, lanes=L, acc_width=acc_width, draw_index="stream")
        # Readers keep as many beats in flight as the external reads need to stream (its round trip
        # is longer than the scratchpads' and the weight store's)
        outstanding = EXT_CREDITS if cfg.external_depth else FLAG_DEPTH
        # The instruction register holds the running record until its walks end (FETCH follows
        # WAIT and WAIT_PART, by which time every walk launched by the record has ended), so these
        # generators walk its pattern slots as they stand (payload_held) and keep no copy. The draw
        # index walk may still wait for its pass 2 while later parts are fetched: it keeps one.
        # Each convolution walk has the odometer digits its slot's patterns use (cfg.slot_digits).
        held = dict(conv=cfg.has_conv, payload_held=True)
        digits = cfg.slot_digits
        m.submodules.feed_a = feed_a = OperandFeeder(L, outstanding=outstanding, digits=digits["a"], **held)
        m.submodules.feed_b = feed_b = OperandFeeder(L, outstanding=outstanding, digits=digits["b"], **held)
        m.submodules.aux = aux = PatternReader(L, self.act_layout, outstanding=outstanding, digits=digits["aux"],
                                               **held)
        m.submodules.out_gen = out_gen = SlotGenerator(L, digits=digits["out"], **held)
        m.submodules.pool = pool = WindowPool(L, array.accumulator_width)
        m.submodules.unpool = unpool = Unpool(L)
        # Per result row, what the quantiser's output needs besides the value: the mask (ReLU for ERR,
        # saturation for LOSS; bits 0..L−1) and the 2-bit pool indices (bits L..3L−1; FWD with pool,
        # ERR with unpool), pushed as the row enters the quantiser.
        m.submodules.side = side = fifo.SyncFIFO(width=3 * L, depth=32)
        labels = Memory(shape=LABEL_BITS, depth=cfg.label_words, init=[])
        program = Memory(shape=32, depth=cfg.program_words, init=[])
        m.submodules.labels, m.submodules.program = labels, program
        label_rd = labels.read_port(domain="comb")
        label_wr = labels.write_port()
        # Label writes are registered: the labels are LUT RAM, one copy per read port, and the
        # write's address, data and enable fan out to all of them (1,024 failing endpoints at 8
        # lanes when the host packet FSM drove them directly). Written a cycle late, long before
        # any LOSS reads them.
        label_w_en = Signal()
        label_w_addr = Signal.like(label_wr.addr, reset_less=True)
        label_w_data = Signal.like(label_wr.data, reset_less=True)
        m.d.sync += label_w_en.eq(0)
        m.d.comb += [label_wr.en.eq(label_w_en), label_wr.addr.eq(label_w_addr), label_wr.data.eq(label_w_data)]
        prog_rd = program.read_port()
        prog_wr = program.write_port()

        # ---- sequencer state ---------------------------------------------------------------------
        # The running operation (Op.NOP: host mode) as one-hot flip-flops: the datapath's selects
        # (request and response routing, the quantiser's input join, the writes) test one
        # flip-flop each, not a compare of a 4-bit code (which fanned out to 7,590 failing
        # endpoints of the 8-lane engine, placed).
        op_codes = (Op.NOP, Op.FWD, Op.LOSS, Op.ERR, Op.GRAD, Op.COPY, Op.COPY_ACT)
        op_is = {c: Signal(name=f"op_is_{Op.NAMES[c].lower()}", init=int(c == Op.NOP)) for c in op_codes}
        op_hot = Cat(*(op_is[c] for c in op_codes))

        def set_op(code):
            return [op_is[c].eq(c == code) for c in op_codes]

        def op_case(*codes):
            """``Case`` patterns of ``op_hot`` (or a copy of it) for the operations ``codes``."""
            return onehot_cases(op_codes, *codes)
        # Two lagging copies of the one-hot: ``mem_hot`` (a cycle behind) selects the memory
        # requests' and responses' routes, ``res_hot`` (two cycles behind) the result path's joins
        # and writes. One set of flip-flops fanned out to all of them across the die (op_is_grad →
        # the activation reader's request register, 23.4 ns of routing, and op_is_err → aux_pre,
        # 24.2 ns, were the 8-lane b128 engine's worst paths, placed). Each copy lags its source,
        # so synthesis cannot merge them (identical flip-flops are merged). The lag is safe: the
        # operation changes only in DECODE, after every walk of the previous record has ended
        # (WAIT/WAIT_PART, then a fetch of the whole record), and the first request of a launched
        # walk reaches the routing two cycles after the launch handshake at the earliest (the
        # walk's first step, then the pattern reader's request skid buffer); its results follow
        # many cycles later. Back in host mode, a host request or write comes three cycles or more
        # after RUN_RESPOND set NOP (RUN_CYCLES, IDLE, then the packet, through host_*_q).
        mem_is = {c: Signal(name=f"mem_is_{Op.NAMES[c].lower()}", init=int(c == Op.NOP)) for c in op_codes}
        res_is = {c: Signal(name=f"res_is_{Op.NAMES[c].lower()}", init=int(c == Op.NOP)) for c in op_codes}
        m.d.sync += [mem_is[c].eq(op_is[c]) for c in op_codes] + [res_is[c].eq(mem_is[c]) for c in op_codes]
        mem_hot = Cat(*(mem_is[c] for c in op_codes))
        res_hot = Cat(*(res_is[c] for c in op_codes))
        # the instruction register, loaded word by word (no reset: FETCH fills it before DECODE reads
        # it, and the reset's fan-out to its 6,720 flip-flops was a failing path class of its own)
        ins_bits = Signal(32 * MACHINE_WORDS, reset_less=True)
        # One-hot pointer to the record word the next fetched word lands in. Each 32-bit word of the
        # register has its own load enable (a shift register's one enable fanned out to all 6,720
        # flip-flops, the 4-lane 85F engine's critical path), and the words of fields a
        # configuration never reads (convolution fields without convolution) are left unloaded, so
        # synthesis drops them.
        word_sel = Signal(MACHINE_WORDS, init=1)
        # The fetched word is staged one cycle in a register per group of record words before it
        # lands: the program RAM's output went straight to all 211 words spread over the die (the
        # 4-lane engine's critical path once the port's writes were registered: 5.8 ns RAM
        # clock-to-out, 15.3 ns of routing). Each group's copy has its own enable, so synthesis
        # keeps them apart, and each fans out to its own words only.
        fetch_groups = [range(g * MACHINE_WORDS // FETCH_GROUPS, (g + 1) * MACHINE_WORDS // FETCH_GROUPS)
                        for g in range(FETCH_GROUPS)]
        staged_words = [Signal(32, name=f"fetch_stage{g}", reset_less=True) for g in range(FETCH_GROUPS)]
        # the word each staged copy fills (word_sel, a cycle later); no reset (arriving_q has one, so
        # it is zero from the first cycle after reset, and a stray load before FETCH is overwritten)
        staged_sel = Signal(MACHINE_WORDS, reset_less=True)
        arriving = Signal()                              # word_sel's record word comes up from the program RAM …
        carried = Signal()                               # … and the record carries it (else it keeps its value)
        # … both registered once, beside the word, before the staging registers: the RAM's
        # clock-to-out (5.8 ns, no output register) was in front of the 26 groups' routing
        arriving_q, carried_q = Signal(), Signal()
        # the record's delta mask (encoding: bit k set, record word k follows), shifted in a word at
        # a time as its words arrive, then out a bit per record word; no reset (FETCH fills it)
        mask = Signal(32 * MASK_WORDS, reset_less=True)
        mask_arriving, mask_arriving_q = Signal(), Signal()
        first_record = Signal()                          # the record at word 0: it must carry every word
        fetch_bad = Signal()                             # the record is malformed or runs past the program
        fetched_word = Signal(32, reset_less=True)
        staged_group = Signal(FETCH_GROUPS, init=1)      # the group of word_sel's word (one-hot)
        ins = data.View(machine_layout(), ins_bits[:MACHINE_BITS])
        pc = Signal(range(cfg.program_words + MACHINE_WORDS + MASK_WORDS + 1))    # the next program word
        fetched = Signal(range(MASK_WORDS + MACHINE_WORDS + 6))
        step = Signal(32)
        steps_left = Signal(32)
        eta = Signal(signed(8))
        # (p1_left, part_left and done_pending have no reset: DECODE loads them before a record
        # reads them, and the reset reached their enables through a shared LUT, -10.0 ns, placed)
        p1_left = Signal(32, reset_less=True)            # pass-1 beats still to enter the quantiser …
        p1_took = Signal()                               # … less this: a pass-1 beat entered last cycle
        pass2 = Signal(init=1)                           # registered: every pass-1 beat has entered
        part_left = Signal(32, reset_less=True)          # a part's pass-1 rows still to enter (less p1_took)
        in_chain = Signal()                              # between the first and the finish record of a product in parts
        chain_rows = Signal(32)                          # … its rows
        chain_op = Signal(4)                             # … and its operation (ERR or GRAD)
        flushing = Signal()                              # FLUSH: completing an aborted product in parts
        flush_in_left, flush_out_left = Signal(32), Signal(32)
        done = Signal()                                  # the result generator's last row was written
        done_pending = Signal(reset_less=True)           # … taken, the unpool stage may still be writing
        backward = Signal()                              # the step's LOSS has been decoded (until its END)

        # ---- memory routing ----------------------------------------------------------------------
        # act read port: FWD → feeder A, GRAD → feeder B, LOSS/ERR → aux, else the host.
        # The host's read requests enter through skid buffers, so that the readers' request readies
        # (through the port's client selects) stop at a register short of the host's counters'
        # enables (cursor, remaining: on the 8-lane engine's worst path after placement).
        m.submodules.host_act_q = host_act_q = SkidBuffer(unsigned(ADDR_BITS))
        m.submodules.host_err_q = host_err_q = SkidBuffer(unsigned(ADDR_BITS))
        host_act_req, host_err_req = host_act_q.i, host_err_q.i
        host_act_resp_ready = Signal()
        host_err_resp_ready = Signal()
        act_word = data.View(self.act_layout, act_rd.resp.payload)
        act_lanes = act_word.data.as_value()

        def route_req(target, sources):
            """Drive ``target`` (a req stream) from the source whose condition holds."""
            with m.Switch(mem_hot):
                for ops, src in sources:
                    with m.Case(*op_case(*ops)):
                        m.d.comb += [target.valid.eq(src.valid), target.payload.eq(src.payload),
                                     src.ready.eq(target.ready)]
        # The routed requests pass skid buffers (the tiered readers' own, or one here): the
        # operation's select ends at their registers, not at the block RAMs' address pins nor
        # (through the tiered readers' offset add and the port's burst compare) at the port's
        # arbitration (op → … → DP16KD ADB, −12.2 ns, and op → … → the external sum reader's tier
        # FIFO, −15.5 ns, in the 8-lane engine, placed). The readers keep many requests in
        # flight, so a cycle more of latency costs no beats.
        if cfg.external_depth:
            act_req, err_req = act_rd.req, err_rd.req
        else:
            m.submodules.act_req_q = act_req_q = SkidBuffer(unsigned(ADDR_BITS))
            m.submodules.err_req_q = err_req_q = SkidBuffer(unsigned(ADDR_BITS))
            wiring.connect(m, act_req_q.o, act_rd.req)
            wiring.connect(m, err_req_q.o, err_rd.req)
            act_req, err_req = act_req_q.i, err_req_q.i
        route_req(act_req, [((Op.FWD,), feed_a.req), ((Op.GRAD,), feed_b.req),
                            ((Op.LOSS, Op.ERR, Op.COPY_ACT), aux.req), ((Op.NOP,), host_act_q.o)])
        route_req(err_req, [((Op.ERR, Op.GRAD), feed_a.req), ((Op.COPY,), aux.req), ((Op.NOP,), host_err_q.o)])
        # act/err responses
        with m.Switch(mem_hot):
            with m.Case(*op_case(Op.FWD)):
                m.d.comb += [feed_a.resp.valid.eq(act_rd.resp.valid), feed_a.resp.payload.eq(act_lanes),
                             act_rd.resp.ready.eq(feed_a.resp.ready)]
            with m.Case(*op_case(Op.GRAD)):
                m.d.comb += [feed_b.resp.valid.eq(act_rd.resp.valid), feed_b.resp.payload.eq(act_lanes),
                             act_rd.resp.ready.eq(feed_b.resp.ready)]
            with m.Case(*op_case(Op.LOSS, Op.ERR, Op.COPY_ACT)):
                m.d.comb += [aux.resp.valid.eq(act_rd.resp.valid), aux.resp.payload.eq(act_rd.resp.payload),
                             act_rd.resp.ready.eq(aux.resp.ready)]
            with m.Case(*op_case(Op.NOP)):
                m.d.comb += act_rd.resp.ready.eq(host_act_resp_ready)
        with m.Switch(mem_hot):
            with m.Case(*op_case(Op.ERR, Op.GRAD)):
                m.d.comb += [feed_a.resp.valid.eq(err_rd.resp.valid), feed_a.resp.payload.eq(err_rd.resp.payload),
                             err_rd.resp.ready.eq(feed_a.resp.ready)]
            with m.Case(*op_case(Op.COPY)):                       # (the error word fills the act word's data lanes)
                m.d.comb += [aux.resp.valid.eq(err_rd.resp.valid), aux.resp.payload.eq(err_rd.resp.payload),
                             err_rd.resp.ready.eq(aux.resp.ready)]
            with m.Case(*op_case(Op.NOP)):
                m.d.comb += err_rd.resp.ready.eq(host_err_resp_ready)
        # weight store serve port: feeder B in FWD and ERR (one-word serve commands, through a skid
        # buffer: the store's command admission logic is deep)
        m.submodules.serve_cmd = serve_cmd = SkidBuffer(wu.serve_cmd.payload.shape())
        wiring.connect(m, serve_cmd.o, wu.serve_cmd)
        with m.If(mem_is[Op.FWD] | mem_is[Op.ERR]):
            m.d.comb += [serve_cmd.i.valid.eq(feed_b.req.valid), serve_cmd.i.payload.start.eq(feed_b.req.payload),
                         serve_cmd.i.payload.count.eq(1), feed_b.req.ready.eq(serve_cmd.i.ready),
                         feed_b.resp.valid.eq(wu.serve.valid), wu.serve.ready.eq(feed_b.resp.ready)]
            m.d.comb += [feed_b.resp.payload[i].eq(wu.serve.payload.wq[i]) for i in range(L)]   # sign-extends

        # ---- operands into the array -------------------------------------------------------------
        ops_ = array.operands
        m.d.comb += [
            ops_.valid.eq(feed_a.o.valid & feed_b.o.valid),
            ops_.payload.a.eq(feed_a.o.payload.data), ops_.payload.b.eq(feed_b.o.payload.data),
            ops_.payload.last.eq(feed_a.o.payload.last),
            feed_a.o.ready.eq(feed_b.o.valid & ops_.ready),
            feed_b.o.ready.eq(feed_a.o.valid & ops_.ready),
        ]
        # registered from the instruction register (which settles in FETCH, before DECODE launches)
        m.d.sync += [feed_a.transposed.eq(slot_rows(ins.a) == L), feed_b.transposed.eq(slot_rows(ins.b) == L)]
        # A fetched word arrives (the cycle after its read; a register, 0 outside FETCH), is
        # registered with its flag (arriving_q), and goes
        # to its group's staging register, chosen by a registered one-hot of the groups kept with
        # word_sel, so the staging enables are one LUT from flip-flops (they were a fetch-counter
        # compare and a 26-bit OR away, a failing class of 512 endpoints at 4 lanes).
        # word_sel visits every record word, carried or not (so it is back at word 0 after each
        # record); only a carried word is staged and loaded.
        m.d.sync += [arriving.eq(0), carried.eq(0), arriving_q.eq(arriving), carried_q.eq(carried),
                     staged_sel.eq(Mux(arriving_q & carried_q, word_sel, 0))]
        with m.If(arriving_q):
            next_sel = word_sel.rotate_left(1)
            m.d.sync += [word_sel.eq(next_sel),
                         staged_group.eq(Cat(*(next_sel[g.start:g.stop].any() for g in fetch_groups)))]
        for g, (group, staged) in enumerate(zip(fetch_groups, staged_words)):
            with m.If(arriving_q & carried_q & staged_group[g]):
                m.d.sync += staged.eq(fetched_word)
        # the mask's words arrive the same way, and shift in from the top
        m.d.sync += [mask_arriving.eq(0), mask_arriving_q.eq(mask_arriving)]
        with m.If(mask_arriving_q):
            m.d.sync += mask.eq(Cat(mask[32:], fetched_word))
        # Each instruction word loads from its staged copy when its one-hot bit is set: staged_sel
        # is zero outside FETCH, so the state register is not in the 6,720 enables (it was, the
        # 8-lane engine's widest failing class after placement: 9,236 endpoints).
        for group, staged in zip(fetch_groups, staged_words):
            for k in group:
                with m.If(staged_sel[k]):
                    m.d.sync += ins_bits.word_select(k, 32).eq(staged)

        # ---- the sum buffer (store-then-quantise) --------------------------------------------------
        # An ERR/GRAD record with ``stored`` writes its pass-1 result rows, as they enter the
        # quantiser, to the sum buffer (STORE_CHIP) or as ``sum_chunks`` words each to the external
        # sums (STORE_EXTERNAL); in pass 2 the rows come back in the same order instead of the array
        # running again (hw.engine.compiler.choose_store_then_quantise).
        stored_on = Signal()                             # the running instruction stores its sums
        store_ext = Signal()                             # … in the external memory
        # … and is in pass 2: results from the store. A flip-flop of its own, set wherever pass2 or
        # stored_on is (it selects hundreds of result bits: as a LUT of the two it was the start of
        # the 8-lane engine's worst paths, 27.1 ns after placement).
        from_sums = Signal()
        # … from the sum buffer (from_sums & ~store_ext), a flip-flop set beside from_sums: the
        # sum reads' request valid and their count's enables started at store_ext, a flip-flop of
        # wide fan-out (store_ext → sum_rd_left, 24.0 ns of routing, the b128 engine's worst path
        # once the operation's copies had taken the op flip-flops off it, placed)
        from_chip_sums = Signal()
        # A gradient part in batch bands (conv.compile_conv_grad_bands) accumulates the stored sums:
        # with ``sum_add`` each pass-1 row is the array's row plus the stored row it replaces (read
        # ahead from row 0, as pass 2 reads), with ``sum_hold`` the rows are stored but do not enter
        # the quantiser (partial sums must not reach Q_G's maximum). Flip-flops set in DECODE.
        add_on = Signal()
        hold_on = Signal()
        sum_rd_left = Signal(32)                         # pass-2 rows still to request
        sum_rd_addr = Signal(ADDR_BITS)
        sum_wa = Signal(ADDR_BITS)                       # next row to write
        store_room = Signal(init=1)                      # a pass-1 row may enter (driven with external sums)
        sums_flushed = Signal(init=1)                    # no stored row waits to be written out
        # The array's result rows leave through a skid buffer: their consumer's ready (the op's
        # switch, the pool, the quantiser's and the sum store's room) reached the array's result
        # RAM enables, 8-lane engine's worst path after placement (24.6 ns). Without a sum buffer
        # that consumer reads it directly: a ping-pong buffer keeps the consumer's ready (the
        # join below) off the payload registers' enables.
        has_sums = bool(cfg.sum_words or cfg.external_sum_words)
        m.submodules.arr_out = arr_out = (SkidBuffer if has_sums else PingPongBuffer)(array.results.payload.shape())
        wiring.connect(m, array.results, arr_out.i)
        arr_res = arr_out.o
        res = stream.Signature(arr_res.payload.shape()).create()
        sums_back = stream.Signature(unsigned(cfg.sum_width)).create()     # pass-2 rows from the store
        if cfg.sum_words:
            m.submodules.sums = sums = BlockRam(cfg.sum_width, cfg.sum_words, target=cfg.target)
            m.submodules.sum_rd = sum_rd = RamReader(cfg.sum_width)
            m.d.comb += [sums.r_addr.eq(sum_rd.r_addr), sum_rd.r_data.eq(sums.r_data)]
            # rows are requested once pass 1 is over and its last write has landed (writes are registered)
            # (an adding part reads row r before it writes row r: its reads run ahead of its writes)
            m.d.comb += [sum_rd.req.valid.eq(from_chip_sums & (sum_rd_left != 0) & ~sums.w_en),
                         sum_rd.req.payload.eq(sum_rd_addr)]
            with m.If(sum_rd.req.valid & sum_rd.req.ready):
                m.d.sync += [sum_rd_left.eq(sum_rd_left - 1), sum_rd_addr.eq(sum_rd_addr + 1)]
            with m.If(~store_ext):
                m.d.comb += [sums_back.valid.eq(sum_rd.resp.valid), sums_back.payload.eq(sum_rd.resp.payload),
                             sum_rd.resp.ready.eq(sums_back.ready)]
        if cfg.external_sum_words:
            n, ew = cfg.sum_chunks, cfg.external_width
            # pass 1: rows queue here, then leave as n consecutive external words each
            m.submodules.sum_wq = sum_wq = fifo.SyncFIFOBuffered(width=cfg.sum_width, depth=8)
            sum_chunk = Signal(range(n))                 # chunk of the head row being written
            sum_xw = Signal(ADDR_BITS)                   # next external word (from the region's base)
            rows_queued = Signal(range(sum_wq.depth + 2))    # rows pushed and not yet fully written
            # the words leave through a skid buffer: the queue's read enable and the chunk counters
            # wait on its registered room, not on the port's arbitration
            m.submodules.sum_wr_q = sum_wr_q = SkidBuffer(err_wr.ext.req.payload.shape())
            sum_wr = sum_wr_q.i
            padded = Cat(sum_wq.r_data, Const(0, n * ew - cfg.sum_width))
            m.d.comb += [sum_wr.valid.eq(sum_wq.r_rdy),
                         sum_wr.payload.addr.eq(cfg.external_sum_base + sum_xw),
                         sum_wr.payload.data.eq(padded.word_select(sum_chunk, ew))]
            row_done = sum_wr.valid & sum_wr.ready & (sum_chunk == n - 1)
            with m.If(sum_wr.valid & sum_wr.ready):
                m.d.sync += [sum_xw.eq(sum_xw + 1), sum_chunk.eq(Mux(sum_chunk == n - 1, 0, sum_chunk + 1))]
            m.d.comb += sum_wq.r_en.eq(row_done)
            push = Signal()
            m.d.sync += rows_queued.eq(rows_queued + push - row_done)
            m.d.comb += sums_flushed.eq(rows_queued == 0)
            # A row enters the queue a cycle after it is taken, from registers: the take (the op's
            # join of the result, auxiliary and quantiser streams) reached the queue's LUT-RAM
            # write enables (op → … → WRE, −9.7 ns over 464 endpoints, 8-lane engine placed). The
            # room comes from rows_queued, which counts a row as it is taken; below depth − 1 the
            # inner queue has room even while a row moves into the output register.
            push_q = Signal()
            push_row = Signal(cfg.sum_width, reset_less=True)
            m.d.sync += [push_q.eq(push), push_row.eq(res.payload.data)]
            m.d.comb += [sum_wq.w_data.eq(push_row), sum_wq.w_en.eq(push_q),
                         store_room.eq(~(store_ext & ~pass2) | (rows_queued < sum_wq.depth - 1))]
            # pass 2: once every row's words are issued to the port (it keeps order, so the reads
            # then see them), read them back and join each row's n words
            m.submodules.sum_xrd = sum_xrd = TieredReader(ADDR_BITS, ew, ew, onchip_depth=0,
                                                          ext_base=cfg.external_sum_base, registered=True)
            # The error reader's and writer's port clients: the sums' writes use the writer's in pass 1
            # (an ERR or GRAD writes no data then) until every row's words are issued; the sums'
            # reads share the reader's (pass 2, and a part that adds to its stored sums in pass 1,
            # whose error operand may read external words meanwhile: both are tiered readers, so
            # neither waits for the other's data). The write select is a flip-flop (share_wr =
            # store_ext & ~sum_go), set beside the registers it mirrors: it switches hundreds of bits.
            sums_reading = Signal()                      # the record reads its stored sums (pass 2, adding part)
            share_wr = Signal()
            port_wr = ext_port.wr1
            m.submodules.sum_err_rd = sum_err_rd = SharedReadClient(ADDR_BITS, ew)
            wiring.connect(m, sum_xrd.ext, sum_err_rd.a)
            wiring.connect(m, err_rd.ext, sum_err_rd.b)
            wiring.connect(m, sum_err_rd.o, ext_port.rd1)
            for sel, req in ((share_wr, sum_wr_q.o), (~share_wr, err_wr.ext.req)):
                with m.If(sel):
                    m.d.comb += [port_wr.req.valid.eq(req.valid), port_wr.req.payload.eq(req.payload),
                                 req.ready.eq(port_wr.req.ready)]
            sum_go = Signal()                            # pass-1 rows all written: reads may start
            # (an adding part keeps the writer's client: it writes each row back as it reads the next)
            with m.If(sums_reading & (rows_queued == 0) & sum_wr_q.empty & ext_port.writes_idle):
                m.d.sync += [sum_go.eq(1), share_wr.eq(add_on)]
            xr_chunk = Signal(range(n))
            m.d.comb += [sum_xrd.req.valid.eq(sum_go & (sum_rd_left != 0)),
                         sum_xrd.req.payload.eq(sum_rd_addr)]
            with m.If(sum_xrd.req.valid & sum_xrd.req.ready):
                m.d.sync += [sum_rd_addr.eq(sum_rd_addr + 1), xr_chunk.eq(Mux(xr_chunk == n - 1, 0, xr_chunk + 1))]
                with m.If(xr_chunk == n - 1):
                    m.d.sync += sum_rd_left.eq(sum_rd_left - 1)
            # the words reach the join through a skid buffer: its shift enable (n·ew bits) started
            # at the reader's tier logic (−4.3 ns at 8 lanes, placed)
            m.submodules.sum_xr_resp = xr_resp = SkidBuffer(unsigned(ew))
            wiring.connect(m, sum_xrd.resp, xr_resp.i)
            joined = Signal(n * ew, reset_less=True)
            have = Signal(range(n + 1))
            m.d.comb += xr_resp.o.ready.eq(have != n)
            with m.If(xr_resp.o.valid & xr_resp.o.ready):
                m.d.sync += [joined.eq(Cat(joined[ew:], xr_resp.o.payload)), have.eq(have + 1)]
            with m.If(store_ext):
                m.d.comb += [sums_back.valid.eq(have == n), sums_back.payload.eq(joined[:cfg.sum_width])]
                with m.If(sums_back.valid & sums_back.ready):
                    m.d.sync += have.eq(0)
        if has_sums:
            # The select (array or store) feeds a buffer: the pool's compares, the quantiser's
            # input and the sum writes start at its registers, and their readies stop there (the
            # select and its readies were on the 8-lane engine's worst paths after placement).
            # Ping-pong: the quantiser-input join's ready reaches its pointers, not its payload.
            m.submodules.res_q = res_q = PingPongBuffer(arr_res.payload.shape())
            sel = res_q.i
            with m.If(from_sums):
                m.d.comb += [sel.valid.eq(sums_back.valid), sel.payload.data.eq(sums_back.payload),
                             sums_back.ready.eq(sel.ready)]
            with m.Elif(add_on):
                # the array's row plus the stored row (lane-wise, wrapping at the accumulator width
                # as the array's own sums do: the finished sums are the whole product's)
                back = data.View(arr_res.payload.data.shape(), sums_back.payload)
                m.d.comb += [sel.valid.eq(arr_res.valid & sums_back.valid), sel.payload.eq(arr_res.payload),
                             arr_res.ready.eq(sel.ready & sums_back.valid), sums_back.ready.eq(sel.ready & arr_res.valid)]
                m.d.comb += [sel.payload.data[i].eq(arr_res.payload.data[i] + back[i]) for i in range(L)]
            with m.Else():
                m.d.comb += [sel.valid.eq(arr_res.valid), sel.payload.eq(arr_res.payload),
                             arr_res.ready.eq(sel.ready)]
            m.d.comb += [res.valid.eq(res_q.o.valid), res.payload.eq(res_q.o.payload), res_q.o.ready.eq(res.ready)]
        else:
            m.d.comb += [res.valid.eq(arr_res.valid), res.payload.eq(arr_res.payload), arr_res.ready.eq(res.ready)]

        # ---- results into the quantiser ----------------------------------------------------------
        # The join below feeds the quantiser through a skid buffer (registered valid, payload and
        # ready), so that neither its operand paths nor quant.i.ready meet the join's logic.
        m.submodules.quant_in = quant_in = SkidBuffer(quant.i.payload.shape())
        wiring.connect(m, quant_in.o, quant.i)
        # pass 1 of an external store: a row enters the quantiser only with room in the row queue
        qi = stream.Signature(quant.i.payload.shape()).create()
        # (a held row is only stored: it is taken with room in the store, without the quantiser)
        m.d.comb += [quant_in.i.valid.eq(qi.valid & store_room & ~hold_on), quant_in.i.payload.eq(qi.payload),
                     qi.ready.eq((quant_in.i.ready | hold_on) & store_room)]
        # The auxiliary reader's output (a join of its FIFOs) is registered twice: once as it leaves
        # the reader, then again with the LOSS label test of each lane done between the two
        # registers (its own read port of the labels, addressed by the beat's tile counter t1):
        # hot[i] = (label == t2·L + i). With one register the reader's FIFO read, the label read and
        # the test were one path, the 85F engine's critical one (15.2 ns).
        m.submodules.aux_pre = aux_pre = SkidBuffer(aux.o.payload.shape())
        wiring.connect(m, aux.o, aux_pre.i)
        # (ping-pong: the join's ready reached this buffer's 208 payload enables, -9.6 ns, placed)
        m.submodules.aux_out = aux_out = PingPongBuffer(data.StructLayout({"beat": aux.o.payload.shape(), "hot": L}))
        loss_label = labels.read_port(domain="comb")
        pre = aux_pre.o.payload
        m.d.comb += [aux_out.i.valid.eq(aux_pre.o.valid), aux_pre.o.ready.eq(aux_out.i.ready),
                     aux_out.i.payload.beat.eq(pre), loss_label.addr.eq(pre.t1)]
        label_hi = loss_label.data[shift_l:] == pre.t2
        m.d.comb += [aux_out.i.payload.hot[i].eq(label_hi & (loss_label.data[:shift_l] == i)) for i in range(L)]
        aux_o = aux_out.o
        ab, hot = aux_o.payload.beat, aux_o.payload.hot
        # the pool/unpool switches of the running instruction as flip-flops of their own (the
        # instruction register settles in FETCH; results arrive many cycles after DECODE), in two
        # stages, one near the instruction register and one near the joins and writes that read
        # them (unpool_on → the write join was 5.2 ns of routing, then -8.7 ns, placed)
        pool_on, unpool_on = Signal(), Signal()
        pool_pre, unpool_pre = Signal(), Signal()
        if cfg.has_conv:
            m.d.sync += [pool_pre.eq(ins.pool), unpool_pre.eq(ins.unpool_dx != 0),
                         pool_on.eq(pool_pre), unpool_on.eq(unpool_pre)]
        # else both stay 0 (DECODE refuses a record with pooling), and synthesis drops the two stages
        aw = data.View(self.act_layout, ab.word)
        take_in = qi.valid & qi.ready
        push_mask = Signal(L)
        push_idx = Signal(2 * L)
        # the pool sees every row's data (only its valid depends on the op): the op's decode is not
        # in front of its compares (a failing class at 4 and 8 lanes after placement)
        m.d.comb += [pool.i.payload.data[i].eq(res.payload.data[i]) for i in range(L)]
        with m.Switch(res_hot):
            with m.Case(*op_case(Op.FWD)):
                with m.If(pool_on):
                    # 2×2 max-pool of the result rows (window-major) before Q_A; the indices wait in `side`
                    m.d.comb += [pool.i.valid.eq(res.valid), res.ready.eq(pool.i.ready),
                                 qi.valid.eq(pool.o.valid & side.w_rdy), pool.o.ready.eq(qi.ready & side.w_rdy),
                                 push_idx.eq(pool.o.payload.idx)]
                    m.d.comb += [qi.payload.data[i].eq(pool.o.payload.data[i]) for i in range(L)]
                with m.Else():
                    m.d.comb += [qi.valid.eq(res.valid), res.ready.eq(qi.ready)]
                    m.d.comb += [qi.payload.data[i].eq(res.payload.data[i]) for i in range(L)]
            with m.Case(*op_case(Op.GRAD)):
                m.d.comb += [qi.valid.eq(res.valid), res.ready.eq(qi.ready)]
                m.d.comb += [qi.payload.data[i].eq(res.payload.data[i]) for i in range(L)]
            with m.Case(*op_case(Op.ERR)):
                room = ~pass2 | side.w_rdy
                m.d.comb += [qi.valid.eq(res.valid & aux_o.valid & room),
                             res.ready.eq(qi.ready & aux_o.valid & room),
                             aux_o.ready.eq(qi.ready & res.valid & room),
                             push_mask.eq(Mux(ab.valid, aw.relu, 0)),
                             push_idx.eq(Mux(ab.valid, aw.pool.as_value(), 0))]
                m.d.comb += [qi.payload.data[i].eq(Mux(ab.valid & aw.sat[i], res.payload.data[i], 0))
                             for i in range(L)]
            with m.Case(*op_case(Op.LOSS)):
                room = ~pass2 | side.w_rdy
                m.d.comb += [qi.valid.eq(aux_o.valid & room), aux_o.ready.eq(qi.ready & room),
                             push_mask.eq(aw.sat)]
                for i in range(L):
                    m.d.comb += qi.payload.data[i].eq(aw.data[i] - Mux(hot[i], ins.onehot, 0))
        m.d.comb += [side.w_en.eq(take_in & ~flushing & ((pass2 & (res_is[Op.ERR] | res_is[Op.LOSS])) |
                                                         (res_is[Op.FWD] & pool_on))),
                     side.w_data.eq(Cat(push_mask, push_idx))]
        side_mask, side_idx = side.r_data[:L], side.r_data[L:]
        if cfg.sum_words:
            registered_write(m, sums, take_in & ~pass2 & stored_on & ~store_ext, sum_wa, res.payload.data)
            with m.If(take_in & ~pass2 & stored_on):
                m.d.sync += sum_wa.eq(sum_wa + 1)
        if cfg.external_sum_words:
            m.d.comb += push.eq(take_in & ~pass2 & store_ext)
        # The pass-1 counts drop a cycle after the take, from p1_took: the take (the join of the
        # quantiser's input, deep) reaches only p1_took and pass2, not the counts' 64 enables
        # (op_is_grad → join → part_left's enables was the 8-lane engine's worst path, -10.0 ns,
        # placed). The beat taken now is pass 1's last when p1_left − p1_took = 1.
        # A held row counts for its part, not for the quantiser's pass 1.
        part_took = Signal()
        m.d.sync += [p1_took.eq(take_in & ~pass2 & ~hold_on), part_took.eq(take_in & ~pass2)]
        with m.If(p1_took):
            m.d.sync += p1_left.eq(p1_left - 1)
        with m.If(part_took):
            m.d.sync += part_left.eq(part_left - 1)
        with m.If(take_in & ~pass2 & ~hold_on):
            with m.If(Mux(p1_took, p1_left == 2, p1_left == 1)):
                m.d.sync += [pass2.eq(1), from_sums.eq(stored_on), from_chip_sums.eq(stored_on & ~store_ext)]
                if cfg.external_sum_words:
                    m.d.sync += sums_reading.eq(store_ext)

        # ---- quantiser output → scratchpads / weight updates ---------------------------------------
        m.submodules.update = update = SkidBuffer(wu.update.payload.shape())     # (the store's arbiter is deep)
        wiring.connect(m, update.o, wu.update)
        qo, og = quant.o, out_gen.o
        host_act_w = Signal(self.act_layout.size)
        host_err_w = Signal(self.err_layout.size)
        host_act_we, host_err_we = Signal(), Signal()
        host_w_addr = Signal(ADDR_BITS)
        act_w = Signal(self.act_layout)
        err_w = Signal(self.err_layout)
        wfire = Signal()
        with m.Switch(res_hot):
            with m.Case(*op_case(Op.FWD)):
                can_write = qo.valid & og.valid & (side.r_rdy | ~pool_on)
                m.d.comb += [wfire.eq(can_write & (act_wready | ~og.payload.valid)),
                             side.r_en.eq(wfire & pool_on),
                             act_wv.eq(can_write & og.payload.valid),
                             act_wa.eq(og.payload.addr), act_wd.eq(act_w),
                             act_w.relu.eq(qo.payload.relu), act_w.sat.eq(qo.payload.sat),
                             act_w.pool.eq(Mux(pool_on, side_idx, 0))]
                m.d.comb += [act_w.data[i].eq(qo.payload.data[i]) for i in range(L)]
            with m.Case(*op_case(Op.ERR, Op.LOSS)):
                m.d.comb += [err_w[i].eq(Mux(side_mask[i], qo.payload.data[i], 0)) for i in range(L)]
                with m.If(unpool_on):
                    # each error word scatters into the four words of its pool window (4 writes per word)
                    ui = unpool.i
                    m.d.comb += [ui.valid.eq(qo.valid & og.valid & side.r_rdy),
                                 ui.payload.data.eq(err_w), ui.payload.idx.eq(side_idx),
                                 ui.payload.addr.eq(og.payload.addr), ui.payload.valid.eq(og.payload.valid),
                                 wfire.eq(ui.valid & ui.ready), side.r_en.eq(wfire),
                                 unpool.o.ready.eq(err_wready), err_wv.eq(unpool.o.valid),
                                 err_wa.eq(unpool.o.payload.addr), err_wd.eq(unpool.o.payload.data)]
                with m.Else():
                    can_write = qo.valid & og.valid & side.r_rdy
                    m.d.comb += [wfire.eq(can_write & (err_wready | ~og.payload.valid)), side.r_en.eq(wfire),
                                 err_wv.eq(can_write & og.payload.valid), err_wa.eq(og.payload.addr),
                                 err_wd.eq(err_w)]
            with m.Case(*op_case(Op.GRAD)):
                upd = update.i
                m.d.comb += [upd.valid.eq(qo.valid & og.valid & og.payload.valid),
                             upd.payload.addr.eq(og.payload.addr),
                             wfire.eq(qo.valid & og.valid & (upd.ready | ~og.payload.valid))]
                m.d.comb += [upd.payload.dw[i].eq(qo.payload.data[i]) for i in range(L)]
            # tile staging: each source word (aux) to the destination the result generator names;
            # COPY error words (the aux word's data lanes), COPY_ACT whole activation words
            for code, wready, wv, wa, wd, word in ((Op.COPY, err_wready, err_wv, err_wa, err_wd, aw.data.as_value()),
                                                   (Op.COPY_ACT, act_wready, act_wv, act_wa, act_wd, ab.word)):
                with m.Case(*op_case(code)):
                    can_write = aux_o.valid & og.valid
                    m.d.comb += [wfire.eq(can_write & (wready | ~(og.payload.valid & ab.valid))),
                                 aux_o.ready.eq(wfire),
                                 wv.eq(can_write & og.payload.valid & ab.valid), wa.eq(og.payload.addr), wd.eq(word)]
            with m.Case(*op_case(Op.NOP)):
                m.d.comb += [act_wv.eq(host_act_we), act_wa.eq(host_w_addr), act_wd.eq(host_act_w),
                             err_wv.eq(host_err_we), err_wa.eq(host_w_addr), err_wd.eq(host_err_w)]
        m.d.comb += [qo.ready.eq(wfire), og.ready.eq(wfire), unpool.dx.eq(ins.unpool_dx), unpool.dy.eq(ins.unpool_dy)]
        with m.If(flushing):                             # FLUSH: zero rows in, outputs dropped
            m.d.comb += [qi.valid.eq(~pass2 | (flush_in_left != 0)), qi.payload.eq(0), qo.ready.eq(1)]
        with m.If(wfire & og.payload.last):
            m.d.sync += done_pending.eq(1)
        with m.If(done_pending & ~unpool.o.valid & writes_idle):     # every external write issued
            m.d.sync += done.eq(1)

        # GRAD: a second generator walks the draw pattern, in step with the result rows and ahead of
        # the data: the flat (channels-last) index of each result word's first weight.
        m.submodules.index_gen = index_gen = SlotGenerator(L, conv=cfg.has_conv, digits=cfg.slot_digits["draw"])
        m.d.comb += [quant.index.valid.eq(index_gen.o.valid), quant.index.payload.eq(index_gen.o.payload.addr),
                     index_gen.o.ready.eq(quant.index.ready)]

        # ---- counters ----------------------------------------------------------------------------
        counters = {name: Signal(32, name=f"count_{name}") for name in COUNTERS}
        running = Signal()
        run_base = Signal(32)                            # run_cycles when this RUN started
        with m.If(running):
            m.d.sync += counters["run_cycles"].eq(counters["run_cycles"] + 1)
            # (tile staging counts with the phase it stages for: COPY_ACT forward operands before the
            # loss and gradient bands' after it, COPY gradient ones)
            for name, active in (("fwd_cycles", op_is[Op.FWD] | (op_is[Op.COPY_ACT] & ~backward)),
                                 ("loss_cycles", op_is[Op.LOSS]), ("err_cycles", op_is[Op.ERR]),
                                 ("grad_cycles", op_is[Op.GRAD] | op_is[Op.COPY] | (op_is[Op.COPY_ACT] & backward))):
                with m.If(active):
                    m.d.sync += counters[name].eq(counters[name] + 1)
        with m.If(ops_.valid & ops_.ready):
            m.d.sync += counters["array_beats"].eq(counters["array_beats"] + 1)
        m.d.comb += [counters["ext_read_words"].eq(ext_read_words), counters["ext_write_words"].eq(ext_write_words)]

        # ---- host packet FSM and sequencer --------------------------------------------------------
        def abort():
            """End the RUN with the status set; first complete an open product in parts (FLUSH)."""
            m.d.sync += [add_on.eq(0), hold_on.eq(0), backward.eq(0)]     # (FLUSH's zero rows enter the quantiser)
            with m.If(in_chain):
                m.d.sync += [flush_in_left.eq(chain_rows), flush_out_left.eq(chain_rows)]
                m.next = "FLUSH"
            with m.Else():
                m.next = "RUN_RESPOND"

        # The host streams pass skid buffers at the engine's edge: the packet parser's decodes
        # (header compares, argument range tests) start at registers beside it, and so does the
        # sender's ready, wherever the link's FIFOs are placed (the harness's inputs → header
        # compare → status was −10.1 ns in the 8-lane engine, placed).
        m.submodules.host_in_q = host_in_q = SkidBuffer(host_layout())
        m.submodules.host_out_q = host_out_q = SkidBuffer(host_layout())
        wiring.connect(m, wiring.flipped(self.host_in), host_in_q.i)
        wiring.connect(m, host_out_q.o, wiring.flipped(self.host_out))
        hin, hout = host_in_q.o, host_out_q.i
        # A packet waits for the writes before it, through a registered copy of writes_idle (the
        # AND of every writer's and the port's idle flags went straight into the header
        # registers' enables: −11.4 ns, placed). The copy lags a cycle, which is safe here: it can
        # only be wrongly high in the cycle after a write entered a writer from an idle state,
        # and no state that issues writes leads to IDLE without a cycle (a response, at least)
        # in between.
        writes_idle_q = Signal(init=1)
        m.d.sync += writes_idle_q.eq(writes_idle)
        cmd, tag = Signal(8), Signal(16)
        target_ok = Signal()                             # the packet's target is known
        # The packet's target also as a one-hot register, set with it: the host parser's selects
        # (item size, depth, request routing, the counters' enables) test one flip-flop each, not
        # an 8-bit compare (target → depth_of → … → cursor/remaining enables: −12.3 ns, placed).
        target_hot = Signal(len(Target))

        def is_target(t):
            """A ``Case`` pattern of ``target_hot`` for target ``t``."""
            return onehot_cases(tuple(Target), t)[0]
        status = Signal(8)
        args = Array(Signal(32, name=f"arg{i}") for i in range(3))
        argi = Signal(2)
        nargs = Signal(2)
        m.d.comb += nargs.eq(Mux(cmd == Command.RUN, ARGUMENTS[Command.RUN],
                                 Mux(cmd == Command.COUNTERS, ARGUMENTS[Command.COUNTERS], ARGUMENTS[Command.READ])))
        widths = {t: item_bits(t, L, wage.kG) for t in Target}
        max_words = max(-(-w // 32) for w in widths.values())
        item = Signal(32 * max_words, reset_less=True)  # (no reset: a write takes a whole item's words first)
        item_words = Signal(range(max_words + 1))
        depth_of = Signal(32)
        with m.Switch(target_hot):
            for t in Target:
                with m.Case(is_target(t)):
                    m.d.comb += item_words.eq(-(-widths[t] // 32))
                    m.d.comb += depth_of.eq({Target.PROGRAM: cfg.program_words, Target.ACT: cfg.data_space,
                                             Target.ERR: cfg.data_space, Target.WEIGHTS: cfg.weight_space,
                                             Target.LABELS: cfg.label_words}[t])
        a0_ok, a0_room = Signal(), Signal(32)           # address argument <= depth, depth − address
        addr, count = args[0], args[1]
        cursor = Signal(32)                 # next item address
        remaining = Signal(32)              # items still to write / to request
        more = Signal()                     # remaining != 0, a flip-flop of its own (the compare was
                                            # in front of the host read requests, the worst path placed)
        to_send = Signal(32)                # items still to send (READ)
        word_i = Signal(range(max(max_words, len(COUNTERS), len(IDENT)) + 1))
        saw_last = Signal()
        hdr = Signal(32)
        m.d.comb += hdr.eq(Cat(cmd, status, tag))
        # the item as the host sends it: words shifted in from the top, so the last word lands on top
        def item_bits_of(t):
            words = -(-widths[t] // 32)
            return item[32 * (max_words - words):][:widths[t]]

        resp_payload = Signal(32 * max_words, reset_less=True)   # READ: the item being sent, low word first
        send_words = Signal(range(max_words + 1))

        # host read requests (READ of act/err/weights/labels/program)
        host_read_active = Signal()
        rd_resp_valid = Signal()
        rd_resp_data = Signal(32 * max_words)
        rd_resp_ready = Signal()
        m.d.comb += [host_act_req.payload.eq(cursor), host_err_req.payload.eq(cursor)]
        m.submodules.readback_cmd = readback_cmd = SkidBuffer(wu.readback_cmd.payload.shape())
        wiring.connect(m, readback_cmd.o, wu.readback_cmd)
        rb_cmd = readback_cmd.i                          # (the store's arbiter sees registers only)
        # Host weight loads enter the store through a skid buffer too: its load admission (the
        # tier compare, the update sequencer's select) reached the host counters' enables (cursor,
        # remaining: the 8-lane engine's worst path after placement, 23.0 ns). RESPOND waits for
        # it to empty, so a load is in the store before the host hears the write is done.
        m.submodules.load_q = load_q = SkidBuffer(wu.load.payload.shape())
        wiring.connect(m, load_q.o, wu.load)
        prog_rd_pending = Signal()                       # the program RAM reads for the host …
        prog_rd_landed = Signal()                        # … and fetched_word holds that word
        # A host read of the labels answers from label_host, loaded from the LUT RAM a cycle
        # before: the RAM's address decode and output multiplexer no longer reach the response
        # word (the MLP b128 engine's worst path, 9 LUT levels, -2.6 ns at 45 MHz, routed).
        label_host = Signal(LABEL_BITS, reset_less=True)
        label_landed = Signal()
        label_taken = label_landed & rd_resp_ready       # (landed is only set with target LABELS)
        with m.If(host_read_active & target_hot[Target.LABELS] & more & ~label_landed):
            m.d.sync += [label_host.eq(label_rd.data), label_landed.eq(1)]
        with m.Elif(label_taken):
            m.d.sync += label_landed.eq(0)
        with m.Switch(target_hot):
            with m.Case(is_target(Target.ACT)):
                m.d.comb += [host_act_req.valid.eq(host_read_active & more),
                             rd_resp_valid.eq(act_rd.resp.valid), rd_resp_data.eq(act_rd.resp.payload),
                             host_act_resp_ready.eq(rd_resp_ready)]
            with m.Case(is_target(Target.ERR)):
                m.d.comb += [host_err_req.valid.eq(host_read_active & more),
                             rd_resp_valid.eq(err_rd.resp.valid), rd_resp_data.eq(err_rd.resp.payload),
                             host_err_resp_ready.eq(rd_resp_ready)]
            with m.Case(is_target(Target.WEIGHTS)):
                m.d.comb += [rb_cmd.valid.eq(host_read_active & more),
                             rb_cmd.payload.start.eq(cursor), rb_cmd.payload.count.eq(1),
                             rd_resp_valid.eq(wu.readback.valid), rd_resp_data.eq(wu.readback.payload.w),
                             wu.readback.ready.eq(rd_resp_ready)]
            with m.Case(is_target(Target.LABELS)):
                m.d.comb += [rd_resp_valid.eq(label_landed), rd_resp_data.eq(label_host)]
            with m.Case(is_target(Target.PROGRAM)):
                m.d.comb += [rd_resp_valid.eq(prog_rd_landed), rd_resp_data.eq(fetched_word)]
        with m.If(op_is[Op.NOP]):
            m.d.comb += label_rd.addr.eq(cursor)
        req_taken = Signal()
        with m.Switch(target_hot):
            with m.Case(is_target(Target.ACT)):
                m.d.comb += req_taken.eq(host_act_req.valid & host_act_req.ready)
            with m.Case(is_target(Target.ERR)):
                m.d.comb += req_taken.eq(host_err_req.valid & host_err_req.ready)
            with m.Case(is_target(Target.WEIGHTS)):
                m.d.comb += req_taken.eq(rb_cmd.valid & rb_cmd.ready)
            with m.Case(is_target(Target.LABELS)):
                # (its own term, not rd_resp_valid: the multiplexer would put every target's
                # response valid in front of the counters' enables and the program RAM's read
                # enable, −13.2 ns placed)
                m.d.comb += req_taken.eq(label_taken)
            with m.Case(is_target(Target.PROGRAM)):
                m.d.comb += req_taken.eq(host_read_active & more & ~prog_rd_pending)

        prog_issue = Signal()
        m.d.comb += prog_issue.eq(host_read_active & target_hot[Target.PROGRAM] & more & ~prog_rd_pending)
        # A host read of the program answers from fetched_word, the RAM output's register (which
        # FETCH uses too), a cycle after the word arrives, and the register holds it until it is
        # taken: the RAM's clock-to-out no longer reaches the response register (-7.9 ns, 8-lane
        # engine, placed). The RAM reads in every cycle (its enable was the host state's logic,
        # -7.4 ns), so only fetched_word's enable, a flip-flop, holds a word.
        prog_taken = prog_rd_landed & rd_resp_ready      # (landed is only set with target PROGRAM)
        with m.If(prog_issue):
            m.d.sync += prog_rd_pending.eq(1)
        with m.Elif(prog_taken):
            m.d.sync += prog_rd_pending.eq(0)
        m.d.sync += prog_rd_landed.eq(prog_rd_pending & ~prog_taken)
        with m.If(~prog_rd_landed):
            m.d.sync += fetched_word.eq(prog_rd.data)
        m.d.comb += prog_rd.en.eq(1)

        # pattern launches
        launch = {name: Signal(name=f"launch_{name}") for name in ("a", "b", "aux", "out", "q", "idx")}
        gens = {"a": feed_a.cmd, "b": feed_b.cmd, "aux": aux.cmd, "out": out_gen.cmd, "idx": index_gen.cmd}
        pats = {"a": ins.a, "b": ins.b, "aux": ins.aux, "out": ins.out, "idx": ins.draw}
        for name, port in gens.items():
            m.d.comb += [port.valid.eq(launch[name]), port.payload.eq(pats[name])]
            with m.If(port.valid & port.ready):
                m.d.sync += launch[name].eq(0)
        qc = quant.cmd
        m.d.comb += [
            qc.valid.eq(launch["q"]),
            qc.payload.mode.eq(Mux(op_is[Op.FWD], Mode.QA, Mux(op_is[Op.GRAD], Mode.QG, Mode.QE))),
            qc.payload.relu.eq(ins.relu), qc.payload.shift.eq(ins.shift), qc.payload.eta_log2.eq(eta),
            qc.payload.count.eq(ins.qcount), qc.payload.seed.eq(wage.seed), qc.payload.step.eq(step),
            qc.payload.layer.eq(ins.layer),
        ]
        with m.If(qc.valid & qc.ready):
            m.d.sync += launch["q"].eq(0)
        launching = Cat(*launch.values()).any()

        # DECODE's tests of the record, registered from the instruction register in every cycle:
        # FETCH lasts a cycle longer than the record takes to land, so they have settled when
        # DECODE acts on them (the record's bits → the tests → the op flags' and the step
        # counters' enables was -9.1 ns in the 8-lane engine, placed). in_chain and chain_op
        # change only in DECODE, FLUSH and RUN_NEXT_STEP, a whole FETCH before the next DECODE.
        dec = {n: Signal(name=f"dec_{n}") for n in ("keep", "to_chip", "to_ext", "no_pass1", "first", "finish", "bad",
                                                    "add", "hold")}
        dec_codes = tuple(Op.NAMES)
        dec_op = {c: Signal(name=f"dec_op_{Op.NAMES[c].lower()}") for c in dec_codes}
        dec_op_hot = Cat(*(dec_op[c] for c in dec_codes))

        def dec_case(code):
            """``Case`` patterns of ``dec_op_hot`` for the record's operation ``code``."""
            return onehot_cases(dec_codes, code)
        # A later record of a product in parts (conv.PART_NEXT, PART_FINISH) carries on the first's
        # pass 1: its row count, the pass flag and the sum write pointers (and any record inside
        # an open product is refused: FLUSH completes the product then).
        rows = ins.qcount >> shift_l
        # An engine built without convolution (cfg.has_conv) has no conv address generators: a
        # conv pattern, pooling or unpooling is refused rather than walked wrongly.
        conv_only = ins.a.conv | ins.b.conv | ins.aux.conv | ins.out.conv | ins.draw.conv | ins.pool \
            | (ins.unpool_dx != 0)
        # … and a conv pattern that moves a digit its slot's walk was not built with is refused too
        too_deep = [getattr(ins, name).conv & (radix > 1)
                    for name in SLOTS for odo, built in zip(("pos", "tap"), cfg.slot_digits[name])
                    for radix in list(getattr(ins, name).p.conv[f"{odo}_radix"])[built:]]
        conv_bad = Cat(*too_deep).any() if too_deep else 0
        # A stored record needs a sum buffer that holds its rows (the compiler's choice for this
        # build; a program for another build is refused before it gets here, by IDENT).
        room = Mux(ins.stored == STORE_CHIP, rows <= cfg.sum_words,
                   Mux(ins.stored == STORE_EXTERNAL, rows <= cfg.external_sum_rows if cfg.external_sum_words else 0,
                       ins.stored == 0))
        bad_store = ~room | ((ins.stored != 0) & (ins.op != Op.ERR) & (ins.op != Op.GRAD))
        # parts: stored ERR or GRAD records, a first, then next parts of the same operation, then a
        # finish; only COPY and COPY_ACT records (operand staging) may run between them
        bad_part = Mux(ins.part == PART_WHOLE, in_chain & (ins.op != Op.COPY) & (ins.op != Op.COPY_ACT),
                       ((ins.op != Op.ERR) & (ins.op != Op.GRAD)) | (ins.stored == 0) |
                       Mux(ins.part == PART_FIRST, in_chain, ~in_chain | (ins.op != chain_op)))
        # accumulating parts: a first or next part of a stored GRAD; a first part has nothing to add to
        bad_acc = (((ins.sum_add | ins.sum_hold) & ((ins.op != Op.GRAD) | (ins.part == PART_WHOLE) |
                                                    (ins.part == PART_FINISH))) |
                   (ins.sum_add & (ins.part == PART_FIRST)))
        m.d.sync += [
            dec["keep"].eq((ins.part >= PART_NEXT) | in_chain),
            dec["to_chip"].eq((ins.stored == STORE_CHIP) & bool(cfg.sum_words)),
            dec["to_ext"].eq((ins.stored == STORE_EXTERNAL) & bool(cfg.external_sum_words)),
            dec["no_pass1"].eq(rows == 0),
            dec["first"].eq(ins.part == PART_FIRST),
            dec["finish"].eq(ins.part == PART_FINISH),
            dec["add"].eq(ins.sum_add),
            dec["hold"].eq(ins.sum_hold),
            dec["bad"].eq((conv_only if not cfg.has_conv else conv_bad) | bad_store | bad_part | bad_acc),
        ] + [dec_op[c].eq(ins.op == c) for c in dec_codes]

        with m.FSM():
            with m.State("IDLE"):
                # a packet starts once the previous one's external writes are issued (ordered before it)
                m.d.comb += hin.ready.eq(writes_idle_q)
                m.d.sync += set_op(Op.NOP) + [argi.eq(0), status.eq(Status.OK)]
                with m.If(hin.valid & writes_idle_q):
                    h = hin.payload.data
                    m.d.sync += [cmd.eq(h[0:8]), tag.eq(h[16:32]), target_ok.eq(h[8:16] <= max(Target))]
                    m.d.sync += [target_hot[t].eq(h[8:16] == t) for t in Target]
                    known = (h[0:8] >= Command.WRITE) & (h[0:8] <= max(Command))
                    with m.If(~known):
                        m.d.sync += status.eq(Status.BAD_COMMAND)
                        with m.If(hin.payload.last):
                            m.next = "RESPOND"
                        with m.Else():
                            m.next = "DRAIN"
                    with m.Elif((h[0:8] == Command.COUNTERS) | (h[0:8] == Command.IDENT)):
                        with m.If(hin.payload.last):
                            m.d.sync += [word_i.eq(0)]
                            m.next = "SEND_COUNTERS_HDR"
                        with m.Else():
                            m.d.sync += status.eq(Status.TOO_LONG)
                            m.next = "DRAIN"
                    with m.Elif(hin.payload.last):
                        m.d.sync += status.eq(Status.TRUNCATED)
                        m.next = "RESPOND"
                    with m.Else():
                        m.next = "ARGS"
            with m.State("ARGS"):
                m.d.comb += hin.ready.eq(1)
                with m.If(hin.valid):
                    m.d.sync += [args[argi].eq(hin.payload.data), argi.eq(argi + 1)]
                    final = argi + 1 == nargs
                    last = hin.payload.last
                    a0 = Mux(argi == 0, hin.payload.data, args[0])
                    a1 = Mux(argi == 1, hin.payload.data, args[1])
                    # READ/WRITE end at argument 1, so the tests of argument 0 are registered as it
                    # arrives (no subtraction in front of the compare of argument 1)
                    with m.If(argi == 0):
                        m.d.sync += [a0_ok.eq(hin.payload.data <= depth_of), a0_room.eq(depth_of - hin.payload.data)]
                    in_range = a0_ok & (a1 <= a0_room)
                    m.d.sync += [cursor.eq(a0), remaining.eq(a1), more.eq(a1 != 0), to_send.eq(a1), word_i.eq(0)]
                    with m.If(~final):
                        with m.If(last):
                            m.d.sync += status.eq(Status.TRUNCATED)
                            m.next = "RESPOND"
                    with m.Elif(cmd == Command.RUN):
                        with m.If(last):
                            m.d.sync += [step.eq(args[0]), steps_left.eq(args[1]), eta.eq(hin.payload.data),
                                         run_base.eq(counters["run_cycles"])]
                            m.next = "RUN_NEXT_STEP"
                        with m.Else():
                            m.d.sync += status.eq(Status.TOO_LONG)
                            m.next = "DRAIN"
                    with m.Elif(~target_ok | ~in_range):
                        m.d.sync += status.eq(Mux(target_ok, Status.OUT_OF_RANGE, Status.BAD_TARGET))
                        with m.If(last):
                            m.next = "RESPOND"
                        with m.Else():
                            m.next = "DRAIN"
                    with m.Elif(cmd == Command.WRITE):
                        with m.If(last):
                            m.d.sync += status.eq(Mux(a1 == 0, Status.OK, Status.TRUNCATED))
                            m.next = "RESPOND"
                        with m.Else():
                            m.next = "WRITE_DATA"
                    with m.Else():                                   # READ
                        with m.If(last):
                            m.next = "READ_HDR"
                        with m.Else():
                            m.d.sync += status.eq(Status.TOO_LONG)
                            m.next = "DRAIN"
            with m.State("DRAIN"):
                m.d.comb += hin.ready.eq(1)
                with m.If(hin.valid & hin.payload.last):
                    m.next = "RESPOND"
            with m.State("WRITE_DATA"):
                m.d.comb += hin.ready.eq(1)
                with m.If(hin.valid):
                    m.d.sync += [item.eq(Cat(item[32:], hin.payload.data)), word_i.eq(word_i + 1),
                                 saw_last.eq(hin.payload.last)]
                    complete = word_i + 1 == item_words
                    with m.If(complete):
                        m.d.sync += word_i.eq(0)
                        m.next = "WRITE_ITEM"
                    with m.Elif(hin.payload.last):
                        m.d.sync += status.eq(Status.TRUNCATED)
                        m.next = "RESPOND"
            with m.State("WRITE_ITEM"):
                # item holds one complete item; write it, then continue or finish
                done_item = Signal()
                with m.Switch(target_hot):
                    with m.Case(is_target(Target.ACT)):
                        m.d.comb += [host_act_we.eq(1), host_w_addr.eq(cursor), host_act_w.eq(item_bits_of(Target.ACT)),
                                     done_item.eq(act_wready)]
                    with m.Case(is_target(Target.ERR)):
                        m.d.comb += [host_err_we.eq(1), host_w_addr.eq(cursor), host_err_w.eq(item_bits_of(Target.ERR)),
                                     done_item.eq(err_wready)]
                    with m.Case(is_target(Target.WEIGHTS)):
                        m.d.comb += [load_q.i.valid.eq(1), load_q.i.payload.addr.eq(cursor),
                                     load_q.i.payload.w.eq(item_bits_of(Target.WEIGHTS)), done_item.eq(load_q.i.ready)]
                    with m.Case(is_target(Target.LABELS)):
                        m.d.sync += [label_w_en.eq(1), label_w_addr.eq(cursor),
                                     label_w_data.eq(item_bits_of(Target.LABELS))]
                        m.d.comb += done_item.eq(1)
                    with m.Case(is_target(Target.PROGRAM)):
                        m.d.comb += [prog_wr.en.eq(1), prog_wr.addr.eq(cursor),
                                     prog_wr.data.eq(item_bits_of(Target.PROGRAM)), done_item.eq(1)]
                with m.If(done_item):
                    m.d.sync += [cursor.eq(cursor + 1), remaining.eq(remaining - 1), more.eq(remaining != 1)]
                    with m.If(remaining == 1):                   # the final item
                        with m.If(saw_last):
                            m.next = "RESPOND"
                        with m.Else():
                            m.d.sync += status.eq(Status.TOO_LONG)
                            m.next = "DRAIN"
                    with m.Elif(saw_last):
                        m.d.sync += status.eq(Status.TRUNCATED)
                        m.next = "RESPOND"
                    with m.Else():
                        m.next = "WRITE_DATA"
            with m.State("READ_HDR"):
                m.d.comb += [hout.valid.eq(1), hout.payload.data.eq(hdr), hout.payload.last.eq(to_send == 0)]
                with m.If(hout.ready):
                    with m.If(to_send == 0):
                        m.next = "IDLE"
                    with m.Else():
                        m.next = "READ_DATA"
            with m.State("READ_DATA"):
                m.d.comb += [host_read_active.eq(1), prog_rd.addr.eq(cursor)]
                with m.If(req_taken):
                    m.d.sync += [cursor.eq(cursor + 1), remaining.eq(remaining - 1), more.eq(remaining != 1)]
                m.d.comb += rd_resp_ready.eq(send_words == 0)
                with m.If(rd_resp_valid & rd_resp_ready):
                    m.d.sync += [resp_payload.eq(rd_resp_data), send_words.eq(item_words)]
                with m.If(send_words != 0):
                    final_word = (send_words == 1) & (to_send == 1)
                    m.d.comb += [hout.valid.eq(1), hout.payload.data.eq(resp_payload[:32]),
                                 hout.payload.last.eq(final_word)]
                    with m.If(hout.ready):
                        m.d.sync += [resp_payload.eq(resp_payload >> 32), send_words.eq(send_words - 1)]
                        with m.If(send_words == 1):
                            m.d.sync += to_send.eq(to_send - 1)
                            with m.If(to_send == 1):
                                m.next = "IDLE"
            with m.State("RESPOND"):
                loads_in = load_q.empty & wu.idle                # (the store's own input buffers too)
                m.d.comb += [hout.valid.eq(loads_in), hout.payload.data.eq(hdr), hout.payload.last.eq(1)]
                with m.If(hout.ready & loads_in):
                    m.next = "IDLE"
            with m.State("SEND_COUNTERS_HDR"):
                m.d.comb += [hout.valid.eq(1), hout.payload.data.eq(hdr)]
                with m.If(hout.ready):
                    m.next = "SEND_COUNTERS"
            with m.State("SEND_COUNTERS"):
                # COUNTERS: the counters; IDENT: constants of this build (protocol.ident_values)
                values = Array(counters[name] for name in COUNTERS)
                ident = Array(ident_values(cfg)[name] for name in IDENT)
                final = Mux(cmd == Command.IDENT, word_i == len(IDENT) - 1, word_i == len(COUNTERS) - 1)
                m.d.comb += [hout.valid.eq(1),
                             hout.payload.data.eq(Mux(cmd == Command.IDENT, ident[word_i], values[word_i])),
                             hout.payload.last.eq(final)]
                with m.If(hout.ready):
                    m.d.sync += word_i.eq(word_i + 1)
                    with m.If(final):
                        m.next = "IDLE"
            # ---- sequencer ----
            with m.State("RUN_NEXT_STEP"):
                m.d.comb += running.eq(1)
                m.d.sync += in_chain.eq(0)
                with m.If(steps_left == 0):
                    m.next = "RUN_RESPOND"
                with m.Else():
                    m.d.sync += [pc.eq(0), first_record.eq(1)]
                    m.next = "FETCH_CHECK"
            with m.State("FETCH"):
                # one word per cycle: the word read in the previous cycle arrives now (read latency
                # 1), is registered, goes into its group's staging register and lands in the
                # instruction register a cycle later; DECODE's tests are registered from it once
                # more. First the mask's words (MASK_WORDS cycles, then 2 for the last to land),
                # then one cycle per record word: MASK_WORDS + MACHINE_WORDS + 6 cycles per record.
                body = MASK_WORDS + 2
                m.d.comb += [running.eq(1), prog_rd.addr.eq(pc)]
                m.d.sync += fetched.eq(fetched + 1)
                with m.If(fetched < MASK_WORDS):
                    m.d.sync += [pc.eq(pc + 1), mask_arriving.eq(1)]
                with m.If(fetched == body):
                    # (mask bits past the record would shift the rest of the program out of step)
                    m.d.sync += fetch_bad.eq(mask[MACHINE_WORDS:].any() |
                                             (first_record & ~mask[:MACHINE_WORDS].all()))
                with m.If((fetched >= body) & (fetched < body + MACHINE_WORDS)):
                    m.d.sync += [mask.eq(mask >> 1), arriving.eq(1)]
                    with m.If(mask[0]):
                        m.d.sync += [pc.eq(pc + 1), carried.eq(1)]       # (the word read now arrives next cycle)
                        with m.If(pc >= cfg.program_words):
                            m.d.sync += fetch_bad.eq(1)
                with m.If(fetched == body + MACHINE_WORDS + 3):
                    m.d.sync += [fetched.eq(0), first_record.eq(0)]
                    with m.If(fetch_bad):
                        m.d.sync += status.eq(Status.BAD_INSTRUCTION)
                        abort()
                    with m.Else():
                        m.next = "DECODE"
            with m.State("DECODE"):
                m.d.comb += running.eq(1)
                keep, to_chip, to_ext, no_pass1 = dec["keep"], dec["to_chip"], dec["to_ext"], dec["no_pass1"]
                with m.If(~keep):
                    m.d.sync += [p1_left.eq(ins.qcount >> shift_l), pass2.eq(no_pass1),
                                 sum_wa.eq(0), stored_on.eq(to_chip | to_ext), store_ext.eq(to_ext),
                                 from_sums.eq(no_pass1 & (to_chip | to_ext)), from_chip_sums.eq(no_pass1 & to_chip)]
                    if cfg.external_sum_words:
                        m.d.sync += [sum_xw.eq(0), sum_chunk.eq(0), sums_reading.eq(no_pass1 & to_ext)]
                if cfg.external_sum_words:
                    # inside a product in parts the sums are read in an adding part and once every
                    # pass-1 row has entered (the finish record), not in a staging COPY between parts
                    with m.If(keep):
                        m.d.sync += sums_reading.eq(((dec["add"] & ~dec["bad"]) | pass2) & store_ext)
                m.d.sync += [done.eq(0), done_pending.eq(0), sum_rd_addr.eq(0), sum_rd_left.eq(0),
                             part_left.eq(ins.part_count >> shift_l), add_on.eq(dec["add"]), hold_on.eq(dec["hold"])]
                if cfg.external_sum_words:           # (the previous record's rows are all read back)
                    m.d.sync += [sum_go.eq(0), xr_chunk.eq(0), have.eq(0),
                                 share_wr.eq(Mux(keep, store_ext, to_ext))]
                with m.If(dec["bad"]):
                    m.d.sync += status.eq(Status.BAD_INSTRUCTION)
                    abort()
                with m.Else():
                    with m.If(dec["add"]):
                        # an adding part rewrites the stored rows from row 0, reading each ahead of its
                        # write (the part before it held until its rows were all written out). Not
                        # for a refused record: its reads would wait in the reader for the next pass 2.
                        m.d.sync += [sum_wa.eq(0), sum_rd_left.eq(ins.part_count >> shift_l),
                                     from_chip_sums.eq(~store_ext)]
                        if cfg.external_sum_words:
                            m.d.sync += [sum_xw.eq(0), sum_chunk.eq(0)]
                    with m.If(dec["first"]):
                        m.d.sync += [in_chain.eq(1), chain_rows.eq(ins.qcount >> shift_l), chain_op.eq(ins.op)]
                    with m.Elif(dec["finish"]):
                        m.d.sync += in_chain.eq(0)
                    with m.Switch(dec_op_hot):
                        with m.Case(*dec_case(Op.NOP)):
                            m.next = "FETCH_CHECK"
                        with m.Case(*dec_case(Op.END)):
                            m.d.sync += [step.eq(step + 1), steps_left.eq(steps_left - 1),
                                         counters["steps"].eq(counters["steps"] + 1), backward.eq(0)]
                            m.next = "RUN_NEXT_STEP"
                        with m.Case(*dec_case(Op.FWD)):
                            m.d.sync += set_op(Op.FWD) + [launch[n].eq(1) for n in ("a", "b", "out", "q")]
                            m.next = "WAIT"
                        with m.Case(*dec_case(Op.LOSS)):
                            m.d.sync += set_op(Op.LOSS) + [launch[n].eq(1) for n in ("aux", "q")] + [backward.eq(1)]
                            m.next = "PASS2"
                        with m.Case(*dec_case(Op.ERR)):
                            m.d.sync += set_op(Op.ERR)
                            with m.Switch(ins.part):
                                with m.Case(PART_WHOLE):
                                    m.d.sync += [launch[n].eq(1) for n in ("a", "b", "aux", "q")]
                                    m.next = "PASS2"
                                with m.Case(PART_FIRST):
                                    m.d.sync += [launch[n].eq(1) for n in ("a", "b", "aux", "q")]
                                    m.next = "WAIT_PART"
                                with m.Case(PART_NEXT):
                                    m.d.sync += [launch[n].eq(1) for n in ("a", "b", "aux")]
                                    m.next = "WAIT_PART"
                                with m.Case(PART_FINISH):               # pass 2 of every part's rows
                                    m.d.sync += [launch[n].eq(1) for n in ("aux", "out")]
                                    m.d.sync += sum_rd_left.eq(ins.qcount >> shift_l)
                                    m.next = "WAIT"
                        with m.Case(*dec_case(Op.GRAD)):
                            m.d.sync += set_op(Op.GRAD)
                            with m.Switch(ins.part):
                                with m.Case(PART_WHOLE):
                                    m.d.sync += [launch[n].eq(1) for n in ("a", "b", "idx", "q")]
                                    m.next = "PASS2"
                                with m.Case(PART_FIRST):           # (the whole tensor's draw pattern)
                                    m.d.sync += [launch[n].eq(1) for n in ("a", "b", "idx", "q")]
                                    m.next = "WAIT_PART"
                                with m.Case(PART_NEXT):
                                    m.d.sync += [launch[n].eq(1) for n in ("a", "b")]
                                    m.next = "WAIT_PART"
                                with m.Case(PART_FINISH):               # pass 2 of every part's rows
                                    m.d.sync += [launch["out"].eq(1), sum_rd_left.eq(ins.qcount >> shift_l)]
                                    m.next = "WAIT"
                        with m.Case(*dec_case(Op.COPY)):
                            m.d.sync += set_op(Op.COPY) + [launch["aux"].eq(1), launch["out"].eq(1)]
                            m.next = "WAIT"
                        with m.Case(*dec_case(Op.COPY_ACT)):
                            m.d.sync += set_op(Op.COPY_ACT) + [launch["aux"].eq(1), launch["out"].eq(1)]
                            m.next = "WAIT"
                        with m.Default():
                            m.d.sync += status.eq(Status.BAD_INSTRUCTION)
                            abort()
            with m.State("FETCH_CHECK"):
                m.d.comb += running.eq(1)
                m.d.sync += fetch_bad.eq(0)
                with m.If(pc + MASK_WORDS > cfg.program_words):
                    m.d.sync += status.eq(Status.BAD_INSTRUCTION)
                    abort()
                with m.Else():
                    m.next = "FETCH"
            with m.State("FLUSH"):
                # A RUN stopped inside a product in parts: its quantiser command still expects the
                # rest of pass 1 and all of pass 2. Zero rows complete it and its outputs are
                # dropped (nothing is written), so the engine is ready for the next command.
                m.d.comb += [running.eq(1), flushing.eq(1)]
                with m.If(take_in & pass2):
                    m.d.sync += flush_in_left.eq(flush_in_left - 1)
                with m.If(qo.valid):
                    m.d.sync += flush_out_left.eq(flush_out_left - 1)
                # (and, with external sums, the zero rows' words have left the row queue)
                with m.If((flush_out_left == 0) & (flush_in_left == 0) & sums_flushed):
                    m.d.sync += in_chain.eq(0)
                    m.next = "RUN_RESPOND"
            with m.State("PASS2"):
                m.d.comb += running.eq(1)
                with m.If(~launching):
                    with m.Switch(op_hot):
                        with m.Case(*op_case(Op.LOSS)):
                            m.d.sync += [launch["aux"].eq(1), launch["out"].eq(1)]
                        with m.Case(*op_case(Op.ERR)):
                            m.d.sync += [launch[n].eq(1) for n in ("aux", "out")]
                            m.d.sync += [launch[n].eq(~stored_on) for n in ("a", "b")]
                        with m.Case(*op_case(Op.GRAD)):
                            m.d.sync += launch["out"].eq(1)
                            m.d.sync += [launch[n].eq(~stored_on) for n in ("a", "b")]
                    # store-then-quantise: pass 2 reads the pass-1 rows back from the sum buffer
                    with m.If(stored_on):
                        m.d.sync += sum_rd_left.eq(ins.qcount >> shift_l)
                    m.next = "WAIT"
            with m.State("WAIT_PART"):
                # a part ends when its rows have entered the quantiser (stored: its sums are kept)
                m.d.comb += running.eq(1)
                # (a held part also waits for its rows to be written out: the next part rewinds)
                with m.If((part_left == 0) & ~launching & (sums_flushed | ~hold_on)):
                    m.next = "FETCH_CHECK"
            with m.State("WAIT"):
                m.d.comb += running.eq(1)
                with m.If(done & ~launching):
                    m.d.sync += done.eq(0)
                    m.next = "FETCH_CHECK"
            with m.State("RUN_RESPOND"):
                m.d.comb += [hout.valid.eq(1), hout.payload.data.eq(hdr)]
                m.d.sync += set_op(Op.NOP)
                with m.If(hout.ready):
                    m.next = "RUN_CYCLES"
            with m.State("RUN_CYCLES"):
                m.d.comb += [hout.valid.eq(1), hout.payload.data.eq(counters["run_cycles"] - run_base),
                             hout.payload.last.eq(1)]
                with m.If(hout.ready):
                    m.next = "IDLE"
        return m
