"""hw.build: the board build flow — catalog, errors, and one small engine built end to end for the 85F."""

import json

import pytest

from boards.catalog import BOARDS, SDRAM_ENGINES, SDRAM_FREQ_MHZ, VARIANT_ENGINES, BoardError, get_board
from golden.config import WageConfig
from hw import build, synth
from hw.engine.compiler import compile_network
from hw.engine.config import EngineConfig

# The smallest useful engine: a 4×4 array and a 64-8-10 MLP (what CI can place and route in minutes).
SMALL = EngineConfig(WageConfig(net="8FC-10", input_shape=(1, 8, 8), batch_size=4), lanes=4, data_words=256,
                     weight_words=256, label_words=4, program_words=2048, target="ecp5")


def test_boards_and_variants_are_listed_when_unknown():
    with pytest.raises(BoardError, match="board='de10': unknown; supported: ulx3s, ecpix5"):
        get_board("de10")
    with pytest.raises(BoardError, match=r"variant='65F': board 'ulx3s' comes as 12F, 25F, 45F, 85F \(default 85F\)"):
        get_board("ulx3s").check_variant("65f")
    assert get_board("ULX3S").check_variant(None) == "85F"


@pytest.mark.parametrize("board, variant", [(b, v) for b in BOARDS for v in BOARDS[b].variants])
def test_default_configuration_of_every_variant_runs_its_network(board, variant):
    b = BOARDS[board]
    config = b.default_config(variant)
    assert config is VARIANT_ENGINES[b.part(variant)] and config.target == "ecp5" and config.external_depth == 0
    compile_network(config)                  # fits its memories (raises FitError otherwise)
    platform = b.platform(variant)
    assert platform.device.endswith(variant)
    assert platform.lookup(b.clock, 0).clock is not None              # the oscillator has a frequency


def _cli(capsys, *argv):
    code = build.main(list(argv))
    out = capsys.readouterr()
    return code, out.out + out.err


def test_cli_errors_name_the_bad_value(capsys, tmp_path):
    code, text = _cli(capsys, "--board", "nexys")
    assert code == 2 and "board='nexys': unknown; supported: ulx3s, ecpix5" in text
    code, text = _cli(capsys, "--board", "ulx3s", "--variant", "99F")
    assert code == 2 and "variant='99F'" in text and "12F, 25F, 45F, 85F" in text
    code, text = _cli(capsys, "--board", "ulx3s", "--config", str(tmp_path / "missing.json"))
    assert code == 2 and "cannot read engine configuration file" in text and "missing.json" in text
    (tmp_path / "bad.json").write_text('{"lanes": 6}')
    code, text = _cli(capsys, "--board", "ulx3s", "--config", str(tmp_path / "bad.json"))
    assert code == 2 and "lanes=6" in text
    SMALL.replace(weight_words=100).save(tmp_path / "small.json")
    code, text = _cli(capsys, "--board", "ulx3s", "--config", str(tmp_path / "small.json"))
    assert code == 1 and "cannot run its network" in text and "weight" in text
    SMALL.replace(external_words=1024).save(tmp_path / "ext.json")
    code, text = _cli(capsys, "--board", "ecpix5", "--config", str(tmp_path / "ext.json"), "--out", str(tmp_path / "o"))
    assert code == 1 and "external_words=1024" in text and "ecpix5 has no SDR SDRAM" in text
    code, text = _cli(capsys, "--board", "ulx3s", "--freq", "500", "--config", str(tmp_path / "small.json"))
    assert code == 1 and "cannot run its network" in text          # the fit is checked before the clock
    SMALL.save(tmp_path / "ok.json")
    code, text = _cli(capsys, "--board", "ulx3s", "--freq", "500", "--config", str(tmp_path / "ok.json"),
                      "--out", str(tmp_path / "o2"))
    assert code == 2 and "f_out_mhz=500" in text
    code, text = _cli(capsys, "--board", "ulx3s", "--baud", "4000000", "--config", str(tmp_path / "ok.json"))
    assert code == 1 and "baud=4000000" in text
    (tmp_path / "file").write_text("x")
    code, text = _cli(capsys, "--board", "ulx3s", "--config", str(tmp_path / "ok.json"), "--out", str(tmp_path / "file"))
    assert code == 1 and "exists and is not a directory" in text


