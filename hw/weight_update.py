"""Weight-update accumulator: stored weights in block RAM, Ws ← clip(Ws − ΔWs, ±w_clip), forward codes Wq.

One :class:`WeightUpdate` holds ``depth`` words of ``lanes`` stored weights (kG-bit signed integers,
spec §2.8, §8.1) in a simple dual-port block RAM with a registered output (:class:`hw.bram.BlockRam`
semantics: read latency 2; one write port) and serves four operations through one in-order pipeline:

========== ============================================== =========================================
operation  input                                          effect / output
========== ============================================== =========================================
update     ``update`` stream: ``addr``, ``dw[lanes]``      ``Ws ← clip(Ws − ΔWs, ±w_clip)`` at ``addr``
                                                          (``golden.quant.update_weights``)
load       ``load`` stream: ``addr``, ``w[lanes]``         ``Ws ← clip(w, ±w_clip)`` at ``addr``
serve      ``serve_cmd``: ``start``, ``count``             ``count`` beats on ``serve``: ``wq[lanes]``,
                                                          ``last`` (``golden.quant.forward_weights``)
readback   ``readback_cmd``: ``start``, ``count``          ``count`` beats on ``readback``: ``w[lanes]``,
                                                          ``last``
========== ============================================== =========================================

Payloads (all ``amaranth.lib.data`` layouts; lane ``i`` is ``payload.dw[i]`` etc., lane 0 in the
low bits of the flat value; a word holds the flattened weights ``lanes·addr … lanes·addr + lanes − 1``
in the golden model's row-major order when the host lays them out that way):

* ``update``: ``addr`` (``addr_width`` bits), ``dw``: ``lanes`` × ``signed(dw_width)``. The width
  holds the largest increment the config can produce, |ΔWs| ≤ ⌈√2·η_max⌉ (spec §2.7; η_max the
  largest η of ``config.lr_schedule``; 12 → 5 bits for the default schedule, 92682 → 18 bits at
  η = 2^16). Any value of the port width is handled exactly (the difference is formed at full
  width before the clip), not only values within that bound.
* ``load``: ``addr``, ``w``: ``lanes`` × ``signed(kG)``. Loads saturate to ±w_clip (the golden
  initialiser clips the same way), so the stored range holds whatever the host sends.
* ``serve_cmd`` / ``readback_cmd``: ``start`` (``addr_width`` bits), ``count`` (words, a field of
  ``range(depth + 1)``; ``count = 0`` is accepted and emits nothing). Addresses run start,
  start + 1, … and wrap from depth − 1 to 0 (a count above depth repeats words). A new command is accepted when the previous one has issued its last word
  (back-to-back commands leave no gap).
* ``serve``: ``wq``: ``lanes`` × ``signed(kW)``, two's complement. For kW = 2 this is the ternary
  code ``0b01`` = +1, ``0b00`` = 0, ``0b11`` = −1 (``0b10`` = −2 never occurs; every code lies in
  ±(2^(kW−1) − 1)). ``last`` marks the command's final word.
* ``readback``: ``w``: ``lanes`` × ``signed(kG)`` (the stored weights), ``last``.

Addresses ≥ depth (only possible when depth is not a power of two) are out of range: update and load
beats to them are accepted and dropped, serve and readback return zero words (a read command started
out of range counts on modulo 2^addr_width).

Timing (cycle 0 = the cycle a beat is accepted / a read word is issued; no stalls):

* Pipeline: arbiter → issue register (stage 0, drives the RAM address) → stage 1 (RAM read;
  picks from registers the word that will replace the RAM's: a load's saturated word, or the
  write-back of the op three or four ahead when it wrote this address) → stage 2 (RAM output
  register, inside the DP16KD for ``target="ecp5"``; one select: the op two ahead's result, else
  stage 1's pick, else the RAM word) → stage 3, compute (subtract and a one-sided clip, on
  registers; a read right behind a write to its address takes that write's result) → write-back
  register driving the RAM write port, quantise, output FIFOs. An update or load accepted in cycle
  t writes the RAM at the end of cycle t + 5 (``LATENCY_WRITE``). The clip only tests the side ΔWs
  moves the word to (ΔWs ≥ 0: −w_clip; ΔWs < 0: +w_clip), which is exact because the old word
  always lies in ±w_clip (the stored-range invariant proved in ``formal/weight_update_formal.py``).
* Throughput: one operation per cycle in total. Each cycle a round-robin arbiter issues one of
  {update beat, load beat, serve word, readback word}; a lone stream gets every cycle, with one
  exception: an update beat whose address equals that of the write (update or load) issued in the
  cycle just before is not taken in that cycle (``update.ready`` low; the cycle issues nothing, a
  bubble, and the round-robin pointer does not move, so the update keeps its turn and is issued in
  the next cycle unless a requester ahead of it in the round-robin order has become valid). So an
  update stream without stalls runs at one word per cycle as long as no address repeats back to
  back (as in training, where each word is updated once per step), and at one word per two cycles
  on one address. Loads and read words are never held.
* A serve/readback command accepted in cycle c issues its first word in c + 1; that word is valid on
  the output in c + 7 (``LATENCY_READ`` = 6 after issue), then one word per cycle. Each output has a
  16-entry FIFO; a read word is only issued while fewer than 10 words were queued there one cycle
  before (a registered test, so the issue logic starts from flip-flops), so every word in flight
  has a slot and output back-pressure never stalls the pipeline or the other operations. (With 8
  entries the threshold was 2 words: a consumer that paused for one cycle, as the MAC array does
  after each tile, stopped the issue until the pipeline ran dry: 7 idle cycles every other tile of
  LeNet-5's conv1.)

Ordering and hazards: operations take effect in issue order, and every operation sees every write
(update or load) issued before it. Read-after-write hazards (a word read while an older write to the
same address is still in the four-cycle window between its RAM read and the RAM write becoming
visible) are resolved by forwarding the youngest matching write-back value, except for an update
right behind a write to its address, which gets the bubble above instead: so no arithmetic sits on
a loop (the compute stage works on registers only; its single loop is the 2:1 select of a read
forwarded from the op just ahead). The RAM's read data is never used for such a word, so the RAM's
own read/write collision behaviour does not matter. In detail: a word's RAM read happens in the
cycle its op sits in the issue register (stage 0); the ops one to four ahead of it are then in
stages 1–4 and write the RAM at the end of that cycle (the op four ahead, in the write-back
register: the same-cycle collision that is undefined on a DP16KD) or later, and exactly those four
are the forwarding sources: one ahead (reads only, in stage 3: ``s3_rfwd``), two ahead (stage 2:
``s2_m4``), three and four ahead (stage 1: ``s1_m5``, ``s1_m6``; the addresses of all four
requesters are compared at issue with the ops then three and four ahead, ``hit_*``); writes five or
more ahead landed at least one cycle before the read and are in the RAM. Updates to the same
address back to back therefore chain correctly, one bubble apart (the second sees the first two
ahead). An update, load or
command accepted before a serve/readback command is accepted is visible to all of its words; a
write accepted while a read command is running may land before or after any given word.

Reset (``rst`` of the ``sync`` domain) empties the pipeline, the command sequencers and the output
FIFOs; the RAM keeps its contents, so writes still in flight (the last five cycles) are lost.

Targets: ``target="ecp5"`` stores the words in :class:`hw.bram.BlockRam` (DP16KD with the output
register on, ⌈lanes·kG / 36⌉ blocks for depth ≤ 512), whose clock-to-out is then a flip-flop's
rather than the RAM array's; the RAM starts all zero (``init`` is not supported: load the words
through ``load``). ``target="generic"`` (default, simulation and formal) describes the same two
registers with ``lib.memory`` (which takes ``init`` and which the formal harness reads directly).
Both have identical cycle behaviour.

Checked against ``golden.quant`` in ``tests/test_hw_weight_update.py`` and
``sim/test_sim_weight_update.py``; the stored-range invariant and the Wq rule are proved in
``formal/weight_update_formal.py``.
"""

