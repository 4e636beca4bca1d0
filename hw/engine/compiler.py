"""Network → engine program: the memory map, the fit check and the instructions of one training step.

:func:`compile_network` reads an :class:`~hw.engine.config.EngineConfig` and returns a
:class:`Program`: where every tensor lives (:mod:`hw.engine.layout`) and the instruction list of
one WAGE training step (:mod:`hw.engine.isa`):

    FWD 0 … FWD n−1, LOSS, then for l = n−1 … 0: ERR l (l > 0), GRAD l; END

ERR l runs before GRAD l because both read layer l's weights and GRAD l rewrites them: every
gradient is taken from the weights before the step (as :func:`golden.model.train_step` does).

Q_E and Q_G need the maximum over the whole tensor before they can emit anything, so ERR and
GRAD pass their results through the quantiser twice: once for the maximum, then for the values
(LOSS reads its input twice from the scratchpad). Per instruction the compiler chooses how pass 2
gets its results (:func:`choose_store_then_quantise`):

* *store-then-quantise* — pass 1 also writes every result row (L accumulator-width sums) to the
  sum buffer (``EngineConfig.sum_words`` rows), and pass 2 reads them back: the array runs once.
  Chosen whenever the instruction's result rows fit the buffer; else, with external sums
  (``EngineConfig.external_sum_words``), the rows go through the external port
  (``EngineConfig.sum_chunks`` words each) when they fit there and the product's operand beats
  outnumber the external words written and read back.
* *compute-twice* — pass 2 runs the product again. No sum tensor is stored, so no buffer limits
  the batch; the price is twice the array time (:mod:`benchmarks.engine_throughput` counts it).

The golden model's results do not depend on the choice: both give the quantiser the same integers.

Tensors that do not fit their scratchpad live in the external memory (``EngineConfig.external_words``),
read and written in place through the port. Where (:func:`choose_placement`): first fit in program
order, or — when it is better — each scratchpad's tensors by reads per word, with the most-read
tensor that does not fit *straddling* the boundary: its first words fill the scratchpad's free
words and the rest are the external memory's first words, contiguous in the data address space, so
the instructions are unchanged and those words are read from the scratchpad. Of these the placement
with the fewest port-bound cycles (:func:`port_bound_cycles`: per instruction the larger of its
array beats and its external reads) wins. LeNet-5 at batch 128 on 16,384-word scratchpads, its
sums computed twice, keeps 12,160 of E1's 32,768 words on chip that way (E1 is read 200 times per
word, by conv2's error and gradient products); with its sums stored, first fit wins instead,
because then conv2's gradient stages E1 block by block in the free words (tile staging,
:mod:`hw.engine.conv`).
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass, field

from golden.config import WageConfig

from .config import EngineConfig
from .isa import ADDR_BITS, STORE_CHIP, STORE_EXTERNAL, AddressPattern, Instruction, IsaError, Op, RowSel
from .layout import MapLayout, TapMapLayout, WeightLayout

__all__ = ["Program", "MemoryPlan", "Placement", "FitError", "choose_placement", "port_bound_cycles", "tensor_reads", "UnsupportedNetwork", "compile_network", "plan_memory",
           "fc_forward", "fc_error", "fc_gradient", "fc_draw", "loss", "array_beats", "choose_store_then_quantise",
           "result_rows", "two_pass_products"]


def straddle_line(name: str, words: int) -> str:
    """How a report names a tensor or weight layer (``W<i>``) across its memory's boundary."""
    memory = "weight store" if name[0] == "W" else "scratchpad"
    return f"{name} straddles the {memory}'s boundary: {words} words on chip, the rest external"


class FitError(ValueError):
    """The network's tensors do not fit a memory; the message names the memory and the shortfall."""


class UnsupportedNetwork(ValueError):
    """The network uses something this engine build cannot execute; the message names it."""