def test_list_shows_every_board(capsys):
    code, text = _cli(capsys, "--list")
    assert code == 0
    for b in BOARDS.values():
        assert b.name in text and all(v in text for v in b.variants)
    assert ("85F --memory sdram: mlp batch 16, 8x8 array, 1024 data / 1024 weight words on chip, "
            "4096 data / 32768 weight words in SDRAM, 40 MHz") in text
    assert text.count("--memory sdram:") == 1                     # the ULX3S 85F only


@pytest.fixture
def stop_at_top(monkeypatch):
    """The board top stood in for: records the configuration and clock a build asks for, then stops
    it (a ValueError there is the build's "cannot build the board top", exit 1) before any tool."""
    import boards.top
    seen = {}

    def fake_top(config, board, **kw):
        seen.update(config=config, board=board.name, freq_mhz=kw["freq_mhz"], sdram_read_delay=kw.get("sdram_read_delay"))
        raise ValueError("stopped before the tools")

    monkeypatch.setattr(boards.top, "EngineBoardTop", fake_top)
    return seen


def test_cli_memory_picks_the_default_engine_and_its_clock(capsys, tmp_path, monkeypatch, stop_at_top):
    monkeypatch.chdir(tmp_path)
    code, text = _cli(capsys, "--board", "ulx3s", "--memory", "sdram")
    assert code == 1 and "stopped before the tools" in text
    assert stop_at_top["config"] == SDRAM_ENGINES["85F"] and stop_at_top["freq_mhz"] == SDRAM_FREQ_MHZ == 40.0
    assert (tmp_path / "build" / "ulx3s-85F-sdram").is_dir()          # not the on-chip build's directory
    code, text = _cli(capsys, "--board", "ulx3s", "--memory", "sdram", "--freq", "30", "--out", "o")
    assert stop_at_top["config"] == SDRAM_ENGINES["85F"] and stop_at_top["freq_mhz"] == 30.0   # --freq wins
    for memory in ([], ["--memory", "bram"]):
        code, text = _cli(capsys, "--board", "ulx3s", "--variant", "45F", "--out", "o", *memory)
        assert stop_at_top["config"] == VARIANT_ENGINES["45F"] and stop_at_top["freq_mhz"] == build.DEFAULT_FREQ_MHZ
    SMALL.replace(external_words=1024).save(tmp_path / "ext.json")   # a --config keeps the 50 MHz default
    code, text = _cli(capsys, "--board", "ulx3s", "--config", str(tmp_path / "ext.json"), "--out", "o")
    assert stop_at_top["config"] == SMALL.replace(external_words=1024) and stop_at_top["freq_mhz"] == 50.0


def test_cli_memory_errors_name_the_bad_value(capsys, tmp_path):
    SMALL.save(tmp_path / "ok.json")
    code, text = _cli(capsys, "--board", "ulx3s", "--memory", "sdram", "--config", str(tmp_path / "ok.json"))
    assert code == 2 and "--memory sdram and --config" in text and "give one" in text
    code, text = _cli(capsys, "--board", "ecpix5", "--memory", "sdram")
    assert code == 2 and "memory='sdram': board 'ecpix5' has no SDR SDRAM" in text
    code, text = _cli(capsys, "--board", "ulx3s", "--variant", "25F", "--memory", "sdram")
    assert code == 2 and "the ulx3s 25F has no SDRAM engine; parts with one: 85F" in text
    code, text = _cli(capsys, "--export-verilog", str(tmp_path / "v"), "--board", "ecpix5", "--memory", "sdram")
    assert code == 2 and "has no SDR SDRAM" in text and not (tmp_path / "v").exists()
    code, text = _cli(capsys, "--sweep", "--memory", "sdram", "--out", str(tmp_path / "s"))
    assert code == 2 and "the sweep sizes every point's memories on chip" in text
    with pytest.raises(SystemExit) as e:
        build.main(["--board", "ulx3s", "--memory", "ddr3"])
    assert e.value.code == 2 and "argument --memory: invalid choice: 'ddr3'" in capsys.readouterr().err
    with pytest.raises(build.BuildError, match=r"memory='sdram' and a configuration: give one"):
        build.resolve_config(get_board("ulx3s"), "85F", SMALL, "sdram")
    assert build.resolve_config(get_board("ulx3s"), "85F", None, "sdram") is SDRAM_ENGINES["85F"]