from __future__ import annotations

import math

from amaranth.hdl import Cat, Const, Elaboratable, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.config import WageConfig
from hw.bram import BlockRam
from hw.netlist import kept

__all__ = ["WeightUpdate", "dw_bound", "OUT_FIFO_DEPTH", "LATENCY_WRITE", "LATENCY_READ", "TARGETS"]

TARGETS = ("generic", "ecp5")

#: Pipeline registers between the arbiter and the output FIFOs (issue, RAM data, RAM output,
#: compute, write-back).
_STAGES = 5
#: Entries of each output FIFO; a read word is issued while fewer than OUT_FIFO_DEPTH − _STAGES − 1 were queued
#: in the cycle before.
OUT_FIFO_DEPTH = 16
#: Cycles from accepting an update/load beat to the end of the cycle that writes the RAM.
LATENCY_WRITE = 5
#: Cycles from issuing a read word to its beat being valid on ``serve``/``readback``.
LATENCY_READ = 6

_UPDATE, _LOAD, _SERVE, _READBACK = range(4)


def dw_bound(config: WageConfig) -> int:
    """⌈√2·η_max⌉, the largest |ΔWs| Q_G can produce under ``config`` (spec §2.7).

    η = 2^e: for e ≥ 0 √2·2^e is irrational, so the ceiling is ⌊√(2^(2e+1))⌋ + 1; for e < 0 it is 1.
    """
    e = max(config.eta_log2(epoch) for epoch, _ in config.lr_schedule)
    return math.isqrt(1 << (2 * e + 1)) + 1 if e >= 0 else 1


#: Copies of each per-lane select register (stages 2 and 3): one select per 256 bits is too slow a
#: net on the ECP5, so each drives about lanes / _COPIES lanes.
_COPIES = 12


def _copies(m, name, value, n):
    """``n`` identical registered copies of the 1-bit ``value`` (reset-less, loaded every cycle).

    The copies are named with :func:`hw.netlist.kept`, so the synthesis flows keep them apart
    (yosys would otherwise merge identical flip-flops back into one high-fan-out register).
    """
    outs = []
    for j in range(n):
        reg = Signal(name=kept(f"{name}_{j}"), reset_less=True)
        m.d.sync += reg.eq(value)
        outs.append(reg)
    return outs