@dataclass
class Program:
    config: EngineConfig
    instructions: list[Instruction]
    inputs: MapLayout                        # the batch, in the activation scratchpad
    activations: list[MapLayout | None]      # A_l (None: a raw output layer keeps none)
    errors: list[MapLayout]                  # E_l in the error scratchpad
    weights: list[WeightLayout]
    usage: dict[str, tuple[int, int]] = field(default_factory=dict)   # memory → (used, capacity)
    # a tensor (or weight layer "W<i>") across its memory's boundary → its on-chip words
    straddled: dict[str, int] = field(default_factory=dict)
    # error tensors whose words tile staging overwrites after their last read in the step (a
    # read-back after the step holds the staged operand there, not the tensor)
    overwritten: tuple[str, ...] = ()

    def describe(self) -> str:
        lines = [self.config.summary()]
        for mem, (used, cap) in self.usage.items():
            lines.append(f"  {mem:<10} {used:>8} of {cap:>8} words ({100 * used / cap:.1f} %)")
        lines += [f"  {straddle_line(name, words)}" for name, words in self.straddled.items()]
        for name in self.overwritten:
            lines.append(f"  {name} is overwritten by tile staging after its last read (not readable after a step)")
        lines += [f"  {i:>3}: {ins}" for i, ins in enumerate(self.instructions)]
        return "\n".join(lines)


def _check_supported(config: EngineConfig) -> None:
    wage, lanes = config.wage, config.lanes
    for layer in wage.layers:
        if layer.fan_in % lanes:
            raise UnsupportedNetwork(
                f"layer {layer.index} ({layer.describe()}): fan-in {layer.fan_in} is not a multiple of lanes={lanes}; "
                f"the gradient words would not start on a whole hash of stochastic-rounding draws")
    check_loss_and_labels(config)


def check_loss_and_labels(config: EngineConfig) -> None:
    """What every network needs: a quantised output layer (the LOSS instruction) and room for the labels."""
    wage = config.wage
    if not wage.output_quantize:
        raise UnsupportedNetwork("output_quantize=False: the loss of a raw output layer needs its sums recomputed "
                                 "(not built yet); use output_quantize=True (the default)")
    if wage.batch_size > config.label_words:
        raise FitError(f"labels: batch {wage.batch_size} needs {wage.batch_size} label words, "
                       f"label_words={config.label_words} ({wage.batch_size - config.label_words} short)")


def check_program_fits(config: EngineConfig, instructions: list) -> None:
    """The program image (:func:`hw.engine.encoding.encode_program`) must fit the program memory."""
    from .encoding import encode_program                     # encoding imports the conv compiler
    used = len(encode_program(instructions))
    if used > config.program_words:
        raise FitError(f"program_words: the program needs {used} words ({len(instructions)} instructions as "
                       f"delta records), the engine has {config.program_words} "
                       f"({used - config.program_words} words short); raise EngineConfig.program_words")


def _fits(name: str, used: int, capacity: int, parts: list[tuple[str, int]], what: str = "") -> None:
    if used > capacity:
        detail = ", ".join(f"{n} {w}" for n, w in parts)
        hint = {"data_words": "or EngineConfig.external_words, or reduce the batch",
                "external_words": "or EngineConfig.data_words, or reduce the batch",
                "weight_words": "or EngineConfig.external_weight_words",
                "external_weight_words": "or EngineConfig.weight_words",
                "external_error_words": "or EngineConfig.data_words"}.get(name, "")
        raise FitError(f"{name}: the network needs {used} words ({detail}), the engine has {capacity}{what} "
                       f"({used - capacity} words short); raise EngineConfig.{name}" + (f" {hint}" if hint else ""))


@dataclass
class MemoryPlan:
    """Where every tensor lives (see :mod:`hw.engine.layout`) and how full each memory is."""
    inputs: MapLayout
    activations: list[MapLayout]
    errors: list[MapLayout]
    weights: list[WeightLayout]
    usage: dict[str, tuple[int, int]]
    straddled: dict[str, int] = field(default_factory=dict)   # a straddling tensor or weight layer → its on-chip words

    def layer_input(self, i: int) -> MapLayout:
        return self.inputs if i == 0 else self.activations[i - 1]

    def tensors(self, memory: str | None = None) -> list[MapLayout]:
        """The activation ("act") or error ("err") scratchpad's tensors, or both."""
        act = [self.inputs] + [a for a in self.activations if a is not None]
        return {"act": act, "err": list(self.errors), None: act + list(self.errors)}[memory]

    def base(self, name: str) -> int:
        return next(t.base for t in self.tensors() if t.name == name)


