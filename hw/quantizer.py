"""Streaming shift quantizer: WAGE's Q_A, Q_E and Q_G on accumulator sums (spec §2.5–2.7, §8.2).

:class:`ShiftQuantizer` turns signed ``acc_width``-bit sums into WAGE codes, ``lanes`` elements per
beat at full throughput, mirroring :mod:`golden.quant` bit for bit:

* **Q_A** (one pass): ``A = saturate(rne_shift(relu(P), r), kA)`` with ``relu`` optional, plus the
  ReLU mask ``[P > 0]`` and the saturation mask ``|relu(P)| ≤ (2^(kA−1)−1)·2^r``
  (:func:`golden.quant.quantize_activation`).
* **Q_E** (two passes): pass 1 finds ``M = max|D|``; ``n = shift_exponent(M)`` by a leading-one
  detector and a table of :func:`golden.quant.sqrt2_threshold`; pass 2 emits
  ``saturate(rne_shift(D, n − (kE−1)), kE)`` (a negative shift is an exact left shift)
  (:func:`golden.quant.quantize_error`).
* **Q_G** (two passes): as Q_E with ``M = max|G|``, ``q = n − log2 η``, and stochastic rounding
  ``ΔW = sgn(G)·((t + (2^b − 1 − R)) >> b)`` with ``b = sr_bits``, ``t = |G|`` shifted left by
  ``b − q`` (or right by ``q − b``, truncating) and ``R`` the draw of :func:`golden.prng.sr_draws`
  (:func:`golden.quant.quantize_gradient`). ``2^b − 1 − R`` is ``R`` inverted: one adder, no
  comparator.

Interface (``amaranth.lib.stream`` everywhere; the rules hold: ``valid`` never waits for ``ready``,
payloads stay stable until taken)

``cmd`` (in)  one command per tensor, :attr:`ShiftQuantizer.cmd_layout`:

    ``mode``      :class:`Mode` — ``QA``, ``QE`` or ``QG``;
    ``relu``      Q_A only: 1 applies ReLU before rounding (0 for a LeNet-style raw output layer);
    ``shift``     Q_A only: the layer constant ``r = kW − 1 + log2 α`` (0..63);
    ``eta_log2``  Q_G only: log2 η, which must lie in ``eta_log2_range`` (the output and ``t``
                  widths are sized for it; outside it the result is undefined);
    ``count``     elements in the tensor (flat, row-major); 0 completes at once with no beats;
    ``seed``, ``step``, ``layer``   Q_G only: the Threefry key ``(seed, layer)`` and counter word 1.

``i`` (in)  ``{data: lanes × signed(acc_width)}``; element ``e`` of the tensor is lane ``e % lanes``
    of beat ``e // lanes``. The last beat's lanes beyond ``count`` are ignored.

``o`` (out)  ``{data: lanes × signed(out_width), relu, sat, keep: lanes bits, last, zero, exp}``:
    ``data`` is A, E or ΔW; ``relu``/``sat`` are the Q_A masks (bit j = lane j; 0 in other modes;
    ``relu`` is ``[P > 0]`` even when the command's ``relu`` bit is 0); ``keep`` marks lanes inside
    the tensor (lanes beyond ``count`` carry 0); ``last`` marks the tensor's final beat; ``zero`` is
    set on every beat of an all-zero Q_E/Q_G tensor; ``exp`` is ``n`` (Q_E), ``q`` (Q_G), or 0 (Q_A
    and all-zero tensors).

Store-then-quantise contract (Q_E, Q_G). The unit does not buffer a tensor. After accepting the
command it consumes the tensor once (pass 1, nothing is emitted, ``i.ready`` is high throughout; the
max tree never stalls), computes the exponent (``2·log2(lanes) + 14`` cycles), then consumes the
*same* tensor again in the same order (pass 2) and emits the results. The producer must therefore
store (or recompute) the tensor and send it twice, with identical values; a pass 2 that differs
from pass 1 gives undefined (but well-formed) output. An all-zero tensor (``M = 0``: no weight
update) still takes its pass 2 and emits ``count`` zeros with ``zero = 1`` on every beat, so every
command produces exactly ``ceil(count / lanes)`` output beats and a consumer needs no second
protocol. Q_A needs one pass (7 cycles of setup after the command is taken into the command
register; the shift masks are decoded over three per-tensor stages).

``cmd.ready`` only says that the one-entry command register is empty (a registered handshake; the
command's tests are precomputed there). The held command starts three cycles after the previous
tensor's last beat has entered the pipeline (and, after a Q_G tensor, its last hash has left Threefry — the
key is held, not pipelined), so tensors flow back to back without draining: every per-tensor
setting travels with the data.

Pipeline (pass 2): input → A [ReLU / |G| / keep] → B1 [coarse shift by 8·⌊amt/8⌋; sticky and
overflow flags per 4-bit group by per-tensor masks] → B2 [fine shift, guard bit, the flags' OR] →
C [RNE increment, saturation, masks] → D [the SR adder with the FIFO's draw] → E [sign, keep/zero;
written into a 16-entry output FIFO whose entry is the output register]. ``latency`` = 6 cycles from an input transfer to
the output being valid, in every mode; throughput one beat (``lanes`` elements) per cycle. Pass 1
shares stage A and feeds a pipelined max tree (two register stages per level: a carry-chain compare
with both operands registered, then the select) and two running maxima (one per cycle parity, so
each one's compare and select also take separate cycles; merged at the end of the pass).

Settings that reach every lane come from per-lane register copies named with
:func:`hw.netlist.kept` (stage A's |P| and ReLU flags, the shift amount of B1 and B2, the mode at
C and E, the zero flag at E), so no flip-flop drives all lanes; the per-tensor copies are loaded
every cycle like the stage registers, so they still travel with the data.

The stages never stall (every register moves every cycle; no ready signal passes from one stage
to another). Instead a pass-2 beat is admitted at the input only when it has a slot in the output
FIFO (beats taken and not yet read < 15, a registered test) and, for Q_G, when its draw is already
in the draw FIFO (a registered count of unreserved draws); so ``i.ready`` comes from flip-flops,
and output back-pressure reaches the input through the credit count one cycle later.

Random draws are *prefetched*: the draw for element ``e`` depends only on ``(seed, step, layer,
e)``, so from the moment a Q_G command is accepted an issue engine feeds counters
``(e // L + u, step)`` (``L = draw_lanes(sr_bits)``, ``u < hashes``: one hash when ``lanes`` divides
``L``, e.g. lanes = 4 with sr_bits ≤ 16) into ``hashes`` Threefry pipelines, one request per beat,
and a FIFO of ``draw_depth`` entries holds each lane's draw (selected as the hashes leave Threefry
and registered per lane; one LUT RAM per lane with its own kept pointers) until the beat's passage
from stage B2 to C reads one entry per Q_G beat into a register (reserved when the beat was admitted).
Credits (requests in flight + FIFO entries ≤ ``draw_depth`` ≥ the loop latency plus the reserved
draws of the beats in stages A–C) keep the FIFO from overflowing and sustain one beat per cycle;
pass 1 fills it, so pass 2 starts at full rate. The
Threefry latency is therefore off the data path, and the data does not ride along with the hash.

Indexed draws (``draw_index="stream"``): a producer that emits a tensor in another order than its
flat index (the training engine streams gradient tiles) gives, on an extra input stream
``index`` (32 bits), the flat index of lane 0 of every Q_G beat, one per beat in beat order; lane
j of that beat then draws at index + j (:func:`golden.prng.sr_draws` with ``indices``). Indices are
taken as the issue engine runs ahead (from the command on, during pass 1), so the producer must be
able to supply them before the data; they may start anywhere (not only at multiples of L), which
costs one more Threefry pipeline when ``lanes`` is a multiple of L. Q_A and Q_E commands take no
indices.
"""

