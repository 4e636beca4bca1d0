"""hw.sweep: the design-space sweep's bookkeeping (points, resume, table, plot, predicted rate).

The builds themselves are hw.build's (tested end to end in test_hw_build.py); here a recorded build
function stands in for them so that the sweep's own logic is checked in seconds.
"""

import json

import pytest

from golden.config import WageConfig
from hw.engine.compiler import array_beats, compile_network
from hw.engine.config import EngineConfig
from hw.sweep import ARRAY_BUSY, SweepError, SweepPoint, point_config, predicted_images_per_s, run_sweep

BASE = EngineConfig(WageConfig(net="8FC-10", input_shape=(1, 8, 8), batch_size=4), lanes=4, data_words=256,
                    weight_words=256, label_words=4, program_words=2048, target="ecp5")
CALLS = []
PLACED = []


def fake_build(board, variant, config_dict, point, out_dir, seed, timeout_s, placer, timing_driven):
    """Fmax falls with the array size; the 8-lane point misses a 100 MHz target."""
    CALLS.append(point.key)
    PLACED.append((placer, timing_driven))
    config = EngineConfig.from_dict(config_dict)
    assert config.lanes == point.lanes and (board, variant, seed) == ("ulx3s", "85F", 1)
    fmax = 120.0 - 5 * point.lanes
    res = {"TRELLIS_COMB": {"used": 1000 * point.lanes, "available": 83640, "percent": 1.2 * point.lanes},
           "MULT18X18D": {"used": point.lanes ** 2, "available": 156, "percent": 100 * point.lanes ** 2 / 156}}
    met = fmax >= point.freq_mhz
    return {"status": "met" if met else "not met", "fmax_mhz": fmax, "freq_mhz": point.freq_mhz,
            "resources": res, "bitstream": f"{out_dir}/wage_top.bit" if met else None, "seconds": 1.0}


def test_point_config_sizes_the_memories_to_the_network():
    for lanes in (4, 8):
        c = point_config(BASE, lanes)
        usage = compile_network(c).usage
        assert c.lanes == lanes and c.data_words % 512 == 0 and c.weight_words % 512 == 0
        assert usage["act"][0] <= c.data_words and usage["weights"][0] <= c.weight_words


def test_predicted_rate_is_clock_times_batch_over_beats():
    c = point_config(BASE, 4)
    assert predicted_images_per_s(c, 100.0) == pytest.approx(
        100e6 * c.batch * ARRAY_BUSY / array_beats(compile_network(c)))


def test_sweep_resumes_tabulates_and_plots(tmp_path):
    CALLS.clear()
    lines = []
    results = run_sweep("ulx3s", "85F", BASE, [4, 8], [50, 100], tmp_path, jobs=1, build_point=fake_build,
                        progress=lines.append)
    assert sorted(CALLS) == ["L4-f100", "L4-f50", "L8-f100", "L8-f50"]
    points = json.loads((tmp_path / "sweep.json").read_text())["points"]
    assert points == results["points"] and len(points) == 4
    assert points["L8-f100"]["status"] == "not met" and points["L8-f50"]["status"] == "met"
    # not met: the rate is at the achieved Fmax (80 MHz), met: at the target
    c8 = point_config(BASE, 8)
    assert points["L8-f100"]["images_per_s"] == pytest.approx(predicted_images_per_s(c8, 80.0), rel=1e-6)
    assert points["L8-f50"]["images_per_s"] == pytest.approx(predicted_images_per_s(c8, 50.0), rel=1e-6)
    table = (tmp_path / "sweep.md").read_text()
    assert table.count("\n| ") == 4 and "best point:" in table      # four rows
    best = max(points.values(), key=lambda e: e["images_per_s"])
    assert f"best point: {best['lanes']} lanes at {best['target_mhz']:g} MHz" in table
    assert (tmp_path / "sweep.png").stat().st_size > 10_000
    # resume: nothing is rebuilt; a new clock target builds only its own points
    CALLS.clear()
    run_sweep("ulx3s", "85F", BASE, [4, 8], [50, 100, 75], tmp_path, jobs=1, build_point=fake_build,
              progress=lines.append)
    assert sorted(CALLS) == ["L4-f75", "L8-f75"]
    CALLS.clear()
    run_sweep("ulx3s", "85F", BASE, [4], [50], tmp_path, jobs=1, build_point=fake_build, progress=lines.append,
              force=True)
    assert CALLS == ["L4-f50"]


def test_failed_points_are_recorded_and_retried(tmp_path):
    def failing(board, variant, config_dict, point, out_dir, seed, timeout_s, placer, timing_driven):
        return {"status": "failed", "error": "the design does not fit the LFE5U-85F: TRELLIS_COMB 90000/83640"}

    results = run_sweep("ulx3s", "85F", BASE, [4], [50], tmp_path, jobs=1, build_point=failing, progress=lambda m: None)
    entry = results["points"][SweepPoint(4, 50).key]
    assert entry["status"] == "failed" and "does not fit" in entry["error"] and "images_per_s" not in entry
    assert "does not fit" in (tmp_path / "sweep.md").read_text()
    CALLS.clear()
    run_sweep("ulx3s", "85F", BASE, [4], [50], tmp_path, jobs=1, build_point=fake_build, progress=lambda m: None)
    assert CALLS == ["L4-f50"]


def test_the_placer_reaches_every_build(tmp_path):
    PLACED.clear()
    run_sweep("ulx3s", "85F", BASE, [4, 8], [50], tmp_path, jobs=1, placer="static", build_point=fake_build,
              progress=lambda m: None)
    assert PLACED == [("static", True), ("static", True)]
    PLACED.clear()
    run_sweep("ulx3s", "85F", BASE, [4, 8], [50], tmp_path / "wire", jobs=1, placer="static", timing_driven=False,
              build_point=fake_build, progress=lambda m: None)
    assert PLACED == [("static", False), ("static", False)]


def test_parallel_workers_fill_the_same_results(tmp_path):
    results = run_sweep("ulx3s", "85F", BASE, [4, 8], [50], tmp_path, jobs=2, build_point=fake_build,
                        progress=lambda m: None)
    assert {k: v["status"] for k, v in results["points"].items()} == {"L4-f50": "met", "L8-f50": "met"}


@pytest.mark.parametrize("kwargs, message", [
    (dict(lanes=[6]), "lanes=6: must be a power of two"),
    (dict(lanes=[]), "lanes: at least one value"),
    (dict(freqs=[1000]), "freq=1000"),
    (dict(jobs=0), "jobs=0"),
    (dict(placer="sa"), "placer='sa': must be one of heap, static"),
    (dict(timing_driven=0), "timing_driven=0: must be True or False"),
])
def test_bad_parameters_are_named(tmp_path, kwargs, message):
    args = dict(lanes=[4], freqs=[50], jobs=1, placer="heap", timing_driven=True)
    args.update(kwargs)
    with pytest.raises(SweepError, match=message):
        run_sweep("ulx3s", "85F", BASE, args["lanes"], args["freqs"], tmp_path, jobs=args["jobs"],
                  placer=args["placer"], timing_driven=args["timing_driven"], build_point=fake_build,
                  progress=lambda m: None)


def test_another_boards_results_are_not_mixed_in(tmp_path):
    run_sweep("ulx3s", "85F", BASE, [4], [50], tmp_path, jobs=1, build_point=fake_build, progress=lambda m: None)
    with pytest.raises(SweepError, match="holds a sweep of ulx3s 85F, not ulx3s 45F"):
        run_sweep("ulx3s", "45F", BASE, [4], [50], tmp_path, jobs=1, build_point=fake_build, progress=lambda m: None)