@pytest.fixture(scope="module")
def small_build(tmp_path_factory):
    out = tmp_path_factory.mktemp("ulx3s-85F")
    return build.build_bitstream("ulx3s", "85F", SMALL, freq_mhz=25, out_dir=out, progress=None), out


def test_small_engine_builds_a_bitstream_for_the_85f(small_build):
    report, out = small_build
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report.to_dict()))
    assert on_disk["device"] == "LFE5U-85F" and on_disk["timing_met"] is True
    assert on_disk["fmax_mhz"] >= on_disk["freq_mhz"] == 25.0
    res = on_disk["resources"]
    assert res["MULT18X18D"]["used"] == 16 and res["MULT18X18D"]["available"] == 156      # the 4×4 array
    assert res["EHXPLLL"]["used"] == 1 and res["DP16KD"]["used"] > 0
    assert 0 < res["TRELLIS_COMB"]["percent"] < 100
    assert EngineConfig.from_dict(on_disk["config"]) == SMALL and on_disk["fingerprint"] == SMALL.fingerprint()
    bitstream = (out / "wage_top.bit").read_bytes()
    assert on_disk["bitstream"] == str(out / "wage_top.bit")
    assert b"LFE5U-85F" in bitstream[:256] and b"\xbd\xb3" in bitstream[:512]   # ecppack header, sync word
    assert len(bitstream) > 100_000


def test_timing_failure_is_an_error_with_the_achieved_fmax(small_build, tmp_path, monkeypatch):
    """Re-time the small build's placed design at a clock it cannot reach: error, report, no bitstream."""
    report, out = small_build
    real_run = build._run

    def reuse_placement(cmd, **kw):              # yosys and nextpnr: take the small build's outputs
        label = kw["label"]
        if label == "yosys":
            (kw["cwd"] / "wage_top.json").write_bytes((out / "wage_top.json").read_bytes())
        elif label == "nextpnr":
            data = json.loads((out / "nextpnr_report.json").read_text())
            (kw["cwd"] / "nextpnr_report.json").write_text(json.dumps(data))
        else:
            real_run(cmd, **kw)

    monkeypatch.setattr(build, "_run", reuse_placement)
    with pytest.raises(build.BuildError, match=rf"timing not met: the engine clock reaches {report.fmax_mhz:.2f} MHz"):
        build.build_bitstream("ulx3s", "85F", SMALL, freq_mhz=report.fmax_mhz + 20, out_dir=tmp_path, progress=None)
    failed = json.loads((tmp_path / "report.json").read_text())
    assert failed["timing_met"] is False and failed["bitstream"] is None and not (tmp_path / "wage_top.bit").exists()


def test_ecpix5_top_level_is_placed_on_its_pins(tmp_path):
    """The second board elaborates with its own pins (the UART, RGB LEDs, the 100 MHz clock and its
    PLL); its place and route is the same flow as the ULX3S's, run as a benchmark."""
    board = get_board("ecpix5")
    platform = board.platform("85F")
    from boards.top import EngineBoardTop
    top = EngineBoardTop(SMALL, board, freq_mhz=50, clock_in_mhz=build._clock_mhz(platform, board.clock))
    assert (top.pll_params.clki_div, top.pll_params.f_out_mhz) == (2, 50.0)
    plan = platform.prepare(top, name="wage_top")
    lpf = plan.files["wage_top.lpf"]
    for pin in ("R26", "R24", "K23", "AB1", "T23", "R21", "T22"):      # uart rx/tx, clk100, rst, rgb_led 0
        assert f'SITE "{pin}"' in lpf
    assert "EHXPLLL" in plan.files["wage_top.il"]


def test_ulx3s_top_with_external_words_drives_the_sdram_pins():
    """External words put the SDRAM controller in the ULX3S top: every SDRAM pin is placed and passes
    an IOLOGIC register, and the chip clock comes from a DDR output register."""
    board = get_board("ulx3s")
    platform = board.platform("85F")
    from boards.top import EngineBoardTop
    top = EngineBoardTop(SMALL.replace(external_words=4096), board, freq_mhz=50,
                         clock_in_mhz=build._clock_mhz(platform, board.clock))
    plan = platform.prepare(top, name="wage_top")
    lpf, il = plan.files["wage_top.lpf"], plan.files["wage_top.il"]
    for pin in ("F19", "F20", "P20", "T20", "T19", "R20", "U19", "E20", "P19", "N20", "M20", "G19", "J16", "J17"):
        assert f'SITE "{pin}"' in lpf, pin                # clk, cke, cs#, we#, cas#, ras#, dqm, ba, a, dq
    assert il.count("ODDRX1F") >= 1 and il.count("IFS1P3DX") >= 16 and il.count("OFS1P3DX") >= 16 + 13 + 2


