"""Fast checks of the pure-Python parts of the simulation infrastructure (no Verilator here)."""

import random
import xml.etree.ElementTree as ET

import pytest
from amaranth import Module, signed
from amaranth.back import verilog
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from sim import runner
from sim.runner import Port, SimResult, build_key, clock_period_ns, harness_verilog, verilog_ports, write_gtkw
from sim.streams import Scoreboard, ScoreboardMismatch, pack_lanes, unpack_lanes


class _Adder(wiring.Component):
    """Registered lane-wise adder with stream in/out (ready passes straight through)."""

    def __init__(self):
        lay = data.ArrayLayout(signed(6), 3)
        super().__init__({"a": In(stream.Signature(lay)), "s": Out(stream.Signature(lay)),
                          "bias": In(signed(6)), "flag": Out(1)})

    def elaborate(self, platform):
        m = Module()
        with m.If(self.s.ready | ~self.s.valid):
            m.d.sync += self.s.valid.eq(self.a.valid)
            for i in range(3):
                m.d.sync += self.s.payload[i].eq(self.a.payload[i] + self.bias)
        m.d.comb += [self.a.ready.eq(self.s.ready | ~self.s.valid), self.flag.eq(self.s.valid)]
        return m


@pytest.fixture(scope="module")
def adder_v():
    return verilog.convert(_Adder(), name="adder", emit_src=False)


# --- build directory key -----------------------------------------------------------------------

def test_build_key_is_stable_and_sensitive():
    k = build_key("module m; endmodule", ["--timing"], False, {"make": ["CXX=g++"]})
    assert k == build_key("module m; endmodule", ["--timing"], False, {"make": ["CXX=g++"]})
    assert len(k) == 12 and int(k, 16) >= 0
    assert k == "4df0d84597b3"  # sha256 of canonical JSON: the same in every process and machine
    others = {build_key("module m; endmodule ", ["--timing"], False, {"make": ["CXX=g++"]}),
              build_key("module m; endmodule", ["--timing", "-O3"], False, {"make": ["CXX=g++"]}),
              build_key("module m; endmodule", ["--timing"], True, {"make": ["CXX=g++"]}),
              build_key("module m; endmodule", ["--timing"], False, {"make": ["CXX=clang++"]})}
    assert k not in others and len(others) == 4


def test_build_key_definition():
    import hashlib
    import json
    blob = json.dumps({"verilog": "x", "build_args": ["a"], "waves": True}, sort_keys=True, separators=(",", ":"))
    assert build_key("x", ["a"], True) == hashlib.sha256(blob.encode()).hexdigest()[:12]


def test_verilog_text_is_reproducible(adder_v):
    # emit_src=False: no line numbers or paths, so the build hash depends on the design only
    assert verilog.convert(_Adder(), name="adder", emit_src=False) == adder_v
    assert "src =" not in adder_v


# --- ports and harness -------------------------------------------------------------------------

def test_verilog_ports(adder_v):
    ports = {p.name: p for p in verilog_ports(adder_v, "adder")}
    assert set(ports) == {"clk", "rst", "a__valid", "a__ready", "a__payload", "s__valid", "s__ready",
                          "s__payload", "bias", "flag"}
    assert ports["a__payload"] == Port("a__payload", "input", 18)
    assert ports["s__payload"].direction == "output" and ports["s__payload"].width == 18
    assert ports["a__ready"].direction == "output" and ports["a__ready"].width == 1
    assert ports["bias"].width == 6
    with pytest.raises(ValueError, match="module 'nope' not found"):
        verilog_ports(adder_v, "nope")


def test_harness(adder_v):
    ports = verilog_ports(adder_v, "adder")
    h = harness_verilog("adder", ports, clock_period_ns=10, reset_cycles=3)
    assert "module adder_tb (" in h and "adder dut (" in h
    assert "always #5.000 clk = ~clk;" in h
    assert "input wire [17:0] a__payload" in h and "output wire [17:0] s__payload" in h
    assert "input wire rst_req" in h and "wire rst = por_rst | rst_req;" in h
    assert "por_count == 32'd2" in h
    # clk/rst are generated, not ports of the harness
    header = h.split(");")[0]
    assert " clk" not in header and "wire rst\n" not in header
    assert ".clk(clk)" in h and ".rst(rst)" in h
    assert "always #1.667 clk" in harness_verilog("adder", ports, clock_period_ns=3.334, reset_cycles=1)
    with pytest.raises(ValueError, match="clock_period_ns=0.0001"):
        harness_verilog("adder", ports, clock_period_ns=0.0001, reset_cycles=1)
    with pytest.raises(ValueError, match="reset_cycles=0"):
        harness_verilog("adder", ports, clock_period_ns=10, reset_cycles=0)