class _OutFifo(Elaboratable):
    """First-word-fall-through FIFO (the interface subset of ``lib.fifo.SyncFIFO`` used here) whose
    fill level is kept as a thermometer code, ``fill[k]`` = level > k: ``r_rdy``, ``w_rdy`` and the
    threshold tests are single flip-flops and each fill bit's update is one small function of its
    neighbours and the two enables, instead of an up/down counter compared with 0 in the loop
    ``level → r_rdy → read → level`` (which limited the unit at ~150 MHz). ``depth`` a power of 2.

    Writes are not gated by ``w_rdy``: the unit's credit test never writes a full FIFO (proved in
    ``formal/weight_update_formal.py``, which asserts ``w_en → w_rdy``). ``w_en`` drives the
    LUT-RAM write enables and the write pointer, ``w_en_level`` (the same value, from a flip-flop
    of its own) the fill bits, so that the fill logic stays local and does not wait for the wide
    write-enable net."""

    def __init__(self, width: int, depth: int):
        assert depth >= 2 and depth & (depth - 1) == 0
        self.width, self.depth = width, depth
        self.w_data, self.w_en, self.w_rdy = Signal(width), Signal(), Signal()
        self.w_en_level = Signal()
        self.r_data, self.r_en, self.r_rdy = Signal(width), Signal(), Signal()
        self.fill = Signal(depth)
        self.level = Signal(range(depth + 1))          # sum of the fill bits (formal hooks only)

    def below(self, k: int):
        """level < k, one flip-flop (1 ≤ k ≤ depth)."""
        return ~self.fill[k - 1]

    def elaborate(self, platform):
        m = Module()
        n, t = self.depth, self.fill
        do_w, do_r = Signal(), Signal()
        m.d.comb += [self.r_rdy.eq(t[0]), self.w_rdy.eq(~t[n - 1]),
                     do_w.eq(self.w_en_level), do_r.eq(self.r_en & t[0]),
                     self.level.eq(sum(t[k] for k in range(n)))]
        for k in range(n):
            with m.If(do_w & ~do_r):
                m.d.sync += t[k].eq(t[k - 1] if k else 1)
            with m.Elif(do_r & ~do_w):
                m.d.sync += t[k].eq(t[k + 1] if k + 1 < n else 0)
        m.submodules.storage = storage = Memory(shape=self.width, depth=n, init=[])
        wp, rp = storage.write_port(), storage.read_port(domain="comb")
        produce, consume = Signal(range(n)), Signal(range(n))
        m.d.comb += [wp.addr.eq(produce), wp.data.eq(self.w_data), wp.en.eq(self.w_en),
                     rp.addr.eq(consume), self.r_data.eq(rp.data)]
        with m.If(self.w_en):
            m.d.sync += produce.eq(produce + 1)
        with m.If(do_r):
            m.d.sync += consume.eq(consume + 1)
        return m


def _check_positive(name, value):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name}={value!r}: must be a positive integer")
    if value < 1:
        raise ValueError(f"{name}={value!r}: must be a positive integer")


