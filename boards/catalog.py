"""The boards the engine is built for: their platforms, variants, pins and default engine sizes.

A :class:`Board` names an amaranth-boards platform class per FPGA variant, which of its resources
are the reset button, the status LEDs and the host serial port, and the engine configuration that
fits each variant (:meth:`Board.default_config`). ``python -m hw.build`` reads :data:`BOARDS`;
:func:`get_board` and :meth:`Board.platform` refuse unknown names with the supported ones listed.

Default engine per variant (block RAM only, ``external_words`` 0: a network that fits on chip runs
at block-RAM speed; the SDRAM engine below, or a ``--config`` with external words, gets the SDRAM
controller on a board that has SDR SDRAM, :attr:`Board.sdram`, i.e. the ULX3S). A variant's
default is the largest network of the golden presets that fits its block RAM and LUTs with a square
array whose int8 multipliers fit its MULT18X18D:

======  ====================  =====  =========================================================
part    network (batch)       lanes  block RAM words (data / weights)
======  ====================  =====  =========================================================
85F     ``mlp`` (16)          8      2560 / 25600 (141 of 208 DP16KD, 64 MULT18X18D)
45F     ``64FC-10`` (16)      4      4096 / 12800
25F     ``32FC-10`` (8)       4      2048 / 6400
12F     ``32FC-10`` (8)       4      2048 / 6400 (does not fit: see below)
======  ====================  =====  =========================================================

The SDRAM engine (:data:`SDRAM_ENGINES`, ``default_config(variant, memory="sdram")``, ``python -m
hw.build --memory sdram``) exists for the ULX3S 85F: the same ``mlp`` (16) network on the same 8-lane
array with 1024 / 1024 words of block RAM and 4096 data / 32768 weight words in the SDR SDRAM, built
at :data:`SDRAM_FREQ_MHZ` (40 MHz; 46.7 MHz measured, 50 MHz not met).

The 85F's 8-lane engine is mapped with classic ``abc`` (:data:`hw.build.LUT_MAPPERS`): YoWASP
yosys's ``abc9`` does not get through it (a "call stack exhausted" trap in ``Nwk_ManPushBackward`` at
its default WebAssembly stack; still running after 25 minutes with :mod:`hw.bigstack`'s 192 MiB
stack), classic abc maps it in about 90 s. Built with the flow, seed 1: 62.1 MHz, 28.5k LUT4 slots,
29.1k flip-flops, 141 DP16KD, 64 MULT18X18D (20 min). A 16-lane engine needs 256 MULT18X18D.

A 4-lane engine for a network without convolution takes about 17.6k LUT4 slots and 18.5k flip-flops
(measured, ``tests/test_hw_build.py``'s configuration): more than the 12F has (12k), so a 12F build
stops at placement with the shortfall named.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from golden.config import WageConfig
from hw.engine.config import EngineConfig

__all__ = ["Board", "BoardError", "BOARDS", "get_board", "MEMORIES", "VARIANT_ENGINES", "SDRAM_ENGINES",
           "SDRAM_FREQ_MHZ"]


class BoardError(ValueError):
    """An unknown board or variant; the message lists the supported ones."""


def _mlp(net: str, batch: int) -> WageConfig:
    return WageConfig(net=net, batch_size=batch, input_shape=None if net == "mlp" else (1, 28, 28))


#: Part (device size) → default engine configuration (see the module docstring).
VARIANT_ENGINES: dict[str, EngineConfig] = {
    "85F": EngineConfig(_mlp("mlp", 16), lanes=8, data_words=2560, weight_words=25600, target="ecp5"),
    "45F": EngineConfig(_mlp("64FC-10", 16), lanes=4, data_words=4096, weight_words=12800, target="ecp5"),
    "25F": EngineConfig(_mlp("32FC-10", 8), lanes=4, data_words=2048, weight_words=6400, target="ecp5"),
    "12F": EngineConfig(_mlp("32FC-10", 8), lanes=4, data_words=2048, weight_words=6400, target="ecp5"),
}

#: Part → the engine with its big tensors in the board's SDR SDRAM: the variant's network and array
#: with 1,024-word scratchpads and weight store on chip, 4,096 data words and 32,768 weight words
#: in the SDRAM (the MLP's 25,408 weight words live there). Built at :data:`SDRAM_FREQ_MHZ`
#: (46.7 MHz measured on the ULX3S 85F; 50 MHz was not met).
SDRAM_ENGINES: dict[str, EngineConfig] = {
    "85F": VARIANT_ENGINES["85F"].replace(data_words=1024, weight_words=1024, external_words=4096,
                                          external_weight_words=32768, external_cycles_per_word=7),
}
#: (``external_cycles_per_word``: what the compiler's staging choices assume of the SDRAM at 8
#: lanes, a 96-bit word in 6 columns plus row changes and refresh: LeNet-5's batch-128 gradient
#: phase moved 10.0 M words in 71.4 M cycles on the SDRAM model.)
SDRAM_FREQ_MHZ = 40.0

#: Where a default engine keeps its tensors: ``"bram"`` (:data:`VARIANT_ENGINES`, all on chip) or
#: ``"sdram"`` (:data:`SDRAM_ENGINES`, the big tensors in the board's SDR SDRAM).
MEMORIES = ("bram", "sdram")


@dataclass(frozen=True)
class Board:
    """One board: ``variants`` maps a variant name (``"85F"``) to ``"module:PlatformClass"`` in
    amaranth_boards. ``clock``: the oscillator resource; ``reset``: the reset button resource (or
    None); ``leds``: (resource name, count, subsignals) — subsignals () for single LEDs, else the
    colour subsignals of RGB LEDs, each one a status bit; ``uart``: the host serial port resource.
    ``programmer``: openFPGALoader's ``-b`` board name."""
    name: str
    description: str
    variants: dict[str, str]
    default_variant: str
    clock: str
    reset: str | None
    leds: tuple[str, int, tuple[str, ...]]
    uart: str = "uart"
    sdram: str | None = None          # the SDR SDRAM resource (the engine's external memory), if any
    programmer: str = ""
    max_baud: int = 3_000_000
    notes: tuple[str, ...] = field(default_factory=tuple)

    def check_variant(self, variant: str | None) -> str:
        variant = self.default_variant if variant is None else str(variant).upper()
        if variant not in self.variants:
            raise BoardError(f"variant={variant!r}: board {self.name!r} comes as "
                             f"{', '.join(self.variants)} (default {self.default_variant})")
        return variant

    def platform(self, variant: str | None = None, **kwargs):
        """An instance of the amaranth-boards platform of ``variant`` (toolchain Trellis)."""
        variant = self.check_variant(variant)
        module, cls = self.variants[variant].split(":")
        platform = getattr(importlib.import_module(f"amaranth_boards.{module}"), cls)(toolchain="Trellis", **kwargs)
        return platform

    def part(self, variant: str | None = None) -> str:
        """The device size of ``variant`` ("85F", "45F", ...), the key of :data:`VARIANT_ENGINES`."""
        device = self.platform(variant).device            # e.g. LFE5U-85F, LFE5UM5G-45F
        return device.rsplit("-", 1)[1]

    def default_config(self, variant: str | None = None, memory: str = "bram") -> EngineConfig:
        """The default engine of ``variant``: ``memory="bram"`` the all-on-chip one
        (:data:`VARIANT_ENGINES`), ``"sdram"`` the one with its big tensors in the board's SDR SDRAM
        (:data:`SDRAM_ENGINES`). Raises :class:`BoardError` for an unknown memory, a board without
        SDRAM, or a part that has no SDRAM engine."""
        if memory not in MEMORIES:
            raise BoardError(f"memory={memory!r}: must be one of {', '.join(MEMORIES)}")
        variant = self.check_variant(variant)
        part = self.part(variant)
        if memory == "bram":
            return VARIANT_ENGINES[part]
        if self.sdram is None:
            raise BoardError(f"memory='sdram': board {self.name!r} has no SDR SDRAM; use memory 'bram' "
                             f"(the engine on chip)")
        if part not in SDRAM_ENGINES:
            parts = [v for v in self.variants if self.part(v) in SDRAM_ENGINES]
            raise BoardError(f"memory='sdram': the {self.name} {variant} has no SDRAM engine; parts with one: "
                             f"{', '.join(parts) or 'none'}")
        return SDRAM_ENGINES[part]


