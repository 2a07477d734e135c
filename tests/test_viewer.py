"""The neuroglancer viewer on real zarr data (ISBI crops): layer discovery, the data server, and what headless
Chromium shows (skipped with the reason when no Chromium is installed)."""

import logging
import re
import urllib.error
import urllib.request

import numpy as np
import pytest
import zarr
from funlib.geometry import Roi

from affcons.affinities import affinities_to_uint8
from affcons.errors import VolumeError
from affcons.io import create_volume
from affcons.multiscale import downsample_block, write_multiscales_metadata
from affcons.synthetic import degraded_affinities
from affcons.viewer import DataServer, Layer, layers_from_container, serve, volume_info
from tests.browser import NEUROGLANCER_READY, chromium, element_box, region_stats, settled_screenshot  # noqa: F401 (fixture)
from tests.data_paths import ISBI, isbi_labels

VOXEL = (50, 4, 4)
CROP = (slice(0, 10), slice(0, 256), slice(0, 256))
INNER = (slice(2, 8), slice(64, 192), slice(96, 224))  # a sub-crop of CROP, stored at its own offset
PANEL = ".neuroglancer-rendered-data-panel"


def isbi_raw(crop) -> np.ndarray:
    import h5py

    with h5py.File(ISBI, "r") as file:
        return file["raw"][crop]


def write(path, data: np.ndarray, offset_voxels=(0, 0, 0), chunks=(5, 64, 64)) -> None:
    spatial = data.shape[-3:]
    roi = Roi(tuple(o * v for o, v in zip(offset_voxels, VOXEL)), tuple(s * v for s, v in zip(spatial, VOXEL)))
    channels = data.shape[0] if data.ndim == 4 else None
    array = create_volume(path, roi, VOXEL, data.dtype, num_channels=channels, chunk_shape=chunks)
    array[roi] = data


@pytest.fixture(scope="module")
def container(tmp_path_factory):
    """out.zarr with raw, affs, fragments, two segmentations, a sub-crop of raw (plain and multiscale)."""
    root = tmp_path_factory.mktemp("viewer") / "out.zarr"
    zarr.open_group(str(root), mode="w")
    raw, labels = isbi_raw(CROP), isbi_labels(CROP)
    write(root / "raw", raw)
    write(root / "affs", affinities_to_uint8(degraded_affinities(labels)))
    write(root / "fragments", labels)
    write(root / "segmentation_0.40", labels)
    write(root / "segmentation_0.60", np.where(labels > 0, labels % 7 + 1, 0).astype(np.uint64))
    inner_offset = tuple(s.start for s in INNER)
    write(root / "crops" / "inner", raw[INNER], inner_offset)
    group = zarr.open_group(str(root / "crops" / "inner_ms"), mode="w")
    levels, level = [], raw[INNER]
    for index, factor in enumerate([(1, 1, 1), (1, 2, 2), (1, 4, 4)]):
        if index:
            level = downsample_block(raw[INNER], factor, "mean")
        group.create_array(f"s{index}", data=level, chunks=(3, 32, 32), dimension_names=["z", "y", "x"])
        levels.append((f"s{index}", factor))
    offset_nm = tuple(o * v for o, v in zip(inner_offset, VOXEL))
    write_multiscales_metadata(root / "crops" / "inner_ms", levels, VOXEL, offset_nm)
    affs = zarr.open_array(str(root / "affs"), mode="r")[(slice(None),) + INNER]
    group = zarr.open_group(str(root / "crops" / "affs_ms"), mode="w")
    group.create_array("s0", data=affs, chunks=(3, 3, 32, 32))
    group.create_array("s1", data=downsample_block(affs, (1, 2, 2), "mean"), chunks=(3, 3, 32, 32))
    write_multiscales_metadata(
        root / "crops" / "affs_ms", [("s0", (1, 1, 1)), ("s1", (1, 2, 2))], VOXEL, offset_nm, channel_axes=1
    )
    return root


