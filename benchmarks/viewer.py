"""How to serve a large zarr volume to neuroglancer: affcons' data server versus neuroglancer's LocalVolume.

Volume: the bundled ISBI raw (30 x 512 x 512, uint8) tiled 2 x 4 x 4 to 60 x 2048 x 2048 voxels (240 MiB), zarr v3
chunks of 30 x 256 x 256, blosc-zstd, written once to --out-dir (default runs/benchmark_viewer under the repository).
Each variant shows the same volume, in the same headless Chromium page size, at two views: ``zoomed in`` (one
voxel per screen pixel, the centre of the volume) and ``whole`` (the whole 2048 x 2048 section in the panel):

  (a) local-volume -- the baseline: ``neuroglancer.LocalVolume`` over the lazily sliced ``zarr.Array``; the Python
      server reads, decodes and (for coarse views) downsamples every chunk the page asks for;
  (b) data-server  -- ``affcons.viewer.serve``: zarr chunk files served as they are on disk, decoded in the browser;
  (c) pyramid      -- (b) on an OME-Zarr multiscale copy (levels s0-s3 by ``affcons.multiscale``).

Each (variant, view) runs in its own process, which prints the seconds from opening the page until two identical
screenshots with neuroglancer ready, how far the serving process's resident memory rose above its level before
the page opened (sampled every 50 ms), and the fraction of screen pixels more than 2 grey levels away from the
baseline's screenshot (0: the same picture). Ratios are against the baseline of the same view, in this run.

    nice python benchmarks/viewer.py            # needs Chromium (apt-get install chromium); ~5 min on 2 cores
"""

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import psutil  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VOXEL = (50, 4, 4)
TILES = (2, 4, 4)
VIEWS = {"zoomed in": 1.0, "whole": 2048 / 600}  # cross-section scale: voxels per screen pixel
VARIANTS = ("local-volume", "data-server", "pyramid")


def prepare(out_dir: Path) -> None:
    """Write the tiled volume (plain array and OME-Zarr pyramid) unless it is there."""
    import zarr
    from funlib.geometry import Roi

    from affcons.io import create_volume, read_hdf5
    from affcons.multiscale import downsample_block, write_multiscales_metadata

    container = out_dir / "volume.zarr"
    if (container / "pyramid" / "zarr.json").is_file():
        return
    raw, _ = read_hdf5(REPO / "data" / "isbi2012_3d" / "isbi2012_with_3d_neurite_labels.h5:raw")
    volume = np.tile(raw, TILES)
    zarr.open_group(str(container), mode="w")
    roi = Roi((0, 0, 0), tuple(s * v for s, v in zip(volume.shape, VOXEL)))
    create_volume(container / "raw", roi, VOXEL, np.uint8, chunk_shape=(30, 256, 256))[roi] = volume
    group = zarr.open_group(str(container / "pyramid"), mode="w")
    levels, level, factor = [], volume, (1, 1, 1)
    for index in range(4):
        if index:
            level = downsample_block(level, (1, 2, 2), "mean")
            factor = (1, factor[1] * 2, factor[2] * 2)
        group.create_array(f"s{index}", data=level, chunks=(30, 256, 256), dimension_names=["z", "y", "x"])
        levels.append((f"s{index}", factor))
    write_multiscales_metadata(container / "pyramid", levels, VOXEL, (0, 0, 0))


def measure(out_dir: Path, variant: str, view: str) -> dict:
    """One (variant, view) in this process: seconds to a settled picture, peak-memory growth, the picture."""
    import neuroglancer
    import zarr

    from affcons.viewer import Layer, serve
    from tests.browser import HeadlessChromium, find_chromium, settled_screenshot

    container = out_dir / "volume.zarr"
    neuroglancer.set_server_bind_address("127.0.0.1")
    if variant == "local-volume":
        viewer = neuroglancer.Viewer()
        array = zarr.open_array(str(container / "raw"), mode="r")
        dimensions = neuroglancer.CoordinateSpace(names=["z", "y", "x"], units="nm", scales=VOXEL)
        with viewer.txn() as state:
            state.layers["raw"] = neuroglancer.ImageLayer(source=neuroglancer.LocalVolume(array, dimensions))
        url, close = viewer.get_viewer_url(), lambda: None
    else:
        path = container / ("raw" if variant == "data-server" else "pyramid")
        session = serve([Layer("raw", path, "image")], layout="xy")
        viewer, url, close = session.viewer, session.url, session.close
    with viewer.txn() as state:
        state.dimensions = neuroglancer.CoordinateSpace(names=["z", "y", "x"], units="nm", scales=VOXEL)
        state.display_dimensions = ["x", "y", "z"]
        state.layout = "xy"
        state.position = [30.5, 1024, 1024]
        state.cross_section_scale = VIEWS[view]
        state.show_axis_lines = False
        state.show_default_annotations = False
        state.show_scale_bar = False
    process = psutil.Process()
    before, peak, done = process.memory_info().rss, [0], threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], process.memory_info().rss)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with HeadlessChromium(find_chromium(), width=1280, height=800, timeout_s=600) as browser:
        start = time.perf_counter()
        browser.open(url)
        image = settled_screenshot(browser, "window.viewer !== undefined && viewer.isReady()", view, interval_s=1.0)
        seconds = time.perf_counter() - start
    done.set()
    sampler.join()
    close()
    return {"seconds": seconds, "peak_growth_mib": max(0, peak[0] - before) / 2**20, "image": image}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=REPO / "runs" / "benchmark_viewer")
    parser.add_argument("--one", nargs=2, metavar=("VARIANT", "VIEW"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        result = measure(args.out_dir, *args.one)
        np.save(args.out_dir / f"{args.one[0]}-{args.one[1].replace(' ', '_')}.npy", result.pop("image"))
        print(json.dumps(result))
        return
    started = time.perf_counter()
    prepare(args.out_dir)
    print(f"volume: 60 x 2048 x 2048 uint8 in {args.out_dir / 'volume.zarr'} ({time.perf_counter() - started:.0f} s)")
    print(f"{'view':<10} {'variant':<13} {'seconds':>8} {'x base':>7} {'RSS +MiB':>9} {'x base':>7} {'px differ':>9}")
    for view in VIEWS:
        baseline = None
        for variant in VARIANTS:
            output = subprocess.run(
                [sys.executable, __file__, "--out-dir", str(args.out_dir), "--one", variant, view],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            result = json.loads(output.strip().splitlines()[-1])
            image = np.load(args.out_dir / f"{variant}-{view.replace(' ', '_')}.npy").astype(np.int16)
            if baseline is None:
                baseline = {**result, "image": image}
            differ = float((np.abs(image - baseline["image"]).max(axis=2) > 2).mean())
            print(
                f"{view:<10} {variant:<13} {result['seconds']:>8.1f} "
                f"{result['seconds'] / baseline['seconds']:>7.2f} {result['peak_growth_mib']:>9.1f} "
                f"{result['peak_growth_mib'] / max(baseline['peak_growth_mib'], 0.1):>7.2f} {differ:>9.2%}"
            )


if __name__ == "__main__":
    main()