def _cell_clocks(il: str, kinds) -> list[str]:
    """The SCLK net of every RTLIL cell of the given kinds."""
    import re
    cells = re.findall(r"cell \\(\w+) .*?\n(.*?)\n\s*end", il, re.S)
    return [re.search(r"connect \\SCLK (\S+)", body).group(1) for kind, body in cells if kind in kinds]


def test_ulx3s_top_with_an_sdram_clock_of_its_own():
    """``sdram_mhz`` (``--sdram-freq``): the PLL's second output clocks the SDRAM controller, every
    SDRAM pin register and the chip clock's DDR register; the engine stays on the first output,
    the controller's timing is in the SDRAM's cycles."""
    from boards.sdram import SDRAMTiming
    from boards.top import EngineBoardTop
    board = get_board("ulx3s")
    platform = board.platform("85F")
    clock_in = build._clock_mhz(platform, board.clock)
    top = EngineBoardTop(SMALL.replace(external_words=4096), board, freq_mhz=37.5, sdram_mhz=75, clock_in_mhz=clock_in)
    p = top.pll_params
    assert (p.f_out_mhz, p.f_out2_mhz, p.clkop_div, p.clkos_div) == (37.5, 75.0, 16, 8)
    assert top.core.sdram_domain == "sdram" and top.core.sdram.cycles == SDRAMTiming().cycles(75e6)
    il = platform.prepare(top, name="wage_top").files["wage_top.il"]
    pins = _cell_clocks(il, ("IFS1P3DX", "OFS1P3DX", "ODDRX1F"))
    assert len(pins) >= 16 + 16 + 13 + 2 + 1 and set(pins) == {"\\sdram_clk"}
    assert "ExternalMemoryCDC" in il or "sdram_cdc" in il
    one = EngineBoardTop(SMALL.replace(external_words=4096), board, freq_mhz=37.5, clock_in_mhz=clock_in)
    assert one.core.sdram_domain == "sync" and one.pll_params.clkos_div is None
    one_il = board.platform("85F").prepare(one, name="wage_top").files["wage_top.il"]    # (a platform prepares once)
    assert set(_cell_clocks(one_il, ("IFS1P3DX", "OFS1P3DX", "ODDRX1F"))) == {"\\clk"}
    with pytest.raises(ValueError, match="sdram_mhz=75: this configuration has no external words"):
        EngineBoardTop(SMALL, board, freq_mhz=37.5, sdram_mhz=75, clock_in_mhz=clock_in)


def test_an_sdram_clock_must_meet_timing_too(tmp_path, monkeypatch):
    """With ``sdram_freq_mhz`` the build checks each clock against its own frequency, names the one
    that fails, and reports both; an on-chip configuration has no SDRAM clock to give."""
    config = SMALL.replace(external_words=4096)
    sdram_fmax = []

    def tools(cmd, **kw):
        if kw["label"] == "yosys":
            (kw["cwd"] / "wage_top.json").write_text('{"modules": {}}')
        elif kw["label"] == "nextpnr":
            (kw["cwd"] / "nextpnr_report.json").write_text(json.dumps(
                {"fmax": {"$glbnet$clk": {"achieved": 45.0, "constraint": 37.5},
                          "$glbnet$clk_out2": {"achieved": sdram_fmax[-1], "constraint": 75.0},
                          "$glbnet$clk25_0__io": {"achieved": 300.0, "constraint": 25.0}},
                 "utilization": {}, "critical_paths": []}))
        else:
            (kw["cwd"] / "wage_top.bit").write_bytes(b"bit")

    monkeypatch.setattr(build, "_run", tools)
    sdram_fmax.append(70.0)
    with pytest.raises(build.BuildError, match=r"the SDRAM clock reaches 70.00 MHz, 75.000 MHz was requested; "
                                               r"rebuild with --sdram-freq 70"):
        build.build_bitstream("ulx3s", "85F", config, freq_mhz=37.5, sdram_freq_mhz=75, out_dir=tmp_path, progress=None)
    failed = json.loads((tmp_path / "report.json").read_text())
    assert failed["timing_met"] is False and failed["fmax_mhz"] == 45.0 and failed["sdram_fmax_mhz"] == 70.0
    sdram_fmax.append(81.5)
    report = build.build_bitstream("ulx3s", "85F", config, freq_mhz=37.5, sdram_freq_mhz=75, out_dir=tmp_path,
                                   progress=None)
    assert report.timing_met and (report.fmax_mhz, report.sdram_fmax_mhz, report.sdram_freq_mhz) == (45.0, 81.5, 75.0)
    assert report.pll["clkos_div"] == 8 and "SDRAM clock: Fmax 81.50 MHz, requested 75.000 MHz" in report.summary()
    with pytest.raises(build.BuildError, match="sdram_freq_mhz=75: the configuration keeps everything on chip"):
        build.build_bitstream("ulx3s", "85F", SMALL, sdram_freq_mhz=75, out_dir=tmp_path, progress=None)


