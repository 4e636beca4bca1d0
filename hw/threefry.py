"""Pipelined, multiplier-free Threefry-2x32 (the stochastic-rounding hash of golden/prng.py).

:class:`Threefry2x32` hashes one (counter, key) pair per clock cycle. The hash is a sequence of
steps: the initial key addition ``x = counter + key``; ``rounds`` mix rounds (a 32-bit add, a
constant rotation, an XOR); after every fourth round a key injection (two 32-bit adds, the
injection count folded into a key word computed one stage earlier). The steps are cut into register
stages, so the latency in cycles equals the number of stages:

* ``rounds_per_stage`` (default 1) mix rounds share a stage; or ``stages=N`` spreads the rounds
  evenly over N round groups;
* ``key_stages=True`` (default) gives the initial key addition, and every key injection that falls
  at the end of a round group, a stage of its own. With one round per stage no stage then chains
  two 32-bit additions: 17 stages for 13 rounds (1 key + 13 rounds + 3 injections). With
  ``key_stages=False`` the key additions share the neighbouring round's stage: 13 stages for
  13 rounds, ~4 × 129 fewer flip-flops, about two adder delays per stage (the Fmax limit);
* ``rounds_per_stage=13, key_stages=False`` (or ``stages=1, key_stages=False``): the whole hash in
  one stage, fewest registers, lowest Fmax;
* ``split_rounds`` (the default whenever there is one round per stage and key stages; ``None``
  means that automatic choice): every mix round takes two stages, the 32-bit add in the first (``A<r>``: ``x0 + x1``, and ``x1`` rotated, which is wiring)
  and the XOR in the second (``X<r>``), so no stage holds more than one carry chain or one LUT
  level: 30 stages for 13 rounds (1 key + 26 + 3 injections), ~13 × 65 more flip-flops, plus the
  third key word ``k0 ^ k1 ^ parity`` carried as a register (32 more per key-carrying stage; with
  ``static_key`` one register), so the injections add registered words only.

Interface (``amaranth.lib.stream``, full throughput):

``i``  payload ``{counter0, counter1, key0, key1}`` (32 bits each) plus ``side`` when a sideband
       shape is given;
``o``  payload ``{x0, x1}`` (the two output words of :func:`golden.prng.threefry2x32`) plus ``side``,
       the input's ``side`` delayed by exactly the hash latency (data that belongs to the hash).

Backpressure (``backpressure``), three choices; the stream rules hold in all (``o.valid`` never
waits for ``o.ready``, the payload stays stable until taken):

* ``"fifo"`` (default): the stages never stall (no enable fans out over the registers). The last
  stage writes into an output FIFO of ``latency + 2`` entries (LUT RAM) that takes the last
  register's place (so the latency is unchanged: ``o.valid`` is the FIFO's non-empty flag), and
  ``i.ready`` is a registered credit: requests in flight plus FIFO entries < depth, tested a cycle
  late (ignoring that cycle's read), so it comes from one flip-flop and the FIFO never overflows.
  With ``o.ready`` high the input is always ready (one hash per cycle);
* ``"stall"``: a global pipeline enable, ``i.ready = ~o.valid | o.ready``, which fans out over every
  register of the pipeline (the Fmax limit of a long pipeline);
* ``"none"``: the pipeline never stalls and ``i.ready`` is 1; the user must hold ``o.ready`` high
  (or otherwise never leave a valid output untaken), as the quantizer does with its own credits.

Registers per stage: 64 (state) + 1 (valid) + the sideband, plus 64 (key) while a
later stage still needs the key, plus 32 before each injection stage. With ``static_key=True``
(a key held constant by the user, as the quantizer's per-tensor key is) the key is not carried:
65 per stage plus 32 per injection (about 1.2k instead of 2.1k flip-flops for 17 stages).
"""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Shape, Signal
from amaranth.lib import data, stream, wiring
from amaranth.lib.memory import Memory
from amaranth.lib.wiring import In, Out

from golden.prng import KEY_PARITY, ROTATIONS

__all__ = ["Threefry2x32"]


def _up_down(counter, up, down):
    """counter + up − down as one adder (the ±1 is decoded first, not two chained carry chains)."""
    step = Cat(up ^ down, (down & ~up).replicate(len(counter) - 1))
    return (counter + step)[:len(counter)]


def _check_int(name: str, value, lo: int, hi: int | None = None) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name}={value!r}: must be an integer")
    if value < lo or (hi is not None and value > hi):
        rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
        raise ValueError(f"{name}={value!r}: must be in {rng}")
    return value