@dataclass(frozen=True)
class Placement:
    """How :func:`plan_memory` orders the tensors of each scratchpad: ``priority`` names them in the
    order they claim scratchpad words (the rest keep program order after them), and ``straddle``
    (one tensor, or None) takes the scratchpad's last free words and continues in the external
    memory's first words: the data addresses are contiguous across the boundary (external word k
    is data address ``data_words + k``), so its patterns do not change, and as much of it as fits
    is read from the scratchpad. With ``straddle_first`` the straddler takes its words in its turn
    in ``priority`` (all that is left then, so the tensors after it spill); without, after every
    tensor that fits whole."""
    priority: tuple[str, ...] = ()
    straddle: str | None = None
    straddle_first: bool = False


def plan_memory(config: EngineConfig, placement: Placement | None = None) -> MemoryPlan:
    """Lay out the batch, every layer's activations and errors (map layout where a convolution
    produces or consumes the tensor, flattened otherwise) and the weights; check that they fit.
    Without ``placement`` each tensor lives whole in its scratchpad (first fit, in program order)
    or, when it does not fit there and the engine has an external memory, whole in the external
    memory; :func:`choose_placement` may ask for another order and one straddling tensor. Weight
    layers go first fit too, and the first that does not fit straddles the weight store's boundary."""
    wage: WageConfig = config.wage
    lanes, batch, layers = config.lanes, wage.batch_size, wage.layers
    placement = placement or Placement()

    def tensor(name: str, base: int, shape: tuple[int, ...], conv_map: bool) -> MapLayout:
        c, h, w = shape if len(shape) == 3 else (shape[0], 1, 1)
        return MapLayout(name, base, batch, c, h, w, lanes, flatten=not conv_map)

    fold = config.folds_input
    if fold:                         # the host im2cols the input of a folded first convolution
        first = layers[0]
        inputs = TapMapLayout.for_input("inputs", 0, batch, first.in_shape, first.kernel, first.padding, lanes)
    else:
        inputs = tensor("inputs", 0, wage.input_shape, layers[0].kind == "conv")
    act_tensors = [inputs] + [tensor(f"A{layer.index}", 0, layer.out_shape, layer.kind == "conv")
                              for layer in layers]
    err_tensors = [tensor(f"E{layer.index}", 0, layer.product_shape, layer.kind == "conv") for layer in layers]
    # The external memory's data region is shared by activations and errors (addresses
    # data_words + …): a straddling tensor's external part first, then the other spilled tensors.
    external = config.external_words > 0
    rank = {name: k for k, name in enumerate(placement.priority)}

    def place_chip(tensors):
        """Scratchpad words of each tensor (priority order, first fit); the straddler takes the rest."""
        chip, used = {}, 0

        def take_straddler(t):
            nonlocal used
            if external and used < config.data_words:
                chip[t.name] = used
                straddled[t.name] = min(t.words, config.data_words - used)
                used += straddled[t.name]
        for t in sorted(tensors, key=lambda t: rank.get(t.name, len(rank))):
            if t.name == placement.straddle:
                if placement.straddle_first:
                    take_straddler(t)
            elif used + t.words <= config.data_words or not external:
                chip[t.name] = used
                used += t.words
        for t in tensors:
            if t.name == placement.straddle and not placement.straddle_first:
                take_straddler(t)
        return chip, used

    straddled: dict[str, int] = {}
    act_chip, act_used = place_chip(act_tensors)
    err_chip, err_used = place_chip(err_tensors)
    ext_used = sum(t.words - straddled[t.name] for t in act_tensors + err_tensors if t.name in straddled)
    ext_parts = [(t.name, t.words - straddled[t.name]) for t in act_tensors + err_tensors if t.name in straddled]

    # With an error region (EngineConfig.external_error_words, the data region's last words) the
    # error tensors that spill whole go there, from its first word, and nothing else does.
    err_ext_used, err_ext_parts = 0, []
    error_region = config.external_error_words > 0

    def place(tensors, chip, errors=False):
        nonlocal ext_used, err_ext_used
        placed, parts = [], []
        for t in tensors:
            if t.name in chip:
                placed.append(dataclasses.replace(t, base=chip[t.name]))
                parts.append((t.name, straddled.get(t.name, t.words)))
            elif errors and error_region:
                placed.append(dataclasses.replace(t, base=config.data_words + config.external_error_base + err_ext_used))
                err_ext_used += t.words
                err_ext_parts.append((t.name, t.words))
            else:
                placed.append(dataclasses.replace(t, base=config.data_words + ext_used))
                ext_used += t.words
                ext_parts.append((t.name, t.words))
        return placed, parts

    (inputs, *activations), act_parts = place(act_tensors, act_chip)
    errors, err_parts = place(err_tensors, err_chip, errors=True)
    # Weights: each layer's words in the weight store (first fit, in program order), or in the
    # external memory's weight region (weight addresses weight_words + …). The first layer that
    # does not fit whole straddles the boundary: it takes the weight store's free words after the
    # layers that fit and continues in the external region's first words (weight addresses are
    # contiguous across it, and the store and its updates pick the tier per word), so no word of
    # the store is left idle while weights are read through the port (the MLP's 784→256 layer:
    # 7,872 of its 25,088 words on chip instead of none at 8,192 words).
    w_layouts = [WeightLayout.for_layer(wage, layer.index, 0, lanes, fold=fold and layer.index == 0) for layer in layers]
    on_chip, w_used = {}, 0
    for w in w_layouts:
        if w_used + w.words <= config.weight_words or config.external_weight_words == 0:
            on_chip[w.index] = w_used
            w_used += w.words
    wext_used = 0
    w_straddler = next((w for w in w_layouts if w.index not in on_chip), None)
    if w_straddler is not None and w_used < config.weight_words:
        on_chip[w_straddler.index] = w_used
        straddled[f"W{w_straddler.index}"] = config.weight_words - w_used
        wext_used = w_straddler.words - (config.weight_words - w_used)
        w_used = config.weight_words
    w_parts, wext_parts, weights = [], [], []
    for w in w_layouts:
        name = f"W{w.index}"
        if w.index in on_chip:
            weights.append(dataclasses.replace(w, base=on_chip[w.index]))
            w_parts.append((name, straddled.get(name, w.words)))
            if name in straddled:
                wext_parts.append((name, w.words - straddled[name]))
        else:
            weights.append(dataclasses.replace(w, base=config.weight_words + wext_used))
            wext_used += w.words
            wext_parts.append((name, w.words))
    # The error and activation scratchpads are the same size in hardware (data_words each).
    _fits("data_words", max(act_used, err_used), config.data_words,
          act_parts if act_used >= err_used else err_parts)
    _fits("weight_words", w_used, config.weight_words, w_parts)
    # (external_error_base is external_words without an error region)
    _fits("external_words", ext_used, config.external_error_base, ext_parts,
          f" (the {config.external_words} external words less the error region's {config.external_error_words})"
          if error_region else "")
    _fits("external_error_words", err_ext_used, config.external_error_words, err_ext_parts)
    _fits("external_weight_words", wext_used, config.external_weight_words, wext_parts)
    usage = {"act": (act_used, config.data_words), "err": (err_used, config.data_words),
             "weights": (w_used, config.weight_words), "labels": (batch, config.label_words)}
    if external:
        usage["external"] = (ext_used, config.external_error_base)
    if error_region:
        usage["external errors"] = (err_ext_used, config.external_error_words)
    if config.external_weight_words:
        usage["external weights"] = (wext_used, config.external_weight_words)
    return MemoryPlan(inputs, activations, errors, weights, usage, straddled)


