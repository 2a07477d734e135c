"""Prediction throughput: blockwise (daisy workers) vs a plain whole-volume sliding window, fp32 vs mixed precision,
FLOP per output voxel, the achieved fraction of the device's measured matrix-product rate, and the projected
GPU-hours for Kasthuri15.

    nice python benchmarks/predict.py                      # CPU: small volume, the full CRAC network
    python benchmarks/predict.py --device cuda             # GPU: bigger volume, bf16 autocast, one worker per GPU

What is measured, on the same device and the same random raw volume (uint8, zarr v3):

1. FLOP of one forward pass of the configured network(s) on one patch, counted with
   ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and matrix products; element-wise ops are not counted),
   per input voxel and per *output* voxel (times ``prod(patch) / prod(tile)``, the context overhead of the margin).
2. Whole-volume sliding window in this process (:func:`affcons.predict.predict_volume`, one call over the volume),
   fp32 and mixed precision (bf16 autocast; on CPU this is torch's CPU autocast, measured as is), and fp32 with the
   BatchNorms not folded into the convolutions (the version before 3 December 2026), after a warm-up
   with every batch shape of the timed run (cuDNN autotuning is not timed). On a GPU also bf16 with channels-last
   networks (a copy: the conversion is in place).
3. Blockwise prediction with ``affcons predict`` machinery (:func:`run_blockwise`: daisy task, fresh worker
   processes, zarr reads and writes overlapped with compute), with the whole-volume batch size, at the device's
   default precision. Reported twice: the block span (first block start to last block end, what a long run
   converges to) and the wall time including worker start-up and model loading.
4. Projection for Kasthuri15 (10747 x 12895 x 1850 voxels) from the blockwise rate, and the target of issue 6
   (1e8 output voxels/s on one H100, i.e. Kasthuri15 in under 45 minutes).
5. The achieved FLOP/s as a fraction of a measured large matrix product on the same device (bf16 on a GPU, fp32 on
   the CPU): no table of vendor peaks, which cannot tell SXM from PCIe boards or clocks apart.

The network is the paper's CRAC architecture (filters 28-80, 16-dim embeddings, 12 offsets) with random weights unless
``--checkpoint`` is given; speed does not depend on the weights. ``--map implicit`` (the default map) needs only the
embedding net; ``mean`` or a disagreement map also runs the explicit net (twice the FLOP).
"""

import argparse
import copy
import json
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from funlib.geometry import Roi  # noqa: E402

KASTHURI = (1850, 12895, 10747)  # z, y, x voxels
TARGET_VOXELS_PER_S = 1e8


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--checkpoint", help="a trained checkpoint instead of the random paper-size network")
    parser.add_argument("--filters", nargs=5, type=int, default=[28, 36, 48, 64, 80], help="random network widths")
    parser.add_argument("--patch", nargs=3, type=int, default=[18, 160, 160])
    parser.add_argument("--margin", nargs=3, type=int, default=[4, 16, 16])
    parser.add_argument(
        "--channels",
        choices=("all", "short"),
        default="short",
        help="written channels (all 12 need margin >= 4 x 27 x 27 for the implicit map)",
    )
    parser.add_argument("--map", default="implicit", choices=("implicit", "explicit", "mean"))
    parser.add_argument(
        "--volume", nargs=3, type=int, help="volume in voxels (default: CPU 10x256x256, GPU 80x1024x1024)"
    )
    parser.add_argument("--block", nargs=3, type=int, help="block in voxels (default: CPU 10x128x256, GPU 40x512x512)")
    parser.add_argument("--batch-size", type=int, help="patches per forward (default CPU 4, GPU 8)")
    parser.add_argument("--workers", type=int, help="CPU workers for the blockwise run (default 1, all threads)")
    parser.add_argument("--gpus", help="GPU indices for the blockwise run (default: all)")
    parser.add_argument("--keep", help="keep the benchmark's files in a new directory inside this one")
    parser.add_argument(
        "--no-bf16",
        action="store_true",
        help="CPU: leave out the bf16 autocast timing (without native bf16, e.g. AVX2 only, it takes many minutes)",
    )
    parser.add_argument(
        "--compare-maps",
        action="store_true",
        help="instead: VOI / ARAND of the implicit, explicit and mean maps of --checkpoint on the ISBI "
        "validation sections 20-29 (how DEFAULT_MAP was chosen)",
    )
    parser.add_argument("--thresholds", nargs="+", type=float, default=[0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5])
    parser.add_argument("--per-slice", action="store_true", help="--compare-maps: 2-D fragments per section")
    parser.add_argument(
        "--compare-margins",
        action="store_true",
        help="instead: how the implicit short-range affinities of --checkpoint on ISBI sections 20-29 "
        "change with the margin (same 10 x 128 x 128 tiles, growing patches)",
    )
    return parser.parse_args(argv)


