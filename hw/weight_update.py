"""Weight-update accumulator: stored weights in block RAM, Ws ← clip(Ws − ΔWs, ±w_clip), forward codes Wq.

One :class:`WeightUpdate` holds ``depth`` words of ``lanes`` stored weights (kG-bit signed integers,
spec §2.8, §8.1) in a simple dual-port block RAM (one read port with an output register, one write
port) and serves four operations through one in-order pipeline:

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

* Pipeline: arbiter → issue register (drives the RAM address) → RAM read → RAM output register →
  compute (forwarding, subtract, clip / quantise) → write-back register driving the RAM write port
  and the output FIFOs. An update or load accepted in cycle t writes the RAM at the end of cycle
  t + 4 (``LATENCY_WRITE``).
* Throughput: one operation per cycle in total. Each cycle a round-robin arbiter issues one of
  {update beat, load beat, serve word, readback word}; a lone stream gets every cycle (an update
  stream without stalls runs at one word per cycle).
* A serve/readback command accepted in cycle c issues its first word in c + 1; that word is valid on
  the output in c + 6 (``LATENCY_READ`` = 5 after issue), then one word per cycle. Each output has an
  8-entry FIFO; a read word is only issued while fewer than 4 words are queued there, so every word
  in flight has a slot and output back-pressure never stalls the pipeline or the other operations.

Ordering and hazards: operations take effect in issue order, and every operation sees every write
(update or load) issued before it. Read-after-write hazards (a word read while an older write to the
same address is still in the three-cycle window between its RAM read and the RAM write becoming
visible) are resolved by forwarding the youngest matching write-back value; the RAM's read data is
never used for such a word, so the RAM's own read/write collision behaviour does not matter. Updates
to the same address on consecutive cycles therefore chain correctly at full rate. An update, load or
command accepted before a serve/readback command is accepted is visible to all of its words; a
write accepted while a read command is running may land before or after any given word.

Reset (``rst`` of the ``sync`` domain) empties the pipeline, the command sequencers and the output
FIFOs; the RAM keeps its contents, so writes still in flight (the last four cycles) are lost.

Checked against ``golden.quant`` in ``tests/test_hw_weight_update.py`` and
``sim/test_sim_weight_update.py``; the stored-range invariant and the Wq rule are proved in
``formal/weight_update_formal.py``.
"""

from __future__ import annotations

import math

from amaranth.hdl import Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, fifo, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.config import WageConfig

__all__ = ["WeightUpdate", "dw_bound", "OUT_FIFO_DEPTH", "LATENCY_WRITE", "LATENCY_READ"]

#: Pipeline registers between the arbiter and the output FIFOs (issue, RAM data, RAM output, write-back).
_STAGES = 4
#: Entries of each output FIFO; a read word is issued while fewer than OUT_FIFO_DEPTH − 4 are queued.
OUT_FIFO_DEPTH = 8
#: Cycles from accepting an update/load beat to the end of the cycle that writes the RAM.
LATENCY_WRITE = 4
#: Cycles from issuing a read word to its beat being valid on ``serve``/``readback``.
LATENCY_READ = 5

_UPDATE, _LOAD, _SERVE, _READBACK = range(4)


def dw_bound(config: WageConfig) -> int:
    """⌈√2·η_max⌉, the largest |ΔWs| Q_G can produce under ``config`` (spec §2.7).

    η = 2^e: for e ≥ 0 √2·2^e is irrational, so the ceiling is ⌊√(2^(2e+1))⌋ + 1; for e < 0 it is 1.
    """
    e = max(config.eta_log2(epoch) for epoch, _ in config.lr_schedule)
    return math.isqrt(1 << (2 * e + 1)) + 1 if e >= 0 else 1


def _check_positive(name, value):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name}={value!r}: must be a positive integer")
    if value < 1:
        raise ValueError(f"{name}={value!r}: must be a positive integer")