# ---- placement by reads (a network that spills) ---------------------------------------------------

def _read_streams(ins):
    """(pattern, memory, passes) of each read pattern of an instruction: memory "act", "err" or
    "weights"; passes: how often the engine walks it (compute-twice walks its operands twice; ERR
    and LOSS read their aux in both passes)."""
    from .conv import PART_FINISH, ConvOp                    # conv builds on this module
    op = ins.op
    twice = op in two_pass_products() and not ins.stored
    finish = getattr(ins, "part", 0) == PART_FINISH
    operands = 2 if twice else (0 if finish else 1)
    if op in (Op.FWD, ConvOp.CONV_FWD):
        return [(ins.a, "act", 1), (ins.b, "weights", 1)]
    if op in (Op.ERR, ConvOp.CONV_ERR):
        return [(ins.a, "err", operands), (ins.b, "weights", operands), (ins.aux, "act", 2)]
    if op in (Op.GRAD, ConvOp.CONV_GRAD):
        return [(ins.a, "err", operands), (ins.b, "act", operands)]
    if op == Op.LOSS:
        return [(ins.aux, "act", 2)]
    if op in Op.COPIES:                      # one word per beat, its beats first
        return [(ins.aux, "err" if op == Op.COPY else "act", 1)]
    return []


def _valid_addresses(pattern, lanes: int):
    import numpy as np
    address, valid = pattern.address_array(lanes)
    return np.asarray(address)[np.asarray(valid)]