from __future__ import annotations

import math

from amaranth.hdl import Array, Cat, Const, Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, enum, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.config import WageConfig
from golden.prng import draw_lanes
from golden.quant import sqrt2_threshold
from hw.netlist import kept
from hw.threefry import Threefry2x32

__all__ = ["Mode", "ShiftQuantizer"]

SHIFT_BITS = 6          # width of the Q_A shift field (r = 0..63; values ≥ acc_width+1 act alike)
ETA_BITS = 6            # width of the signed eta_log2 field
DATA_LATENCY = 6        # stages A, B1, B2, C, D, then E written into the output FIFO
#: Entries of the output FIFO. The pipeline never stalls: a pass-2 beat is only taken while the
#: beats taken and not yet read out are fewer than OUT_DEPTH − 1 (tested one cycle late), so
#: every beat in flight has a slot; 16 is one LUT-RAM depth and covers the 7-cycle credit loop.
OUT_DEPTH = 16


class Mode(enum.Enum, shape=2):
    QA = 0
    QE = 1
    QG = 2


def _rne_increment(guard, sticky, lsb):
    """Round-half-to-even: add 1 when the remainder exceeds half (guard & sticky) or equals it and
    the floor is odd (guard & ~sticky & lsb). (One definition; the formal test mutates it.)"""
    return guard & (sticky | lsb)


def _sr_round(t, r_inv, bits: int):
    """Stochastic rounding as one adder: (t + (2^b − 1 − R)) >> b, with r_inv = ~R (b bits)."""
    return (t + r_inv)[bits:]


def _up_down(counter, up, down):
    """counter + up − down as one adder (the ±1 decoded first, not two chained carry chains)."""
    step = Cat(up ^ down, (down & ~up).replicate(len(counter) - 1))
    return (counter + step)[:len(counter)]


def _less(a, b):
    """a < b for unsigned a, b of one width: the borrow of a − b, so it maps onto a carry chain."""
    return (a.as_unsigned() - b.as_unsigned())[-1]


def _copy(m: Module, value, name: str):
    """A register copy of ``value`` that synthesis keeps separate (hw.netlist.kept). Reset-less: a
    copy follows its source a cycle later, and a reset term would put one shared LUT (and the
    reset net) in front of all the copies."""
    r = Signal.like(value, name=kept(name), reset_less=True)
    m.d.sync += r.eq(value)
    return r


def _check_int(name, value, lo, hi):
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name}={value!r}: must be an integer")
    if not lo <= value <= hi:
        raise ValueError(f"{name}={value!r}: must be in {lo}..{hi}")
    return value


