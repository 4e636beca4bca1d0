"""pytest hooks for the cocotb/Verilator tests in ``sim/``: a pass/fail table at the end.

Every :func:`sim.runner.run_cocotb` call records a :class:`sim.runner.SimResult` (with the
pytest node id); at the end of the session this prints one row per simulator run -- test,
result, build seconds ("cached" when the Verilated model was reused), run seconds, seed -- and
a row with dashes for sim tests that never reached the simulator.
"""

from __future__ import annotations

_OUTCOMES: dict[str, str] = {}


def pytest_runtest_logreport(report):
    if report.when == "call" or (report.when == "setup" and report.outcome != "passed"):
        outcome = report.outcome.upper()
        if report.when == "setup" and outcome == "FAILED":
            outcome = "ERROR"
        _OUTCOMES.setdefault(report.nodeid, outcome)
    elif report.when == "teardown" and report.outcome == "failed":
        _OUTCOMES[report.nodeid] = "ERROR"


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    from sim.runner import RESULTS

    if not _OUTCOMES and not RESULTS:
        return
    by_node: dict[str, list] = {}
    for r in RESULTS:
        by_node.setdefault(r.nodeid, []).append(r)
    rows = []
    for nodeid, outcome in _OUTCOMES.items():
        runs = by_node.pop(nodeid, [])
        if not runs:
            rows.append((nodeid, outcome, "-", "-", "-"))
        for r in runs:
            label = nodeid if len(runs) == 1 else f"{nodeid} [{r.name}]"
            state = outcome
            if outcome == "PASSED" and not r.ok:  # the test asserted on this failure itself
                why = ", ".join(r.failures) or (r.error or "?").split(";")[0].splitlines()[0][:50]
                state = f"PASSED (sim failed as expected: {why})"
            build = "cached" if r.cached else f"{r.build_s:.1f}"
            rows.append((label, state, build, f"{r.run_s:.1f}", str(r.seed)))
    for nodeid, runs in by_node.items():  # runs outside a reported test (e.g. module fixtures)
        for r in runs:
            rows.append((nodeid or r.name, "PASS" if r.ok else "FAIL",
                         "cached" if r.cached else f"{r.build_s:.1f}", f"{r.run_s:.1f}", str(r.seed)))
    head = ("test", "result", "build s", "run s", "seed")
    widths = [max(len(row[i]) for row in rows + [head]) for i in range(5)]
    tr = terminalreporter
    tr.section("simulation summary")
    fmt = "  ".join(f"{{:{'<' if i < 2 else '>'}{w}}}" for i, w in enumerate(widths))
    tr.write_line(fmt.format(*head))
    tr.write_line("  ".join("-" * w for w in widths))
    for row in rows:
        tr.write_line(fmt.format(*row))