class Threefry2x32(wiring.Component):
    """Threefry-2x32-``rounds`` as a pipeline (latency = number of stages; see the module doc).

    Parameters
    ----------
    rounds : int
        Number of rounds (13 for the project's generator; 20 is Random123's default), 1..64.
    rounds_per_stage : int, keyword-only
        Mix rounds per round group (default 1); the last group may hold fewer.
    stages : int, keyword-only
        Alternative to ``rounds_per_stage``: the number of round groups, 1..rounds; the rounds are
        spread as evenly as possible (earlier groups take the extra round). Give at most one.
    key_stages : bool, keyword-only
        Register the key addition and the injections that end a round group separately (default).
    split_rounds : bool or None, keyword-only
        Give each mix round two stages, the add and then the rotate/XOR. Needs one round per stage
        and ``key_stages=True``; the default ``None`` splits exactly when those hold.
    backpressure : str, keyword-only
        ``"fifo"`` (default), ``"stall"`` or ``"none"`` (see the module docstring).
    static_key : bool, keyword-only
        The key is not carried through the pipeline: every stage reads ``i.payload.key0/key1``
        directly, saving 64 flip-flops per stage. The user must hold the key constant while any hash
        is in flight and for one cycle before the first hash that uses a new key (the injection
        constants are registered from it). Default False (the key travels with each hash).
    sideband : shape-castable or None, keyword-only
        Shape of an extra payload field ``side`` carried alongside each hash with the same latency.

    Attributes
    ----------
    latency : int
        Cycles from an input transfer to the output becoming valid when nothing stalls.
    schedule : tuple[tuple[str, ...], ...]
        The steps of each stage: ``"K"`` (key addition), ``"R<r>"`` (round r), ``"I<i>"`` (injection i);
        with ``split_rounds``, ``"A<r>"`` and ``"X<r>"`` (round r's add, its rotate/XOR).
    stage_rounds : tuple[int, ...]
        Mix rounds completed per stage (a split round counts in its ``X`` stage).
    """

    def __init__(self, rounds: int = 13, *, rounds_per_stage: int | None = None,
                 stages: int | None = None, key_stages: bool = True, static_key: bool = False,
                 split_rounds: bool | None = None, sideband=None, backpressure: str = "fifo"):
        try:
            self._configure(rounds, rounds_per_stage, stages, key_stages, sideband, split_rounds)
            if backpressure not in ("fifo", "stall", "none"):
                raise ValueError(f"backpressure={backpressure!r}: must be 'fifo', 'stall' or 'none'")
            self.backpressure = backpressure
            if not isinstance(static_key, bool):
                raise TypeError(f"static_key={static_key!r}: must be True or False")
            self.static_key = static_key
        except (TypeError, ValueError):
            self._MustUse__silence = True      # a rejected generator is not an "unused elaboratable"
            raise
        in_fields = {"counter0": 32, "counter1": 32, "key0": 32, "key1": 32}
        out_fields = {"x0": 32, "x1": 32}
        if self.sideband is not None:
            in_fields["side"] = self.sideband
            out_fields["side"] = self.sideband
        self.in_layout = data.StructLayout(in_fields)
        self.out_layout = data.StructLayout(out_fields)
        super().__init__({
            "i": In(stream.Signature(self.in_layout)),
            "o": Out(stream.Signature(self.out_layout)),
        })

    def _configure(self, rounds, rounds_per_stage, stages, key_stages, sideband, split_rounds=None):
        self.rounds = _check_int("rounds", rounds, 1, 64)
        if rounds_per_stage is not None and stages is not None:
            raise ValueError(f"rounds_per_stage={rounds_per_stage!r} and stages={stages!r}: give at most one")
        if not isinstance(key_stages, bool):
            raise TypeError(f"key_stages={key_stages!r}: must be True or False")
        if stages is not None:
            stages = _check_int("stages", stages, 1, rounds)
            base, extra = divmod(rounds, stages)
            groups = [base + (1 if g < extra else 0) for g in range(stages)]
        else:
            rps = 1 if rounds_per_stage is None else _check_int("rounds_per_stage", rounds_per_stage, 1, rounds)
            groups = [rps] * (rounds // rps) + ([rounds % rps] if rounds % rps else [])
        if sideband is not None:
            try:
                Shape.cast(sideband)
            except TypeError:
                raise TypeError(f"sideband={sideband!r}: must be a shape (or None)") from None
        if split_rounds is None:                       # automatic: split whenever it is possible
            split_rounds = max(groups) == 1 and key_stages
        if not isinstance(split_rounds, bool):
            raise TypeError(f"split_rounds={split_rounds!r}: must be True, False or None")
        if split_rounds and max(groups) > 1:
            raise ValueError(f"split_rounds=True needs one round per stage (got rounds_per_stage="
                             f"{rounds_per_stage!r}, stages={stages!r})")
        if split_rounds and not key_stages:
            raise ValueError("split_rounds=True needs key_stages=True (got key_stages=False): the key "
                             "addition would chain with the first round's add")
        self.sideband = sideband
        self.key_stages = key_stages
        self.split_rounds = split_rounds

        schedule: list[list[str]] = [["K"]] if key_stages else []
        r = 0
        for g, count in enumerate(groups):
            stage = [] if (key_stages or g) else ["K"]
            for k in range(count):
                stage.append(f"R{r}")
                if r % 4 == 3:
                    inj = f"I{r // 4 + 1}"
                    if key_stages and k == count - 1:
                        schedule.append(stage)
                        stage = [inj]
                    else:
                        stage.append(inj)
                r += 1
            schedule.append(stage)
        if split_rounds:                               # each ["R<r>"] becomes ["A<r>"], ["X<r>"]
            schedule = [part for stage in schedule
                        for part in ([[f"A{stage[0][1:]}"], [f"X{stage[0][1:]}"]] if stage[0][0] == "R" else [stage])]
        self.schedule = tuple(tuple(s) for s in schedule)
        self.stage_rounds = tuple(sum(op[0] in "RX" for op in s) for s in self.schedule)
        self.latency = len(self.schedule)

    def elaborate(self, platform):
        m = Module()
        bp = self.backpressure
        if bp == "stall":                             # one global enable over every register
            en = Signal()
            m.d.comb += [en.eq(~self.o.valid | self.o.ready), self.i.ready.eq(en)]
        else:                                         # free-running stages
            en = Const(1)
        if bp == "fifo":                              # output FIFO in the last register's place
            # Credits: hashes in the stages + FIFO entries ≤ depth = latency + 2 (the test is made a
            # cycle late and ignores that cycle's read, so it comes from a flip-flop; with o.ready
            # high a hash stays latency cycles, so one per cycle passes). The FIFO itself needs no
            # full test (its write enable is the last stage's valid bit): LUT RAM of a power-of-two
            # depth ≥ the credits, free-wrapping pointers, a registered non-empty flag.
            depth = self.latency + 2
            ram_depth = 1 << (depth - 1).bit_length()
            m.submodules.out_ram = ram = Memory(shape=self.out_layout.size, depth=ram_depth, init=[])
            wport, rport = ram.write_port(), ram.read_port(domain="comb")
            wptr, rptr = Signal(range(ram_depth)), Signal(range(ram_depth))
            level = Signal(range(depth + 1))           # FIFO entries
            nonempty = Signal()                        # level != 0 (registered)
            outstanding = Signal(range(depth + 1))     # hashes in the stages + entries in the FIFO
            credit = Signal(init=1)                    # outstanding < depth, registered
            take, write, read = Signal(), Signal(), Signal()
            m.d.comb += [self.i.ready.eq(credit), take.eq(self.i.valid & credit),
                         read.eq(nonempty & self.o.ready),
                         wport.addr.eq(wptr), wport.en.eq(write), rport.addr.eq(rptr),
                         self.o.valid.eq(nonempty), self.o.payload.eq(rport.data)]
            m.d.sync += [outstanding.eq(_up_down(outstanding, take, read)),
                         credit.eq(Mux(take, outstanding < depth - 1, outstanding < depth)),   # no read
                         level.eq(_up_down(level, write, read)),
                         nonempty.eq(write | (level >= 2) | ((level == 1) & ~read)),
                         wptr.eq(wptr + write), rptr.eq(rptr + read)]
            self._out_overflow = write & (level == depth) & ~read   # test hook: never true
        elif bp == "none":
            m.d.comb += self.i.ready.eq(1)

        p = self.i.payload
        x0, x1, k0, k1 = p.counter0, p.counter1, p.key0, p.key1
        k2 = self._key_schedule(k0, k1)[2]
        # split rounds: the third key word k0 ^ k1 ^ parity is registered (carried with the key, or
        # once for a static key), so no injection or precomputed constant chains an XOR with an add
        carry_k2 = self.split_rounds
        if carry_k2 and self.static_key:
            rk2 = Signal(32, name="static_k2", reset_less=True)
            m.d.sync += rk2.eq(k2)
            k2 = rk2
        side = p.side if self.sideband is not None else None
        valid = take if bp == "fifo" else self.i.valid
        kinj = None                                   # ks_b + i for an injection opening this stage
        last_key_use = max(g for g, s in enumerate(self.schedule) if any(op[0] in "KI" for op in s))
        static_kinj = {}
        if self.static_key:                           # ks_b + i, registered once from the held key
            for ops in self.schedule[1:]:
                if ops[0][0] == "I":
                    i = int(ops[0][1:])
                    r = Signal(32, name=f"kinj{i}", reset_less=True)
                    m.d.sync += r.eq((self._key_schedule(k0, k1)[(i + 1) % 3] + i)[:32])
                    static_kinj[i] = r
        last = self.latency - 1
        for g, ops in enumerate(self.schedule):
            if self.static_key and ops[0][0] == "I":
                kinj = static_kinj[int(ops[0][1:])]
            for op in ops:
                if op == "K":
                    x0, x1 = (x0 + k0)[:32], (x1 + k1)[:32]
                elif op[0] == "R":
                    x0, x1 = self._round(int(op[1:]), x0, x1)
                elif op[0] == "A":                    # split round, first half: add (x1 rotated: wiring)
                    x0, x1 = (x0 + x1)[:32], x1.rotate_left(ROTATIONS[int(op[1:]) % 8])
                elif op[0] == "X":                    # split round, second half: XOR
                    x1 = x1 ^ x0
                else:
                    i = int(op[1:])
                    ks = (k0, k1, k2) if carry_k2 else self._key_schedule(k0, k1)
                    x0 = (x0 + ks[i % 3])[:32]
                    x1 = (x1 + (kinj if kinj is not None and op == ops[0] else (ks[(i + 1) % 3] + i)[:32]))[:32]
                # name every step's words: keeps the netlist a DAG (no re-expanded expression trees)
                n0, n1 = Signal(32, name=f"s{g}_{op}_x0"), Signal(32, name=f"s{g}_{op}_x1")
                m.d.comb += [n0.eq(x0), n1.eq(x1)]
                x0, x1 = n0, n1
            if g == last and bp == "fifo":            # the FIFO entry is the last stage's register
                w = Signal(self.out_layout)
                m.d.comb += [w.x0.eq(x0), w.x1.eq(x1), wport.data.eq(w), write.eq(valid)]
                if side is not None:
                    m.d.comb += w.side.eq(side)
                return m
            # Only the valid flags have a reset: a data register is read only beside a set flag.
            # (The quantiser's three hashers put 5,500 flip-flops on the 8-lane engine's reset
            # net, 17,764 in all, whose far ends failed by up to 10 ns after placement.)
            rx0, rx1 = Signal(32, name=f"s{g}_x0", reset_less=True), Signal(32, name=f"s{g}_x1", reset_less=True)
            rv = Signal(name=f"s{g}_valid")
            with m.If(en):
                m.d.sync += [rx0.eq(x0), rx1.eq(x1), rv.eq(valid)]
            next_kinj = None
            if not self.static_key and g + 1 < self.latency and self.schedule[g + 1][0][0] == "I":
                i = int(self.schedule[g + 1][0][1:])  # precompute ks_b + i for the next stage
                next_kinj = Signal(32, name=f"s{g}_kinj", reset_less=True)
                with m.If(en):
                    ks = (k0, k1, k2) if carry_k2 else self._key_schedule(k0, k1)
                    m.d.sync += next_kinj.eq((ks[(i + 1) % 3] + i)[:32])
            if g < last_key_use and not self.static_key:   # the key is needed by a later stage
                rk0, rk1 = Signal(32, name=f"s{g}_k0", reset_less=True), Signal(32, name=f"s{g}_k1", reset_less=True)
                with m.If(en):
                    m.d.sync += [rk0.eq(k0), rk1.eq(k1)]
                k0, k1 = rk0, rk1
                if carry_k2:
                    rk2 = Signal(32, name=f"s{g}_k2", reset_less=True)
                    with m.If(en):
                        m.d.sync += rk2.eq(k2)
                    k2 = rk2
            if side is not None:
                rside = Signal(self.sideband, name=f"s{g}_side", reset_less=True)
                with m.If(en):
                    m.d.sync += rside.eq(side)
                side = rside
            x0, x1, valid, kinj = rx0, rx1, rv, next_kinj
        m.d.comb += [self.o.valid.eq(valid), self.o.payload.x0.eq(x0), self.o.payload.x1.eq(x1)]
        if side is not None:
            m.d.comb += self.o.payload.side.eq(side)
        return m

    @staticmethod
    def _key_schedule(k0, k1):
        return (k0, k1, k0 ^ k1 ^ Const(KEY_PARITY, 32))

    @staticmethod
    def _round(r: int, x0, x1):
        """Mix round r (0-based) of golden.prng.threefry2x32."""
        x0 = (x0 + x1)[:32]
        x1 = x1.rotate_left(ROTATIONS[r % 8]) ^ x0
        return x0, x1