BOARDS: dict[str, Board] = {
    "ulx3s": Board(
        name="ulx3s", description="Radiona ULX3S (LFE5U, 25 MHz oscillator, FTDI serial, 32 MB SDRAM)",
        variants={"12F": "ulx3s:ULX3S_12F_Platform", "25F": "ulx3s:ULX3S_25F_Platform",
                  "45F": "ulx3s:ULX3S_45F_Platform", "85F": "ulx3s:ULX3S_85F_Platform"},
        default_variant="85F", clock="clk25", reset="button_fire", leds=("led", 8, ()),
        sdram="sdram", programmer="ulx3s"),
    "ecpix5": Board(
        name="ecpix5", description="LambdaConcept ECPIX-5 (LFE5UM5G, 100 MHz oscillator, FTDI serial)",
        variants={"45F": "ecpix5:ECPIX545Platform", "85F": "ecpix5:ECPIX585Platform"},
        default_variant="85F", clock="clk100", reset="rst", leds=("rgb_led", 4, ("r", "g", "b")),
        programmer="ecpix5"),
}


def get_board(name: str) -> Board:
    key = str(name).strip().lower()
    if key not in BOARDS:
        raise BoardError(f"board={name!r}: unknown; supported: {', '.join(BOARDS)}")
    return BOARDS[key]