@functools.lru_cache(maxsize=8192)
def _external_reads(pattern, lanes: int, limit: int) -> int:
    """Valid beats of ``pattern`` at addresses ≥ ``limit`` (cached: the compilers cost many
    candidate programs that share their patterns)."""
    return int((_valid_addresses(pattern, lanes) >= limit).sum())


def port_bound_cycles(config: EngineConfig, instructions: list) -> int:
    """A lower bound on a step's cycles with its external words through a port that moves one
    word per ``config.external_cycles_per_word`` cycles: per instruction, the larger of its array
    beats and the cycles of its external words read (operands, masks, weights beyond the weight
    store; a part that accumulates external sums also reads and writes its rows); what
    :func:`choose_placement` and the convolution compiler's staging choices minimise."""
    total = 0
    for ins in instructions:
        beats, words = 0, 0
        for k, (pattern, memory, passes) in enumerate(_read_streams(ins)):
            if not passes or pattern.length <= 1:
                continue
            limit = config.weight_words if memory == "weights" else config.data_words
            words += passes * _external_reads(pattern, config.lanes, limit)
            if k == 0:
                beats = passes * pattern.length
        if getattr(ins, "sum_add", 0) and ins.stored == STORE_EXTERNAL:
            # a part that adds to external sums reads and writes each row once more than a whole product
            words += 2 * (ins.part_count // config.lanes) * config.sum_chunks
        total += max(beats, words * config.external_cycles_per_word)
    return total


def tensor_reads(plan: MemoryPlan, instructions: list, lanes: int) -> dict[str, int]:
    """Words read per step from each activation and error tensor (every pass, any tier)."""
    import numpy as np
    tensors = {"act": plan.tensors("act"), "err": plan.tensors("err")}
    reads = {t.name: 0 for t in plan.tensors()}
    for ins in instructions:
        for pattern, memory, passes in _read_streams(ins):
            if memory == "weights" or not passes or pattern.length <= 1:
                continue
            addresses = _valid_addresses(pattern, lanes)
            for t in tensors[memory]:
                reads[t.name] += passes * int(((addresses >= t.base) & (addresses < t.base + t.words)).sum())
    return reads


def choose_placement(config: EngineConfig, emit, placement: Placement | None = None, straddle_first: bool = False):
    """``(plan, instructions)`` for the program ``emit(plan)`` builds, placed as ``placement`` says
    if given (``Placement()``: first fit), else chosen: a network that spills to the
    external memory is placed three ways — first fit in program order (:func:`plan_memory`'s
    default), and, for each scratchpad, its tensors by reads per word with the most-read one that
    does not fit straddling the boundary in the words left after the tensors that fit whole (with
    ``straddle_first`` also in its turn, taking all that is left: the MLP's input batch, read 64
    times per word, before its first layer's activations, read 5 times) — and the one with the
    fewest port-bound cycles
    (:func:`port_bound_cycles`) wins (first fit on a tie). Each is costed on the program ``emit``
    builds for it, which may stage a spilled gradient operand in the scratchpad words that are
    free (:func:`hw.engine.conv.compile_conv_grad_staged`), so leaving room for staging competes
    with straddling. The training step's integers are the same whichever wins."""
    if placement is not None or not config.external_words:
        plan = plan_memory(config, placement)
        return plan, emit(plan)
    try:
        plan = plan_memory(config)
        best = (port_bound_cycles(config, emit(plan)), plan)
    except FitError as e:                # first fit needs more external words than another placement may
        best, refusal = None, e
    # the reads per tensor of the first-fit program (its addresses do not depend on the external capacity)
    room = min((1 << ADDR_BITS) - config.data_words,
               (1 << ADDR_BITS) - config.external_weight_words - config.external_sum_words)
    plan = plan_memory(config.replace(external_words=room))
    if not plan.usage["external"][0] and not plan.usage.get("external errors", (0,))[0]:
        # nothing spills: first fit placed it all on chip
        return best[1], emit(best[1])
    reads = tensor_reads(plan, emit(plan), config.lanes)
    sizes = {t.name: t.words for t in plan.tensors()}
    by_density = tuple(sorted(reads, key=lambda n: (-reads[n] / sizes[n], n)))
    whole = plan_memory(config.replace(external_words=room), Placement(by_density))
    for memory in ("act", "err"):
        names = {t.name for t in whole.tensors(memory)}
        spilled = [n for n in by_density if n in names and whole.base(n) >= config.data_words]
        if not spilled:
            continue
        for first in (False, True) if straddle_first else (False,):
            try:
                trial = plan_memory(config, Placement(by_density, straddle=spilled[0], straddle_first=first))
            except FitError:
                continue
            cost = port_bound_cycles(config, emit(trial))
            if best is None or cost < best[0]:
                best = (cost, trial)
    if best is None:
        raise refusal
    return best[1], emit(best[1])


# ---- instructions of fully connected layers (shared with hw.engine.conv) ------------------------

def fc_forward(wage: WageConfig, layer, x: MapLayout, w: WeightLayout, a: MapLayout, lanes: int,
               batch: int | None = None) -> Instruction:
    """FWD: tiles (sample block t1, output block t2), reduction over the input words, both transposed;
    ``batch`` images from ``x.base`` and ``a.base`` (default: the whole batch)."""
    L, batch = lanes, batch or wage.batch_size
    bt, wpr, ow = -(-batch // L), w.words_per_row, -(-layer.out_channels // L)
    return Instruction(
        Op.FWD, layer=layer.index, relu=int(not layer.last), shift=wage.act_shift(layer), qcount=bt * ow * L * L,
        a=AddressPattern(x.base, s1=L * wpr, sk=1, sr=wpr, n1=bt, n2=ow, nk=wpr, nr=L, lim=batch,
                         row_sel=RowSel.T1),
        b=AddressPattern(w.base, s2=L * wpr, sk=1, sr=wpr, n1=bt, n2=ow, nk=wpr, nr=L,
                         lim=layer.out_channels, row_sel=RowSel.T2),
        out=AddressPattern(a.base, s1=L * ow, s2=1, sr=ow, n1=bt, n2=ow, nr=L, lim=batch, row_sel=RowSel.T1))


def loss(wage: WageConfig, a_last: MapLayout, e_last: MapLayout, lanes: int) -> Instruction:
    """LOSS: every output word read twice (aux), D = A − 2^(kA−1)·onehot → Q_E → × sat → E."""
    batch, ow = wage.batch_size, a_last.words_per_position
    return Instruction(Op.LOSS, layer=wage.layers[-1].index, qcount=batch * ow * lanes,
                       onehot=1 << (wage.kA - 1),
                       aux=AddressPattern(a_last.base, s1=ow, s2=1, n1=batch, n2=ow),
                       out=AddressPattern(e_last.base, s1=ow, s2=1, n1=batch, n2=ow))


def fc_error(wage: WageConfig, layer, e: MapLayout, w: WeightLayout, e_prev: MapLayout, a_prev: MapLayout,
             lanes: int) -> Instruction:
    """ERR: tiles (sample block, input block), reduction over the outputs (E transposed, Wq rows direct)."""
    L, batch = lanes, wage.batch_size
    bt, wpr, ow = -(-batch // L), w.words_per_row, e.words_per_position
    rows = dict(s1=L * wpr, s2=1, sr=wpr, n1=bt, n2=wpr, nr=L, lim=batch, row_sel=RowSel.T1)
    return Instruction(
        Op.ERR, layer=layer.index, qcount=bt * wpr * L * L,
        a=AddressPattern(e.base, s1=L * ow, sk=1, sr=ow, n1=bt, n2=wpr, nk=ow, nr=L, lim=batch, row_sel=RowSel.T1),
        b=AddressPattern(w.base, s2=1, sk=wpr, n1=bt, n2=wpr, nk=ow * L, klim=layer.out_channels),
        out=AddressPattern(e_prev.base, **rows), aux=AddressPattern(a_prev.base, **rows))


def fc_draw(out: AddressPattern, wbase: int, lanes: int, layer: int) -> AddressPattern:
    """The draw pattern of a fully connected GRAD whose result words ``out`` land in a layer stored
    from ``wbase``: the word at address a holds weights (a − wbase)·L … (fan-in a multiple of L), so
    the draw index walks ``out`` rebased to 0 and scaled by L."""
    fields = dict(base=(out.base - wbase) * lanes, s1=out.s1 * lanes, s2=out.s2 * lanes, sk=out.sk * lanes,
                  sr=out.sr * lanes, n1=out.n1, n2=out.n2, nk=out.nk, nr=out.nr, lim=out.lim, klim=out.klim,
                  row_sel=out.row_sel)
    for name in ("base", "s1", "s2", "sk", "sr"):
        if not 0 <= fields[name] < 1 << ADDR_BITS:
            raise IsaError(f"GRAD layer {layer}: draw pattern field {name}={fields[name]} (the result "
                           f"pattern's, times lanes={lanes}) does not fit {ADDR_BITS} bits")
    return AddressPattern(**fields)


def fc_gradient(wage: WageConfig, layer, e: MapLayout, x: MapLayout, w: WeightLayout, lanes: int) -> Instruction:
    """GRAD: tiles (output block, input word), reduction over the batch, both operands direct."""
    L, batch = lanes, wage.batch_size
    wpr, ow = w.words_per_row, e.words_per_position
    out = AddressPattern(w.base, s1=L * wpr, s2=1, sr=wpr, n1=ow, n2=wpr, nr=L, lim=layer.out_channels,
                         row_sel=RowSel.T1)
    return Instruction(
        Op.GRAD, layer=layer.index, qcount=ow * wpr * L * L,
        a=AddressPattern(e.base, s1=1, sk=ow, n1=ow, n2=wpr, nk=batch),
        b=AddressPattern(x.base, s2=1, sk=wpr, n1=ow, n2=wpr, nk=batch),
        out=out, draw=fc_draw(out, w.base, L, layer.index))


def compile_network(config: EngineConfig, placement: Placement | None = None) -> Program:
    """Plan the memories and emit one training step's instructions (see the module docstring); a
    network with convolutions goes to :func:`hw.engine.conv.compile_conv_network`. ``placement``:
    as :func:`choose_placement` (None: chosen by port-bound cycles)."""
    if any(layer.kind == "conv" for layer in config.wage.layers):
        from .conv import compile_conv_network               # conv builds on this module
        return compile_conv_network(config, placement)
    _check_supported(config)
    wage, L = config.wage, config.lanes

    def emit(plan: MemoryPlan) -> list:
        ins: list[Instruction] = []
        for layer in wage.layers:
            i = layer.index
            ins.append(fc_forward(wage, layer, plan.layer_input(i), plan.weights[i], plan.activations[i], L))
        ins.append(loss(wage, plan.activations[-1], plan.errors[-1], L))
        for layer in reversed(wage.layers):
            i = layer.index
            if i > 0:
                ins.append(fc_error(wage, layer, plan.errors[i], plan.weights[i], plan.errors[i - 1],
                                    plan.activations[i - 1], L))
            ins.append(fc_gradient(wage, layer, plan.errors[i], plan.layer_input(i), plan.weights[i], L))
        ins.append(Instruction(Op.END))
        return choose_store_then_quantise(config, ins)

    # (a straddler may take every free word here; the convolution compiler chooses its placement
    # before it stages operands and bands its products in the free words, so it does not offer that:
    # on LeNet-5 b128 over the SDRAM such a placement looked cheaper unstaged and cost 2.6 times as
    # many cycles staged)
    plan, ins = choose_placement(config, emit, placement, straddle_first=True)
    check_program_fits(config, ins)
    return Program(config, ins, plan.inputs, plan.activations, plan.errors, plan.weights, plan.usage, plan.straddled)


def two_pass_products() -> tuple[int, ...]:
    """Opcodes (isa and conv) of the products whose results Q_E or Q_G quantise: two passes."""
    from .conv import ConvOp                              # conv builds on this module
    return (Op.ERR, Op.GRAD, ConvOp.CONV_ERR, ConvOp.CONV_GRAD)


def result_rows(ins, lanes: int) -> int:
    """Result rows (words of L sums) of one pass of an instruction: what store-then-quantise keeps."""
    return ins.qcount // lanes


def choose_store_then_quantise(config: EngineConfig, instructions: list) -> list:
    """``instructions`` with ``stored`` set on the error and gradient products that store their
    sums: STORE_CHIP where the result rows fit the sum buffer (``config.sum_words``), else
    STORE_EXTERNAL where they fit the external sums and the product's operand beats outnumber the
    external words moved (2 · rows · ``config.sum_chunks``); the rest compute twice (module docstring).
    (Weighing the words at the memory's cycles per word instead was measured worse: the MLP's
    first-layer gradient over the SDRAM took 3.60 M cycles computed twice against 2.84 M storing
    its 150,528 words of sums.)"""
    chosen = []
    for ins in instructions:
        if ins.op in two_pass_products():
            rows = result_rows(ins, config.lanes)
            a = ins.a
            if rows <= config.sum_words:
                ins = dataclasses.replace(ins, stored=STORE_CHIP)
            elif (config.external_sum_words and rows <= config.external_sum_rows
                  and a.n1 * a.n2 * a.nk * a.nr > 2 * rows * config.sum_chunks):
                ins = dataclasses.replace(ins, stored=STORE_EXTERNAL)
        chosen.append(ins)
    return chosen


def array_beats(program: Program) -> int:
    """Operand pairs the array takes in one training step — what the engine's ``array_beats``
    counter counts (tested equal): each product's operand pattern walked once for a forward
    product or a store-then-quantise one, twice for a compute-twice error or gradient product. With
    the array busy in 98 % of a fully connected step's cycles (measured), it predicts cycles per step."""
    from .conv import PART_FINISH, ConvOp
    two_pass = two_pass_products()
    products = (Op.FWD, ConvOp.CONV_FWD) + two_pass
    beats = 0
    for ins in program.instructions:
        if ins.op in products and getattr(ins, "part", 0) != PART_FINISH:     # a finish record has no product
            a = ins.a
            twice = ins.op in two_pass and not ins.stored
            beats += a.n1 * a.n2 * a.nk * a.nr * (2 if twice else 1)
    return beats