def test_the_top_passes_the_sdram_read_delay_to_the_controller():
    from boards.top import SDRAM_READ_DELAY, EngineBoardTop
    board = get_board("ulx3s")
    clock_in = build._clock_mhz(board.platform("85F"), board.clock)
    config = SMALL.replace(external_words=4096)
    assert EngineBoardTop(config, board, freq_mhz=50, clock_in_mhz=clock_in).core.sdram.read_delay == SDRAM_READ_DELAY == 2
    assert EngineBoardTop(config, board, freq_mhz=50, clock_in_mhz=clock_in, sdram_read_delay=3).core.sdram.read_delay == 3
    with pytest.raises(ValueError, match="sdram_read_delay=3: this configuration has no external words"):
        EngineBoardTop(SMALL, board, freq_mhz=50, clock_in_mhz=clock_in, sdram_read_delay=3)


def test_sdram_read_delay_reaches_the_top_and_bad_values_are_refused(tmp_path, capsys, stop_at_top):
    """``--sdram-read-delay`` (``sdram_read_delay``) reaches the board top; out of range, not an
    integer or without SDRAM it is refused naming the value."""
    config = SMALL.replace(external_words=4096)
    for bad, message in ((9, r"sdram_read_delay=9: must be an integer in 0\.\.8"), (-1, r"sdram_read_delay=-1: must be"),
                         (True, r"sdram_read_delay=True: must be"), ("2", r"sdram_read_delay='2': must be")):
        with pytest.raises(build.BuildError, match=message):
            build.build_bitstream("ulx3s", "85F", config, sdram_read_delay=bad, out_dir=tmp_path, progress=None)
    with pytest.raises(build.BuildError, match="sdram_read_delay=1: the configuration keeps everything on chip"):
        build.build_bitstream("ulx3s", "85F", SMALL, sdram_read_delay=1, out_dir=tmp_path, progress=None)
    config.save(tmp_path / "ext.json")
    for args, want in (([], 2), (["--sdram-read-delay", "1"], 1)):
        code, text = _cli(capsys, "--board", "ulx3s", "--config", str(tmp_path / "ext.json"), "--out", str(tmp_path / "o"), *args)
        assert code == 1 and "stopped before the tools" in text and stop_at_top["sdram_read_delay"] == want
    code, text = _cli(capsys, "--board", "ulx3s", "--config", str(tmp_path / "ext.json"), "--sdram-read-delay", "12")
    assert code == 1 and "sdram_read_delay=12: must be an integer in 0..8" in text