MARGINS = ((0, 0, 0), (2, 8, 8), (4, 16, 16), (4, 32, 32), (6, 16, 16), (4, 64, 64), (6, 64, 64))


def compare_margins(args) -> int:
    """Predict sections 20-29 with tiles of 10 x 128 x 128 and margins from 0 to 6 x 64 x 64 (patch = tile + 2 x
    margin); report each against the largest margin: mean and maximum |difference| of the uint8 affinities and the
    fraction of voxels that differ by more than 5/255."""
    from affcons.io import open_volume
    from affcons.nets import load_model
    from affcons.predict import PatchGrid, Predictor, predict_volume

    if not args.checkpoint:
        print("--compare-margins needs --checkpoint", file=sys.stderr)
        return 2
    isbi = Path(__file__).resolve().parents[1] / "data/isbi2012_3d/isbi2012_with_3d_neurite_labels.h5"
    raw = open_volume(f"{isbi}:raw")
    roi = Roi((1000, 0, 0), (500, 2048, 2048))
    networks, _ = load_model(args.checkpoint)
    tile = (10, 128, 128)
    outputs = {}
    for margin in MARGINS:
        patch = tuple(t + 2 * m for t, m in zip(tile, margin))
        predictor = Predictor(networks, PatchGrid(patch, margin), "implicit", 3, batch_size=args.batch_size or 4)
        start = time.perf_counter()
        outputs[margin] = predict_volume(predictor, raw, roi)["affs"].astype(np.int16)
        overhead = math.prod(patch) / math.prod(tile)
        print(
            f"margin {list(margin)}: patch {list(patch)}, {overhead:.2f} input voxels per output voxel, "
            f"{time.perf_counter() - start:.0f} s"
        )
    reference = outputs[MARGINS[-1]]
    print(f"difference to margin {list(MARGINS[-1])} (uint8 affinities, implicit, 3 short-range channels):")
    for margin in MARGINS[:-1]:
        difference = np.abs(outputs[margin] - reference)
        print(
            f"  margin {str(list(margin)):>13}: mean {difference.mean():.3f}/255, max {difference.max()}/255, "
            f"> 5/255 at {np.mean(difference > 5):.3%} of the values"
        )
    return 0