def test_harness_public_ports(adder_v):
    """Without --public-flat-rw only what the bench touches is marked public."""
    ports = verilog_ports(adder_v, "adder")
    assert "verilator public" not in harness_verilog("adder", ports, clock_period_ns=10, reset_cycles=3)
    h = harness_verilog("adder", ports, clock_period_ns=10, reset_cycles=3, public_ports=True)
    mark = "/*verilator public_flat_rw*/"
    assert f"input wire [17:0] a__payload {mark}" in h and f"output wire [17:0] s__payload {mark}" in h
    assert f"reg clk {mark} = 1'b0;" in h and f"wire rst {mark} = por_rst | rst_req;" in h
    assert f"input wire rst_req {mark}" in h
    assert h.count(mark) == len([p for p in ports if p.name not in ("clk", "rst")]) + 3


def test_harness_generates_other_domains_clocks(adder_v):
    """``domain_clocks``: each named domain's ``<domain>_clk`` and ``<domain>_rst`` come from the
    harness as ``clk`` and ``rst`` do, each reset counted in its own clock; a domain the design
    lacks, a bad period or a bad name is refused, naming it."""
    ports = verilog_ports(adder_v, "adder") + [Port("fast_clk", "input", 1), Port("fast_rst", "input", 1)]
    h = harness_verilog("adder", ports, clock_period_ns=10, reset_cycles=3, domain_clocks={"fast": 4.5})
    assert "always #5.000 clk = ~clk;" in h and "always #2.250 fast_clk = ~fast_clk;" in h
    assert "wire fast_rst = fast_por_rst | rst_req;" in h and "always @(posedge fast_clk) begin" in h
    assert "if (fast_por_count == 32'd2) fast_por_rst <= 1'b0;" in h
    assert ".fast_clk(fast_clk)" in h and ".fast_rst(fast_rst)" in h
    assert "fast_clk" not in h.split(");")[0]                     # not a port of the harness
    assert h.replace("\n", "").count("always #") == 2
    with pytest.raises(ValueError, match=r"the design has no port slow_clk \(its domains' clocks: \['fast_clk'\]\)"):
        harness_verilog("adder", ports, clock_period_ns=10, reset_cycles=3, domain_clocks={"slow": 20})
    with pytest.raises(ValueError, match=r"domain_clocks\['fast'\]=0.0001: must be a positive multiple"):
        harness_verilog("adder", ports, clock_period_ns=10, reset_cycles=3, domain_clocks={"fast": 0.0001})
    with pytest.raises(ValueError, match="'sync' is not a domain name other than 'sync'"):
        harness_verilog("adder", ports, clock_period_ns=10, reset_cycles=3, domain_clocks={"sync": 10})
    assert clock_period_ns(37.5e6) == 26.666 and clock_period_ns(75e6) == 13.334


def test_harness_without_clock():
    class Comb(wiring.Component):
        a: In(4)
        y: Out(4)

        def elaborate(self, platform):
            m = Module()
            m.d.comb += self.y.eq(~self.a)
            return m

    v = verilog.convert(Comb(), name="comb", emit_src=False)
    ports = verilog_ports(v, "comb")
    assert sorted(p.name for p in ports) == ["a", "y"]
    h = harness_verilog("comb", ports, clock_period_ns=8, reset_cycles=2)
    assert "reg clk = 1'b0;" in h and ".clk(" not in h and ".rst(" not in h


def _unused(elaboratable):
    elaboratable._MustUse__silence = True  # argument checks fail before elaboration
    return elaboratable


def test_run_cocotb_argument_checks():
    with pytest.raises(ValueError, match="name='bad name'"):
        runner.run_cocotb(_unused(_Adder()), name="bad name", test_module="sim.tb_smoke")
    with pytest.raises(TypeError, match="ports= must be given"):
        runner.run_cocotb(_unused(Module()), name="m", test_module="sim.tb_smoke")
    with pytest.raises(TypeError):
        runner.run_cocotb(_unused(_Adder()), name="adder", test_module="sim.tb_smoke", parameters={"x": object()})


def test_make_variables_override_wheel_paths():
    mv = runner.make_variables("-O2")
    assert "OPT_FAST=-O2" in mv and any(v.startswith("CXX=") for v in mv)
    assert "CFG_CXXFLAGS_STD=-std=c++20" in mv
    assert not any("/opt/rh" in v for v in mv)
    assert (runner.verilator_root() / "include" / "verilated.mk").is_file()


def test_gtkw(tmp_path):
    path = write_gtkw(tmp_path / "w.gtkw", tmp_path / "w.fst", "adder_tb",
                      [Port("clk", "input", 1), Port("s__payload", "output", 18)])
    text = path.read_text()
    assert f'[dumpfile] "{tmp_path / "w.fst"}"' in text
    assert "adder_tb.clk\n" in text and "adder_tb.s__payload[17:0]\n" in text


