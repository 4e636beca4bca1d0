"""hw.congestion: the RUDY map, the hottest window and its contributors, on hand-made placed
netlists (the real one from nextpnr is read in test_hw_synth.py's place-only test)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hw.congestion import CongestionError, Placement, analyse, main, module_of, pin_factor, rudy


def placed_netlist(cells: dict, globals_: tuple[int, ...] = ()) -> dict:
    """A nextpnr --write document: ``cells`` maps name → (x, y, {port: bit}, {port: direction}, src)."""
    doc_cells = {}
    for name, (x, y, ports, directions, src) in cells.items():
        attributes = {"src": src} if src else {}
        if x is not None:
            attributes["NEXTPNR_BEL"] = f"X{x}/Y{y}/SLICEA.K0"
        doc_cells[name] = {"type": "TRELLIS_COMB", "attributes": attributes, "port_directions": directions,
                           "connections": {p: [b] for p, b in ports.items()}}
    names = {f"g{b}": {"hide_name": 0, "bits": [b], "attributes": {"ECP5_IS_GLOBAL": "1"}} for b in globals_}
    return {"modules": {"top": {"cells": doc_cells, "netnames": names}}}


def write(tmp_path, doc) -> str:
    path = tmp_path / "placed.json"
    path.write_text(json.dumps(doc))
    return str(path)


def driver(x, y, bit, src="a.py:1", clk=None):
    ports, dirs = {"F": bit}, {"F": "output"}
    if clk is not None:
        ports["CLK"], dirs["CLK"] = clk, "input"
    return (x, y, ports, dirs, src)


def sink(x, y, bit, clk=None):
    ports, dirs = {"A": bit}, {"A": "input"}
    if clk is not None:
        ports["CLK"], dirs["CLK"] = clk, "input"
    return (x, y, ports, dirs, "")


def test_pin_factor():
    assert pin_factor(2) == pin_factor(3) == 1.0
    assert pin_factor(4) == pytest.approx(1.0828) and pin_factor(50) == pytest.approx(2.7933)
    assert pin_factor(9) == pytest.approx((1.3385 + 1.4493) / 2)
    assert pin_factor(150) == pytest.approx(2.7933 + 100 * 0.02616)
    factors = [pin_factor(n) for n in range(2, 200)]
    assert factors == sorted(factors)


def test_module_of():
    assert module_of("unit.feed_a.gen.conv.x_TRELLIS_FF_Q", 3) == "unit.feed_a.gen"
    assert module_of("unit.feed_a.x", 3) == "unit.feed_a"
    assert module_of("unit.$abc$12$auto$blifparse.cc:1$2", 2) == "unit"
    assert module_of("$abc$12$auto$blifparse.cc:396$13", 2) == "(tool)"
    assert module_of("rst", 2) == "(top)"


def test_rudy_spreads_each_net_over_its_box(tmp_path):
    # net 1: 2 pins, box 2x1 -> demand 3, 1.5 a tile; net 2: 2 pins, box 1x3 -> demand 4, 4/3 a tile;
    # the clock (bit 9) is global and left out.
    doc = placed_netlist({"u.a": driver(0, 0, 1, clk=9), "u.b": sink(1, 0, 1, clk=9),
                          "v.c": driver(3, 1, 2), "v.d": sink(3, 3, 2, clk=9)}, globals_=(9,))
    placement = Placement.load(write(tmp_path, doc))
    assert (placement.width, placement.height, placement.cells) == (4, 4, 4)
    assert sorted(n.name for n in placement.nets) == ["u.a", "v.c"]     # named after the driver
    grid = rudy(placement)
    expected = np.zeros((4, 4))
    expected[0, 0:2] = 1.5
    expected[1:4, 3] = 4 / 3
    np.testing.assert_allclose(grid, expected)
    assert grid.sum() == pytest.approx(sum(n.demand for n in placement.nets))


def test_hottest_window_and_its_contributors(tmp_path):
    cells = {}
    # a crowded corner: eight 2-pin nets of module hot.x inside X10..X11, Y10..Y11; one long net of
    # module wide.y crossing the die; a cold net elsewhere
    for i in range(8):
        cells[f"hot.x.d{i}"] = driver(10, 10, 100 + i, src="hw/hot.py:7")
        cells[f"hot.x.s{i}"] = sink(11, 11, 100 + i)
    cells["wide.y.d"] = driver(0, 0, 200, src="hw/wide.py:3")
    cells["wide.y.s"] = sink(29, 29, 200)
    cells["cold.z.d"] = driver(25, 2, 300, src="hw/cold.py:1")
    cells["cold.z.s"] = sink(26, 2, 300)
    result = analyse(Placement.load(write(tmp_path, placed_netlist(cells))), window=2, depth=2)
    assert result.window == (10, 10, 11, 11)
    names = [m for m, _, _ in result.by_module]
    assert names == ["hot.x", "wide.y"]
    hot_share = 8 * 4 / (8 * 4 + 60 * 4 / 900)
    assert result.by_module[0][1] == pytest.approx(hot_share)
    assert result.by_src[0] == ("hw/hot.py:7", pytest.approx(hot_share))
    assert result.long_nets[0][0].name.startswith("hot.x.d")
    total = 8 * 4 + 60 + 3
    assert result.design_modules == [("wide.y", pytest.approx(60 / total)), ("hot.x", pytest.approx(32 / total)),
                                     ("cold.z", pytest.approx(3 / total))]
    s = result.summary()
    assert s["window"] == [10, 10, 11, 11] and s["peak"] == pytest.approx(s["window_mean"], rel=0.01)
    text = result.report()
    assert "X10..X11, Y10..Y11" in text and "hot.x" in text and "hw/hot.py:7" in text
    assert text.count("\n") > 30      # the map is there: one row per block of tiles


@pytest.mark.parametrize("content, message", [
    (None, "cannot read"),
    ("not json", "not JSON"),
    ("{}", "no modules"),
    (json.dumps(placed_netlist({"a": (None, None, {"F": 1}, {"F": "output"}, "")})), "no cell has a NEXTPNR_BEL"),
])
def test_bad_files_name_the_problem(tmp_path, content, message):
    path = tmp_path / "placed.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(CongestionError, match=message) as e:
        Placement.load(path)
    assert str(path) in str(e.value)


def test_cli(tmp_path, capsys):
    path = write(tmp_path, placed_netlist({"u.a": driver(0, 0, 1), "u.b": sink(2, 1, 1)}))
    out = tmp_path / "c.json"
    assert main([path, "--window", "2", "--json", str(out)]) == 0
    assert "hottest 2x2 window" in capsys.readouterr().out
    assert json.loads(out.read_text())["by_module"][0]["module"] == "u"
    assert main([str(tmp_path / "missing.json")]) == 2
    assert "missing.json" in capsys.readouterr().err
    assert main([path, "--window", "0"]) == 2
    assert "window=0" in capsys.readouterr().err