def compare_maps(args) -> int:
    """Predict ISBI sections 20-29 (context from the neighbouring sections) with each map, segment the 3 short-range
    channels as ``configs/demo.yaml`` does (3-D fragments, mean agglomeration) and score against the dense labels."""
    from affcons.affinities import affinities_to_float, affinities_to_uint8
    from affcons.evaluate import evaluate
    from affcons.io import open_volume
    from affcons.nets import load_model
    from affcons.predict import PatchGrid, Predictor, predict_volume
    from affcons.segment import segment_affinities

    if not args.checkpoint:
        print("--compare-maps needs --checkpoint", file=sys.stderr)
        return 2
    isbi = Path(__file__).resolve().parents[1] / "data/isbi2012_3d/isbi2012_with_3d_neurite_labels.h5"
    raw = open_volume(f"{isbi}:raw")
    labels = open_volume(f"{isbi}:labels/neurites_3dcc")
    roi = Roi((1000, 0, 0), (500, 2048, 2048))  # sections 20-29
    networks, _ = load_model(args.checkpoint)
    grid = PatchGrid(tuple(args.patch), tuple(args.margin))
    start = time.perf_counter()
    maps = {}
    for name in ("implicit", "explicit"):
        predictor = Predictor(networks, grid, name, 3, dtype="float16", batch_size=args.batch_size or 4)
        maps[name] = predict_volume(predictor, raw, roi)["affs"].astype(np.float32)
    maps["mean"] = 0.5 * (maps["implicit"] + maps["explicit"])
    print(
        f"predicted sections 20-29 with patch {list(grid.patch)}, margin {list(grid.margin)} in "
        f"{time.perf_counter() - start:.0f} s; segmenting ({'2' if args.per_slice else '3'}-D fragments, mean "
        "agglomeration)"
    )
    gt = np.asarray(labels[roi]).astype(np.uint64)
    print(f"{'map':>9} {'threshold':>9} {'voi_split':>9} {'voi_merge':>9} {'voi':>7} {'arand':>7}")
    best = {}
    for name, affs in maps.items():
        affs = affinities_to_float(affinities_to_uint8(affs))  # what the pipeline stores and reads back
        segmentations = segment_affinities(
            affs, args.thresholds, scoring="mean", per_slice=args.per_slice, voxel_size=(50, 4, 4)
        )
        rows = []
        for threshold, segmentation in segmentations.items():
            scores = evaluate(segmentation, gt)
            rows.append((threshold, scores))
            print(
                f"{name:>9} {threshold:>9.2f} {scores['voi_split']:>9.4f} {scores['voi_merge']:>9.4f} "
                f"{scores['voi']:>7.4f} {scores['arand']:>7.4f}"
            )
        best[name] = min(rows, key=lambda row: row[1]["voi"])
    print(
        "best per map (lowest VOI): "
        + "; ".join(f"{n} {t:.2f}: VOI {s['voi']:.4f} ARAND {s['arand']:.4f}" for n, (t, s) in best.items())
    )
    print(f"best map: {min(best, key=lambda n: best[n][1]['voi'])}")
    return 0


def make_checkpoint(path: Path, filters, embedding_channels: int = 16) -> Path:
    """A CRAC checkpoint with random weights (seed 0) of the given widths, trained nowhere."""
    from affcons.config import validate
    from affcons.nets import CRACNetworks
    from affcons.train.checkpoint import save_checkpoint
    from affcons.train.config import CRACConfig

    isbi = Path(__file__).resolve().parents[1] / "data/isbi2012_3d/isbi2012_with_3d_neurite_labels.h5"
    config = validate(
        CRACConfig,
        {
            "data": {"train": {"raw": f"{isbi}:raw"}},
            "model": {"filters": list(filters), "embedding_channels": embedding_channels},
        },
        "benchmark",
    )
    torch.manual_seed(0)
    networks = CRACNetworks.from_config(config.model)
    save_checkpoint(
        path,
        {
            "stage": "crac",
            "iteration": 0,
            "config_kind": "crac",
            "config": config.model_dump(mode="json"),
            "models": {
                "embedding": networks.embedding_net.state_dict(),
                "affinity": networks.affinity_net.state_dict(),
            },
        },
    )
    return path