def test_the_report_records_the_sdram_read_delay_and_a_shared_sdram_clock(tmp_path, monkeypatch):
    def tools(cmd, **kw):
        if kw["label"] == "yosys":
            (kw["cwd"] / "wage_top.json").write_text('{"modules": {}}')
        elif kw["label"] == "nextpnr":
            (kw["cwd"] / "nextpnr_report.json").write_text(json.dumps(
                {"fmax": {"$glbnet$clk": {"achieved": 60.0, "constraint": 50.0}}, "utilization": {}, "critical_paths": []}))
        else:
            (kw["cwd"] / "wage_top.bit").write_bytes(b"bit")

    monkeypatch.setattr(build, "_run", tools)
    config = SMALL.replace(external_words=4096)
    for delay, want in ((None, 2), (3, 3)):
        report = build.build_bitstream("ulx3s", "85F", config, freq_mhz=50, sdram_read_delay=delay, out_dir=tmp_path,
                                       progress=None)
        assert report.sdram_read_delay == want and json.loads((tmp_path / "report.json").read_text())["sdram_read_delay"] == want
        assert f", SDRAM read delay {want}" in report.summary().splitlines()[0]
    report = build.build_bitstream("ulx3s", "85F", SMALL, freq_mhz=50, out_dir=tmp_path, progress=None)
    assert report.sdram_read_delay is None and "read delay" not in report.summary()
    # --sdram-freq equal to the engine's clock: the SDRAM stays on it (the second PLL output clocks
    # nothing, nextpnr times one clock), so its Fmax is the engine clock's, not a missing net's 0
    report = build.build_bitstream("ulx3s", "85F", config, freq_mhz=50, sdram_freq_mhz=50, out_dir=tmp_path,
                                   progress=None)
    assert report.timing_met and (report.sdram_freq_mhz, report.sdram_fmax_mhz) == (50.0, 60.0)


def test_external_memory_the_chip_cannot_hold_is_refused(tmp_path):
    config = SMALL.replace(external_words=1 << 23)                    # 2^23 words x 3 columns > 2^24
    with pytest.raises(build.BuildError, match=r"cannot build the board top: addr_bits=23, data_width=48"):
        build.build_bitstream("ulx3s", None, config, out_dir=tmp_path, progress=None)


