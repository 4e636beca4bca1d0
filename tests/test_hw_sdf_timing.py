"""hw.sdf_timing: static timing from nextpnr's SDF, on hand-written graphs (and, in
tests/test_hw_synth.py, against nextpnr's own estimate)."""

import pytest

from hw.sdf_timing import SdfError, analyse_sdf, signal_name

HEAD = """(DELAYFILE
  (SDFVERSION "3.0")
  (DESIGN "top")
  (VENDOR "nextpnr")
  (DIVIDER /)
  (TIMESCALE 1ps)
"""


def ff(name, clk_q=500, setup_di=300, setup_ce=150):
    return f"""  (CELL
    (CELLTYPE "TRELLIS_FF")
    (INSTANCE {name})
    (DELAY
      (ABSOLUTE
        (IOPATH CLK Q ({clk_q}:{clk_q}:{clk_q}) ({clk_q}:{clk_q}:{clk_q}))
      )
    )
    (TIMINGCHECK
      (SETUPHOLD (posedge DI) (posedge CLK) ({setup_di}:{setup_di}:{setup_di}) (0:0:0))
      (SETUPHOLD (negedge CE) (posedge CLK) ({setup_ce}:{setup_ce}:{setup_ce}) (0:0:0))
    )
    )
"""


def lut(name, **pins):
    paths = "\n".join(f"        (IOPATH {p} F ({d}:{d}:{d}) ({d}:{d}:{d}))" for p, d in pins.items())
    return f"""  (CELL
    (CELLTYPE "TRELLIS_COMB")
    (INSTANCE {name})
    (DELAY
      (ABSOLUTE
{paths}
      )
    )
    )
"""


def wires(*conns):
    body = "\n".join(f"        (INTERCONNECT {a} {b} ({d}:{d}:{d}) ({d}:{d}:{d}))" for a, b, d in conns)
    return f"""  (CELL
    (CELLTYPE "top")
    (INSTANCE )
    (DELAY
      (ABSOLUTE
        (INTERCONNECT \\$gbuf\\$clk/CLKO unit.a_TRELLIS_FF_Q_3/CLK (9000:9000:9000) (0:0:0))
{body}
      )
    )
    )
"""


def write(tmp_path, *parts):
    path = tmp_path / "design.sdf"
    path.write_text(HEAD + "".join(parts) + ")\n")
    return path


def two_paths(tmp_path):
    """a →(1.0) LUT.A (0.2) →(2.0) c.DI; b →(0.5) LUT.B (0.4) → …; a →(3.5) c.CE; and an input
    pin →(9.0) sync.DI, which no clock launches (nextpnr's <async>: not timed)."""
    return write(tmp_path, ff("unit.a_TRELLIS_FF_Q_3"), ff("unit.b\\$x_TRELLIS_FF_Q", clk_q=450),
                 ff("unit.c_TRELLIS_FF_Q_12"), lut("unit.c_TRELLIS_FF_Q_12_DI_LUT4_Z", A=200, B=400),
                 ff("sync_TRELLIS_FF_Q"),
                 wires(("unit.a_TRELLIS_FF_Q_3/Q", "unit.c_TRELLIS_FF_Q_12_DI_LUT4_Z/A", 1000),
                       ("unit.b\\$x_TRELLIS_FF_Q/Q", "unit.c_TRELLIS_FF_Q_12_DI_LUT4_Z/B", 500),
                       ("unit.c_TRELLIS_FF_Q_12_DI_LUT4_Z/F", "unit.c_TRELLIS_FF_Q_12/DI", 2000),
                       ("unit.a_TRELLIS_FF_Q_3/Q", "unit.c_TRELLIS_FF_Q_12/CE", 3500),
                       ("rst\\$tr_io/O", "sync_TRELLIS_FF_Q/DI", 9000)))


