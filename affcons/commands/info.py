"""``affcons info PATH``: shape, dtype, voxel size, offset, ROI, chunks, axes and value range of a volume.

PATH is ``out.zarr/name`` (zarr v3 or v2) or ``file.h5:dataset``. The value range is exact for volumes of at most
``--max-voxels`` voxels; larger ones are sampled from evenly spaced chunks and reported as "sampled".
"""

import argparse
import json

import dask
import numpy as np
from funlib.persistence import Array

from affcons.io import open_volume, read_voxel_size, storage_layout

#: Chunks read for the value range of a volume larger than ``--max-voxels``.
SAMPLE_CHUNKS = 16


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="PATH", help="out.zarr/name or file.h5:dataset")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument(
        "--max-voxels",
        type=int,
        default=2**27,
        metavar="N",
        help=f"read every voxel for the value range up to N voxels, else {SAMPLE_CHUNKS} chunks (default: 2^27)",
    )


def run(args: argparse.Namespace) -> int:
    stored_voxel_size = read_voxel_size(args.path)
    array = open_volume(args.path)
    layout = storage_layout(args.path)
    low, high, chunks_read, chunks_total = value_range(array, args.max_voxels)
    info = {
        "path": args.path,
        "format": layout.format,
        "shape": list(array.shape),
        "dtype": str(array.dtype),
        "axis_names": array.axis_names,
        "voxel_size": list(array.voxel_size),
        "voxel_size_stored": stored_voxel_size is not None,
        "offset": list(array.offset),
        "roi": {"offset": list(array.roi.offset), "end": list(array.roi.end), "shape": list(array.roi.shape)},
        "chunk_shape": None if layout.chunks is None else list(layout.chunks),
        "value_range": {
            "min": low,
            "max": high,
            "sampled": chunks_read < chunks_total,
            "chunks_read": chunks_read,
            "chunks_total": chunks_total,
        },
    }
    if args.json:
        print(json.dumps(info))
        return 0
    sampled = f"sampled from {chunks_read} of {chunks_total} chunks" if chunks_read < chunks_total else "exact"
    lines = {
        "path": f"{args.path} ({layout.format})",
        "shape": f"{tuple(array.shape)} voxels",
        "dtype": str(array.dtype),
        "axis names": ", ".join(array.axis_names),
        "voxel size": f"{tuple(array.voxel_size)} nm" + ("" if stored_voxel_size else " (not stored; assumed)"),
        "offset": f"{tuple(array.offset)} nm",
        "ROI": f"{array.roi} nm",
        "chunk shape": "contiguous" if layout.chunks is None else f"{tuple(layout.chunks)} voxels",
        "value range": "empty" if low is None else f"{low} .. {high} ({sampled})",
    }
    for key, value in lines.items():
        print(f"{key + ':':<12} {value}")
    return 0


def value_range(array: Array, max_voxels: int) -> tuple[int | float | None, int | float | None, int, int]:
    """``(min, max, chunks_read, chunks_total)`` over every voxel if the array has at most ``max_voxels`` voxels,
    else over :data:`SAMPLE_CHUNKS` evenly spaced chunks; min and max are ``None`` for an empty array."""
    data = array.data
    chunks_total = int(np.prod(data.numblocks))
    if data.size == 0:
        return None, None, 0, chunks_total
    if data.size <= max_voxels:
        blocks, chunks_read = [data], chunks_total
    else:
        picks = np.unique(np.linspace(0, chunks_total - 1, min(SAMPLE_CHUNKS, chunks_total)).round().astype(int))
        blocks = [data.blocks[np.unravel_index(pick, data.numblocks)] for pick in picks]
        chunks_read = len(picks)
    lows, highs = dask.compute([block.min() for block in blocks], [block.max() for block in blocks])
    return min(lows).item(), max(highs).item(), chunks_read, chunks_total