def test_layers_from_container_kinds_order_and_visibility(container):
    layers = layers_from_container(container, threshold=0.6)
    assert [(layer.name, layer.kind, layer.visible) for layer in layers] == [
        ("raw", "image", True),
        ("crops/inner", "image", False),
        ("crops/inner_ms", "image", False),
        ("affs", "affinities", False),
        ("crops/affs_ms", "affinities", False),
        ("fragments", "segmentation", False),
        ("segmentation_0.40", "segmentation", False),
        ("segmentation_0.60", "segmentation", True),
    ]
    without_threshold = {layer.name for layer in layers_from_container(container) if layer.visible}
    assert without_threshold == {"raw", "fragments"}


def test_volume_info_reads_geometry_of_arrays_and_multiscale_groups(container):
    plain, multiscale = volume_info(container / "crops" / "inner"), volume_info(container / "crops" / "inner_ms")
    for info in (plain, multiscale):
        assert info.voxel_size == (50.0, 4.0, 4.0) and info.offset == (100.0, 256.0, 384.0)
        assert info.shape == (6, 128, 128) and info.channel_axes == 0
    assert (plain.multiscale, multiscale.multiscale) == (False, True)
    assert volume_info(container / "affs").channel_axes == 1
    assert volume_info(container / "crops" / "affs_ms").channel_axes == 1


def test_bad_requests_are_volume_errors_naming_the_fix(container, tmp_path):
    with pytest.raises(VolumeError, match=r"no segmentation at threshold 0.5 \(thresholds: 0.4, 0.6\)"):
        layers_from_container(container, threshold=0.5)
    with pytest.raises(VolumeError, match="no such zarr container"):
        layers_from_container(tmp_path / "missing.zarr")
    with pytest.raises(VolumeError, match="a zarr group without OME multiscales metadata"):
        volume_info(container / "crops")
    with pytest.raises(VolumeError, match="layer names must be unique"):
        serve([Layer("raw", container / "raw", "image"), Layer("raw", container / "affs", "affinities")])


def get(url: str, headers=None) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as answer:
            return answer.status, dict(answer.headers), answer.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), b""


def test_data_server_serves_files_under_its_roots_with_cors_and_ranges(container):
    server = DataServer([container / "raw", container / "crops" / "inner_ms"])
    try:
        chunk = (container / "raw" / "c" / "1" / "2" / "3").read_bytes()
        status, headers, body = get(f"{server.url}/0/c/1/2/3")
        assert (status, body) == (200, chunk)
        assert headers["Access-Control-Allow-Origin"] == "*"
        status, headers, body = get(f"{server.url}/0/c/1/2/3", {"Range": "bytes=4-11"})
        assert (status, body, headers["Content-Range"]) == (206, chunk[4:12], f"bytes 4-11/{len(chunk)}")
        status, _, body = get(f"{server.url}/0/c/1/2/3", {"Range": "bytes=-5"})
        assert (status, body) == (206, chunk[-5:])
        assert get(f"{server.url}/1/s2/zarr.json")[0] == 200
        assert get(f"{server.url}/0/c/9/9/9")[0] == 404  # a chunk never written: zarr's fill value
        assert get(f"{server.url}/0/../affs/zarr.json")[0] == 404  # outside the roots
        assert get(f"{server.url}/0/%2e%2e/affs/zarr.json")[0] == 404
        assert get(f"{server.url}/2/zarr.json")[0] == 404
    finally:
        server.close()


def centre(box, size: int = 200) -> tuple[int, int, int, int]:
    """A ``size`` x ``size`` pixel box at the centre of ``box``: inside the volume, which the viewer centres."""
    top, left, bottom, right = box
    middle_row, middle_column = (top + bottom) // 2, (left + right) // 2
    return middle_row - size // 2, middle_column - size // 2, middle_row + size // 2, middle_column + size // 2


def colourfulness(image: np.ndarray, box) -> float:
    """Mean of max - min over RGB in the box: 0 for grey images, large where segment colours are drawn."""
    top, left, bottom, right = box
    region = image[top:bottom, left:right].astype(np.int16)
    return float((region.max(axis=2) - region.min(axis=2)).mean())


def hide_decorations(session) -> None:
    """No axis lines, bounding boxes or scale bar: the panel then shows data pixels and the background only."""
    with session.viewer.txn() as state:
        state.show_axis_lines = False
        state.show_default_annotations = False
        state.show_scale_bar = False