class WeightUpdate(wiring.Component):
    """Stored-weight memory with update, forward-weight serve, load and readback streams.

    Parameters: ``config`` (:class:`golden.config.WageConfig`: kW, kG, weight_clip, lr_schedule),
    ``depth`` words, ``lanes`` weights per word, ``init`` optional initial contents — ``depth·lanes``
    integers in ±w_clip, shaped (depth, lanes) or flat in word-major order (``target="generic"``
    only), ``target`` "generic" (default) or "ecp5" (DP16KD with output register; see the module
    docstring). See the module docstring for the streams, encodings, latencies and ordering.
    """

    def __init__(self, config: WageConfig, depth: int, lanes: int = 1, *, init=None, target: str = "generic"):
        if not isinstance(config, WageConfig):
            raise TypeError(f"config={config!r}: must be a golden.config.WageConfig")
        _check_positive("depth", depth)
        _check_positive("lanes", lanes)
        if not isinstance(target, str) or target not in TARGETS:
            raise ValueError(f"target={target!r}: must be one of {', '.join(repr(t) for t in TARGETS)}")
        if target == "ecp5":
            if init is not None:
                raise ValueError(f"init=...: target={target!r} starts from an all-zero RAM; "
                                 "write the initial words through the load stream")
        self.target = target
        self.config = config
        self.depth = depth
        self.lanes = lanes
        self.w_clip = config.w_clip
        self.w_width = config.kG
        self.wq_width = config.kW
        self.w_shift = config.w_shift
        self.dw_max = dw_bound(config)
        self.dw_width = self.dw_max.bit_length() + 1
        self.addr_width = max(1, (depth - 1).bit_length())
        self._clip_limit = self.w_clip          # the formal mutation test raises this by one
        self._update_bubble = True                 # the formal mutation test turns the bubble off

        word = data.ArrayLayout(signed(self.w_width), lanes)
        self.word_layout = word
        self.update_layout = data.StructLayout({
            "addr": unsigned(self.addr_width), "dw": data.ArrayLayout(signed(self.dw_width), lanes)})
        self.load_layout = data.StructLayout({"addr": unsigned(self.addr_width), "w": word})
        self.cmd_layout = data.StructLayout({"start": unsigned(self.addr_width), "count": range(depth + 1)})
        self.serve_layout = data.StructLayout({
            "wq": data.ArrayLayout(signed(self.wq_width), lanes), "last": 1})
        self.readback_layout = data.StructLayout({"w": word, "last": 1})

        self._init = self._check_init(init)
        super().__init__({
            "update": In(stream.Signature(self.update_layout)),
            "load": In(stream.Signature(self.load_layout)),
            "serve_cmd": In(stream.Signature(self.cmd_layout)),
            "serve": Out(stream.Signature(self.serve_layout)),
            "readback_cmd": In(stream.Signature(self.cmd_layout)),
            "readback": Out(stream.Signature(self.readback_layout)),
        })

    def _check_init(self, init):
        if init is None:
            return []
        try:
            import numpy as np
            arr = np.asarray(init)
        except Exception:
            raise TypeError(f"init={init!r}: expected depth x lanes integers") from None
        if arr.dtype.kind not in "iub":
            raise TypeError(f"init: integer values expected, got dtype {arr.dtype}")
        if arr.size != self.depth * self.lanes or arr.ndim not in (1, 2) or (
                arr.ndim == 2 and arr.shape != (self.depth, self.lanes)):
            raise ValueError(f"init has shape {arr.shape}: expected ({self.depth}, {self.lanes}) "
                             f"or ({self.depth * self.lanes},)")
        arr = arr.reshape(self.depth, self.lanes).astype(np.int64)
        bad = np.abs(arr) > self.w_clip
        if bad.any():
            i = np.argwhere(bad)[0]
            raise ValueError(f"init[{i[0]}][{i[1]}]={int(arr[tuple(i)])}: stored weights must lie in "
                             f"±w_clip = ±{self.w_clip}")
        return [[int(v) for v in row] for row in arr]

    # ---- arithmetic (one definition each; the formal harness checks them against the spec) --------
    def _clip(self, value, above=None, below=None):
        """clip(value, ±w_clip), as a kG-bit signed value; ``above``/``below``: value > w_clip and
        value < −w_clip when already computed (registered earlier)."""
        lim = self._clip_limit
        above = value > lim if above is None else above
        below = value < -lim if below is None else below
        return Mux(above, lim, Mux(below, -lim, value))[:self.w_width].as_signed()

    def forward_code(self, ws):
        """Wq of one stored weight (for stores of Ws outside this unit, e.g. in external memory)."""
        return self._forward_code(ws)

    def clip(self, value):
        """clip(value, ±w_clip) as a kG-bit signed value."""
        return self._clip(value)

    def _forward_code(self, ws):
        """Wq = clip(RNE(Ws / 2^(kG−kW)), ±(2^(kW−1)−1)) for one kG-bit signed Ws (golden forward_weights)."""
        s, k = self.w_shift, self.wq_width
        wq_max = (1 << (k - 1)) - 1
        if s == 0:
            q = ws
        else:
            floor = ws[s:].as_signed()                       # Ws >> s, arithmetic
            rem = ws[:s]                                     # Ws mod 2^s
            half = 1 << (s - 1)
            up = (rem > half) | ((rem == half) & floor[0])   # round half to even
            q = floor + up
        return Mux(q > wq_max, wq_max, Mux(q < -wq_max, -wq_max, q))[:k].as_signed()

    def elaborate(self, platform):
        m = Module()
        lanes, depth = self.lanes, self.depth
        aw = self.addr_width

        # The RAM: read address from the issue register (stage 0), data two cycles later in stage 2
        # (the second register is the RAM output register), write port driven by stage 4. Built
        # here (not in __init__) so an unused component leaves no unused memory behind; the formal
        # harness calls elaborate() itself and adds combinational read ports to self._mem (generic).
        r_addr, w_addr, w_en = Signal(aw), Signal(aw), Signal()
        w_data = Signal(self.word_layout)
        s2_rdata = Signal(self.word_layout)     # the RAM output register's value (op in stage 2)
        if self.target == "ecp5":
            m.submodules.mem = ram = BlockRam(self.word_layout.size, depth, target=self.target)
            m.d.comb += [ram.r_addr.eq(r_addr), ram.r_en.eq(1), ram.w_addr.eq(w_addr),
                         ram.w_data.eq(w_data), ram.w_en.eq(w_en), s2_rdata.eq(ram.r_data)]
            self._mem = None
        else:
            # hw.bram.BlockRam's generic model, written out here for ``init`` and formal access
            m.submodules.mem = mem = self._mem = Memory(shape=self.word_layout, depth=depth, init=self._init)
            rport = mem.read_port(transparent_for=())      # not transparent: the forwarding covers it
            wport = mem.write_port()
            rdata_r = Signal(self.word_layout, reset_less=True, name="s2_rdata_r")
            m.d.comb += [rport.addr.eq(r_addr), wport.addr.eq(w_addr), wport.data.eq(w_data),
                         wport.en.eq(w_en), s2_rdata.eq(rdata_r)]
            m.d.sync += rdata_r.eq(rport.data)

        op_layout = data.StructLayout({
            "kind": 2, "addr": unsigned(aw), "in_range": 1, "last": 1})

        def in_range(addr):
            return Const(1) if depth == 1 << aw else addr < depth

        def next_addr(addr):
            return Mux(addr == depth - 1, 0, addr + 1)[:aw]

        # ---- read command sequencers and output FIFOs ------------------------------------------
        m.submodules.serve_fifo = serve_fifo = _OutFifo(self.serve_layout.size, OUT_FIFO_DEPTH)
        m.submodules.readback_fifo = rb_fifo = _OutFifo(self.readback_layout.size, OUT_FIFO_DEPTH)
        m.d.comb += [
            self.serve.valid.eq(serve_fifo.r_rdy),
            self.serve.payload.eq(serve_fifo.r_data),
            serve_fifo.r_en.eq(self.serve.ready),
            self.readback.valid.eq(rb_fifo.r_rdy),
            self.readback.payload.eq(rb_fifo.r_data),
            rb_fifo.r_en.eq(self.readback.ready),
        ]

        # pipeline registers (0: issue register, RAM address; 1: RAM read data; 2: RAM output
        # register, forwarding from older write-backs; 3: compute; 4: write-back). Control (kind,
        # address, valid) is reset; the wide data fields are reset-less plain registers, loaded
        # every cycle whatever is issued (only the kind decides whether they are used), so no grant
        # or reset logic fans out to them.
        s0_valid, s1_valid, s2_valid, s3_valid, s4_valid = (Signal(name=f"s{i}_valid") for i in range(5))
        s0, s1, s2, s3 = (Signal(op_layout, name=f"s{i}") for i in range(4))
        dw_word = data.ArrayLayout(signed(self.dw_width), lanes)
        s0_dw, s1_dw, s2_dw, s3_dw = (Signal(dw_word, reset_less=True, name=f"s{i}_dw") for i in range(4))
        s0_w = Signal(self.word_layout, reset_less=True)
        # the load's range tests, done at issue on the incoming word: w > lim, w < −lim
        s0_w_hi, s0_w_lo = (Signal(lanes, reset_less=True, name=n) for n in ("s0_w_hi", "s0_w_lo"))
        s1_wsat = Signal(self.word_layout, reset_less=True)     # the load's word, saturated
        s2_fwd = Signal(self.word_layout, reset_less=True)      # forwarded word chosen in stage 1
        s3_pre = Signal(self.word_layout, reset_less=True)   # old word unless the op just ahead wrote it
        # One-sided clip with the bound moved to the ΔWs side early, so that the compute stage runs
        # the subtraction and the range test in parallel. The old word always lies in ±w_clip (the
        # stored-range invariant, proved in formal/weight_update_formal.py: every write is a clip
        # or a saturated load), so old − dw can only leave the range on the side dw moves it to:
        # for dw ≥ 0 it clips to −lim iff old − dw < −lim ⇔ old − t < 0 with t = dw − lim; for
        # dw < 0 to +lim iff old − dw > lim ⇔ old − t ≥ 0 with t = lim + dw + 1. So one carry chain
        # (the sign of old − t, inverted when dw < 0) decides, and the clip value follows from
        # dw's sign. Reads and loads get dw = 0 and t below any word instead (never clipped), so
        # the compute stage needs no kind select (a load enters it as its saturated value in
        # place of the old word).
        thr_shape = signed(max(self.dw_width, self.w_width) + 2)
        thr = data.ArrayLayout(thr_shape, lanes)
        s2_t, s3_t = (Signal(thr, reset_less=True, name=n) for n in ("s2_t", "s3_t"))
        s2_neg, s3_neg = (Signal(lanes, reset_less=True, name=n) for n in ("s2_neg", "s3_neg"))
        # the clip value ±lim of an update, as a register (for other ops any data: never used).
        # Not a constant in the compute stage, so that synthesis cannot turn the clip into the
        # write-back register's synchronous set/reset (LSR: a slower input, behind one more LUT).
        s3_bound = Signal(self.word_layout, reset_less=True)
        s4_kind = Signal(2)
        s4_push_serve, s4_push_rb = Signal(), Signal()
        # second copies for the FIFOs' fill bits (kept apart from the write-enable copies)
        s4_push_serve_l, s4_push_rb_l = Signal(name=kept("s4_push_serve_l")), Signal(name=kept("s4_push_rb_l"))
        s4_addr = Signal(aw)
        s4_last = Signal()
        s4_wen = Signal()
        s4_word = Signal(self.word_layout, reset_less=True)
        h5_wen, h6_wen = Signal(), Signal()     # write-back history: values written 1 and 2 cycles ago
        h5_addr, h6_addr = Signal(aw), Signal(aw)
        h5_word = Signal(self.word_layout, reset_less=True)
        h6_word = Signal(self.word_layout, reset_less=True)
        self._writeback = ((s4_wen, s4_word), (h5_wen, h5_word), (h6_wen, h6_word))   # formal hooks

        sequencers = {}
        self._fifo_overflow = []                # formal harness hooks: a write into a full FIFO,
        self._occupancy = []                    # and FIFO level + words in flight (≤ OUT_FIFO_DEPTH)
        self._fifo_fill = []                    # and the FIFO's thermometer-coded level
        for kind, cmd, fifo_ in ((_SERVE, self.serve_cmd, serve_fifo), (_READBACK, self.readback_cmd, rb_fifo)):
            active = Signal(name=f"seq{kind}_active")
            addr = Signal(aw, name=f"seq{kind}_addr")
            left = Signal(range(depth + 1), name=f"seq{kind}_left")
            last = Signal(name=f"seq{kind}_last")           # left == 1, kept as a register
            inflight = ((s0_valid & (s0.kind == kind)) + (s1_valid & (s1.kind == kind))
                        + (s2_valid & (s2.kind == kind)) + (s3_valid & (s3.kind == kind))
                        + (s4_valid & (s4_kind == kind)))
            # at most _STAGES words are in flight, so a level below DEPTH − _STAGES leaves room for
            # them all. The test is registered (the level read one cycle late, when it can have
            # grown by at most one word, hence the threshold one lower), so the issue logic starts
            # from a flip-flop rather than from the FIFO's level counter.
            # The request (active, and the FIFO had room one cycle before) is itself a register,
            # loaded from the next value of ``active``, so the arbiter starts from flip-flops only.
            request = Signal(name=f"seq{kind}_request")
            active_next = Signal(name=f"seq{kind}_active_next")
            m.d.sync += [active.eq(active_next),
                         request.eq(active_next & fifo_.below(OUT_FIFO_DEPTH - _STAGES - 1))]
            sequencers[kind] = (cmd, active, addr, left, last, request, active_next)
            self._fifo_overflow.append(fifo_.w_en & ~fifo_.w_rdy)
            self._fifo_fill.append(fifo_.fill)
            self._occupancy.append(fifo_.level + inflight)

        def is_write(kind):
            return (kind == _UPDATE) | (kind == _LOAD)

        def wen(valid, op):
            return valid & is_write(op.kind) & op.in_range

        # "stage k holds a valid in-range write", as flip-flops moving along the pipeline
        s1_wr, s2_wr, s3_wr = (Signal(name=f"s{k}_wr") for k in (1, 2, 3))
        m.d.sync += [s1_wr.eq(wen(s0_valid, s0)), s2_wr.eq(s1_wr), s3_wr.eq(s2_wr)]

        # ---- stage 0: round-robin issue ------------------------------------------------------
        req = Signal(4)
        m.d.comb += req.eq(Cat(self.update.valid, self.load.valid,
                               sequencers[_SERVE][5], sequencers[_READBACK][5]))
        # The winner is computed as an index (sel, which is also the issued op's kind) plus
        # "any request": the issued address is then one 4:1 mux per bit (a LUT6) behind it, not an
        # AND-OR over one-hot grants.
        sel = Signal(2)
        any_req = Signal()
        prev = Signal(2)                        # last granted requester
        m.d.comb += any_req.eq(req.any())
        with m.Switch(prev):
            for p in range(4):
                with m.Case(p):
                    order = [(p + 1 + i) % 4 for i in range(4)]
                    with m.If(req[order[0]]):
                        m.d.comb += sel.eq(order[0])
                    for o in order[1:-1]:
                        with m.Elif(req[o]):
                            m.d.comb += sel.eq(o)
                    with m.Else():
                        m.d.comb += sel.eq(order[-1])
        grant = Signal(4)
        m.d.comb += [grant[k].eq(any_req & (sel == k)) for k in range(4)]

        # Update-after-write bubble: an update is never issued right behind a write (update or
        # load) to the same address, so the compute stage has no arithmetic on a loop (see the
        # module docstring; reads right behind a write are forwarded in the compute stage). The
        # test is combinational on the update's payload (the address is new in every beat) and
        # cancels the grant ("kill"): that cycle issues nothing, and the round-robin pointer stays,
        # so the update keeps its turn and is granted in the next cycle (the issue register then
        # holds the bubble) unless a requester ahead of it in the round-robin order arrived.
        s0_write = Signal()                     # the issue register holds a write (a flip-flop)
        upd_hazard, kill = Signal(), Signal()
        m.d.comb += [upd_hazard.eq(s0_write & (self.update.payload.addr == s0.addr)),
                     kill.eq(self._update_bubble & grant[_UPDATE] & upd_hazard)]
        # test and formal hooks: the issue register, a cancelled grant, the op one stage further on
        self._issue_hooks = (s0_valid, s0, kill)
        self._s1_hooks = (s1_valid, s1)
        with m.If(any_req & ~kill):
            m.d.sync += prev.eq(sel)
        issue = Signal(op_layout)
        m.d.comb += [
            self.update.ready.eq(grant[_UPDATE] & ~(upd_hazard & self._update_bubble)),
            self.load.ready.eq(grant[_LOAD]),
        ]
        # The issued address as a chain of 2:1 selects, the raw stream valids last: the update wins
        # unless a requester ahead of it requests (win_upd: update.valid and a function of the
        # other requests and prev), else the load among the rest (win_load: load.valid and the
        # sequencer requests and prev), else the serve or readback word (registers only). So
        # update.valid is one select away from the issue register (the index is in parallel).
        def ahead(a, b, p):
            order = [(p + 1 + i) % 4 for i in range(4)]
            return order.index(a) < order.index(b)
        block_upd, block_load, win_serve = Signal(), Signal(), Signal()
        with m.Switch(prev):
            for p in range(4):
                with m.Case(p):
                    m.d.comb += [
                        block_upd.eq(Cat(*(req[j] for j in (_LOAD, _SERVE, _READBACK) if ahead(j, _UPDATE, p))).any()),
                        block_load.eq(Cat(*(req[j] for j in (_SERVE, _READBACK) if ahead(j, _LOAD, p))).any()),
                        win_serve.eq(req[_SERVE] & ~(req[_READBACK] if ahead(_READBACK, _SERVE, p) else 0)),
                    ]
        win_upd, win_load = Signal(), Signal()
        m.d.comb += [win_upd.eq(req[_UPDATE] & ~block_upd), win_load.eq(req[_LOAD] & ~block_load)]
        # the other issued fields are 4:1 muxes on the winner's index (don't care when nothing is issued)
        addrs = [self.update.payload.addr, self.load.payload.addr, sequencers[_SERVE][2], sequencers[_READBACK][2]]
        m.d.comb += [
            issue.kind.eq(sel),
            issue.addr.eq(Mux(win_upd, addrs[0], Mux(win_load, addrs[1], Mux(win_serve, addrs[2], addrs[3])))),
            issue.last.eq(sel[1] & Mux(sel[0], sequencers[_READBACK][4], sequencers[_SERVE][4])),
        ]
        for kind in (_SERVE, _READBACK):
            cmd, active, addr, left, last, _, active_next = sequencers[kind]
            m.d.comb += active_next.eq(active)
            with m.If(grant[kind]):
                m.d.sync += [addr.eq(next_addr(addr)), left.eq(left - 1), last.eq(left == 2)]
                with m.If(last):
                    m.d.comb += active_next.eq(0)
            m.d.comb += cmd.ready.eq(~active | (grant[kind] & last))
            with m.If(cmd.valid & cmd.ready):
                m.d.comb += active_next.eq(cmd.payload.count != 0)
                m.d.sync += [addr.eq(cmd.payload.start),
                             left.eq(cmd.payload.count), last.eq(cmd.payload.count == 1)]
        m.d.comb += issue.in_range.eq(in_range(issue.addr))
        # Every candidate address (one per requester) compared with the ops that will be three and
        # four ahead of the issued one when it reaches stage 1 (now in stages 2 and 3), and with
        # whether those write: registered per candidate, in parallel with the arbitration; in
        # stage 0 the issued op's kind (= the winner's index) then takes its results (see stage 1).
        hits = {}
        for k, (other, writes) in (("m5", (s2.addr, s2_wr)), ("m6", (s3.addr, s3_wr))):
            hits[k] = [Signal(name=f"hit_{k}_{j}", reset_less=True) for j in range(4)]
            m.d.sync += [h.eq(writes & (a == other)) for h, a in zip(hits[k], addrs)]
        m.d.sync += [s0_valid.eq(any_req & ~kill), s0.eq(issue), s0_write.eq(any_req & ~kill & ~sel[1]),
                     s0_dw.eq(self.update.payload.dw), s0_w.eq(self.load.payload.w),
                     [s0_w_hi[i].eq(self.load.payload.w[i] > self._clip_limit) for i in range(lanes)],
                     [s0_w_lo[i].eq(self.load.payload.w[i] < -self._clip_limit) for i in range(lanes)]]

        # ---- stage 0: registered issue drives the RAM address --------------------------------
        m.d.comb += r_addr.eq(s0.addr)
        m.d.sync += [s1_valid.eq(s0_valid), s1.eq(s0), s1_dw.eq(s0_dw),
                     [s1_wsat[i].eq(self._clip(s0_w[i], s0_w_hi[i], s0_w_lo[i])) for i in range(lanes)]]

        # ---- stage 1: RAM read; precompute the forwarding matches for stage 2 ----------------
        # the 1-bit selects of stages 1 to 3 each drive a bit of every lane; they are registered
        # in several copies, one per group of neighbouring lanes (see _copies)
        n = min(_COPIES, lanes)
        group = [i * n // lanes for i in range(lanes)]
        full = depth == 1 << aw
        # The old word is chosen in two steps, so that the RAM's late output meets a single small
        # select. Stage 1 picks, from registers, what replaces the RAM word when the op two ahead
        # did not write this address: zero for an out-of-range op (what a read of it returns; its
        # write is dropped), a load's saturated word, or the op three or four ahead when it wrote
        # this address (found in stage 4 and the write-back history then: s4_word, h5_word).
        # Stage 2 then takes the op two ahead (in stage 4 then: s4_word), else stage 1's pick, else
        # the RAM word. Every select is registered one stage before it is used, from address
        # comparisons registered one stage earlier still (every stage register moves on every
        # cycle, so "s4_addr == s1.addr" is "s3.addr == s0.addr" a cycle before).
        s1_oor = None if full else _copies(m, "s1_oor", ~s0.in_range, n)
        s1_load = _copies(m, "s1_load", s0.kind == _LOAD, n)
        m5, m6 = (Signal(name=f"s0_{k}") for k in ("m5", "m6"))    # s3, s4 wrote s0.addr
        for sig, k in ((m5, "m5"), (m6, "m6")):
            h = hits[k]
            m.d.comb += sig.eq(Mux(s0.kind[1], Mux(s0.kind[0], h[3], h[2]), Mux(s0.kind[0], h[1], h[0])))
        s1_m5 = _copies(m, "s1_m5", m5, n)                  # in stage 4 (s4_word) when this op is in 1
        s1_m6 = _copies(m, "s1_m6", m6, n)                  # in the write-back history (h5_word) then
        s1_other = Signal(name="s1_other", reset_less=True)     # stage 1 picks a word
        m.d.sync += s1_other.eq((s0.kind == _LOAD) | m5 | m6 | (0 if full else ~s0.in_range))
        eq = {k: Signal(name=f"addr_eq_{k}", reset_less=True) for k in ("m4", "fwd")}
        m.d.sync += [eq["m4"].eq(s2.addr == s0.addr), eq["fwd"].eq(s2.addr == s1.addr)]
        # the op two ahead (in stage 3 now) wrote this address and this op is not a load (an
        # out-of-range op never matches a write, which is in range)
        s2_m4 = _copies(m, "s2_m4", s3_wr & eq["m4"] & (s1.kind != _LOAD), n)
        s2_other = _copies(m, "s2_other", s1_other, n)
        s2_upd = _copies(m, "s2_upd", s1.kind == _UPDATE, n)
        for i in range(lanes):
            g = group[i]
            pick = Mux(s1_load[g], s1_wsat[i], Mux(s1_m5[g], s4_word[i], h5_word[i]))
            if not full:
                pick = Mux(s1_oor[g], 0, pick)
            m.d.sync += s2_fwd[i].eq(pick)
        m.d.sync += [
            s2_valid.eq(s1_valid), s2.eq(s1), s2_dw.eq(s1_dw),
            [s2_t[i].eq(Mux(s1_dw[i] < 0, self._clip_limit + s1_dw[i] + 1, s1_dw[i] - self._clip_limit))
             for i in range(lanes)],
            [s2_neg[i].eq(s1_dw[i] < 0) for i in range(lanes)],
        ]

        # ---- stage 2: forward older write-backs ----------------------------------------------
        # The op just ahead (in stage 3 now) wrote this address: for a read, stage 3 returns its
        # result (s4_word then) instead; an update is never right behind a write to its address
        # (the bubble of stage 0), and a load does not need the old word.
        s3_rfwd = _copies(m, "s3_rfwd", s3_wr & eq["fwd"] & s2.kind[1], n)   # s3.addr == s2.addr
        thr_min = -(1 << (thr_shape.width - 1))
        for i in range(lanes):
            g = group[i]
            m.d.sync += [
                s3_pre[i].eq(Mux(s2_m4[g], s4_word[i], Mux(s2_other[g], s2_fwd[i], s2_rdata[i]))),
                s3_dw[i].eq(Mux(s2_upd[g], s2_dw[i], 0)),
                s3_t[i].eq(Mux(s2_upd[g], s2_t[i], thr_min)),
                s3_neg[i].eq(s2_upd[g] & s2_neg[i]),
                s3_bound[i].eq(Mux(s2_upd[g], Mux(s2_neg[i], self._clip_limit, -self._clip_limit), s2_fwd[i])),
            ]
        m.d.sync += [s3_valid.eq(s2_valid), s3.eq(s2)]

        # ---- stage 3: update (reads and loads pass through: dw = 0, no clip) ------------------
        # No arithmetic on a loop (an update never follows a write to its address directly): the
        # subtraction and the range test in parallel on registered operands, then one small
        # function per bit, the clip select and, for a read right behind a write to its address,
        # the select of that write's result (s4_word: the only loop, one select).
        lim = self._clip_limit
        new = Signal(self.word_layout)
        for i in range(lanes):
            old = s3_pre[i]
            # two independent carry chains on the same operand: the range test and old − dw
            clip = Signal(name=f"s3_clip{i}")
            diff = Signal(signed(self.w_width), name=f"s3_diff{i}")
            m.d.comb += [
                clip.eq(((old - s3_t[i]).as_signed() < 0) ^ s3_neg[i]),
                diff.eq(old - s3_dw[i]),
                new[i].eq(Mux(s3_rfwd[group[i]], s4_word[i],
                              Mux(clip, s3_bound[i], diff))),
            ]
        m.d.sync += [
            # the FIFO pushes as registers of their own (they drive every LUT-RAM write enable)
            s4_push_serve.eq(s3_valid & (s3.kind == _SERVE)), s4_push_rb.eq(s3_valid & (s3.kind == _READBACK)),
            s4_push_serve_l.eq(s3_valid & (s3.kind == _SERVE)), s4_push_rb_l.eq(s3_valid & (s3.kind == _READBACK)),
            s4_valid.eq(s3_valid), s4_kind.eq(s3.kind), s4_addr.eq(s3.addr), s4_last.eq(s3.last),
            s4_wen.eq(s3_wr), s4_word.eq(new),
        ]

        # ---- stage 4: write back, quantise, push to the output FIFOs ------------------------------
        m.d.comb += [w_addr.eq(s4_addr), w_data.eq(s4_word), w_en.eq(s4_wen)]
        m.d.sync += [h5_wen.eq(s4_wen), h5_addr.eq(s4_addr), h5_word.eq(s4_word),
                     h6_wen.eq(h5_wen), h6_addr.eq(h5_addr), h6_word.eq(h5_word)]
        serve_beat = Signal(self.serve_layout)
        rword = Signal(self.word_layout)        # the word a read returns (zero out of range: stage 2)
        m.d.comb += rword.eq(s4_word)
        self._rword = rword
        m.d.comb += [serve_beat.wq[i].eq(self._forward_code(rword[i])) for i in range(lanes)]
        self._serve_beat, self._serve_push = serve_beat, serve_fifo.w_en
        m.d.comb += [
            serve_beat.last.eq(s4_last),
            serve_fifo.w_data.eq(serve_beat),
            serve_fifo.w_en.eq(s4_push_serve), serve_fifo.w_en_level.eq(s4_push_serve_l),
            rb_fifo.w_data.eq(Cat(rword, s4_last)),
            rb_fifo.w_en.eq(s4_push_rb), rb_fifo.w_en_level.eq(s4_push_rb_l),
        ]
        return m
