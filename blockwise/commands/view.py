"""``affcons view RUN_DIR_OR_ZARR``: show a run's outputs in neuroglancer, served from disk (:mod:`affcons.viewer`).

    affcons view runs/demo                      # raw, affinities, fragments, the best segmentation (others hidden)
    affcons view out.zarr --threshold 0.5 [--bind 0.0.0.0] [--layout xy]
    affcons view out.zarr/segmentation_0.60_multiscale   # one array or OME-Zarr multiscale group

Prints the URL to open in a browser and serves until interrupted (Ctrl-C). Works offline: the neuroglancer client
ships with the ``neuroglancer`` package, and zarr chunks are read from disk as the browser asks for them.
"""

import argparse
from pathlib import Path

from affcons.commands.arguments import positive_float


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path",
        metavar="RUN_DIR_OR_ZARR",
        help="a run directory (affcons run/segment/predict), a zarr container, or one array or multiscale group in it",
    )
    parser.add_argument(
        "--threshold", type=positive_float, help="the segmentation shown (default: the run's best, else fragments)"
    )
    parser.add_argument("--bind", default="127.0.0.1", help="address to serve on (0.0.0.0: reachable from others)")
    parser.add_argument("--layout", default="4panel", help="neuroglancer layout: 4panel, xy, xz, yz, 3d")
    parser.add_argument("--serve-seconds", type=positive_float, help=argparse.SUPPRESS)  # tests: stop after this


def run(args: argparse.Namespace) -> int:
    import time

    from affcons.viewer import serve

    layers = _layers(Path(args.path).absolute(), args.threshold)
    session = serve(layers, bind_address=args.bind, layout=args.layout)
    shown = ", ".join(layer.name for layer in layers if layer.visible)
    print(f"neuroglancer: {session.url}", flush=True)
    print(f"showing {shown} (other layers hidden; Ctrl-C stops serving)", flush=True)
    try:
        deadline = time.monotonic() + args.serve_seconds if args.serve_seconds else None
        while deadline is None or time.monotonic() < deadline:
            time.sleep(0.2)
    except KeyboardInterrupt:
        pass
    finally:
        session.close()
    return 0


def _layers(path: Path, threshold: float | None) -> list:
    """The viewer layers of ``path``: one volume as it is, or the volumes of a container or run directory with the
    segmentation of ``threshold`` shown (default: the run's best threshold)."""
    from affcons.errors import VolumeError
    from affcons.viewer import Layer, is_volume, kind_of, layers_from_container, volume_info
    from blockwise.layout import run_contents

    if is_volume(path):
        if threshold is not None:
            raise VolumeError(f"{path} is one volume: --threshold picks a segmentation of a run or zarr container")
        return [Layer(path.name, path, kind_of(volume_info(path)))]
    contents = run_contents(path)
    if contents.container is None:
        raise VolumeError(f"{path}: a training run has no volumes to show; use affcons report for its curves")
    layers = layers_from_container(contents.container, threshold if threshold is not None else contents.best_threshold)
    if contents.raw is not None and not any(layer.name == "raw" for layer in layers):
        layers.insert(0, Layer("raw", contents.raw, "image"))
    return layers