def test_arrival_slack_and_worst_path(tmp_path):
    t = analyse_sdf(two_paths(tmp_path), 250.0)            # 4 ns
    assert t.period_ns == pytest.approx(4.0)
    di = next(e for e in t.endpoints if e.instance == "unit.c_TRELLIS_FF_Q_12" and e.pin == "DI")
    # a: 0.5 + 1.0 + 0.2 = 1.7 at F; b: 0.45 + 0.5 + 0.4 = 1.35: a's path is the worse one
    assert di.arrival_ns == pytest.approx(3.7) and di.required_ns == pytest.approx(3.7)
    assert di.slack_ns == pytest.approx(0.0)
    ce = t.endpoints[0]                                     # 0.5 + 3.5 = 4.0 against 4.0 - 0.15
    assert (ce.instance, ce.pin) == ("unit.c_TRELLIS_FF_Q_12", "CE") and ce.slack_ns == pytest.approx(-0.15)
    assert t.worst_slack_ns == pytest.approx(-0.15) and t.fmax_mhz == pytest.approx(1000 / 4.15)
    assert [n for n, _ in t.path(di)] == ["unit.a_TRELLIS_FF_Q_3/Q", "unit.c_TRELLIS_FF_Q_12_DI_LUT4_Z/A",
                                          "unit.c_TRELLIS_FF_Q_12_DI_LUT4_Z/F", "unit.c_TRELLIS_FF_Q_12/DI"]
    assert [round(a, 3) for _, a in t.path(di)] == [0.5, 1.5, 1.7, 3.7]
    assert t.failing() == [ce]
    # neither the clock's interconnect (9 ns) nor the input pin's path is a register-to-register path
    assert all(e.arrival_ns < 5 for e in t.endpoints)
    # (nor is an input nothing drives)
    assert [(e.instance, e.pin) for e in t.endpoints] == [("unit.c_TRELLIS_FF_Q_12", "CE"),
                                                          ("unit.c_TRELLIS_FF_Q_12", "DI")]


def test_classes_and_through(tmp_path):
    t = analyse_sdf(two_paths(tmp_path), 250.0)
    assert [(c["start"], c["end"], c["endpoints"]) for c in t.classes()] == [("unit.a", "unit.c.CE", 1)]
    # below 0.1 ns of slack the DI path counts too; bit numbers vanish from the kinds
    classes = t.classes(slack_below_ns=0.1)
    assert {(c["start"], c["end"]) for c in classes} == {("unit.a", "unit.c.CE"), ("unit.a", "unit.c.DI")}
    assert dict(t.through(slack_below_ns=0.1)) == {"unit.a": 2, "unit.c": 2}
    report = t.report(slack_below_ns=0.1)
    assert "2 with slack < 0.1 ns" in report and "path to unit.c_TRELLIS_FF_Q_12/CE: slack -0.150 ns" in report
    assert "  3.700 (+2.000)  DI" in report


@pytest.mark.parametrize("instance, name", [
    ("unit.conv.pos_sel_TRELLIS_FF_Q_3", "unit.conv.pos_sel"),
    ("unit.k_last_LUT4_D_Z_LUT4_Z_1", "unit.k_last"),
    ("unit.x_CCU2C_S0$CCU2_COMB1", "unit.x"),
    ("unit.plain", "unit.plain"),
])
def test_signal_name(instance, name):
    assert signal_name(instance) == name


def test_faults(tmp_path):
    with pytest.raises(SdfError, match="missing.sdf: cannot read"):
        analyse_sdf(tmp_path / "missing.sdf", 100)
    with pytest.raises(ValueError, match="freq_mhz=0"):
        analyse_sdf(two_paths(tmp_path), 0)
    (tmp_path / "x.sdf").write_text("(DELAYFILE\n)\n")
    with pytest.raises(SdfError, match="no TIMESCALE"):
        analyse_sdf(tmp_path / "x.sdf", 100)
    loop = write(tmp_path, ff("unit.a_TRELLIS_FF_Q"), lut("l1", A=100), lut("l2", A=100),
                 wires(("l1/F", "l2/A", 100), ("l2/F", "l1/A", 100), ("l2/F", "unit.a_TRELLIS_FF_Q/DI", 100)))
    with pytest.raises(SdfError, match="combinational loop through l[12]/"):
        analyse_sdf(loop, 100)