def show_only(session, *names) -> None:
    with session.viewer.txn() as state:
        for layer in state.layers:
            layer.visible = layer.name in names


def test_viewer_shows_raw_segmentation_and_affinities_in_chromium(container, chromium):  # noqa: F811
    session = serve(layers_from_container(container, threshold=0.6), layout="xy")
    try:
        hide_decorations(session)
        chromium.open(session.url)
        image = settled_screenshot(chromium, NEUROGLANCER_READY, "raw and segmentation_0.60 to render")
        box = centre(element_box(chromium, PANEL))
        stats = region_stats(image, box)
        assert stats["non_black_fraction"] > 0.95, stats
        assert stats["distinct_levels"] > 50 and stats["std"] > 10, f"blank panel: {stats}"
        with_segments = colourfulness(image, box)

        show_only(session, "raw")
        raw_only = settled_screenshot(chromium, NEUROGLANCER_READY, "raw alone")
        assert colourfulness(raw_only, box) < 1.0 < with_segments - 20, "segment colours over grey raw"
        assert region_stats(raw_only, box)["distinct_levels"] > 100

        show_only(session, "affs")
        affinities = settled_screenshot(chromium, NEUROGLANCER_READY, "affinities (RGB)")
        assert colourfulness(affinities, box) > 5, "affinity channels drawn as RGB"
    finally:
        session.close()


def test_multiscale_levels_and_offsets_in_chromium(container, chromium, caplog):  # noqa: F811
    """Zoomed out, a multiscale volume is read from its coarsest level only; zoomed in, a sub-crop stored at its
    offset (plain and multiscale) draws exactly the pixels of raw there."""
    caplog.set_level(logging.DEBUG, logger="affcons.viewer")
    names = ["raw", "crops/inner", "crops/inner_ms", "affs", "crops/affs_ms"]
    layers = [layer for layer in layers_from_container(container) if layer.name in names]
    assert [layer.name for layer in layers] == names
    session = serve(layers, layout="xy")

    def served(level: str) -> bool:  # crops/inner_ms is the data server's root 2
        return any(re.search(rf"GET /2/{level}/c/", record.getMessage()) for record in caplog.records)

    try:
        show_only(session, "crops/inner_ms")
        with session.viewer.txn() as state:
            state.position = [4.5, 128, 160]  # voxels (z, y, x) inside the sub-crop
            state.cross_section_scale = 4.0  # voxels per screen pixel: level s2 (factor 4 in y and x)
        hide_decorations(session)
        chromium.open(session.url)
        settled_screenshot(chromium, NEUROGLANCER_READY, "the multiscale volume zoomed out")
        assert served("s2") and not served("s1") and not served("s0"), "only the coarsest level when zoomed out"

        with session.viewer.txn() as state:
            state.cross_section_scale = 0.5  # level s0 at full resolution
        screenshots = {}
        for name in names:
            show_only(session, name)
            screenshots[name] = settled_screenshot(chromium, NEUROGLANCER_READY, f"{name} alone").astype(np.int16)
        assert served("s0"), "full resolution read when zoomed in"
        top, left, bottom, right = centre(element_box(chromium, PANEL), 500)  # holds the sub-crop, at the centre
        panel = screenshots["crops/inner"][top:bottom, left:right]
        colours, counts = np.unique(panel.reshape(-1, 3), axis=0, return_counts=True)
        drawn = np.any(panel != colours[counts.argmax()], axis=2)  # not the background, which covers the most
        # the sub-crop spans 128 x 128 voxels = 256 x 256 screen pixels at 0.5 voxel per pixel
        rows, columns = np.nonzero(drawn)
        assert abs((rows.max() - rows.min() + 1) - 256) <= 2 and abs((columns.max() - columns.min() + 1) - 256) <= 2
        for name, whole in (("crops/inner", "raw"), ("crops/inner_ms", "raw"), ("crops/affs_ms", "affs")):
            difference = np.abs(screenshots[name] - screenshots[whole])[top:bottom, left:right].max(axis=2)
            assert np.mean(difference[drawn] > 2) < 0.01, f"{name} is not drawn where {whole} has these voxels"
    finally:
        session.close()
