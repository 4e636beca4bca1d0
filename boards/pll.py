"""The ECP5 PLL (EHXPLLL): divider search and the instance, from a board oscillator to the engine clock.

:func:`ecp5_pll_params` chooses the dividers the way Project Trellis's ``ecppll`` does (same ranges,
same search order, ties broken toward a 600 MHz VCO), so ``yowasp-ecppll -i F_IN -o F_OUT`` gives
the same output frequency (tested; where two divider sets tie exactly, ecppll's single-precision
arithmetic may pick the other one): the output is ``f_in / clki_div · clkfb_div`` with the feedback taken
from CLKOP, and the VCO runs at ``f_out · clkop_div``. Limits (ECP5 sysCLOCK guide, as in ecppll):
input 8–400 MHz, phase detector 3.125–400 MHz, VCO 400–800 MHz, output 3.125–400 MHz.

:class:`ECP5PLL` instantiates EHXPLLL with those dividers and exposes ``clk_out`` and ``locked``.
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

    @property
    def clkop_cphase(self) -> int:
        # Zero phase with CLKOP as its own feedback: half the output divider (as ecppll writes it).
        return self.clkop_div // 2


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise PllError(f"{name}={value!r}: must be a number (MHz)")
    return float(value)


def ecp5_pll_params(f_in_mhz: float, f_out_mhz: float) -> PllParams:
    """Dividers for ``f_out_mhz`` from ``f_in_mhz`` (nearest achievable; see the module docstring)."""
    f_in, f_out = _number("f_in_mhz", f_in_mhz), _number("f_out_mhz", f_out_mhz)
    if not INPUT_MHZ[0] <= f_in <= INPUT_MHZ[1]:
        raise PllError(f"f_in_mhz={f_in_mhz!r}: the ECP5 PLL takes {INPUT_MHZ[0]:g}–{INPUT_MHZ[1]:g} MHz")
    if not OUTPUT_MHZ[0] <= f_out <= OUTPUT_MHZ[1]:
        raise PllError(f"f_out_mhz={f_out_mhz!r}: the ECP5 PLL makes {OUTPUT_MHZ[0]:g}–{OUTPUT_MHZ[1]:g} MHz")
    best, best_error = None, float("inf")
    for clki_div in range(1, CLKI_DIV_MAX + 1):
        pfd = f_in / clki_div
        if not PFD_MHZ[0] <= pfd <= PFD_MHZ[1]:
            continue
        for clkfb_div in range(1, CLKFB_DIV_MAX + 1):
            for clkop_div in range(1, CLKOP_DIV_MAX + 1):
                vco = pfd * clkfb_div * clkop_div
                if not VCO_MHZ[0] <= vco <= VCO_MHZ[1]:
                    continue
                out = vco / clkop_div
                error = abs(out - f_out)
                if error < best_error or (error == best_error and abs(vco - 600) < abs(best.f_vco_mhz - 600)):
                    best, best_error = PllParams(f_in, out, vco, clki_div, clkfb_div, clkop_div), error
    assert best is not None        # every output in range has some divider set
    return best


class ECP5PLL(wiring.Component):
    """EHXPLLL from ``clk_in`` (``f_in_mhz``) to ``clk_out`` (nearest to ``f_out_mhz``; :attr:`params`)."""

    def __init__(self, f_in_mhz: float, f_out_mhz: float):
        self.params = ecp5_pll_params(f_in_mhz, f_out_mhz)
        super().__init__({"clk_in": In(1), "clk_out": Out(1), "locked": Out(1)})

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
            i_PHASELOADREG=Const(1), i_PLLWAKESYNC=Const(0), i_ENCLKOP=Const(0), o_LOCK=self.locked)
        return m
