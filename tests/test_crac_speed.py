"""The CPU speed benchmark runs end to end: both arms train on the same crops, and its two kernel timings compare
equal results (the numbers themselves are measurements, not test results)."""

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_speed_benchmark_runs_both_arms_with_s2(tmp_path):
    out = tmp_path / "speed.json"
    command = [sys.executable, "benchmarks/crac_speed.py", "--scenarios", "S1+S2", "--blocks", "2", "--block", "1"]
    result = subprocess.run(
        [*command, "--rounds", "1", "--json", str(out)], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    measured = json.loads(out.read_text())
    arms = measured["S1+S2"]
    assert set(arms) == {"old", "new"}
    for arm in arms.values():
        assert arm["iterations_per_second"] > 0 and len(arm["losses"]) == 2
    # same seed, same crops: the first iteration's losses differ only by rounding (channels-last, folded BatchNorm)
    first_old, first_new = arms["old"]["losses"][0], arms["new"]["losses"][0]
    assert abs(first_new - first_old) <= 1e-3 * abs(first_old)
    assert measured["percentile"]["head"]["gamma"] == measured["percentile"]["now"]["gamma"]
    assert 0 < measured["confidence_pass"]["max_difference"] < 2e-5
    assert "S2 confidence net, one teacher map" in result.stdout and "x" in result.stdout