class ShiftQuantizer(wiring.Component):
    """Q_A / Q_E / Q_G over a stream of accumulator sums (see the module docstring for the contract).

    Parameters
    ----------
    config : WageConfig
        Bit widths kA, kE, sr_bits; the learning-rate schedule sets the default ``eta_log2_range``.
    lanes : int
        Elements per beat, 1..256.
    acc_width : int, keyword-only
        Signed width of the incoming sums, 2..64.
    eta_log2_range : (int, int), keyword-only
        Smallest and largest log2 η a Q_G command may carry (default: the config schedule's range).
    prng_rounds_per_stage, prng_key_stages, prng_split_rounds : keyword-only
        Passed to :class:`hw.threefry.Threefry2x32` as rounds_per_stage, key_stages, split_rounds
        (defaults 1, True, None: Threefry's default, which splits each round into an add stage and
        an XOR stage whenever there is one round per stage and key stages, 30 stages; with
        ``prng_split_rounds=False`` 17 stages of one adder level each). The Threefry latency only
        sets ``draw_depth`` (= Threefry latency + 11). Threefry is built with
        ``backpressure="none"``: it never stalls (the credits below guarantee room for its output).

    Attributes: ``latency`` (6), ``hashes`` (Threefry pipelines), ``draw_depth``, ``out_width``,
    ``cmd_layout``, ``in_layout``, ``out_layout``.
    """

    def __init__(self, config: WageConfig, lanes: int = 1, *, acc_width: int,
                 eta_log2_range: tuple[int, int] | None = None, prng_rounds_per_stage: int = 1,
                 prng_key_stages: bool = True, prng_split_rounds: bool | None = None,
                 draw_index: str = "sequential"):
        try:
            if draw_index not in ("sequential", "stream"):
                raise ValueError(f"draw_index={draw_index!r}: must be 'sequential' or 'stream'")
            self.draw_index = draw_index
            self._configure(config, lanes, acc_width, eta_log2_range, prng_rounds_per_stage, prng_key_stages,
                            prng_split_rounds)
        except (TypeError, ValueError):
            self._MustUse__silence = True      # a rejected generator is not an "unused elaboratable"
            raise
        ports = {
            "cmd": In(stream.Signature(self.cmd_layout)),
            "i": In(stream.Signature(self.in_layout)),
            "o": Out(stream.Signature(self.out_layout)),
        }
        if draw_index == "stream":
            ports["index"] = In(stream.Signature(unsigned(32)))
        super().__init__(ports)

    # ---- parameters and derived widths ------------------------------------------------------------
    def _configure(self, config, lanes, acc_width, eta_log2_range, prng_rounds_per_stage, prng_key_stages,
                   prng_split_rounds=None):
        if not isinstance(config, WageConfig):
            raise TypeError(f"config={config!r}: must be a golden.config.WageConfig")
        self.config = config
        self.lanes = _check_int("lanes", lanes, 1, 256)
        self.acc_width = aw = _check_int("acc_width", acc_width, 2, 64)
        if eta_log2_range is None:
            etas = [config.eta_log2(epoch) for epoch, _ in config.lr_schedule]
            eta_log2_range = (min(etas), max(etas))
        try:
            lo, hi = eta_log2_range
        except (TypeError, ValueError):
            raise TypeError(f"eta_log2_range={eta_log2_range!r}: must be a pair (lo, hi)") from None
        for v in (lo, hi):
            if not isinstance(v, int) or isinstance(v, bool):
                raise TypeError(f"eta_log2_range={eta_log2_range!r}: bounds must be integers")
        if not -(1 << (ETA_BITS - 1)) <= lo <= hi < (1 << (ETA_BITS - 1)):
            raise ValueError(f"eta_log2_range={eta_log2_range!r}: need -32 <= lo <= hi <= 31")
        self.eta_lo, self.eta_hi = lo, hi
        self.prng_rounds_per_stage = _check_int("prng_rounds_per_stage", prng_rounds_per_stage, 1, 13)
        if not isinstance(prng_key_stages, bool):
            raise TypeError(f"prng_key_stages={prng_key_stages!r}: must be True or False")
        self.prng_key_stages = prng_key_stages
        if prng_split_rounds is not None and not isinstance(prng_split_rounds, bool):
            raise TypeError(f"prng_split_rounds={prng_split_rounds!r}: must be True, False or None")

        kA, kE, b = config.kA, config.kE, config.sr_bits
        self.sr_bits = b
        self.draws_per_hash = L = draw_lanes(b)                 # 4 draws of 16 bits or 2 of 32
        self.word_bits = 32 // (L // 2)
        # with indices from a stream a beat may start anywhere, as if lanes and L were coprime
        g = math.gcd(lanes, L) if self.draw_index == "sequential" else 1
        self.hashes = (L - g + lanes - 1) // L + 1              # distinct hash counters one beat can touch
        self.lim_a = (1 << (kA - 1)) - 1
        self.lim_e = (1 << (kE - 1)) - 1
        self.k_max = km = max(kA, kE)
        # Q_G magnitude bounds: |G| ≤ M ≤ ⌊√2·2^n⌋, so t ≤ ⌊√2·2^(η+b)⌋ and |ΔW| ≤ ⌊√2·2^η⌋ + 1.
        self.t_width = max(1, sqrt2_threshold(hi + b).bit_length() if hi + b >= 0 else 1)
        dw_mag = (sqrt2_threshold(hi) if hi >= 0 else 0) + 1
        self.out_width = max(kA, kE, dw_mag.bit_length() + 1)
        # Shifter: right shift by s ∈ [−K, R_MAX] (negative = exact left shift), clamped.
        self.x_width = aw + 1                                    # signed, holds |−2^(aw−1)|
        self.k_left = max(kE - 1, b + hi, 0)
        self.r_max = aw + 1                                      # every larger right shift gives the same bits
        self.wide_width = self.x_width + self.k_left + 1         # x · 2^(K+1)
        self.z_width = max(km + 1, self.t_width)                 # floor bits (Q_A/Q_E) or t (Q_G)
        self.y_width = 1 + self.z_width + 7                      # bits of the coarse shift kept for B2
        self.v_width = max(self.out_width, self.t_width + 1)     # stage-C value: code or t
        n_max = aw - 1
        self.exp_shape = signed(max(n_max - lo, n_max, hi, 1).bit_length() + 1)
        self.amt_shape = unsigned((self.k_left + self.r_max).bit_length())
        self.latency = DATA_LATENCY
        self.tree_depth = (lanes - 1).bit_length()

        self._tf_kwargs = dict(rounds_per_stage=self.prng_rounds_per_stage, key_stages=prng_key_stages,
                               split_rounds=prng_split_rounds,
                               static_key=True, backpressure="none")
        probe = Threefry2x32(13, **self._tf_kwargs)
        probe._MustUse__silence = True
        self.prng_latency = probe.latency
        # ≥ the credit loop (6) plus the draws reserved by beats not yet at stage C (5): 1 beat/cycle
        self.draw_depth = self.prng_latency + 11

        self.cmd_layout = data.StructLayout({
            "mode": Mode, "relu": 1, "shift": SHIFT_BITS, "eta_log2": signed(ETA_BITS),
            "count": 32, "seed": 32, "step": 32, "layer": 32,
        })
        self.in_layout = data.StructLayout({"data": data.ArrayLayout(signed(aw), lanes)})
        self.out_layout = data.StructLayout({
            "data": data.ArrayLayout(signed(self.out_width), lanes),
            "relu": lanes, "sat": lanes, "keep": lanes,
            "last": 1, "zero": 1, "exp": self.exp_shape,
        })

    # ---- per-tensor and per-element datapath pieces (shared with formal/quantizer_formal.py) ------
    def shift_clamp(self, m: Module, s):
        """Per-tensor: the right shift s (signed; negative = left) clamped to [−K, R_MAX]."""
        s_c = Signal(range(-self.k_left, self.r_max + 1), name="s_clamped")
        m.d.comb += s_c.eq(Mux(s < -self.k_left, -self.k_left, Mux(s > self.r_max, self.r_max, s)))
        return s_c

    def shift_amount(self, m: Module, s_c):
        """Per-tensor, from the clamped shift: ``amt = K + s_c`` (unsigned)."""
        amt = Signal(self.amt_shape, name="shift_amt")
        m.d.comb += amt.eq(s_c + self.k_left)
        return amt

    def mask_parts(self, m: Module, amt):
        """Per-tensor: the two-level decode of ``amt = 8·hi + lo`` the masks are built from (hi > k,
        hi = k, lo ≥ r), so each mask bit is then one small function instead of a wide compare."""
        hi, lo = amt[3:], amt[:3]
        n_hi = 1 << len(hi)
        parts = Signal(data.StructLayout({"gt": n_hi, "equal": n_hi, "ge": 8}), name="mask_parts")
        m.d.comb += [parts.gt.eq(Cat(*(hi > k for k in range(n_hi)))),
                     parts.equal.eq(Cat(*(hi == k for k in range(n_hi)))),
                     parts.ge.eq(Cat(*(lo >= r for r in range(8))))]
        return parts

    def mask_combine(self, m: Module, parts):
        """Per-tensor: the sticky mask (bit j set when j < s − 1, i.e. amt ≥ K + j + 2) and the
        overflow mask (bit j set when j ≥ km + s, i.e. not amt ≥ K + j − km + 1: ⌊x / 2^s⌋ leaves
        signed(km+1) iff x has such a bit that differs from its sign)."""
        km, K = self.k_max, self.k_left
        n_hi = len(parts.gt)

        def ge(c):                                               # amt ≥ c
            if c <= 0:
                return Const(1)
            if c >> 3 >= n_hi:
                return Const(0)
            return parts.gt[c >> 3] | (parts.equal[c >> 3] & parts.ge[c & 7])
        mask = Signal(self.x_width, name="sticky_mask")
        omask = Signal(self.x_width, name="over_mask")
        m.d.comb += mask.eq(Cat(*(ge(K + j + 2) for j in range(self.x_width))))
        m.d.comb += omask.eq(Cat(*(~ge(K + j - km + 1) for j in range(self.x_width))))
        return mask, omask

    def shift_masks(self, m: Module, s_c):
        """Per-tensor, from the clamped shift: ``amt = K + s_c``, the sticky mask and the overflow
        mask (shift_amount, mask_parts, mask_combine; three register stages in the pipeline)."""
        amt = self.shift_amount(m, s_c)
        mask, omask = self.mask_combine(m, self.mask_parts(m, amt))
        return amt, mask, omask

    def shift_params(self, m: Module, s):
        """shift_clamp then shift_masks (four register stages in the pipeline's setup)."""
        return self.shift_masks(m, self.shift_clamp(m, s))

    def lane_a(self, m: Module, mode, relu_on, p, name="lane"):
        """Stage A: x = relu(P) (Q_A), D (Q_E) or |G| (Q_G); the sign of G; the ReLU mask [P > 0].
        (The mode decoded into lane_a_flags' two flags, which the pipeline keeps per lane.)"""
        return self.lane_a_flags(m, mode == Mode.QG, (mode == Mode.QA) & relu_on, p, name=name)

    def lane_a_flags(self, m: Module, abs_on, clear_neg, p, name="lane"):
        """Stage A from decoded flags: x = |P| if abs_on, else 0 if clear_neg and P < 0 (ReLU: P = 0
        gives 0 either way), else P; the sign of P; the ReLU mask [P > 0]."""
        relu_m = Signal(name=f"{name}_relu")
        neg = Signal(name=f"{name}_neg")
        x = Signal(signed(self.x_width), name=f"{name}_x")
        m.d.comb += [relu_m.eq(p > 0), neg.eq(p < 0)]
        m.d.comb += x.eq(Mux(abs_on, abs(p), Mux(clear_neg & neg, 0, p)))
        return x, neg, relu_m

    @property
    def flag_groups(self) -> int:
        """Groups of 4 bits of x over which stage B1 reduces the sticky and overflow tests."""
        return -(-self.x_width // 4)

    def lane_b1(self, m: Module, x, amt, mask, omask, name="lane"):
        """Stage B1: y = (x·2^(K+1)) >> 8⌊amt/8⌋ (arithmetic), kept as its low ``y_width`` bits and its
        sign; sticky = any bit of x below s − 1; over = ⌊x / 2^s⌋ ∉ [−2^km, 2^km − 1]
        (x ≥ 2^(km+s) or x < −2^(km+s): a bit of x at or above km + s differs from the sign).
        (lane_b1_groups, then the OR of its group flags, which the pipeline does in stage B2.)"""
        y_low, sign, sticky_g, over_g = self.lane_b1_groups(m, x, amt, mask, omask, name=name)
        return y_low, sign, sticky_g != 0, over_g != 0

    def lane_b1_groups(self, m: Module, x, amt, mask, omask, name="lane"):
        """lane_b1 with sticky and over left as per-4-bit-group flags (``flag_groups`` bits each)."""
        K = self.k_left
        wide = Signal(signed(self.wide_width), name=f"{name}_wide")
        m.d.comb += wide.eq(Cat(Const(0, K + 1), x).as_signed())      # x · 2^(K+1)
        y = Signal(signed(self.wide_width), name=f"{name}_y")
        m.d.comb += y.eq(wide >> Cat(Const(0, 3), amt[3:]))             # coarse: multiples of 8
        y_low = Signal(self.y_width, name=f"{name}_ylow")
        m.d.comb += y_low.eq(y[:self.y_width])
        sign = x[-1]
        sticky = Signal(self.flag_groups, name=f"{name}_sticky_g")
        over = Signal(self.flag_groups, name=f"{name}_over_g")
        hit_s = x.as_unsigned() & mask
        hit_o = (x.as_unsigned() ^ sign.replicate(self.x_width)) & omask
        m.d.comb += sticky.eq(Cat(*(hit_s[4 * g:4 * g + 4] != 0 for g in range(self.flag_groups))))
        m.d.comb += over.eq(Cat(*(hit_o[4 * g:4 * g + 4] != 0 for g in range(self.flag_groups))))
        return y_low, sign, sticky, over

    def lane_b2(self, m: Module, y_low, sign, amt, name="lane"):
        """Stage B2: z2 = y >> (amt mod 8) = ⌊x / 2^(s−1)⌋; guard = z2[0]; z = the low bits of
        ⌊x / 2^s⌋: signed(km+1) for Q_A/Q_E (exact unless ``over``), t for Q_G."""
        z2 = Signal(signed(self.y_width + 1), name=f"{name}_z2")
        m.d.comb += z2.eq(Cat(y_low, sign).as_signed() >> amt[:3])
        guard = Signal(name=f"{name}_guard")
        z = Signal(signed(self.z_width), name=f"{name}_z")
        m.d.comb += [guard.eq(z2[0]), z.eq(z2[1:1 + self.z_width])]
        return z, guard

    def lane_c(self, m: Module, mode, z, guard, sticky, over, sign, name="lane"):
        """Stage C: → (value, sat mask): RNE and saturation for Q_A/Q_E, t for Q_G.

        The clip tests compare the floor zn with constants in parallel with the increment
        (zn + inc > lim ⟺ zn > lim or (zn = lim and inc)), so no comparator waits for the adder.
        (lane_c_parts, then the Q_G choice, which the pipeline leaves to stages D and E.)"""
        code, t, sat = self.lane_c_parts(m, mode, z, guard, sticky, over, sign, name=name)
        val = Signal(signed(self.v_width), name=f"{name}_val")
        m.d.comb += val.eq(Mux(mode == Mode.QG, t, code))
        return val, sat

    def lane_c_parts(self, m: Module, mode, z, guard, sticky, over, sign, name="lane"):
        """lane_c as (code: the Q_A/Q_E result, t: the Q_G magnitude, sat mask)."""
        la, le = self.lim_a, self.lim_e
        km = self.k_max
        zn = Signal(signed(km + 1), name=f"{name}_zn")                   # ⌊x / 2^s⌋ unless over
        m.d.comb += zn.eq(z[:km + 1].as_signed())
        inc = Signal(name=f"{name}_inc")
        m.d.comb += inc.eq(_rne_increment(guard, sticky, zn[0]))
        rounded = Signal(signed(km + 2), name=f"{name}_rne")
        m.d.comb += rounded.eq(zn + inc)

        def clip(lim):
            high = (zn > lim) | ((zn == lim) & inc)
            low = (zn < -lim - 1) | ((zn == -lim - 1) & ~inc)
            return Mux(over | high | low, Mux(sign, Const(-lim, signed(km + 1)), Const(lim, signed(km + 1))),
                       rounded)

        code = Signal(signed(km + 1), name=f"{name}_code")
        m.d.comb += code.eq(clip(la) if la == le else Mux(mode == Mode.QA, clip(la), clip(le)))
        t = Signal(self.t_width, name=f"{name}_t")
        m.d.comb += t.eq(z[:self.t_width])
        # |x| ≤ lim_A·2^s  ⟺  (z < lim_A or (z = lim_A and the remainder is 0)) and z ≥ −lim_A
        sat = Signal(name=f"{name}_sat")
        m.d.comb += sat.eq(~over & ((zn < la) | ((zn == la) & ~guard & ~sticky)) & (zn >= -la))
        return code, t, sat

    @property
    def mag_width(self) -> int:
        """Bits of the Q_G magnitude ``(t + ~R) >> b`` (the stage-D register field)."""
        return max(self.t_width, self.sr_bits) + 1 - self.sr_bits

    def lane_sr_mag(self, m: Module, t, draw, name="lane"):
        """Stage D (Q_G): |ΔW| = (t + ~R) >> b from t = |G| aligned to b fraction bits."""
        b = self.sr_bits
        mag = Signal(self.mag_width, name=f"{name}_mag")
        m.d.comb += mag.eq(_sr_round(t.as_unsigned()[:self.t_width], ~draw[:b], b))
        return mag

    def lane_sign(self, m: Module, mag, neg, name="lane"):
        """Stage E (Q_G): ΔW = sgn(G)·|ΔW|."""
        dw = Signal(signed(self.out_width), name=f"{name}_dw")
        m.d.comb += dw.eq(Mux(neg, -mag, mag))
        return dw

    def lane_sr(self, m: Module, t, neg, draw, name="lane"):
        """Stages D and E (Q_G): ΔW = sgn(G)·((t + ~R) >> b) (lane_sr_mag then lane_sign)."""
        return self.lane_sign(m, self.lane_sr_mag(m, t, draw, name=name), neg, name=name)

    # ---- the pipeline ------------------------------------------------------------------------------
    def elaborate(self, platform):
        m = Module()
        lanes, aw, b, L, H = self.lanes, self.acc_width, self.sr_bits, self.draws_per_hash, self.hashes
        lgL = L.bit_length() - 1
        kE = self.config.kE

        info = data.StructLayout({"mode": Mode, "last": 1, "zero": 1, "exp": self.exp_shape})
        lane_bits = {"neg": lanes, "relu": lanes, "keep": lanes}
        sa = Signal(data.StructLayout({"x": data.ArrayLayout(signed(self.x_width), lanes), **lane_bits,
                                       "p1": 1, "info": info, "mask": self.x_width,
                                       "omask": self.x_width}), reset_less=True)
        fg = data.ArrayLayout(self.flag_groups, lanes)
        sb1 = Signal(data.StructLayout({"y": data.ArrayLayout(self.y_width, lanes), "sign": lanes,
                                        "sticky": fg, "over": fg, **lane_bits, "info": info}),
                     reset_less=True)
        sb2 = Signal(data.StructLayout({"z": data.ArrayLayout(signed(self.z_width), lanes), "guard": lanes,
                                        "sticky": lanes, "over": lanes, "sign": lanes, **lane_bits,
                                        "info": info}), reset_less=True)
        sc = Signal(data.StructLayout({"t": data.ArrayLayout(self.t_width, lanes),
                                       "code": data.ArrayLayout(signed(self.k_max + 1), lanes), "sat": lanes,
                                       **lane_bits, "info": info}), reset_less=True)
        sd = Signal(data.StructLayout({"mag": data.ArrayLayout(self.mag_width, lanes),
                                       "code": data.ArrayLayout(signed(self.out_width), lanes),
                                       "sat": lanes, **lane_bits, "info": info}), reset_less=True)
        va, vb1, vb2, vc, vd = Signal(), Signal(), Signal(), Signal(), Signal()

        # ---- command, element counters ----------------------------------------------------------------
        cmd = Signal(self.cmd_layout)                  # the command being executed
        remaining = Signal(32)                         # elements of the current pass not yet taken
        keep = Signal(lanes)                           # lanes of the next beat inside the tensor
        last_beat = Signal()                           # the next beat is the pass's last
        take = Signal()                                # a beat is taken from `i` this cycle

        # lanes of the tensor's last beat (per tensor; with a power-of-two lane count from the low
        # bits of count, so the per-beat keep is a choice between it and all ones, not 32 compares)
        pow2 = lanes & (lanes - 1) == 0
        keep_last = Signal(lanes)
        one_beat = Signal()                            # count ≤ lanes (per tensor)
        ones = Const((1 << lanes) - 1, lanes)

        def load_count(count):
            return [remaining.eq(count), last_beat.eq(one_beat),
                    keep.eq(Mux(one_beat, keep_last, ones) if pow2 else Cat(*(count > j for j in range(lanes))))]

        with m.If(take):                               # flags for the beat after this one
            next_last = ~_less(Const(2 * lanes, 32), remaining)    # remaining ≤ 2·lanes (a carry chain)
            m.d.sync += [remaining.eq(remaining - lanes), last_beat.eq(next_last),
                         keep.eq(Mux(next_last, keep_last, ones) if pow2 else
                                 Cat(*(remaining > lanes + j for j in range(lanes))))]

        # ---- per-tensor registers -------------------------------------------------------------------
        running_max = Signal(aw)
        run_max = [Signal(aw, name="run_max_even"), Signal(aw, name="run_max_odd")]   # by cycle parity
        max_lt = Signal()                              # run_max_even < run_max_odd
        n0 = Signal(range(aw))
        thr = Signal(aw + 1)
        above = Signal()                               # running_max > thr
        n_exp = Signal(range(aw))
        zero = Signal()
        s_r = Signal(signed(10))                       # |s| ≤ 64 + 32 + 32 for any field values
        exp_r = Signal(self.exp_shape)
        amt_r = Signal(self.amt_shape)
        mask_r = Signal(self.x_width)
        omask_r = Signal(self.x_width)
        s_c = self.shift_clamp(m, s_r)
        s_cr = Signal.like(s_c, name="s_clamped_r")
        amt_c = self.shift_amount(m, s_cr)
        parts_c = self.mask_parts(m, amt_r)
        parts_r = Signal.like(parts_c, name="mask_parts_r")
        mask_c, omask_c = self.mask_combine(m, parts_r)

        # leading-one position (0 for M = 0) in two registered steps: per 8-bit group its non-zero
        # flag and the position inside it (state LOD), then the highest non-zero group (EXP1)
        n_grp = -(-aw // 8)
        grp_nz = Signal(n_grp)
        grp_pos = [Signal(3, name=f"lod_pos{g}") for g in range(n_grp)]
        grp_pos_c = [Signal(3, name=f"lod_pos{g}_c") for g in range(n_grp)]
        for g in range(n_grp):
            for k in range(8 * g, min(8 * g + 8, aw)):   # highest set bit wins (last assignment)
                with m.If(running_max[k]):
                    m.d.comb += grp_pos_c[g].eq(k - 8 * g)
        lod = Signal(range(aw))
        for g in range(n_grp):
            with m.If(grp_nz[g]):
                m.d.comb += lod.eq(8 * g + grp_pos[g])
        table = Array(Const(sqrt2_threshold(j), aw + 1) for j in range(aw))

        s_val = Signal(signed(10))
        exp_val = Signal(self.exp_shape)
        with m.Switch(cmd.mode):
            with m.Case(Mode.QA):
                m.d.comb += [s_val.eq(cmd.shift), exp_val.eq(0)]
            with m.Case(Mode.QE):
                m.d.comb += [s_val.eq(n_exp - (kE - 1)), exp_val.eq(n_exp)]
            with m.Default():
                m.d.comb += [s_val.eq(n_exp - cmd.eta_log2 - b), exp_val.eq(n_exp - cmd.eta_log2)]

        # ---- draw prefetch: issue engine → Threefry pipelines → FIFO -----------------------------------
        tf = [Threefry2x32(13, **self._tf_kwargs, sideband=unsigned(2) if u == 0 else None) for u in range(H)]
        for u, unit in enumerate(tf):
            m.submodules[f"threefry{u}"] = unit
        iss_busy = Signal()
        iss_key = Signal(data.StructLayout({"seed": 32, "step": 32, "layer": 32}))   # held per Q_G tensor
        iss_rem = Signal(32)
        iss_lo = Signal(2)
        ctr = [Signal(32, name=f"iss_ctr{u}") for u in range(H)]
        outstanding = Signal(range(self.draw_depth + 1))     # requests in Threefry + draws in the FIFO
        in_tf = Signal(range(self.prng_latency + 1))          # requests in Threefry
        issue, pop = Signal(), Signal()
        # both tests registered, so the issue and command logic starts from flip-flops rather than
        # from adders and the FIFO's level: prng_idle exact (from in_tf's next value); credit from
        # outstanding + issue, ignoring this cycle's pop (which comes late, from the output
        # handshake), so at worst one cycle pessimistic
        prng_idle = Signal(init=1)                           # in_tf == 0
        credit = Signal(init=1)                              # outstanding < draw_depth
        in_tf_next = Signal.like(in_tf)
        if self.draw_index == "stream":
            # the first element index of each Q_G beat comes from `index`, one per beat, in order
            m.d.comb += [issue.eq(iss_busy & credit & self.index.valid), self.index.ready.eq(issue)]
        else:
            m.d.comb += issue.eq(iss_busy & credit)
        m.d.comb += in_tf_next.eq(_up_down(in_tf, issue, tf[0].o.valid))
        m.d.sync += [outstanding.eq(_up_down(outstanding, issue, pop)),
                     credit.eq(Mux(issue, outstanding < self.draw_depth - 1, outstanding < self.draw_depth)),
                     in_tf.eq(in_tf_next),
                     # in_tf_next == 0, decided by issue and o.valid last: 0 + 0, or 1 − 1
                     prng_idle.eq(Mux(issue == tf[0].o.valid, in_tf == 0, ~issue & (in_tf == 1)))]
        lo_sum = Signal(range(2 * L))
        carry = Signal()
        m.d.comb += [lo_sum.eq(iss_lo + lanes % L), carry.eq(lo_sum >= L)]
        with m.If(issue):
            m.d.sync += [iss_rem.eq(iss_rem - lanes), iss_lo.eq(lo_sum[:lgL])]
            m.d.sync += [c.eq(c + lanes // L + carry) for c in ctr]
            with m.If(~_less(Const(lanes, 32), iss_rem)):          # iss_rem ≤ lanes
                m.d.sync += iss_busy.eq(0)
        if self.draw_index == "stream":
            first = self.index.payload
            counters = [(first >> lgL) + u for u in range(H)]
            lo = first[:lgL] if lgL else Const(0, 2)
        else:
            counters, lo = ctr, iss_lo
        for u, unit in enumerate(tf):
            m.d.comb += [unit.i.valid.eq(issue), unit.i.payload.counter0.eq(counters[u]),
                         unit.i.payload.counter1.eq(iss_key.step), unit.i.payload.key0.eq(iss_key.seed),
                         unit.i.payload.key1.eq(iss_key.layer), unit.o.ready.eq(1)]  # never stalls
        m.d.comb += tf[0].i.payload.side.eq(lo)
        # Threefry never stalls (backpressure="none": no enable fans out over its registers): the
        # credits keep draws in the FIFO + requests in flight ≤ draw_depth ≤ the FIFO's depth.
        # The FIFO is one LUT-RAM per lane with its own (kept) write and read pointers and write
        # enable, so no pointer or enable fans out over all lanes: a hash leaving Threefry is
        # registered per lane (stage W), written the next cycle, and each lane's draw is read
        # into a register as its beat passes from stage B2 to C (``pop``), for stage D's adder.
        # each lane's draw, selected as the hashes leave Threefry: word (lo + j) of the H·L draws
        words = []
        for t in tf:
            x0, x1 = t.o.payload.x0, t.o.payload.x1
            words += [x0, x1] if L == 2 else [x0[16:], x0[:16], x1[16:], x1[:16]]
        wb = self.word_bits
        lo = tf[0].o.payload.side
        # per-tensor settings that fan out over every lane: per-lane kept copies of the stage
        # registers (loaded like them, every cycle, so they travel with the data)
        amt_a = [_copy(m, amt_r, f"a_amt{j}") for j in range(lanes)]
        amt_b1 = [_copy(m, amt_a[j][:3], f"b1_amt{j}") for j in range(lanes)]
        mode_b2 = [_copy(m, sb1.info.mode, f"b2_mode{j}") for j in range(lanes)]
        mode_d = [_copy(m, sc.info.mode, f"d_mode{j}") for j in range(lanes)]
        zero_d = [_copy(m, sc.info.zero, f"d_zero{j}") for j in range(lanes)]
        ram_depth = 1 << (self.draw_depth - 1).bit_length()
        draw_written = Signal()                        # a beat's draws enter the FIFO this cycle
        w1_valid = Signal()
        m.d.sync += [w1_valid.eq(tf[0].o.valid), draw_written.eq(w1_valid)]
        lane_draw = []                                 # each lane's draw, registered for stage C → D
        # stage W1 registers the hashes' words as they are and the word offset per lane; stage W2
        # selects each lane's word (so the offset does not fan out from one flip-flop to every lane)
        words_r = [_copy(m, w[wb - b:wb], f"draw_word{k}") for k, w in enumerate(words)]
        for j in range(lanes):
            lo_j = _copy(m, lo, f"draw_lo{j}")
            w_v = _copy(m, w1_valid, f"draw_w_valid{j}")
            w_d = _copy(m, Array(words_r)[lo_j + j], f"draw_w_data{j}")
            w_p = Signal(range(ram_depth), name=kept(f"draw_w_ptr{j}"))
            r_p = Signal(range(ram_depth), name=kept(f"draw_r_ptr{j}"))
            m.submodules[f"draw_ram{j}"] = ram = Memory(shape=b, depth=ram_depth, init=[])
            wp, rp = ram.write_port(), ram.read_port(domain="comb")
            m.d.comb += [wp.addr.eq(w_p), wp.data.eq(w_d), wp.en.eq(w_v), rp.addr.eq(r_p)]
            m.d.sync += [w_p.eq(w_p + w_v), r_p.eq(r_p + (vb2 & (mode_b2[j] == Mode.QG)))]   # = pop
            lane_draw.append(_copy(m, rp.data, f"draw{j}"))

        # ---- admission: output slots and reserved draws (both registered) -------------------------
        # The pipeline never stalls, so a pass-2 beat is taken only when (1) the output FIFO has a
        # slot for it: out_cnt counts the beats taken and not yet read from the FIFO, and the test
        # out_cnt < OUT_DEPTH − 1 is made a cycle late (then at most one more beat was taken), so
        # out_cnt ≤ OUT_DEPTH always; and (2) for Q_G, its draw is already in the draw FIFO:
        # draw_avail counts draws written and not yet reserved, and the test uses its next value.
        # A reserved draw was written at least one cycle before its beat is taken and is read three
        # cycles after (stage B2 → C) from the lane's LUT RAM. So i.ready comes from
        # flip-flops and no ready travels through the pipeline stages.
        in_pass1 = Signal()                            # beats taken now belong to pass 1
        take_p2, take_qg, out_rd = Signal(), Signal(), Signal()
        out_cnt = Signal(range(OUT_DEPTH + 1))
        out_credit = Signal(init=1)
        draw_avail = Signal(range(self.draw_depth + 1))
        draw_avail_next = Signal.like(draw_avail)
        draw_ok = Signal()
        cmd_qg = Signal()                              # the running command is Q_G (registered)
        # the FSM's PASS1 and PASS2 states mirrored in flip-flops, so that ``take`` is one LUT level
        # from registers (no state decode), and draw_ok = (draw_avail_next != 0) decided from
        # precomputed tests of draw_avail with take_qg last (not through the counter's adder)
        st_p1, st_p2 = Signal(), Signal()
        ready2 = st_p2 & out_credit & (draw_ok | ~cmd_qg)
        m.d.comb += [in_pass1.eq(st_p1), self.i.ready.eq(st_p1 | ready2), take.eq(self.i.valid & (st_p1 | ready2)),
                     take_p2.eq(self.i.valid & ready2),
                     take_qg.eq(self.i.valid & st_p2 & out_credit & draw_ok & cmd_qg),
                     out_rd.eq(self.o.valid & self.o.ready),
                     draw_avail_next.eq(_up_down(draw_avail, draw_written, take_qg))]
        avail_ge1, avail_ge2 = draw_avail != 0, draw_avail >= 2
        m.d.sync += [out_cnt.eq(_up_down(out_cnt, take_p2, out_rd)), out_credit.eq(out_cnt < OUT_DEPTH - 1),
                     draw_avail.eq(draw_avail_next),
                     draw_ok.eq(Mux(take_qg, avail_ge2 | (draw_written & avail_ge1), avail_ge1 | draw_written))]
        self._out_count, self._draw_avail = out_cnt, draw_avail     # test hooks

        # ---- control FSM ----------------------------------------------------------------------------
        drain = Signal(range(2 * self.tree_depth + 1))
        # the command is taken into a register first (``cmd.ready`` = that register is empty), with
        # its tests precomputed, so that starting it needs no wide compare on the input stream
        pend = Signal(self.cmd_layout)
        pend_valid, pend_nz, pend_qg, pend_qa, pend_last = Signal(), Signal(), Signal(), Signal(), Signal()
        pend_keep, pend_keep_last = Signal(lanes), Signal(lanes)
        cmd_qa_relu = Signal()                         # the running command is Q_A with ReLU
        m.d.comb += self.cmd.ready.eq(~pend_valid)
        with m.If(self.cmd.valid & ~pend_valid):
            pc = self.cmd.payload
            m.d.sync += [pend.eq(pc), pend_valid.eq(1), pend_nz.eq(pc.count != 0),
                         pend_qg.eq(pc.mode == Mode.QG), pend_qa.eq(pc.mode == Mode.QA),
                         pend_last.eq(pc.count <= lanes), pend_keep.eq(Cat(*(pc.count > j for j in range(lanes))))]
            if pow2:
                tail = pc.count[:lanes.bit_length() - 1]           # count mod lanes
                m.d.sync += pend_keep_last.eq(Cat(*((tail == 0) | (tail > j) for j in range(lanes))))
        # stage A's per-lane flags (kept copies; see lane_a_flags): |P| in pass 1 and for Q_G, ReLU's
        # clear for Q_A with relu; set when a pass starts (IDLE → PASS1, SETUP1 before PASS2)
        lane_abs = [Signal(name=kept(f"a_abs{j}")) for j in range(lanes)]
        lane_clr = [Signal(name=kept(f"a_clr{j}")) for j in range(lanes)]
        start = Signal()                               # registered: the held command starts now
        start_iss = Signal()                           # ... and it is a non-empty Q_G tensor
        reload = Signal()                              # registered: load pass 2's element counters
        with m.If(reload):
            m.d.sync += load_count(cmd.count)
        with m.If(start):
            m.d.sync += [cmd.eq(pend), cmd_qg.eq(pend_qg), pend_valid.eq(0),
                         run_max[0].eq(0), run_max[1].eq(0), n_exp.eq(0), zero.eq(0),
                         cmd_qa_relu.eq(pend_qa & pend.relu), one_beat.eq(pend_last),
                         keep_last.eq(pend_keep_last),
                         remaining.eq(pend.count), last_beat.eq(pend_last), keep.eq(pend_keep)]
            m.d.sync += [f.eq(~pend_qa) for f in lane_abs]
            m.d.sync += [f.eq(pend_qa & pend.relu) for f in lane_clr]
            m.d.sync += st_p1.eq(pend_nz & ~pend_qa)
            with m.If(start_iss):
                m.d.sync += [iss_busy.eq(1), iss_rem.eq(pend.count), iss_lo.eq(0),
                             iss_key.seed.eq(pend.seed), iss_key.step.eq(pend.step),
                             iss_key.layer.eq(pend.layer)]
                m.d.sync += [c.eq(u) for u, c in enumerate(ctr)]
        # control: one flip-flop per state (one-hot), so that no decode of an encoded state sits in
        # front of a transition or a load
        states = ("IDLE", "START", "PASS1", "DRAIN", "MAX1", "MAX2", "LOD", "EXP1", "EXP2", "EXP3", "EXP4",
                  "SETUP1", "SETUP2", "SETUP3", "SETUP4", "SETUP5", "PASS2")
        state = {name: Signal(init=name == "IDLE", name=f"ctl_{name}") for name in states}

        def goto(here, there):
            m.d.sync += [state[here].eq(0), state[there].eq(1)]

        with m.If(state["IDLE"]):
            # a new command waits until the previous Q_G tensor's hashes have all left Threefry
            # (its key is held, not pipelined: Threefry2x32(static_key=True))
            with m.If(pend_valid & ~iss_busy & prng_idle):
                m.d.sync += [start.eq(1), start_iss.eq(pend_qg & pend_nz)]
                goto("IDLE", "START")
        with m.If(state["START"]):                    # the loads are under the registered `start`
            m.d.sync += [start.eq(0), start_iss.eq(0)]
            with m.If(~pend_nz):
                goto("START", "IDLE")
            with m.Elif(pend_qa):
                goto("START", "SETUP1")
            with m.Else():
                goto("START", "PASS1")
        with m.If(state["PASS1"]):                    # st_p1 rules the pass; the state follows a cycle late
            with m.If(take & last_beat):
                m.d.sync += st_p1.eq(0)
            with m.If(~st_p1):
                m.d.sync += drain.eq(2 * self.tree_depth)
                goto("PASS1", "DRAIN")
        with m.If(state["DRAIN"]):                    # the last beat's max reaches run_max
            m.d.sync += drain.eq(drain - 1)
            with m.If(drain == 0):
                goto("DRAIN", "MAX1")
        with m.If(state["MAX1"]):                     # the two running maxima: compare, then select
            m.d.sync += max_lt.eq(_less(run_max[0], run_max[1]))
            goto("MAX1", "MAX2")
        with m.If(state["MAX2"]):
            m.d.sync += running_max.eq(Mux(max_lt, run_max[1], run_max[0]))
            goto("MAX2", "LOD")
        with m.If(state["LOD"]):
            m.d.sync += [grp_nz.eq(Cat(*(running_max[8 * g:8 * g + 8] != 0 for g in range(n_grp)))),
                         *(grp_pos[g].eq(grp_pos_c[g]) for g in range(n_grp)), reload.eq(1)]
            goto("LOD", "EXP1")
        with m.If(state["EXP1"]):                    # (pass 2's counters are loaded under `reload`)
            m.d.sync += [n0.eq(lod), zero.eq(grp_nz == 0), reload.eq(0)]
            goto("EXP1", "EXP2")
        with m.If(state["EXP2"]):
            m.d.sync += thr.eq(table[n0])
            goto("EXP2", "EXP3")
        with m.If(state["EXP3"]):                    # compare and increment in separate cycles
            m.d.sync += above.eq(running_max > thr)
            goto("EXP3", "EXP4")
        with m.If(state["EXP4"]):
            m.d.sync += n_exp.eq(n0 + above)
            goto("EXP4", "SETUP1")
        with m.If(state["SETUP1"]):
            m.d.sync += [s_r.eq(s_val), exp_r.eq(Mux(zero, 0, exp_val))]
            m.d.sync += [f.eq(cmd_qg) for f in lane_abs]
            m.d.sync += [f.eq(cmd_qa_relu) for f in lane_clr]
            goto("SETUP1", "SETUP2")
        with m.If(state["SETUP2"]):
            m.d.sync += s_cr.eq(s_c)
            goto("SETUP2", "SETUP3")
        with m.If(state["SETUP3"]):
            m.d.sync += amt_r.eq(amt_c)
            goto("SETUP3", "SETUP4")
        with m.If(state["SETUP4"]):
            m.d.sync += parts_r.eq(parts_c)
            goto("SETUP4", "SETUP5")
        with m.If(state["SETUP5"]):
            m.d.sync += [mask_r.eq(mask_c), omask_r.eq(omask_c), st_p2.eq(1)]
            goto("SETUP5", "PASS2")
        with m.If(state["PASS2"]):                    # st_p2 rules the pass; the state follows a cycle late
            with m.If(take & last_beat):
                m.d.sync += st_p2.eq(0)
            with m.If(~st_p2):
                goto("PASS2", "IDLE")

        # ---- free-running stages: valid bits move every cycle; data registers load every cycle
        # (reset-less, used only under their valid bit), so no enable fans out over them --------
        m.d.comb += pop.eq(vb2 & (sb2.info.mode == Mode.QG))     # the draw is read into stage C

        # ---- stage A ---------------------------------------------------------------------------------
        m.d.sync += [va.eq(take), sa.keep.eq(keep), sa.p1.eq(in_pass1), sa.info.mode.eq(cmd.mode),
                     sa.info.last.eq(last_beat), sa.info.zero.eq(zero), sa.info.exp.eq(exp_r),
                     sa.mask.eq(mask_r), sa.omask.eq(omask_r)]
        for j in range(lanes):
            p = self.i.payload.data[j]
            x, neg, relu_m = self.lane_a_flags(m, lane_abs[j], lane_clr[j], p, name=f"a{j}")
            # lanes outside the tensor are zeroed (the max tree needs it; pass 2 masks them at E)
            m.d.sync += [sa.x[j].eq(Mux(keep[j], x, 0)), sa.neg[j].eq(neg), sa.relu[j].eq(relu_m)]

        # ---- pass 1: pipelined max tree over stage A, then the running max --------------------------
        # Each tree level takes two stages: the compare (a carry chain) with both operands
        # registered, then the select. The running max is kept as two maxima, one per cycle
        # parity, so that each is updated at most every other cycle: a beat's compare against its
        # maximum is registered, and the select writes it the next cycle (MAX1/MAX2 merge them).
        level = [sa.x[j].as_unsigned()[:aw] for j in range(lanes)]
        lvalid = va & sa.p1
        for d in range(self.tree_depth):
            nxt = []
            for k in range(0, len(level), 2):
                r = Signal(aw, name=f"max_l{d}_{k // 2}")
                a_r = Signal(aw, name=f"max_l{d}_{k // 2}_a")
                m.d.sync += a_r.eq(level[k])
                if k + 1 < len(level):
                    b_r = Signal(aw, name=f"max_l{d}_{k // 2}_b")
                    lt = Signal(name=f"max_l{d}_{k // 2}_lt")
                    m.d.sync += [b_r.eq(level[k + 1]), lt.eq(_less(level[k], level[k + 1]))]
                    m.d.sync += r.eq(Mux(lt, b_r, a_r))
                else:
                    m.d.sync += r.eq(a_r)
                nxt.append(r)
            rv1, rv = Signal(name=f"max_l{d}_valid1"), Signal(name=f"max_l{d}_valid")
            m.d.sync += [rv1.eq(lvalid), rv.eq(rv1)]
            level, lvalid = nxt, rv
        parity = Signal()
        m.d.sync += parity.eq(~parity)
        top_v, top_par, top = Signal(), Signal(), Signal(aw, name="max_top")
        top_lt = [Signal(name="max_top_lt_even"), Signal(name="max_top_lt_odd")]
        m.d.sync += [top_v.eq(lvalid), top_par.eq(parity), top.eq(level[0]),
                     *(top_lt[e].eq(_less(run_max[e], level[0])) for e in range(2))]
        for e in range(2):
            with m.If(top_v & (top_par == e) & top_lt[e]):
                m.d.sync += run_max[e].eq(top)

        # ---- stage B1 --------------------------------------------------------------------------------
        m.d.sync += [vb1.eq(va & ~sa.p1), sb1.neg.eq(sa.neg), sb1.relu.eq(sa.relu), sb1.keep.eq(sa.keep),
                     sb1.info.eq(sa.info)]
        for j in range(lanes):
            y, sign, sticky, over = self.lane_b1_groups(m, sa.x[j], amt_a[j], sa.mask, sa.omask, name=f"b1_{j}")
            m.d.sync += [sb1.y[j].eq(y), sb1.sign[j].eq(sign), sb1.sticky[j].eq(sticky), sb1.over[j].eq(over)]

        # ---- stage B2 --------------------------------------------------------------------------------
        m.d.sync += [vb2.eq(vb1), sb2.sticky.eq(Cat(*(sb1.sticky[j] != 0 for j in range(lanes)))),
                     sb2.over.eq(Cat(*(sb1.over[j] != 0 for j in range(lanes)))), sb2.sign.eq(sb1.sign),
                     sb2.neg.eq(sb1.neg), sb2.relu.eq(sb1.relu), sb2.keep.eq(sb1.keep), sb2.info.eq(sb1.info)]
        for j in range(lanes):
            z, guard = self.lane_b2(m, sb1.y[j], sb1.sign[j], amt_b1[j], name=f"b2_{j}")
            m.d.sync += [sb2.z[j].eq(z), sb2.guard[j].eq(guard)]

        # ---- stage C ---------------------------------------------------------------------------------
        m.d.sync += [vc.eq(vb2), sc.neg.eq(sb2.neg), sc.relu.eq(sb2.relu), sc.keep.eq(sb2.keep),
                     sc.info.eq(sb2.info)]
        for j in range(lanes):
            code, t, sat = self.lane_c_parts(m, mode_b2[j], sb2.z[j], sb2.guard[j], sb2.sticky[j], sb2.over[j],
                                             sb2.sign[j], name=f"c{j}")
            m.d.sync += [sc.code[j].eq(code), sc.t[j].eq(t), sc.sat[j].eq(sat)]

        # ---- stage D: the SR adder with the lane's draw (read from the draw FIFO at B2 → C) -------
        m.d.sync += [vd.eq(vc), sd.neg.eq(sc.neg), sd.relu.eq(sc.relu), sd.sat.eq(sc.sat),
                     sd.keep.eq(sc.keep), sd.info.eq(sc.info)]
        for j in range(lanes):
            m.d.sync += [sd.mag[j].eq(self.lane_sr_mag(m, sc.t[j], lane_draw[j], name=f"d{j}")),
                         sd.code[j].eq(sc.code[j])]

        # ---- stage E: sign, keep/zero → written into the output FIFO (its entry is the output
        # register; o.valid is the FIFO's non-empty flag) ------------------------------------------
        # (LUT RAM written by stage E's valid bit with no full test, which out_cnt makes unneeded;
        # free-wrapping pointers; a registered non-empty flag is o.valid)
        m.submodules.out_ram = out_ram = Memory(shape=self.out_layout.size, depth=OUT_DEPTH, init=[])
        owp, orp = out_ram.write_port(), out_ram.read_port(domain="comb")
        o_wptr, o_rptr = Signal(range(OUT_DEPTH)), Signal(range(OUT_DEPTH))
        o_level = Signal(range(OUT_DEPTH + 1))
        o_nonempty = Signal()
        out = Signal(self.out_layout)
        for j in range(lanes):
            dw = self.lane_sign(m, sd.mag[j], sd.neg[j], name=f"e{j}")
            code = Mux(mode_d[j] == Mode.QG, dw, sd.code[j])
            is_qa = mode_d[j] == Mode.QA
            m.d.comb += [
                out.data[j].eq(Mux(sd.keep[j] & ~zero_d[j], code, 0)),
                out.relu[j].eq(sd.keep[j] & sd.relu[j] & is_qa),
                out.sat[j].eq(sd.keep[j] & sd.sat[j] & is_qa),
                out.keep[j].eq(sd.keep[j]),
            ]
        m.d.comb += [out.last.eq(sd.info.last), out.zero.eq(sd.info.zero), out.exp.eq(sd.info.exp),
                     owp.addr.eq(o_wptr), owp.data.eq(out), owp.en.eq(vd), orp.addr.eq(o_rptr),
                     self.o.valid.eq(o_nonempty), self.o.payload.eq(orp.data)]
        m.d.sync += [o_wptr.eq(o_wptr + vd), o_rptr.eq(o_rptr + out_rd), o_level.eq(_up_down(o_level, vd, out_rd)),
                     o_nonempty.eq(vd | (o_level >= 2) | ((o_level == 1) & ~out_rd))]
        self._out_overflow = vd & (o_level == OUT_DEPTH) & ~out_rd      # test hook: never true
        return m
