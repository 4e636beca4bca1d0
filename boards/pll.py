"""The ECP5 PLL (EHXPLLL): divider search and the instance, from a board oscillator to the engine clock.

:func:`ecp5_pll_params` chooses the dividers the way Project Trellis's ``ecppll`` does (same ranges,
same search order, ties broken toward a 600 MHz VCO), so ``yowasp-ecppll -i F_IN -o F_OUT`` gives
the same output frequency (tested; where two divider sets tie exactly, ecppll's single-precision
arithmetic may pick the other one): the output is ``f_in / clki_div · clkfb_div`` with the feedback taken
from CLKOP, and the VCO runs at ``f_out · clkop_div``. A second output (CLKOS, ``f_out2_mhz``) is
``f_vco / clkos_div``: among the divider sets that make the first output as closely, the search
keeps the one that makes the second closest (then the VCO nearest 600 MHz). Limits (ECP5 sysCLOCK guide, as in ecppll):
input 8–400 MHz, phase detector 3.125–400 MHz, VCO 400–800 MHz, output 3.125–400 MHz.

:class:`ECP5PLL` instantiates EHXPLLL with those dividers and exposes ``clk_out`` (``clk_out2``
with a second output) and ``locked``; both outputs in phase, as ecppll writes them.
"""

from __future__ import annotations

from dataclasses import dataclass

from amaranth.hdl import Const, Instance, Module
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["PllError", "PllParams", "ecp5_pll_params", "ECP5PLL"]

INPUT_MHZ = (8.0, 400.0)
PFD_MHZ = (3.125, 400.0)
VCO_MHZ = (400.0, 800.0)
OUTPUT_MHZ = (3.125, 400.0)
CLKI_DIV_MAX, CLKFB_DIV_MAX, CLKOP_DIV_MAX = 128, 80, 128


class PllError(ValueError):
    """A PLL frequency cannot be made; the message names it and the range."""


@dataclass(frozen=True)
class PllParams:
    """EHXPLLL dividers and the frequencies they give (MHz)."""
    f_in_mhz: float
    f_out_mhz: float            # what the dividers produce (the request rounded to the nearest)
    f_vco_mhz: float
    clki_div: int
    clkfb_div: int
    clkop_div: int
    clkos_div: int | None = None            # the second output's divider, None: no second output
    f_out2_mhz: float | None = None

    @property
    def clkop_cphase(self) -> int:
        # Zero phase with CLKOP as its own feedback: half the output divider (as ecppll writes it).
        return self.clkop_div // 2


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise PllError(f"{name}={value!r}: must be a number (MHz)")
    return float(value)


def ecp5_pll_params(f_in_mhz: float, f_out_mhz: float, f_out2_mhz: float | None = None) -> PllParams:
    """Dividers for ``f_out_mhz`` (and ``f_out2_mhz`` on the second output, if given) from
    ``f_in_mhz`` (nearest achievable; see the module docstring)."""
    f_in, f_out = _number("f_in_mhz", f_in_mhz), _number("f_out_mhz", f_out_mhz)
    f_out2 = None if f_out2_mhz is None else _number("f_out2_mhz", f_out2_mhz)
    if not INPUT_MHZ[0] <= f_in <= INPUT_MHZ[1]:
        raise PllError(f"f_in_mhz={f_in_mhz!r}: the ECP5 PLL takes {INPUT_MHZ[0]:g}–{INPUT_MHZ[1]:g} MHz")
    for name, value, f in (("f_out_mhz", f_out_mhz, f_out), ("f_out2_mhz", f_out2_mhz, f_out2)):
        if f is not None and not OUTPUT_MHZ[0] <= f <= OUTPUT_MHZ[1]:
            raise PllError(f"{name}={value!r}: the ECP5 PLL makes {OUTPUT_MHZ[0]:g}–{OUTPUT_MHZ[1]:g} MHz")
    # ecppll's order and test (nearest output, ties toward a 600 MHz VCO, the first of exact ties),
    # with the second output's error between the two
    best, best_key = None, None
    for clki_div in range(1, CLKI_DIV_MAX + 1):
        pfd = f_in / clki_div
        if not PFD_MHZ[0] <= pfd <= PFD_MHZ[1]:
            continue
        for clkfb_div in range(1, CLKFB_DIV_MAX + 1):
            for clkop_div in range(1, CLKOP_DIV_MAX + 1):
                vco = pfd * clkfb_div * clkop_div
                if not VCO_MHZ[0] <= vco <= VCO_MHZ[1]:
                    continue
                clkos_div = None if f_out2 is None else min(max(round(vco / f_out2), 1), CLKOP_DIV_MAX)
                error2 = 0.0 if f_out2 is None else abs(vco / clkos_div - f_out2)
                key = (abs(vco / clkop_div - f_out), error2, abs(vco - 600))
                if best_key is None or key < best_key:
                    best_key = key
                    best = PllParams(f_in, vco / clkop_div, vco, clki_div, clkfb_div, clkop_div, clkos_div,
                                     None if f_out2 is None else vco / clkos_div)
    assert best is not None        # every output in range has some divider set
    return best


