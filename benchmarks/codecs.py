"""Chunk codecs measured on real chunks: write + read time and size of affinities, fragments and segment ids.

    nice .venv/bin/python benchmarks/codecs.py [--size 256] [--repeats 3]

Data: the gala FIB-SEM ground truth mirrored to S^3 voxels (10 nm), network-like affinities from
:func:`affcons.synthetic.degraded_affinities` as uint8 (3, S, S, S) as prediction writes them, fragments as the
blockwise fragments step makes them (:func:`affcons.segment.block_fragments` on 128^3 blocks with a context of 8,
ids offset by ``block index * (voxels per block + 1)``), and the segment ids of the mean-affinity merge tree of those
fragments cut at 0.5. Ids are written as uint64 (what the pipeline writes) and as uint32 where the values fit.

Each codec writes the whole volume into a zarr v3 array on disk (chunks 64^3, the default of
:func:`affcons.io.create_volume`), then reads it back; the table gives the best of ``--repeats`` wall times, the
CPU time of that run (all threads of this process: what a worker pays on a machine whose cores are all busy), the
bytes on disk and the compression ratio. The current default (``compression: blosc-zstd`` = blosc zstd level 5,
byte shuffle for multi-byte types, bit shuffle for uint8) is the first row of each volume; the last line names
the codec with the least CPU among those within 1.25x of the smallest size.
"""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from affcons.affinities import affinities_to_uint8  # noqa: E402
from affcons.segment import agglomerate_fragments, apply_lookup, block_fragments  # noqa: E402
from affcons.synthetic import degraded_affinities  # noqa: E402
from blockwise.testing import load_labels, mirror_to  # noqa: E402

CODECS = {
    "blosc-zstd 5 (default)": lambda: [BloscCodec(cname="zstd", clevel=5)],
    "blosc-lz4 5": lambda: [BloscCodec(cname="lz4", clevel=5)],
    "blosc-lz4 1 shuffle": lambda: [BloscCodec(cname="lz4", clevel=1, shuffle="shuffle")],
    "blosc-lz4 1 bitshuffle": lambda: [BloscCodec(cname="lz4", clevel=1, shuffle="bitshuffle")],
    "blosc-zstd 1 shuffle": lambda: [BloscCodec(cname="zstd", clevel=1, shuffle="shuffle")],
    "blosc-zstd 1 bitshuffle": lambda: [BloscCodec(cname="zstd", clevel=1, shuffle="bitshuffle")],
    "zstd 3 (no blosc)": lambda: [ZstdCodec(level=3)],
    "gzip 5": lambda: [GzipCodec(level=5)],
    "none": lambda: [],
}

CHUNK = 64


def volumes(size: int) -> dict[str, np.ndarray]:
    """The real volumes to compress, by name."""
    labels, voxel_size = load_labels("gala")
    labels = mirror_to(labels, (size,) * 3)
    affs = affinities_to_uint8(degraded_affinities(labels, seed=1))
    block, context = 128, 8
    fragments = np.zeros((size,) * 3, np.uint64)
    grid = [range(0, size, block)] * 3
    for index, begin in enumerate(np.array(np.meshgrid(*grid, indexing="ij")).reshape(3, -1).T):
        start = np.maximum(begin - context, 0)
        stop = np.minimum(begin + block + context, size)
        crop = tuple(slice(b - s, min(b + block, size) - s) for b, s in zip(begin, start))
        grown = affs[(slice(None),) + tuple(slice(a, b) for a, b in zip(start, stop))]
        first = index * (block**3 + 1)
        out = tuple(slice(b, min(b + block, size)) for b in begin)
        fragments[out] = block_fragments(grown, crop, first_id=first, voxel_size=voxel_size)[0]
    tree = agglomerate_fragments(fragments, affs.astype(np.float32) / np.float32(255))
    segments = apply_lookup(fragments, tree.ids, tree.lookup(0.5))
    result = {"affinities uint8 (3 channels)": affs, "fragments uint64": fragments}
    if fragments.max() < 2**32:
        result["fragments uint32"] = fragments.astype(np.uint32)
    result["segments uint64"] = segments
    if segments.max() < 2**32:
        result["segments uint32"] = segments.astype(np.uint32)
    return result


def measure(data: np.ndarray, codec, directory: Path, repeats: int) -> tuple[float, float, float, float, int]:
    """Best-of-``repeats`` (write wall, read wall, write CPU, read CPU) seconds and bytes on disk."""
    chunks = (data.shape[0],) * (data.ndim - 3) + (CHUNK,) * 3
    best = None
    for _ in range(repeats):
        shutil.rmtree(directory, ignore_errors=True)
        array = zarr.create_array(
            str(directory), shape=data.shape, chunks=chunks, dtype=data.dtype, compressors=codec()
        )
        wall, cpu = time.perf_counter(), time.process_time()
        array[...] = data
        write = (time.perf_counter() - wall, time.process_time() - cpu)
        wall, cpu = time.perf_counter(), time.process_time()
        back = zarr.open_array(str(directory), mode="r")[...]
        read = (time.perf_counter() - wall, time.process_time() - cpu)
        assert back.dtype == data.dtype and np.array_equal(back, data)
        run = (write[0], read[0], write[1], read[1])
        if best is None or sum(run[:2]) < sum(best[:2]):
            best = run
    size = sum(p.stat().st_size for p in directory.rglob("*") if p.is_file() and p.name != "zarr.json")
    return (*best, size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="edge of the volume, voxels")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    data = volumes(args.size)
    scratch = Path(tempfile.mkdtemp(prefix="affcons-codecs-"))
    try:
        for name, volume in data.items():
            raw = volume.nbytes
            print(f"\n{name}: {volume.shape}, {raw / 2**20:.1f} MiB raw, chunks {CHUNK}^3")
            print(f"  {'codec':<26}{'write s':>9}{'read s':>9}{'w+r CPU s':>11}{'MB/s w+r':>10}{'MiB':>9}{'ratio':>8}")
            rows = []
            for codec_name, codec in CODECS.items():
                write, read, write_cpu, read_cpu, size = measure(volume, codec, scratch / "array", args.repeats)
                rows.append((codec_name, write_cpu + read_cpu, size))
                print(
                    f"  {codec_name:<26}{write:>9.3f}{read:>9.3f}{write_cpu + read_cpu:>11.3f}"
                    f"{raw / (write + read) / 1e6:>10.0f}{size / 2**20:>9.2f}{raw / size:>8.1f}"
                )
            default_cpu, default_size = rows[0][1], rows[0][2]
            compressed = [row for row in rows if row[0] != "none"]
            smallest = min(row[2] for row in compressed)
            pick = min((row for row in compressed if row[2] <= 1.25 * smallest), key=lambda row: row[1])
            print(
                f"  least CPU within 1.25x of the smallest size: {pick[0]}: {default_cpu / pick[1]:.2f}x less CPU "
                f"than the default for write + read, {pick[2] / default_size:.2f}x its size"
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
