"""hw.export: the engine as Verilog plus its JSON description (ports checked against the module
header, parameters round-trip, memory map, primitives, Verilator lint, argument checks).

Two small engines are converted once each (module-scoped): "generic" without external memory
(module name ``my_top``), "ecp5" with external data and weight words (default name)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from golden.config import WageConfig
from hw import export
from hw.engine import protocol
from hw.engine.config import EngineConfig
from hw.engine.engine import Engine
from hw.engine.extmem import MAX_BURST
from hw.engine.isa import ADDR_BITS
from hw.export import ExportError, ExportResult, export_verilog

REPO = Path(__file__).resolve().parent.parent
WAGE = WageConfig(net="8FC-4", input_shape=(1, 4, 4), batch_size=6, seed=5)
GENERIC = EngineConfig(WAGE, lanes=4, data_words=64, weight_words=64, label_words=8)
ECP5 = GENERIC.replace(target="ecp5", external_words=1024, external_weight_words=32)


@pytest.fixture(scope="module")
def generic(tmp_path_factory):
    return export_verilog(GENERIC, tmp_path_factory.mktemp("export") / "new" / "dir", name="my_top")


@pytest.fixture(scope="module")
def ecp5(tmp_path_factory):
    return export_verilog(ECP5, tmp_path_factory.mktemp("export"))


@pytest.fixture(params=["generic", "ecp5"])
def exported(request):
    config = GENERIC if request.param == "generic" else ECP5
    return config, request.getfixturevalue(request.param)


def header_ports(text: str, module: str) -> dict[str, tuple[str, int]]:
    """Independent parse of the module header: name -> (direction, width)."""
    m = re.search(r"^module " + re.escape(module) + r"\(([^;]*)\);", text, re.M)
    assert m, f"module {module} not in the Verilog"
    body = text[m.end():text.index("endmodule", m.end())]
    ports = {}
    for name in (p.strip() for p in m.group(1).split(",")):
        d = re.search(r"^\s*(input|output)\s+(?:\[(\d+):0\]\s+)?" + re.escape(name) + r";", body, re.M)
        assert d, f"no declaration of port {name}"
        ports[name] = (d.group(1), int(d.group(2)) + 1 if d.group(2) else 1)
    return ports


def test_files_and_every_port_in_the_header(exported):
    config, result = exported
    assert isinstance(result, ExportResult)
    desc = result.description
    assert result.verilog_path == result.json_path.with_suffix(".v")
    assert result.verilog_path.name == desc["verilog"] == f"{desc['module']}.v"
    text = result.verilog_path.read_text()
    assert f"module {desc['module']}(" in text
    header = header_ports(text, desc["module"])
    described = {p["name"]: (p["direction"], p["width"]) for p in desc["ports"]}
    assert len(described) == len(desc["ports"])
    assert described == header
    # Stream ports: path joined by "__"; a struct payload is one port whose fields tile it.
    for p in desc["ports"]:
        if p["interface"] is not None:
            assert p["name"] == p["interface"].replace(".", "__") + "__" + p["role"]
            assert p["role"] in ("valid", "ready", "payload")
        if p["fields"] is not None:
            assert sum(f["width"] for f in p["fields"]) == p["width"]
    payload = {p["name"]: p for p in desc["ports"]}["host_in__payload"]
    assert payload["width"] == 33 and payload["direction"] == "input"
    assert payload["fields"] == [{"name": "data", "offset": 0, "width": 32, "signed": False},
                                 {"name": "last", "offset": 32, "width": 1, "signed": False}]
    assert desc["clock"] == {"port": "clk", "edge": "rising", "domain": "sync"}
    assert desc["reset"] == {"port": "rst", "polarity": "active-high", "synchronous": True, "domain": "sync"}
    assert header["clk"] == header["rst"] == ("input", 1)


def test_json_round_trips_to_the_config(exported):
    config, result = exported
    desc = json.loads(result.json_path.read_text())
    assert desc == result.description
    assert desc["format"] == export.FORMAT == 1
    assert desc["target"] == config.target
    params = desc["parameters"]
    assert EngineConfig.from_dict(params["config"]) == config
    assert params["fingerprint"] == config.fingerprint()
    assert params["derived"] == {
        "lanes": config.lanes, "batch": config.batch, "external_width": config.external_width,
        "data_space": config.data_space, "weight_space": config.weight_space,
        "external_depth": config.external_depth, "max_reduction": config.max_reduction,
        "folds_input": config.folds_input, "addr_bits": ADDR_BITS, "machine_words": params["derived"]["machine_words"],
        "mask_words": -(-params["derived"]["machine_words"] // 32)}
    proto = desc["protocol"]
    assert proto["commands"] == {c.name: int(c) for c in protocol.Command}
    assert proto["targets"] == {t.name: int(t) for t in protocol.Target}
    assert {k: v for k, v in proto["statuses"].items() if k in protocol.Status.__members__} == \
        {s.name: int(s) for s in protocol.Status}
    assert proto["counters"] == list(protocol.COUNTERS) and proto["ident"] == list(protocol.IDENT)
    assert proto["magic"] == protocol.MAGIC and proto["format_version"] == protocol.FORMAT_VERSION
    assert proto["ident_values"] == protocol.ident_values(config)
    for name in ("host_in", "host_out"):
        iface = desc["interfaces"][name]
        assert iface["kind"] == "amaranth.lib.stream" and iface["payload_layout"] == {"data": 32, "last": 1}
        assert (REPO / iface["packet_format"]).is_file()
    assert desc["interfaces"]["host_in"]["direction"] == "input"
    assert desc["interfaces"]["host_out"]["direction"] == "output"


def check_memory_map(config, memory_map):
    kG, L = config.wage.kG, config.lanes
    sizes = {"PROGRAM": (config.program_words, 0, None), "ACT": (config.data_words, config.external_words, 0),
             "ERR": (config.data_words, config.external_words, 0),
             "WEIGHTS": (config.weight_words, config.external_weight_words, config.external_words),
             "LABELS": (config.label_words, 0, None)}
    assert list(memory_map) == [t.name for t in protocol.Target]
    for target in protocol.Target:
        entry = memory_map[target.name]
        onchip, external, first = sizes[target.name]
        assert entry["code"] == int(target)
        assert entry["item_bits"] == protocol.item_bits(target, L, kG)
        assert entry["item_words"] == protocol.item_words(target, L, kG)
        assert entry["range"] == [0, onchip + external]
        assert entry["regions"][0] == {"range": [0, onchip], "location": "on-chip",
                                       "memory": entry["regions"][0]["memory"]}
        if external:
            assert len(entry["regions"]) == 2
            ext = entry["regions"][1]
            assert ext["range"] == [onchip, onchip + external] and ext["location"] == "external"
            assert ext["external_word"] == first and ext["external_word_bits"] == config.external_width
            assert entry["item_bits"] <= ext["external_word_bits"]
        else:
            assert len(entry["regions"]) == 1


def test_memory_map_without_external_memory(generic):
    check_memory_map(GENERIC, generic.description["memory_map"])
    assert "ext" not in generic.description["interfaces"]
    assert not any(p["name"].startswith("ext__") for p in generic.description["ports"])


def test_memory_map_and_port_with_external_memory(ecp5):
    desc = ecp5.description
    check_memory_map(ECP5, desc["memory_map"])
    assert desc["memory_map"]["WEIGHTS"]["regions"][1]["external_word"] == 1024
    ext = desc["interfaces"]["ext"]
    assert (ext["addr_bits"], ext["data_width"], ext["max_burst"], ext["depth"]) == \
        (ADDR_BITS, ECP5.external_width, MAX_BURST, 1024 + 32)
    assert {s: v["direction"] for s, v in ext["streams"].items()} == {"cmd": "output", "w": "output", "r": "input"}
    assert ext["streams"]["cmd"]["payload_layout"] == {"addr": ADDR_BITS, "count": 5, "write": 1}
    ports = {p["name"]: p for p in desc["ports"]}
    for stream, d in (("cmd", "output"), ("w", "output"), ("r", "input")):
        assert ports[f"ext__{stream}__valid"]["direction"] == d
        assert ports[f"ext__{stream}__payload"]["interface"] == f"ext.{stream}"
    assert ports["ext__r__payload"]["width"] == ECP5.external_width


def test_primitives(generic, ecp5):
    assert generic.description["primitives"] == [] and generic.description["simulation_models"] is None
    assert generic.description["primitive_instances"] == {}
    desc = ecp5.description
    assert desc["primitives"] == ["DP16KD", "MULT18X18D"]
    assert desc["primitive_instances"]["MULT18X18D"] == ECP5.lanes ** 2
    assert (REPO / desc["simulation_models"]).is_file()
    text = ecp5.verilog_path.read_text()
    assert re.search(r"^\s*DP16KD\s+#\(", text, re.M) and "module DP16KD" not in text


def unelaborated_engine(config):
    engine = Engine(config)
    engine._MustUse__silence = True         # only its signature is described here
    return engine


def test_description_never_disagrees_with_the_verilog(generic):
    text = generic.verilog_path.read_text()
    with pytest.raises(ExportError, match="host_in__ready"):
        export.describe(unelaborated_engine(GENERIC), text.replace("host_in__ready", "host_in__rdy"), "my_top")
    with pytest.raises(ExportError, match="host_out__payload"):
        export.describe(unelaborated_engine(GENERIC), text.replace("output [32:0] host_out__payload;",
                                                      "output [31:0] host_out__payload;"), "my_top")
    with pytest.raises(ExportError, match="'other'"):
        export.describe(unelaborated_engine(GENERIC), text, "other")


def test_verilog_primitives_scan():
    text = ("module top(a);\n  input a;\n  sub u0 (.a(a));\n  always @(posedge a)\n    if (a) b <= 1;\n"
            "  CELL #(.P(1)) c0 (.A(a));\n  CELL \\c1$2  (.A(a));\nendmodule\nmodule sub(a);\n  input a;\nendmodule\n")
    assert export.verilog_primitives(text) == {"CELL": 2}


def test_verilator_lint(generic):
    from sim.runner import verilator_root
    try:
        root = verilator_root()
    except RuntimeError as e:
        pytest.skip(f"verilator not available: {e}")
    env = dict(os.environ, PATH=f"{root / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", VERILATOR_ROOT=str(root))
    proc = subprocess.run([str(root / "bin" / "verilator"), "--lint-only", "-Wno-fatal", "--top-module", "my_top",
                           str(generic.verilog_path)], env=env, capture_output=True, text=True, timeout=600)
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("%Error")]
    assert proc.returncode == 0 and not errors, "\n".join(errors[:20]) or proc.stderr[-2000:]


@pytest.mark.parametrize("name", ["", "1top", "has space", "a-b", "module", "logic", 7, "\\esc"])
def test_bad_name(tmp_path, name):
    with pytest.raises(ValueError, match=re.escape(f"name={name!r}")):
        export_verilog(GENERIC, tmp_path, name=name)
    assert list(tmp_path.iterdir()) == []


def test_out_dir_is_a_file(tmp_path):
    file = tmp_path / "taken"
    file.write_text("x")
    with pytest.raises(ValueError, match="taken.*not a directory"):
        export_verilog(GENERIC, file)
    with pytest.raises(ValueError, match="taken.*not a directory"):
        export_verilog(GENERIC, file / "below")
    (tmp_path / "d" / "wage_engine.v").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"wage_engine\.v.*not a file"):
        export_verilog(GENERIC, tmp_path / "d")
    with pytest.raises(TypeError, match="out_dir=3"):
        export_verilog(GENERIC, 3)


def test_wrong_config_type(tmp_path):
    with pytest.raises(TypeError, match=r"config=.*WageConfig.*must be a hw\.engine\.config\.EngineConfig"):
        export_verilog(WAGE, tmp_path)
    with pytest.raises(TypeError, match=r"config=\{'lanes': 4\}"):
        export_verilog({"lanes": 4}, tmp_path)