def test_programmer_failures_are_reported_plainly(tmp_path, monkeypatch):
    board = get_board("ulx3s")
    monkeypatch.setenv("OPENFPGALOADER", str(tmp_path / "no-such-loader"))
    with pytest.raises(build.BuildError, match="no-such-loader: not found"):
        build.program_board(board, tmp_path / "x.bit")
    fake = tmp_path / "loader"
    fake.write_text("#!/bin/sh\necho \"args: $*\"\necho 'unable to open ftdi device: -3 (device not found)' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("OPENFPGALOADER", str(fake))
    with pytest.raises(build.BuildError, match=r"(?s)exit code 1.*args: -b ulx3s -f .*x.bit.*device not found"):
        build.program_board(board, tmp_path / "x.bit", flash=True)
    with pytest.raises(build.BuildError, match=r"(?s)args: -b ulx3s -m "):
        build.program_board(board, tmp_path / "x.bit")


def test_classic_abc_replaces_only_the_lut_mapping_step():
    script = ("read_rtlil wage_top.il\nproc\n    synth_ecp5  -top wage_top\n"
              "tee -q -o wage_top_stat.json stat -json\nwrite_json wage_top.json\n")
    assert synth.classic_abc_script(script) == (
        "read_rtlil wage_top.il\nproc\nsynth_ecp5 -top wage_top -run begin:map_luts\n"
        "techmap -map +/lattice/latches_map.v\nabc -lut 4\nclean\nsynth_ecp5 -top wage_top -run map_cells:\n"
        "tee -q -o wage_top_stat.json stat -json\nwrite_json wage_top.json\n")
    assert build.default_lut_mapper(SMALL) == "abc9" and build.default_lut_mapper(SMALL.replace(lanes=8)) == "abc"
    with pytest.raises(build.BuildError, match="lut_mapper='abc10': must be one of abc9, abc"):
        build.build_bitstream("ulx3s", None, SMALL, lut_mapper="abc10", progress=None)


def test_placer_reaches_nextpnr(tmp_path, monkeypatch):
    """--placer static goes to nextpnr and into the report; an unknown placer is refused first."""
    seen = []

    def tools(cmd, **kw):
        if kw["label"] == "yosys":
            (kw["cwd"] / "wage_top.json").write_text('{"modules": {}}')
        elif kw["label"] == "nextpnr":
            seen.append(cmd)
            (kw["cwd"] / "nextpnr_report.json").write_text(json.dumps(
                {"fmax": {"$glbnet$core.clk": {"achieved": 80.0, "constraint": 25.0}}, "utilization": {},
                 "critical_paths": []}))
        else:
            (kw["cwd"] / "wage_top.bit").write_bytes(b"bit")

    monkeypatch.setattr(build, "_run", tools)
    result = build.build_bitstream("ulx3s", "85F", SMALL, freq_mhz=25, placer="static", out_dir=tmp_path,
                                   progress=None)
    assert seen[0][seen[0].index("--placer") + 1] == "static" and result.placer == "static"
    assert json.loads((tmp_path / "report.json").read_text())["placer"] == "static"
    assert "--no-tmdriv" not in seen[0] and result.timing_driven and "timing-driven" not in result.summary()
    with pytest.raises(build.BuildError, match="placer='sa': must be one of heap, static"):
        build.build_bitstream("ulx3s", "85F", SMALL, placer="sa", out_dir=tmp_path, progress=None)
    # --no-timing-driven: nextpnr's --no-tmdriv, in the report and its summary
    assert build.main(["--board", "ulx3s", "--variant", "85F", "--freq", "25", "--no-timing-driven",
                       "--out", str(tmp_path)]) == 0
    assert "--no-tmdriv" in seen[-1]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["timing_driven"] is False
    with pytest.raises(build.BuildError, match="timing_driven='no': must be True or False"):
        build.build_bitstream("ulx3s", "85F", SMALL, timing_driven="no", out_dir=tmp_path, progress=None)


def test_silent_abc_crash_is_retried_with_dff(tmp_path, monkeypatch):
    """YoWASP's ABC can exit silently inside abc9: the build retries synth_ecp5 with -dff once.
    (The tools are stood in for: this checks the flow's decisions, not the tools.)"""
    calls = []
    fake_report = {"fmax": {"$glbnet$core.clk": {"achieved": 80.0, "constraint": 25.0}},
                   "utilization": {"MULT18X18D": {"used": 16, "available": 156}}, "critical_paths": []}

    def flaky_tools(cmd, **kw):
        label, cwd = kw["label"], kw["cwd"]
        calls.append(label)
        if label == "yosys" and calls.count("yosys") == 1:
            kw["log_path"].write_text('3.46.22.5. Executing ABC9.\nRunning ABC command: "/yosys-abc" -s -f x 2>&1\n')
            raise build.SynthError("yosys failed with exit code 1")
        if label == "yosys":
            assert "synth_ecp5 -dff " in (cwd / "wage_top.ys").read_text()
            (cwd / "wage_top.json").write_text('{"modules": {}}')
        elif label == "nextpnr":
            (cwd / "nextpnr_report.json").write_text(json.dumps(fake_report))
        else:
            (cwd / "wage_top.bit").write_bytes(b"bit")

    monkeypatch.setattr(build, "_run", flaky_tools)
    result = build.build_bitstream("ulx3s", "85F", SMALL, freq_mhz=25, out_dir=tmp_path, progress=None)
    assert calls == ["yosys", "yosys", "nextpnr", "ecppack"] and result.timing_met and result.fmax_mhz == 80.0
    assert result.placer == "heap" and "placer heap" in result.summary()
    assert result.memory == "bram" and json.loads((tmp_path / "report.json").read_text())["memory"] == "bram"
    assert (tmp_path / "yosys_abc_crash.log").exists()
    # a yosys error that is not the silent ABC exit is not retried
    calls.clear()

    def broken_yosys(cmd, **kw):
        calls.append(kw["label"])
        kw["log_path"].write_text("ERROR: Module `\\FOO' referenced in module `\\top' is not part of the design.\n")
        raise build.SynthError("yosys failed with exit code 1")

    monkeypatch.setattr(build, "_run", broken_yosys)
    with pytest.raises(build.SynthError):
        build.build_bitstream("ulx3s", "85F", SMALL, freq_mhz=25, out_dir=tmp_path / "b", progress=None)
    assert calls == ["yosys"]


def test_sweep_cli_passes_the_nextpnr_options(tmp_path, monkeypatch):
    """--sweep --placer static --no-timing-driven reach every build's options (run_sweep)."""
    import hw.sweep
    seen = {}
    monkeypatch.setattr(hw.sweep, "run_sweep", lambda *a, **kw: seen.update(kw))
    assert build.main(["--sweep", "--lanes", "4", "--freqs", "50", "--placer", "static", "--no-timing-driven",
                       "--out", str(tmp_path)]) == 0
    assert (seen["placer"], seen["timing_driven"]) == ("static", False)