class WeightUpdate(wiring.Component):
    """Stored-weight memory with update, forward-weight serve, load and readback streams.

    Parameters: ``config`` (:class:`golden.config.WageConfig`: kW, kG, weight_clip, lr_schedule),
    ``depth`` words, ``lanes`` weights per word, ``init`` optional initial contents — ``depth·lanes``
    integers in ±w_clip, shaped (depth, lanes) or flat in word-major order. See the module docstring
    for the streams, encodings, latencies and ordering.
    """

    def __init__(self, config: WageConfig, depth: int, lanes: int = 1, *, init=None):
        if not isinstance(config, WageConfig):
            raise TypeError(f"config={config!r}: must be a golden.config.WageConfig")
        _check_positive("depth", depth)
        _check_positive("lanes", lanes)
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
    def _clip(self, value):
        """clip(value, ±w_clip), as a kG-bit signed value."""
        lim = self._clip_limit
        return Mux(value > lim, lim, Mux(value < -lim, -lim, value))[:self.w_width].as_signed()

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

        # built here (not in __init__) so an unused component leaves no unused memory behind; the
        # formal harness calls elaborate() itself and adds combinational read ports to self._mem
        m.submodules.mem = mem = self._mem = Memory(shape=self.word_layout, depth=depth, init=self._init)
        rport = mem.read_port()                 # synchronous, not transparent: data one cycle after addr
        wport = mem.write_port()

        op_layout = data.StructLayout({
            "kind": 2, "addr": unsigned(aw), "in_range": 1, "last": 1,
            "dw": data.ArrayLayout(signed(self.dw_width), lanes), "w": self.word_layout})

        def in_range(addr):
            return Const(1) if depth == 1 << aw else addr < depth

        def next_addr(addr):
            return Mux(addr == depth - 1, 0, addr + 1)[:aw]

        # ---- read command sequencers and output FIFOs ------------------------------------------
        m.submodules.serve_fifo = serve_fifo = fifo.SyncFIFO(
            width=self.serve_layout.size, depth=OUT_FIFO_DEPTH)
        m.submodules.readback_fifo = rb_fifo = fifo.SyncFIFO(
            width=self.readback_layout.size, depth=OUT_FIFO_DEPTH)
        m.d.comb += [
            self.serve.valid.eq(serve_fifo.r_rdy),
            self.serve.payload.eq(serve_fifo.r_data),
            serve_fifo.r_en.eq(self.serve.ready),
            self.readback.valid.eq(rb_fifo.r_rdy),
            self.readback.payload.eq(rb_fifo.r_data),
            rb_fifo.r_en.eq(self.readback.ready),
        ]

        # pipeline registers (0: issue register, RAM address; 1: RAM read data; 2: RAM output
        # register, compute; 3: write-back)
        s0_valid, s1_valid, s2_valid, s3_valid = Signal(), Signal(), Signal(), Signal()
        s0 = Signal(op_layout)
        s1 = Signal(op_layout)
        s2 = Signal(op_layout)
        s2_rdata = Signal(self.word_layout)
        # clip bounds moved to the ΔWs side one stage early, so that the compute stage runs the
        # subtraction and both range tests in parallel: old − dw > lim ⇔ old > lim + dw, and
        # old − dw < −lim ⇔ old < dw − lim; loads are saturated one stage early too
        thr = data.ArrayLayout(signed(max(self.dw_width, self.w_width) + 2), lanes)
        s2_hi, s2_lo = Signal(thr), Signal(thr)
        s2_wsat = Signal(self.word_layout)
        s2_fwd = Signal(3)                      # registered address matches against stages 3, 4, 5
        s3_kind = Signal(2)
        s3_addr = Signal(aw)
        s3_last = Signal()
        s3_in_range = Signal()
        s3_wen = Signal()
        s3_word = Signal(self.word_layout)
        h4_wen, h5_wen = Signal(), Signal()     # write-back history: values written 1 and 2 cycles ago
        h4_addr, h5_addr = Signal(aw), Signal(aw)
        h4_word, h5_word = Signal(self.word_layout), Signal(self.word_layout)
        self._writeback = ((s3_wen, s3_word), (h4_wen, h4_word), (h5_wen, h5_word))   # formal hooks

        sequencers = {}
        self._fifo_overflow = []                # formal harness hooks: a write into a full FIFO,
        self._occupancy = []                    # and FIFO level + words in flight (≤ OUT_FIFO_DEPTH)
        for kind, cmd, fifo_ in ((_SERVE, self.serve_cmd, serve_fifo), (_READBACK, self.readback_cmd, rb_fifo)):
            active = Signal(name=f"seq{kind}_active")
            addr = Signal(aw, name=f"seq{kind}_addr")
            left = Signal(range(depth + 1), name=f"seq{kind}_left")
            inflight = ((s0_valid & (s0.kind == kind)) + (s1_valid & (s1.kind == kind))
                        + (s2_valid & (s2.kind == kind)) + (s3_valid & (s3_kind == kind)))
            # at most _STAGES words are in flight, so a level below DEPTH − _STAGES leaves room for
            # them all (one small compare instead of an adder on the issue path)
            credit = fifo_.level < OUT_FIFO_DEPTH - _STAGES
            sequencers[kind] = (cmd, active, addr, left, active & credit)
            self._fifo_overflow.append(fifo_.w_en & ~fifo_.w_rdy)
            self._occupancy.append(fifo_.level + inflight)

        # ---- stage 0: round-robin issue ------------------------------------------------------
        req = Signal(4)
        m.d.comb += req.eq(Cat(self.update.valid, self.load.valid,
                               sequencers[_SERVE][4], sequencers[_READBACK][4]))
        grant = Signal(4)
        prev = Signal(2)                        # last granted requester
        with m.Switch(prev):
            for p in range(4):
                with m.Case(p):
                    order = [(p + 1 + i) % 4 for i in range(4)]
                    with m.If(req[order[0]]):
                        m.d.comb += grant.eq(1 << order[0])
                    for o in order[1:]:
                        with m.Elif(req[o]):
                            m.d.comb += grant.eq(1 << o)
        with m.If(req.any()):
            for o in range(4):
                with m.If(grant[o]):
                    m.d.sync += prev.eq(o)

        issue = Signal(op_layout)
        m.d.comb += [
            self.update.ready.eq(grant[_UPDATE]),
            self.load.ready.eq(grant[_LOAD]),
        ]
        with m.If(grant[_UPDATE]):
            m.d.comb += [issue.kind.eq(_UPDATE), issue.addr.eq(self.update.payload.addr),
                         issue.dw.eq(self.update.payload.dw)]
        with m.Elif(grant[_LOAD]):
            m.d.comb += [issue.kind.eq(_LOAD), issue.addr.eq(self.load.payload.addr),
                         issue.w.eq(self.load.payload.w)]
        for kind in (_SERVE, _READBACK):
            cmd, active, addr, left, _ = sequencers[kind]
            with m.If(grant[kind]):
                m.d.comb += [issue.kind.eq(kind), issue.addr.eq(addr), issue.last.eq(left == 1)]
                m.d.sync += [addr.eq(next_addr(addr)), left.eq(left - 1)]
                with m.If(left == 1):
                    m.d.sync += active.eq(0)
            m.d.comb += cmd.ready.eq(~active | (grant[kind] & (left == 1)))
            with m.If(cmd.valid & cmd.ready):
                m.d.sync += [active.eq(cmd.payload.count != 0), addr.eq(cmd.payload.start),
                             left.eq(cmd.payload.count)]
        m.d.comb += issue.in_range.eq(in_range(issue.addr))
        m.d.sync += [s0_valid.eq(grant.any()), s0.eq(issue)]

        # ---- stage 0: registered issue drives the RAM address --------------------------------
        m.d.comb += rport.addr.eq(s0.addr)
        m.d.sync += [s1_valid.eq(s0_valid), s1.eq(s0)]

        # ---- stage 1: RAM read; precompute the forwarding matches for stage 2 ----------------
        def is_write(kind):
            return (kind == _UPDATE) | (kind == _LOAD)
        m.d.sync += [
            s2_valid.eq(s1_valid), s2.eq(s1), s2_rdata.eq(rport.data),
            [s2_hi[i].eq(self._clip_limit + s1.dw[i]) for i in range(lanes)],
            [s2_lo[i].eq(s1.dw[i] - self._clip_limit) for i in range(lanes)],
            [s2_wsat[i].eq(self._clip(s1.w[i])) for i in range(lanes)],
            s2_fwd.eq(Cat(s2_valid & is_write(s2.kind) & s2.in_range & (s2.addr == s1.addr),
                          s3_wen & (s3_addr == s1.addr),
                          h4_wen & (h4_addr == s1.addr))),
        ]

        # ---- stage 2: forward, then update / load / pass through --------------------------------
        old = Signal(self.word_layout)
        with m.If(s2_fwd[0]):
            m.d.comb += old.eq(s3_word)
        with m.Elif(s2_fwd[1]):
            m.d.comb += old.eq(h4_word)
        with m.Elif(s2_fwd[2]):
            m.d.comb += old.eq(h5_word)
        with m.Else():
            m.d.comb += old.eq(s2_rdata)
        new = Signal(self.word_layout)
        with m.Switch(s2.kind):
            with m.Case(_UPDATE):
                lim = self._clip_limit
                m.d.comb += [new[i].eq(Mux(old[i] > s2_hi[i], lim, Mux(old[i] < s2_lo[i], -lim,
                                                                     old[i] - s2.dw[i]))[:self.w_width])
                             for i in range(lanes)]
            with m.Case(_LOAD):
                m.d.comb += new.eq(s2_wsat)
            with m.Default():
                m.d.comb += new.eq(old)
        m.d.sync += [
            s3_valid.eq(s2_valid), s3_kind.eq(s2.kind), s3_addr.eq(s2.addr), s3_last.eq(s2.last), s3_in_range.eq(s2.in_range),
            s3_wen.eq(s2_valid & is_write(s2.kind) & s2.in_range), s3_word.eq(new),
        ]

        # ---- stage 3: write back, quantise, push to the output FIFOs ------------------------------
        m.d.comb += [wport.addr.eq(s3_addr), wport.data.eq(s3_word), wport.en.eq(s3_wen)]
        m.d.sync += [h4_wen.eq(s3_wen), h4_addr.eq(s3_addr), h4_word.eq(s3_word),
                     h5_wen.eq(h4_wen), h5_addr.eq(h4_addr), h5_word.eq(h4_word)]
        serve_beat = Signal(self.serve_layout)
        rword = Signal(self.word_layout)        # the word a read returns: zero out of range
        m.d.comb += rword.eq(Mux(s3_in_range, s3_word, 0))
        self._s3_rword = rword
        m.d.comb += [serve_beat.wq[i].eq(self._forward_code(rword[i])) for i in range(lanes)]
        self._serve_beat, self._serve_push = serve_beat, serve_fifo.w_en
        m.d.comb += [
            serve_beat.last.eq(s3_last),
            serve_fifo.w_data.eq(serve_beat),
            serve_fifo.w_en.eq(s3_valid & (s3_kind == _SERVE)),
            rb_fifo.w_data.eq(Cat(rword, s3_last)),
            rb_fifo.w_en.eq(s3_valid & (s3_kind == _READBACK)),
        ]
        return m