def test_parse_results(tmp_path):
    xml = tmp_path / "r.xml"
    suite = ET.Element("testsuite", name="m", tests="3")
    for name, child in (("a", None), ("b", "failure"), ("c", "skipped")):
        case = ET.SubElement(suite, "testcase", name=name)
        props = ET.SubElement(case, "properties")
        ET.SubElement(props, "property", name="sim_time_duration", value="100.0")
        if child:
            ET.SubElement(case, child)
    root = ET.Element("testsuites")
    root.append(suite)
    ET.ElementTree(root).write(xml)
    r = SimResult(name="n", test_module="m", nodeid="", build_dir=tmp_path, run_dir=tmp_path,
                  results_xml=xml, log=tmp_path / "log", seed=1, parameters={})
    runner._parse_results(xml, r)
    assert (r.tests, r.passed, r.failed, r.skipped, r.failures) == (3, 1, 1, 1, ["b"])
    assert r.sim_time_ns == 300.0 and not r.ok


# --- lanes ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("width,signed_", [(1, False), (2, True), (8, True), (8, False), (13, True)])
def test_lanes_round_trip(width, signed_):
    rng = random.Random(width)
    lo, hi = (-(1 << (width - 1)), (1 << (width - 1)) - 1) if signed_ else (0, (1 << width) - 1)
    for n in (1, 3, 16):
        for vals in ([lo] * n, [hi] * n, [rng.randint(lo, hi) for _ in range(n)]):
            packed = pack_lanes(vals, width, signed_)
            assert 0 <= packed < 1 << (n * width)
            assert unpack_lanes(packed, n, width, signed_) == vals


def test_lanes_layout_matches_amaranth():
    lay = data.ArrayLayout(signed(8), 4)
    const = lay.const([-1, 2, -128, 127])
    assert pack_lanes([-1, 2, -128, 127], 8, True) == const.as_value().value
    assert pack_lanes([-1, 2, -128, 127], 8, True) == 0x7f8002ff


def test_lanes_errors():
    with pytest.raises(ValueError, match=r"lane 1: value 128 out of range \[-128, 127\]"):
        pack_lanes([0, 128], 8, True)
    with pytest.raises(ValueError, match="lane 0: value -1"):
        pack_lanes([-1], 8, False)
    with pytest.raises(ValueError, match="does not fit in 2 lanes of 4 bits"):
        unpack_lanes(0x100, 2, 4)
    with pytest.raises(ValueError, match="width=0"):
        pack_lanes([0], 0)


# --- scoreboard ------------------------------------------------------------------------------------

def test_scoreboard_match_and_mismatch_message():
    sb = Scoreboard("acc")
    sb.expect("y", 0x10)
    sb.expect_many("y", [0xF0, 7])
    assert sb.compare("y", 0x10)
    with pytest.raises(ScoreboardMismatch) as e:
        sb.compare("y", 0xB1)
    msg = str(e.value)
    assert msg == "acc: 'y' beat 1: expected 0xf0 (240), got 0xb1 (177), xor 0x41 (bits 0, 6)"
    assert sb.matches["y"] == 1 and sb.total_matches == 1


def test_scoreboard_single_bit_and_nonint():
    sb = Scoreboard()
    sb.expect("o", 6)
    with pytest.raises(ScoreboardMismatch, match=r"xor 0x1 \(bit 0\)$"):
        sb.compare("o", 7)
    sb.expect("v", [1, -2])
    with pytest.raises(ScoreboardMismatch, match=r"'v' beat 0: expected \[1, -2\], got \[1, -3\]$"):
        sb.compare("v", [1, -3])


def test_scoreboard_unexpected_and_leftovers():
    sb = Scoreboard("sb")
    with pytest.raises(ScoreboardMismatch, match="'x' beat 0: got 0x5 \\(5\\) but nothing was expected"):
        sb.compare("x", 5)
    sb.expect_many("a", [1, 2, 3, 4, 5, 6])
    sb.expect("b", 9)
    sb.compare("a", 1)
    sb.compare("b", 9)
    with pytest.raises(ScoreboardMismatch) as e:
        sb.check_empty()
    assert str(e.value) == ("sb: 'a': 5 expected values never arrived (after 1 matches; next: "
                            "0x2 (2), 0x3 (3), 0x4 (4), 0x5 (5), ...)")
    assert "'b'" not in str(e.value)


def test_scoreboard_collect_mode():
    sb = Scoreboard("sb", fail_fast=False)
    sb.expect_many("o", [1, 2, 3])
    assert sb.compare("o", 1) and not sb.compare("o", 0) and sb.compare("o", 3)
    with pytest.raises(ScoreboardMismatch, match="'o' beat 1: expected 0x2 \\(2\\), got 0x0 \\(0\\)"):
        sb.check_empty()
    assert sb.report() == "sb: o: 2 matched"


def test_sim_params(monkeypatch):
    from sim.streams import sim_params
    monkeypatch.delenv("WAGE_SIM_PARAMS", raising=False)
    assert sim_params() == {}
    monkeypatch.setenv("WAGE_SIM_PARAMS", '{"beats": 3}')
    assert sim_params() == {"beats": 3}
    assert runner.PARAMS_ENV == "WAGE_SIM_PARAMS"