def count_flops(predictor) -> float:
    """FLOP of one forward pass on one patch for the nets the map needs."""
    from torch.utils.flop_counter import FlopCounterMode

    patch = torch.zeros((1, 1, *predictor.grid.patch), device=predictor.device)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        predictor.networks.affinities(patch, outputs=predictor.outputs)
    return float(counter.get_total_flops())


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_rate(device: torch.device, dtype: torch.dtype, size: int, seconds: float = 2.0) -> float:
    """Measured FLOP/s of ``size`` x ``size`` x ``size`` matrix products in ``dtype`` on ``device`` (random data; 3
    warm-up products, then products for about ``seconds``): the practical matrix peak that fractions refer to."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn((size, size), device=device, dtype=dtype, generator=generator)
    b = torch.randn((size, size), device=device, dtype=dtype, generator=generator)
    out = torch.empty_like(a)
    for _ in range(3):
        torch.matmul(a, b, out=out)
    sync(device)
    products, start = 0, time.perf_counter()
    while products < 3 or time.perf_counter() - start < seconds:
        for _ in range(5):
            torch.matmul(a, b, out=out)
        products += 5
        sync(device)
    return 2.0 * size**3 * products / (time.perf_counter() - start)


def warm_up(predictor, shape) -> None:
    """One forward pass per batch shape that predicting an output region of ``shape`` voxels uses (the full batch
    and the smaller last one), so that cuDNN autotuning (``cudnn.benchmark``) and lazy initialisation happen here
    and not in a timed region."""
    tiles = math.prod(predictor.grid.tiles(shape))
    sizes = {min(predictor.batch_size, tiles), tiles % predictor.batch_size} - {0}
    for size in sorted(sizes):
        predictor.predict_patches(np.zeros((size, *predictor.grid.patch), dtype=np.uint8))
    sync(predictor.device)


def time_whole_volume(predictor, raw, seconds: float = 0.0) -> float:
    """Steady-state output voxels/s of :func:`affcons.predict.predict_volume` over all of ``raw`` (raw read and
    result copy included): :func:`warm_up`, then whole passes until ``seconds`` have passed (at least one)."""
    from affcons.predict import predict_volume

    shape = raw.roi.shape / raw.voxel_size
    warm_up(predictor, shape)
    passes, start = 0, time.perf_counter()
    while passes == 0 or time.perf_counter() - start < seconds:
        predict_volume(predictor, raw)
        sync(predictor.device)
        passes += 1
    return passes * math.prod(shape) / (time.perf_counter() - start)


def run_blockwise(options: dict) -> tuple[object, dict, float, list[dict]]:
    """One blockwise prediction run through ``affcons predict``'s machinery: ``options`` are keys of
    :class:`blockwise.config.PredictOptions`. Returns the resolved config, the driver's summary, the wall seconds of
    the run and the per-block timer records (``start`` and ``end`` in epoch seconds, output ``voxels``); a failed
    run raises RuntimeError. The only place the benchmarks call the blockwise package."""
    from blockwise.config import PredictOptions
    from blockwise.predict import PredictDriver, resolve
    from blockwise.steps.predict import PredictStep
    from blockwise.timers import read_records

    config, _ = resolve(PredictOptions.model_validate(options))
    driver = PredictDriver(config, quiet=True)
    start = time.perf_counter()
    status = driver.run()
    wall = time.perf_counter() - start
    if status != 0:
        raise RuntimeError(f"blockwise prediction failed (exit {status}); see {config.run_dir}")
    blocks = list(read_records(PredictStep(config).timers_dir()).values())
    return config, driver.summary, wall, blocks


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.compare_maps:
        return compare_maps(args)
    if args.compare_margins:
        return compare_margins(args)
    from affcons.io import create_volume, open_volume
    from affcons.nets import load_model
    from affcons.predict import SHORT_RANGE, PatchGrid, Predictor

    device = torch.device(args.device)
    gpu = device.type == "cuda"
    if gpu and not torch.cuda.is_available():
        print("--device cuda: no CUDA device here", file=sys.stderr)
        return 2
    volume = tuple(args.volume or ((80, 1024, 1024) if gpu else (10, 256, 256)))
    block = tuple(args.block or ((40, 512, 512) if gpu else (10, 128, 256)))
    batch = args.batch_size or (8 if gpu else 4)
    if args.keep:
        Path(args.keep).mkdir(parents=True, exist_ok=True)
    # always a fresh directory: a second run must never find the first run's done blocks
    workdir = Path(tempfile.mkdtemp(prefix="affcons-bench-predict-", dir=args.keep))
    try:
        checkpoint = Path(args.checkpoint) if args.checkpoint else make_checkpoint(workdir / "model.pt", args.filters)
        networks, _ = load_model(checkpoint)
        channels = SHORT_RANGE if args.channels == "short" else len(networks.offsets)
        grid = PatchGrid(tuple(args.patch), tuple(args.margin))
        voxel_size = (50, 4, 4)
        roi = Roi((0, 0, 0), tuple(v * s for v, s in zip(volume, voxel_size)))
        raw_path = str(workdir / "bench.zarr/raw")
        array = create_volume(raw_path, roi, voxel_size, np.uint8, chunk_shape=(10, 256, 256), mode="w")
        array[roi] = np.random.default_rng(0).integers(0, 256, volume, dtype=np.uint8)
        raw = open_volume(raw_path)
        voxels = math.prod(volume)

        if gpu:
            torch.backends.cudnn.benchmark = True
            name = torch.cuda.get_device_name(device)
            device_text = f"{name} (CUDA {torch.version.cuda}, torch {torch.__version__})"
        else:
            device_text = (
                f"CPU {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
                f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
            )
        print(f"device: {device_text}")
        print(
            f"network: {'checkpoint ' + str(checkpoint) if args.checkpoint else 'CRAC paper size, random weights'}, "
            f"map {args.map} ({channels} channels written), patch {list(grid.patch)}, margin {list(grid.margin)} -> "
            f"tile {list(grid.tile)} ({grid.overhead:.2f} input voxels per output voxel), batch {batch}"
        )
        print(f"volume: {list(volume)} voxels ({voxels / 1e6:.1f} Mvoxel), blocks {list(block)} voxels")

        results = {}
        predictors = {}
        for precision in ("fp32",) if args.no_bf16 and not gpu else ("fp32", "bf16"):
            predictors[precision] = Predictor(
                networks, grid, args.map, channels, device=device, precision=precision, batch_size=batch
            )
        flops = count_flops(predictors["fp32"])
        per_input = flops / math.prod(grid.patch)
        per_output = per_input * grid.overhead
        print(
            f"FLOP: {flops / 1e9:.1f} GFLOP per patch = {per_input:.3g} per input voxel (same padding) = "
            f"{per_output:.3g} per output voxel with the margin's context"
        )

        for precision, predictor in predictors.items():
            rate = results[f"whole_{precision}"] = time_whole_volume(predictor, raw)
            label = "bf16 autocast" + (" (CPU autocast)" if not gpu else "")
            print(
                f"whole-volume sliding window, {precision if precision == 'fp32' else label}: "
                f"{rate:,.0f} output voxels/s ({voxels / rate:.1f} s)"
            )
        if "whole_bf16" in results:
            print(f"mixed precision speed-up (whole volume): {results['whole_bf16'] / results['whole_fp32']:.2f}x")
        # the previous version: BatchNorms not folded (interleaved with a second folded pass, same volume)
        unfolded = Predictor(
            networks, grid, args.map, channels, device=device, precision="fp32", batch_size=batch, fold_batchnorm=False
        )
        rate = results["whole_fp32_unfolded"] = time_whole_volume(unfolded, raw)
        folded_again = time_whole_volume(predictors["fp32"], raw)
        folded_rate = 0.5 * (results["whole_fp32"] + folded_again)
        print(
            f"whole-volume sliding window, fp32, BatchNorms not folded: {rate:,.0f} output voxels/s; folding "
            f"speed-up {folded_rate / rate:.2f}x (folded: {results['whole_fp32']:,.0f} and {folded_again:,.0f})"
        )
        if gpu:
            # its own copy: the channels-last conversion is in place and must not change the shared networks
            tuned = Predictor(
                copy.deepcopy(networks),
                grid,
                args.map,
                channels,
                device=device,
                precision="bf16",
                batch_size=batch,
                channels_last=True,
            )
            rate = results["whole_bf16_channels_last"] = time_whole_volume(tuned, raw)
            print(f"whole-volume sliding window, bf16 + channels_last_3d: {rate:,.0f} output voxels/s")
            del tuned

        options = {
            "checkpoint": str(checkpoint),
            "raw": raw_path,
            "out": str(workdir / "out.zarr/affs"),
            "run_dir": str(workdir / "run"),
            "map": args.map,
            "channels": args.channels,
            "patch": tuple(grid.patch),
            "margin": tuple(grid.margin),
            "batch_size": batch,
            "device": args.device,
            "block_size": tuple(b * v for b, v in zip(block, voxel_size)),
            "chunk_shape": tuple(grid.tile),
            "execution": {"workers": args.workers or 1, "progress": False},
            "channels_last": bool(gpu and results.get("whole_bf16_channels_last", 0) > results["whole_bf16"]),
        }
        if gpu and args.gpus:
            options["gpus"] = [int(g) for g in args.gpus.split(",")]
        if not gpu:
            options["threads"] = max(1, len(os.sched_getaffinity(0)) // (args.workers or 1))
        config, summary, wall, _ = run_blockwise(options)
        timers = summary["timers"]
        span = timers["span_s"]
        if not span > 0 or timers["processed_this_run"] == 0:
            print(f"blockwise run processed no block (span {span} s); see {config.run_dir}", file=sys.stderr)
            return 1
        results["blockwise_span"] = voxels / span
        results["blockwise_wall"] = voxels / wall
        workers = config.execution.workers
        print(
            f"blockwise ({workers} {'GPU' if gpu else 'CPU'} worker(s), {config.precision}, batch "
            f"{config.batch_size}): {voxels / span:,.0f} output voxels/s over the block span ({span:.1f} s), "
            f"{voxels / wall:,.0f} including "
            f"worker start-up ({wall:.1f} s); per block: read {timers['read_s']:.1f} s, compute "
            f"{timers['compute_s']:.1f} s, write {timers['write_s']:.1f} s (reads/writes overlap compute), "
            f"waiting for input {timers.get('stall_s', 0):.1f} s"
        )
        key = "whole_bf16" if config.precision == "bf16" else "whole_fp32"
        again = time_whole_volume(predictors[config.precision], raw)
        print(
            f"whole-volume sliding window, {config.precision}, again after the blockwise run (the machine's load "
            f"may vary): {again:,.0f} output voxels/s"
        )
        results[key] = reference = max(results[key], again)
        print(
            f"blockwise / best whole-volume ({config.precision}): {results['blockwise_span'] / reference:.2f} (span), "
            f"{results['blockwise_wall'] / reference:.2f} (wall)"
        )

        rate = results["blockwise_span"]
        kasthuri = math.prod(KASTHURI)
        hours = kasthuri / rate / 3600
        size = f"{' x '.join(map(str, reversed(KASTHURI)))} voxels = {kasthuri / 1e9:.0f} Gvoxel"
        if gpu:
            print(
                f"Kasthuri15 ({size}) at the blockwise rate: {hours:,.2f} h on {workers} GPU(s) = "
                f"{hours * workers:,.2f} GPU-hours"
            )
        else:
            print(f"Kasthuri15 ({size}) at the blockwise rate: {hours:,.0f} hours on this CPU machine")
        print(
            f"target: {TARGET_VOXELS_PER_S:.0e} output voxels/s on one H100 = Kasthuri15 in "
            f"{kasthuri / TARGET_VOXELS_PER_S / 60:.0f} minutes; measured {rate / TARGET_VOXELS_PER_S:.2%} of it"
            + ("" if gpu else " (on a CPU; run with --device cuda on a GPU)")
        )
        achieved = rate * per_output
        best_precision = max(("fp32", "bf16"), key=lambda p: results.get(f"whole_{p}", 0.0))
        whole_achieved = results[f"whole_{best_precision}"] * per_output
        matrix_dtype = torch.bfloat16 if gpu else torch.float32
        matrix = matmul_rate(device, matrix_dtype, 8192 if gpu else 1024)
        print(
            f"achieved: {achieved / 1e12:.3f} TFLOP/s blockwise, {whole_achieved / 1e12:.3f} TFLOP/s whole-volume "
            f"{best_precision}; measured {str(matrix_dtype).split('.')[1]} matrix product rate {matrix / 1e12:.1f} "
            f"TFLOP/s -> {achieved / matrix:.2%} (blockwise), {whole_achieved / matrix:.2%} (whole-volume) of it"
        )
        results.update(
            flop_per_patch=flops,
            flop_per_output_voxel=per_output,
            device=device_text,
            kasthuri_hours=hours,
            achieved_flops=achieved,
            matrix_flops=matrix,
            batch_size=batch,
        )
        (workdir / "results.json").write_text(json.dumps(results, indent=1))
        if args.keep:
            print(f"files kept in {workdir}")
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