class ECP5PLL(wiring.Component):
    """EHXPLLL from ``clk_in`` (``f_in_mhz``) to ``clk_out`` (nearest to ``f_out_mhz``) and, given
    ``f_out2_mhz``, ``clk_out2`` (:attr:`params`)."""

    def __init__(self, f_in_mhz: float, f_out_mhz: float, f_out2_mhz: float | None = None):
        self.params = ecp5_pll_params(f_in_mhz, f_out_mhz, f_out2_mhz)
        super().__init__({"clk_in": In(1), "clk_out": Out(1), "locked": Out(1),
                          **({} if f_out2_mhz is None else {"clk_out2": Out(1)})})

    def elaborate(self, platform):
        m = Module()
        p = self.params
        m.submodules.pll = Instance(
            "EHXPLLL",
            a_FREQUENCY_PIN_CLKI=f"{p.f_in_mhz:g}", a_FREQUENCY_PIN_CLKOP=f"{p.f_out_mhz:.4f}",
            a_ICP_CURRENT="12", a_LPF_RESISTOR="8", a_MFG_ENABLE_FILTEROPAMP="1", a_MFG_GMCREF_SEL="2",
            p_PLLRST_ENA="DISABLED", p_INTFB_WAKE="DISABLED", p_STDBY_ENABLE="DISABLED",
            p_DPHASE_SOURCE="DISABLED", p_OUTDIVIDER_MUXA="DIVA", p_OUTDIVIDER_MUXB="DIVB",
            p_OUTDIVIDER_MUXC="DIVC", p_OUTDIVIDER_MUXD="DIVD",
            p_CLKI_DIV=p.clki_div, p_CLKOP_ENABLE="ENABLED", p_CLKOP_DIV=p.clkop_div,
            p_CLKOP_CPHASE=p.clkop_cphase, p_CLKOP_FPHASE=0, p_FEEDBK_PATH="CLKOP", p_CLKFB_DIV=p.clkfb_div,
            i_RST=Const(0), i_STDBY=Const(0), i_CLKI=self.clk_in, o_CLKOP=self.clk_out, i_CLKFB=self.clk_out,
            i_PHASESEL0=Const(0), i_PHASESEL1=Const(0), i_PHASEDIR=Const(1), i_PHASESTEP=Const(1),
            i_PHASELOADREG=Const(1), i_PLLWAKESYNC=Const(0), i_ENCLKOP=Const(0), o_LOCK=self.locked,
            **({} if p.clkos_div is None else dict(
                a_FREQUENCY_PIN_CLKOS=f"{p.f_out2_mhz:.4f}", p_CLKOS_ENABLE="ENABLED", p_CLKOS_DIV=p.clkos_div,
                p_CLKOS_CPHASE=p.clkop_cphase, p_CLKOS_FPHASE=0, i_ENCLKOS=Const(0), o_CLKOS=self.clk_out2)))
        return m
