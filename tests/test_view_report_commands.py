"""``affcons view`` and ``affcons report`` on a real ``affcons run`` (a small job on the bundled ISBI volume), looked at
in headless Chromium as a user would (skipped with the reason when no Chromium is installed)."""

import json
import subprocess
import sys

import pytest

from affcons.cli import main as cli_main
from tests.browser import NEUROGLANCER_READY, chromium, element_box, region_stats, settled_screenshot  # noqa: F401 (fixture)
from tests.test_predict import make_checkpoint
from tests.test_run import job_config
from tests.test_viewer import PANEL, centre, colourfulness


@pytest.fixture(scope="module")
def job_run(tmp_path_factory):
    """A finished ``affcons run`` of the small job of ``tests/test_run.py``."""
    root = tmp_path_factory.mktemp("job")
    make_checkpoint(root / "model.pt")
    run_dir = root / "run"
    assert cli_main(["run", "-c", str(job_config(root)), "--run-dir", str(run_dir), "--quiet"]) == 0
    return run_dir


def test_report_of_a_run_shows_its_metrics_sizes_stages_and_sections_in_chromium(job_run, tmp_path, chromium):  # noqa: F811
    path = tmp_path / "report.html"
    assert cli_main(["report", str(job_run), "--out", str(path)]) == 0
    chromium.open(path.as_uri())
    chromium.wait_for("Array.from(document.images).every(i => i.complete)", "the report's images")
    figures = chromium.evaluate("Array.from(document.querySelectorAll('figure img')).map(i => i.naturalWidth)")
    sections = chromium.evaluate("Array.from(document.querySelectorAll('section')).map(s => s.id)")
    assert {"metrics", "sizes", "stages", "slices"} <= set(sections), sections
    # 3 plots, then 3 sections of raw (64 x 64 voxels here) with the segmentation over it
    assert len(figures) == 6 and min(figures[:3]) > 100 and figures[3:] == [64, 64, 64], figures
    best = json.loads((job_run / "summary.json").read_text())["metrics"]["best"]["threshold"]
    assert f"segmentation_{best:.2f}" in chromium.evaluate("document.body.innerText")


def test_view_of_a_run_serves_raw_and_the_best_segmentation_to_chromium(job_run, chromium):  # noqa: F811
    command = [sys.executable, "-m", "affcons.cli", "view", str(job_run), "--layout", "xy", "--serve-seconds", "120"]
    viewer = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        url = viewer.stdout.readline().strip().removeprefix("neuroglancer: ")
        shown = viewer.stdout.readline()
        best = json.loads((job_run / "summary.json").read_text())["metrics"]["best"]["threshold"]
        assert url.startswith("http://127.0.0.1:") and f"raw, segmentation_{best:.2f}" in shown, (url, shown)
        chromium.open(url)
        image = settled_screenshot(chromium, NEUROGLANCER_READY, "raw and the best segmentation to render")
        box = centre(element_box(chromium, PANEL), size=120)
        stats = region_stats(image, box)
        assert stats["non_black_fraction"] > 0.9 and stats["distinct_levels"] > 30, stats
        assert colourfulness(image, box) > 10, "segment colours drawn over raw"
    finally:
        viewer.terminate()
        viewer.wait(30)


def test_view_of_a_missing_path_is_refused(tmp_path, capsys):
    assert cli_main(["view", str(tmp_path / "nothing")]) == 2
    assert "no such run directory or zarr container" in capsys.readouterr().err


def test_view_of_one_volume_a_pyramid_of_the_runs_segmentation_draws_it_in_chromium(job_run, tmp_path, chromium):  # noqa: F811
    """As the README shows: ``affcons pyramid`` of a segmentation, then ``affcons view`` of that multiscale group."""
    best = json.loads((job_run / "summary.json").read_text())["metrics"]["best"]["threshold"]
    pyramid = tmp_path / "views.zarr" / "segmentation_multiscale"
    source = job_run / "out.zarr" / f"segmentation_{best:.2f}"
    pyramid_command = ["pyramid", str(source), "--out", str(pyramid), "--run-dir", str(tmp_path / "pyramid-run")]
    assert cli_main([*pyramid_command, "--workers", "1"]) == 0
    command = [sys.executable, "-m", "affcons.cli", "view", str(pyramid), "--layout", "xy", "--serve-seconds", "120"]
    viewer = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        url = viewer.stdout.readline().strip().removeprefix("neuroglancer: ")
        shown = viewer.stdout.readline()
        assert url.startswith("http://127.0.0.1:") and shown.startswith("showing segmentation_multiscale "), shown
        chromium.open(url)
        image = settled_screenshot(chromium, NEUROGLANCER_READY, "the multiscale segmentation to render")
        assert colourfulness(image, centre(element_box(chromium, PANEL), size=120)) > 10, "segment colours drawn"
    finally:
        viewer.terminate()
        viewer.wait(30)


def test_view_of_one_array_shows_it_and_refuses_a_threshold(job_run, capsys):
    raw = job_run / "out.zarr" / "raw"
    assert cli_main(["view", str(raw), "--serve-seconds", "0.1"]) == 0
    assert "showing raw " in capsys.readouterr().out
    assert cli_main(["view", str(raw), "--threshold", "0.5"]) == 2
    assert "is one volume: --threshold picks a segmentation" in capsys.readouterr().err
