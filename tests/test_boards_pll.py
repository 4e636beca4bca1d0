"""boards.pll: the ECP5 PLL divider search, against Project Trellis's ecppll (yowasp-ecppll)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from amaranth.back import rtlil

from boards.pll import ECP5PLL, PllError, ecp5_pll_params


def _ecppll(f_in, f_out, tmp_path):
    tool = Path(sys.executable).parent / "yowasp-ecppll"
    if not tool.exists():
        tool = shutil.which("yowasp-ecppll")
        if tool is None:
            pytest.skip("yowasp-ecppll is not installed")
    out = subprocess.run([str(tool), "-i", str(f_in), "-o", str(f_out), "-f", str(tmp_path / "pll.v")],
                         capture_output=True, text=True, timeout=300, cwd=tmp_path)
    return float(re.search(r"clkout0 frequency: ([\d.]+) MHz", out.stdout).group(1))


@pytest.mark.parametrize("f_in, f_out", [(25, 50), (25, 37), (25, 133), (25, 166.7), (25, 77), (100, 150),
                                         (25, 3.2), (25, 400)])
def test_output_frequency_matches_ecppll(f_in, f_out, tmp_path):
    p = ecp5_pll_params(f_in, f_out)
    assert p.f_out_mhz == pytest.approx(_ecppll(f_in, f_out, tmp_path), abs=1e-3)
    assert p.f_out_mhz == pytest.approx(f_in / p.clki_div * p.clkfb_div)
    assert 400 <= p.f_vco_mhz <= 800 and p.f_vco_mhz == pytest.approx(p.f_out_mhz * p.clkop_div)


def test_exact_dividers_for_common_clocks():
    p = ecp5_pll_params(25, 50)
    assert (p.clki_div, p.clkfb_div, p.clkop_div, p.f_vco_mhz) == (1, 2, 12, 600.0)


@pytest.mark.parametrize("f_in, f_out, message", [
    (25, 500, "f_out_mhz=500: the ECP5 PLL makes 3.125–400 MHz"),
    (25, 1, "f_out_mhz=1"),
    (5, 50, "f_in_mhz=5: the ECP5 PLL takes 8–400 MHz"),
    (25, "fast", "f_out_mhz='fast': must be a number"),
    (25, True, "f_out_mhz=True"),
])
def test_out_of_range_is_named(f_in, f_out, message):
    with pytest.raises(PllError, match=message):
        ecp5_pll_params(f_in, f_out)


def test_instance_carries_the_dividers():
    text = rtlil.convert(ECP5PLL(25, 50))
    assert "cell \\EHXPLLL" in text
    for name, value in (("CLKI_DIV", 1), ("CLKFB_DIV", 2), ("CLKOP_DIV", 12), ("CLKOP_CPHASE", 6)):
        assert f"parameter \\{name} {value}" in text
    assert 'parameter \\FEEDBK_PATH "CLKOP"' in text


@pytest.mark.parametrize("f_out, f_out2, dividers", [
    (37.5, 75, (2, 3, 16, 8, 600.0)),          # the ULX3S SDRAM build: engine 37.5, SDRAM twice that
    (40, 100, (5, 8, 15, 6, 600.0)),
    (37.5, 93.75, (2, 3, 15, 6, 562.5)),       # exact both: the VCO moves off 600 MHz for it
])
def test_a_second_output_is_made_exactly_where_it_can_be(f_out, f_out2, dividers):
    p = ecp5_pll_params(25, f_out, f_out2)
    assert (p.clki_div, p.clkfb_div, p.clkop_div, p.clkos_div, p.f_vco_mhz) == dividers
    assert (p.f_out_mhz, p.f_out2_mhz) == (f_out, f_out2)
    assert p.f_out2_mhz == pytest.approx(p.f_vco_mhz / p.clkos_div)


def test_a_second_output_never_costs_the_first_its_frequency():
    for f_out, f_out2 in ((37, 71), (50, 133), (77, 33.3)):
        one, two = ecp5_pll_params(25, f_out), ecp5_pll_params(25, f_out, f_out2)
        assert two.f_out_mhz == pytest.approx(one.f_out_mhz) and one.clkos_div is None
        assert all(abs(two.f_out2_mhz - f_out2) <= abs(two.f_vco_mhz / d - f_out2)      # its VCO's best divider
                   for d in (two.clkos_div - 1, two.clkos_div + 1) if d >= 1)


def test_a_second_output_out_of_range_is_named():
    with pytest.raises(PllError, match="f_out2_mhz=450: the ECP5 PLL makes 3.125–400 MHz"):
        ecp5_pll_params(25, 50, 450)
    with pytest.raises(PllError, match="f_out2_mhz='x': must be a number"):
        ecp5_pll_params(25, 50, "x")


def test_the_instance_enables_clkos_only_for_a_second_output():
    assert "CLKOS_ENABLE" not in rtlil.convert(ECP5PLL(25, 50))
    text = rtlil.convert(ECP5PLL(25, 37.5, 75))
    for name, value in (("CLKOP_DIV", 16), ("CLKOS_DIV", 8), ("CLKOS_CPHASE", 8), ("CLKOS_FPHASE", 0)):
        assert f"parameter \\{name} {value}" in text
    assert 'parameter \\CLKOS_ENABLE "ENABLED"' in text and "connect \\CLKOS" in text
