"""The HTML run report: its helpers on real zarr data (ISBI crops) and the page in headless Chromium."""

import json
import re

import numpy as np
import pytest
import zarr
from funlib.geometry import Roi

from affcons.errors import VolumeError
from affcons.evaluate import best_row, evaluate
from affcons.io import create_volume
from affcons.report import SliceView, read_history, segment_sizes, slices_from_volumes, write_report
from tests.browser import chromium, element_box, region_stats  # noqa: F401 (fixture)
from tests.data_paths import ISBI, isbi_labels

VOXEL = (50, 4, 4)


def isbi_raw(crop) -> np.ndarray:
    import h5py

    with h5py.File(ISBI, "r") as file:
        return file["raw"][crop]


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    """raw and labels crops (offset 5 sections, 32 voxels) in a zarr container with small chunks."""
    root = tmp_path_factory.mktemp("report") / "out.zarr"
    zarr.open_group(str(root), mode="w")
    crop = (slice(5, 15), slice(32, 160), slice(32, 224))
    for name, data in (("raw", isbi_raw(crop)), ("labels", isbi_labels(crop))):
        roi = Roi((5 * 50, 32 * 4, 32 * 4), tuple(s * v for s, v in zip(data.shape, VOXEL)))
        create_volume(root / name, roi, VOXEL, data.dtype, chunk_shape=(4, 48, 40))[roi] = data
    return root, crop


def test_segment_sizes_equal_whole_volume_counts(volumes):
    root, crop = volumes
    labels = isbi_labels(crop)
    ids, counts = np.unique(labels, return_counts=True)
    expected = counts[ids != 0]
    assert np.array_equal(segment_sizes(root / "labels", merge_every=2), expected)  # 3 x 3 x 5 chunks, merged often
    assert np.array_equal(segment_sizes(root / "labels"), expected)


def test_slices_from_volumes_reads_sections_inside_both_volumes(volumes):
    root, crop = volumes
    views = slices_from_volumes(root / "raw", root / "labels", count=2, max_extent=100)
    raw, labels = isbi_raw(crop), isbi_labels(crop)
    assert [view.title for view in views] == ["z = 350 nm (section 7)", "z = 600 nm (section 12)"]
    # a centred crop of at most 100 voxels across: y 128 -> 100 (from 14), x 192 -> 100 (from 46)
    assert np.array_equal(views[0].raw, raw[2, 14:114, 46:146])
    assert np.array_equal(views[1].segmentation, labels[7, 14:114, 46:146])


def test_read_history_names_a_bad_line(tmp_path):
    path = tmp_path / "history.jsonl"
    path.write_text('{"iteration": 1, "loss/total": 2.0}\n\n{"iteration": 2,\n')
    with pytest.raises(VolumeError, match=r"history.jsonl:3: not a JSON line"):
        read_history(path)
    path.write_text('{"iteration": 1, "loss/total": 2.0}\n\n')
    assert read_history(path) == [{"iteration": 1, "loss/total": 2.0}]


def real_summary(root, crop) -> dict:
    """A summary with metrics computed by affcons.evaluate: the labels against merged versions of themselves."""
    labels = isbi_labels(crop)
    segmentations = {t: np.where(labels > 0, labels % m + 1, 0) for t, m in ((0.3, 10**9), (0.5, 40), (0.7, 5))}
    rows = [{"threshold": t, **evaluate(segmentation, labels)} for t, segmentation in segmentations.items()]
    metrics = {"per_threshold": rows, "best": best_row(rows)}
    return {
        "status": "complete",
        "run_dir": str(root.parent),
        "wall_s": 12.5,
        "stages": {
            "predict": {"wall_s": 6.0},
            "segment": {"wall_s": 5.0, "stages": {"fragments": {"wall_s": 3.0}, "agglomerate": {"wall_s": 2.0}}},
            "evaluate": {"wall_s": 1.5},
        },
        "metrics": metrics,
    }


def history_rows() -> list[dict]:
    """Rows as affcons.train.trainer writes them: losses per logged iteration, validation rows."""
    rows = [{"iteration": i, "loss/total": 10.0 / i, "loss/sup_imp": 1.0 / i} for i in range(1, 21)]
    rows += [
        {"iteration": i, "validation": {"voi_split": 1.0 / i, "voi_merge": 0.5, "arand": 0.9 - i / 100}}
        for i in (5, 10, 20)
    ]
    return rows


def test_report_page_is_self_contained_and_leaves_out_missing_sections(volumes, tmp_path):
    root, crop = volumes
    path = write_report(tmp_path / "report.html", real_summary(root, crop), title="a <test> run")
    page = path.read_text()
    assert "<title>a &lt;test&gt; run</title>" in page
    assert 'id="metrics-plot"' in page and 'id="stages-plot"' in page
    assert 'id="training"' not in page and 'id="slices"' not in page and 'id="sizes"' not in page
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sources and all(source.startswith("data:image/") for source in sources), "no file or network references"


def test_report_in_chromium_shows_every_plot(volumes, tmp_path, chromium):  # noqa: F811
    root, crop = volumes
    best = real_summary(root, crop)["metrics"]["best"]
    assert best["threshold"] == 0.3  # the labels themselves (no merges) score best
    path = write_report(
        tmp_path / "report.html",
        real_summary(root, crop),
        history=history_rows(),
        slices=slices_from_volumes(root / "raw", root / "labels") + [SliceView("raw only", isbi_raw(crop)[0])],
        sizes={"labels": segment_sizes(root / "labels")},
    )
    chromium.open(path.as_uri())
    chromium.wait_for("Array.from(document.images).every(i => i.complete)", "the report's images")
    figures = chromium.evaluate(
        "Array.from(document.querySelectorAll('figure')).map(f => [f.id, f.querySelector('img').naturalWidth])"
    )
    assert [name for name, _ in figures] == [
        "metrics-plot",
        "sizes-plot",
        "stages-plot",
        "training-plot",
        "",
        "",
        "",
        "",
    ]
    assert all(width > 100 for _, width in figures), figures
    assert "0.30: VOI split" in chromium.evaluate("document.querySelector('#summary').innerText")
    for selector in ("#metrics-plot img", "#sizes-plot img", "#stages-plot img", "#training-plot img", ".slice img"):
        chromium.evaluate(f"document.querySelector({json.dumps(selector)}).scrollIntoView()")
        image = chromium.screenshot()
        stats = region_stats(image, element_box(chromium, selector))
        assert stats["distinct_levels"] > 20 and stats["std"] > 20, f"{selector} looks blank: {stats}"
