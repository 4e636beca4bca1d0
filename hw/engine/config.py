"""The engine's one frozen configuration: network, array, scratchpads (validated here, read by all).

:class:`EngineConfig` wraps the :class:`golden.config.WageConfig` (bit widths, network, batch,
seed) and adds what only the hardware needs. RTL generators, the compiler, the reference engine,
the driver and the tests all read the same object, so a size is never decided twice.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

from golden.config import ConfigError, WageConfig
from golden.prng import draw_lanes

__all__ = ["EngineConfig", "EngineConfigError", "TARGETS"]

TARGETS = ("generic", "ecp5")


class EngineConfigError(ValueError):
    """An engine parameter is out of range or inconsistent; the message names it."""


def _positive_int(name: str, value, low: int = 1, high: int = 2**31) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise EngineConfigError(f"{name}={value!r}: must be an integer in {low}..{high}")
    return value


@dataclass(frozen=True)
class EngineConfig:
    """Frozen engine configuration.

    ``lanes`` (L): elements per scratchpad word and the side of the square systolic array. Tensors
    are stored channels-last in words of L channels (:mod:`hw.engine.layout`), the array is L×L,
    and the quantiser takes one word (L lanes) per cycle. A power of two in 4..64, and a multiple
    of the draws one hash yields (:func:`golden.prng.draw_lanes`), so that a gradient word whose
    first element index is a multiple of L needs whole hashes.

    ``data_words``: depth of the data scratchpad (activations with their ReLU/saturation masks and
    pool indices, errors, the input batch). ``weight_words``: depth of the weight store (L stored
    weights per word). ``label_words``: labels held on chip (one per sample). ``program_words``:
    32-bit words of program memory (delta records, :func:`hw.engine.encoding.encode_program`). A network whose
    tensors do not fit is refused by :func:`hw.engine.compiler.compile_network` with the buffer and
    the shortfall named.

    ``fold_input``: when the first layer is a convolution whose input channels use its words
    poorly (⌈k²·C/L⌉ words of folded taps < k²·⌈C/L⌉ words of taps, e.g. C = 1), the host
    im2cols the network input: each product position gets its k²·C taps in its lanes
    (:class:`hw.engine.layout.TapMapLayout`), and the first layer runs as a 1×1 convolution over them
    — the same integers, 12.5× fewer array beats for LeNet-5's conv1 at L = 16, for
    B·Ho·Wo·⌈k²C/L⌉ input words instead of B·H·W·⌈C/L⌉ (:attr:`folds_input` says whether it applies).

    ``external_words``: words of external memory behind the external-memory port
    (:mod:`hw.engine.extport`; 0: no port is built). Data addresses ``data_words`` … ``data_words +
    external_words − 1`` are external words 0 …: the compiler places a tensor that does not fit its
    scratchpad there (activations and errors share the external memory; :attr:`data_space`; one
    tensor may straddle the boundary, :func:`hw.engine.compiler.choose_placement`), and
    the engine reads and writes it through the port, in place. An external word is
    :attr:`external_width` bits (one activation word; an error word is zero-extended).
    ``external_weight_words``: likewise for stored weights: weight addresses ``weight_words`` …
    (:attr:`weight_space`) are external words ``external_words`` … (the weights' region follows the
    data's; :mod:`hw.engine.weight_store`); the first layer that does not fit the weight store
    straddles its boundary (:func:`hw.engine.compiler.plan_memory`). The external memory holds :attr:`external_depth` words.
    ``external_error_words``: the last words of the data's external region hold error tensors only
    (0: none): the compiler places every error tensor that spills whole there and no activation,
    so their words carry 8·L bits and the rest read as 0 (an error word is zero-extended anyway),
    which lets a memory keep them narrow (:func:`boards.sdram.engine_sdram`: 4 SDRAM columns a
    word instead of 6 at 8 lanes, like the stored weights that follow them).

    ``sum_words``: depth of the sum buffer (0: none), which makes error and gradient products
    *store-then-quantise* instead of compute-twice. Q_E and Q_G need the whole tensor's maximum
    before they can emit an element; without the buffer the engine runs such a product twice (pass 1
    finds the maximum, pass 2 emits), which wastes half of its array time. With it, pass 1 also
    writes every result row, L accumulator-width sums (:attr:`sum_width` bits), to the buffer, and
    pass 2 reads them back instead of running the array again. The compiler chooses per
    instruction (:func:`hw.engine.compiler.choose_store_then_quantise`): an instruction whose result
    rows fit stores, the rest compute twice; the results are the same integers either way.
    ``external_sum_words``: external words for the sums of products whose rows do not fit the sum
    buffer (the external memory's third region, after the data's and the weights'): a row takes
    :attr:`sum_chunks` consecutive external words, so such a product stores when its rows fit
    there and its operand beats outnumber the words moved (its sums through the port cost less
    than its array pass).

    ``external_cycles_per_word``: the cycles per word the memory behind the port sustains, for the
    compiler's cost model only (:func:`hw.engine.compiler.port_bound_cycles`): 1 for a memory that
    keeps up with the port, 7 for the ULX3S's 16-bit SDRAM at 8 lanes (a 96-bit word is 6 column
    cycles, plus row changes and refresh: LeNet-5's b128 gradient phase took 71.4 M cycles for
    10.0 M words read). Where the array's beats outrun the memory it
    weighs staging a spilled operand on chip (more program records, coarser parts) against reading
    it through the port; the hardware is the same either way.

    ``target``: "generic" (simulation; data and weight memories up to 2^20 words) or "ecp5"
    (MULT18X18D and DP16KD instances; memories deeper than a DP16KD column are split into banks,
    :func:`hw.bram.bank_depths`). Either way data and weight memories hold up to 2^20 words.
    """
    wage: WageConfig
    lanes: int = 16
    data_words: int = 4096
    weight_words: int = 16384
    label_words: int = 256
    program_words: int = 4096
    fold_input: bool = True
    external_words: int = 0
    external_weight_words: int = 0
    external_error_words: int = 0
    sum_words: int = 0
    external_sum_words: int = 0
    external_cycles_per_word: int = 1
    target: str = "generic"

    def __post_init__(self):
        if not isinstance(self.wage, WageConfig):
            raise EngineConfigError(f"wage={self.wage!r}: must be a golden.config.WageConfig")
        lanes = _positive_int("lanes", self.lanes, 4, 64)
        if lanes & (lanes - 1):
            raise EngineConfigError(f"lanes={lanes}: must be a power of two")
        # A power of two ≥ 4 is a multiple of the 2 or 4 draws one hash yields (draw_lanes).
        assert lanes % draw_lanes(self.wage.sr_bits) == 0
        if self.target not in TARGETS:
            raise EngineConfigError(f"target={self.target!r}: must be one of {', '.join(TARGETS)}")
        # Whether the block RAMs fit a given part is the build's question (hw.build names the shortfall).
        depth = 1 << 20
        for name in ("data_words", "weight_words"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= depth:
                raise EngineConfigError(f"{name}={value!r}: must be an integer in 1..{depth}")
        from .isa import ADDR_BITS
        room = (1 << ADDR_BITS) - self.data_words
        if not isinstance(self.external_words, int) or isinstance(self.external_words, bool) \
                or not 0 <= self.external_words <= room:
            raise EngineConfigError(f"external_words={self.external_words!r}: must be an integer in 0..{room} "
                                    f"(data_words + external_words ≤ 2^{ADDR_BITS} addresses)")
        room = (1 << ADDR_BITS) - self.weight_words
        if not isinstance(self.external_weight_words, int) or isinstance(self.external_weight_words, bool) \
                or not 0 <= self.external_weight_words <= room:
            raise EngineConfigError(f"external_weight_words={self.external_weight_words!r}: must be an integer in "
                                    f"0..{room} (weight_words + external_weight_words ≤ 2^{ADDR_BITS} addresses)")
        if self.external_words + self.external_weight_words > 1 << ADDR_BITS:
            raise EngineConfigError(f"external_words + external_weight_words = "
                                    f"{self.external_words + self.external_weight_words}: the external memory has at "
                                    f"most 2^{ADDR_BITS} words")
        if not isinstance(self.external_error_words, int) or isinstance(self.external_error_words, bool) \
                or not 0 <= self.external_error_words <= self.external_words:
            raise EngineConfigError(f"external_error_words={self.external_error_words!r}: must be an integer in "
                                    f"0..{self.external_words} (the last words of external_words)")
        if not isinstance(self.sum_words, int) or isinstance(self.sum_words, bool) \
                or not 0 <= self.sum_words <= depth:
            raise EngineConfigError(f"sum_words={self.sum_words!r}: must be an integer in 0..{depth}")
        if not isinstance(self.external_sum_words, int) or isinstance(self.external_sum_words, bool) \
                or not 0 <= self.external_sum_words <= 1 << ADDR_BITS:
            raise EngineConfigError(f"external_sum_words={self.external_sum_words!r}: must be an integer in "
                                    f"0..{1 << ADDR_BITS}")
        if self.external_sum_words and not self.external_words:
            raise EngineConfigError(f"external_sum_words={self.external_sum_words}: external sums need the "
                                    f"external-memory port, which is built with external_words > 0 (0 here)")
        if self.external_depth > 1 << ADDR_BITS:
            raise EngineConfigError(f"external_words + external_weight_words + external_sum_words = "
                                    f"{self.external_depth}: the external memory has at most 2^{ADDR_BITS} words")
        _positive_int("external_cycles_per_word", self.external_cycles_per_word, 1, 1024)
        _positive_int("label_words", self.label_words, 1, 1 << 20)
        _positive_int("program_words", self.program_words, 1, 1 << 16)
        if not isinstance(self.fold_input, bool):
            raise EngineConfigError(f"fold_input={self.fold_input!r}: must be True or False")

    @property
    def batch(self) -> int:
        return self.wage.batch_size

    @property
    def data_space(self) -> int:
        """Data addresses: the scratchpad words, then the external ones."""
        return self.data_words + self.external_words

    @property
    def weight_space(self) -> int:
        """Weight addresses: the weight store's words, then the external ones."""
        return self.weight_words + self.external_weight_words

    @property
    def external_error_base(self) -> int:
        """External word of the error region's first word (the data region's last
        ``external_error_words``)."""
        return self.external_words - self.external_error_words

    @property
    def external_depth(self) -> int:
        """Words of the external memory (0: the engine has no external-memory port): the data's,
        the weights' and the sums' regions, in that order."""
        return self.external_words + self.external_weight_words + self.external_sum_words

    @property
    def external_sum_base(self) -> int:
        """External word of the sums' region's first word."""
        return self.external_words + self.external_weight_words

    @property
    def sum_chunks(self) -> int:
        """External words per stored result row (:attr:`sum_width` bits)."""
        return -(-self.sum_width // self.external_width)

    @property
    def external_sum_rows(self) -> int:
        """Result rows the external sums' region holds."""
        return self.external_sum_words // self.sum_chunks

    @property
    def external_width(self) -> int:
        """Bits per external word: one activation word (12 bits per lane, :mod:`hw.engine.protocol`)."""
        return 12 * self.lanes

    @property
    def has_conv(self) -> bool:
        """Whether the network has a convolution: without one the engine leaves its convolution
        address generators out (:class:`~hw.engine.slot.SlotGenerator`) and refuses conv instructions."""
        return any(layer.kind == "conv" for layer in self.wage.layers)

    @functools.cached_property
    def slot_digits(self) -> dict[str, tuple[int, int]]:
        """Per pattern slot (:data:`hw.engine.encoding.SLOTS`), the (pos, tap) odometer digits its
        convolution walk is built with: the most any instruction of the compiled training step uses
        (first fit and the compiler's own placement), at least 1. With the full
        :data:`~hw.engine.conv.MAX_DIGITS` each, the five slots were 40 % of the 8-lane LeNet-5
        engine's LUTs; the unused digits alone were 6.6k of them. A network that does not compile
        gets MAX_DIGITS everywhere. The engine refuses a record whose pattern needs more
        (``BAD_INSTRUCTION``)."""
        from .compiler import FitError, Placement, UnsupportedNetwork, compile_network
        from .conv import MAX_DIGITS, ConvPattern
        from .encoding import SLOTS
        if not self.has_conv:
            return {name: (1, 1) for name in SLOTS}
        try:
            programs = [compile_network(self), compile_network(self, Placement())]
        except (FitError, UnsupportedNetwork):
            return {name: (MAX_DIGITS, MAX_DIGITS) for name in SLOTS}
        digits = {name: [1, 1] for name in SLOTS}
        for ins in (i for program in programs for i in program.instructions):
            for name in SLOTS:
                pattern = getattr(ins, name)
                if isinstance(pattern, ConvPattern):
                    d = digits[name]
                    d[0], d[1] = max(d[0], len(pattern.pos_radix)), max(d[1], len(pattern.tap_radix))
        return {name: tuple(d) for name, d in digits.items()}

    @property
    def folds_input(self) -> bool:
        """Whether the first layer runs on the host-im2col'd input (see ``fold_input``)."""
        first = self.wage.layers[0]
        if not self.fold_input or first.kind != "conv":
            return False
        L, taps, c = self.lanes, first.kernel * first.kernel, first.in_shape[0]
        return -(-taps * c // L) < taps * -(-c // L)

    @property
    def max_reduction(self) -> int:
        """Longest tile reduction of any product (the array's accumulators are sized from it):
        forward taps·⌈C/L⌉·L (fully connected: ⌈fan-in/L⌉·L), error taps·⌈O/L⌉·L, gradient every
        product position of the batch, B·Ho·Wo (fully connected: B)."""
        L = self.lanes
        k = 0
        for layer in self.wage.layers:
            taps = layer.kernel * layer.kernel if layer.kind == "conv" else 1
            channels = layer.in_shape[0] if layer.kind == "conv" else layer.fan_in
            k = max(k, taps * -(-channels // L) * L, taps * -(-layer.out_channels // L) * L,
                    self.batch * layer.out_positions)
        return k

    @property
    def accumulator_width(self) -> int:
        """Signed bits of the array's accumulators and result lanes (:class:`hw.mac_array.MacArray`
        sizes them from :attr:`max_reduction`; at least 10, what the quantiser takes)."""
        from hw.tiling import accumulator_bits, operand_width
        width = operand_width(self.wage)
        return max(accumulator_bits(width, width, self.max_reduction), 10)

    @property
    def sum_width(self) -> int:
        """Bits per sum-buffer word: one result row, L accumulator-width sums."""
        return self.lanes * self.accumulator_width

    def fingerprint(self) -> int:
        """A 32-bit CRC of every field (the WAGE config included): the engine reports the one it was
        built from (``IDENT``), so a driver can tell that its program was compiled for another build."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        fields["wage"] = self.wage.to_dict()
        return zlib.crc32(json.dumps(fields, sort_keys=True).encode())

    def replace(self, **changes) -> "EngineConfig":
        return dataclasses.replace(self, **changes)

    # ---- JSON round trip (``python -m hw.build --config FILE``) ----------------------------------
    def to_dict(self) -> dict:
        """Every field; ``wage`` as :meth:`golden.config.WageConfig.to_dict`."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["wage"] = self.wage.to_dict()
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict) -> "EngineConfig":
        """The inverse of :meth:`to_dict`; ``wage`` may be left out (the default WageConfig) and so
        may any other field. Unknown keys and bad values raise :class:`EngineConfigError` naming them."""
        if not isinstance(d, dict):
            raise EngineConfigError(f"engine configuration must be a JSON object, got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise EngineConfigError(f"unknown engine configuration keys {unknown}; known keys: {sorted(names)}")
        d = dict(d)
        try:
            d["wage"] = WageConfig.from_dict(d.get("wage", {}))
        except ConfigError as e:
            raise EngineConfigError(f"wage: {e}") from None
        return cls(**d)

    @classmethod
    def from_json(cls, text: str) -> "EngineConfig":
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise EngineConfigError(f"engine configuration is not valid JSON: {e}") from None
        return cls.from_dict(d)

    @classmethod
    def load(cls, path) -> "EngineConfig":
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise EngineConfigError(f"cannot read engine configuration file {path}: {e.strerror}") from None
        try:
            return cls.from_json(text)
        except EngineConfigError as e:
            raise EngineConfigError(f"{path}: {e}") from None

    def save(self, path) -> None:
        Path(path).write_text(self.to_json() + "\n")

    def summary(self) -> str:
        return (f"EngineConfig: {self.lanes}x{self.lanes} array, {self.data_words} data words, "
                f"{self.weight_words} weight words, {self.external_words} + {self.external_weight_words} external words"
                + (f" ({self.external_error_words} for errors)" if self.external_error_words else "")
                + f", {self.sum_words} sum words, {self.label_words} labels, target {self.target}; "
                + self.wage.summary().splitlines()[0])
