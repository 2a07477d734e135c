"""The GPU check: warmed-up steady-state training and prediction rates on one GPU, in a few minutes, with a small
JSON and log summary. Start it with ``benchmarks/gpu_check.sh`` (installs the wheel folder; README section "GPU");
``--device cpu --tiny`` runs the same code path with tiny networks on the CPU (``tests/test_gpu_check.py``).

    python3 benchmarks/gpu_check.py --out OUT_DIR [--device cuda|cpu] [--tiny] [--seconds S]

Phases (each is recorded in ``OUT_DIR/gpu-check.json`` as it finishes; a failed phase is recorded and the next runs):

1. environment: python, torch (>= 2.4), CUDA, the GPU (name, compute capability, memory), and the version and
   location of every dependency (the node's own site-packages or the wheel folder).
2. matrix: the device's measured matrix-product rate (bf16, 8192^3, on a GPU; fp32 on the CPU): what the achieved
   FLOP/s of the prediction phase are a fraction of.
3. training: iterations/s of ``configs/isbi_ws.yaml`` (the reference crop 18 x 160 x 160, batch 2, the paper's
   networks; strategy S1 only, before ``pseudo.s2.gate``; no validation) in fp32 and with bf16 autocast (skipped
   below compute capability 8.0), with ``--loader-workers`` data-loader workers; and the loader's own batches/s, to
   show whether it caps training. Steady state: the extra iterations / extra seconds between two runs of different
   length, so start-up, loader start, warm-up and the final checkpoint cancel out.
4. prediction: the paper-size network (random weights), patch 18 x 160 x 160 with margin 4 x 16 x 16, batch
   ``--batch-size``: whole-volume output voxels/s in fp32 and bf16 after a warm-up with every timed batch shape;
   blockwise output voxels/s at the same batch size on one GPU worker, from the block timers of the blocks after
   the first (worker start-up, model loading and the first block's autotuning excluded); FLOP per output voxel and
   the achieved fraction of the measured matrix rate.

Everything else (volumes, run directories, checkpoints, daisy logs) lives in a fresh temporary directory (under
``--work-dir``) that is removed at the end, so the check is safe to run twice. Exit status: 0 when every phase
passed, 1 when one failed, 2 when the environment cannot run the check.
"""

import argparse
import datetime
import importlib.metadata
import json
import math
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
sys.path[:0] = [str(REPO), str(BENCHMARKS)]
# worker processes (data loader, daisy) must find the source tree too: no editable install is assumed
os.environ["PYTHONPATH"] = os.pathsep.join(
    [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
)

MIN_TORCH = (2, 4)
#: Distributions whose version and location the environment phase records.
DEPENDENCIES = (
    "numpy",
    "scipy",
    "numba",
    "h5py",
    "zarr",
    "numcodecs",
    "dask",
    "funlib.persistence",
    "funlib.geometry",
    "daisy",
    "pydantic",
    "tensorboard",
    "PyYAML",
)
SUMMARY, LOG = "gpu-check.json", "gpu-check.log"


class EnvironmentProblem(Exception):
    """The machine cannot run the check (exit status 2)."""


class Terminated(BaseException):
    """SIGTERM (``timeout`` in gpu_check.sh): not caught by a phase, so the summary is closed as failed."""


def _terminate(signum, frame):
    raise Terminated()


class Report:
    """The JSON summary and the log in the output folder, rewritten as the check goes (a killed check leaves what it
    measured so far); every line is flushed at once."""

    def __init__(self, out: Path, args: argparse.Namespace):
        out.mkdir(parents=True, exist_ok=True)
        self.json_path, self.log = out / SUMMARY, (out / LOG).open("w")
        self.started = time.time()
        self.data = {
            "status": "running",
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "arguments": {k: v for k, v in vars(args).items() if k not in ("out", "work_dir")},
            "phases": {},
        }
        self.write()

    def say(self, line: str) -> None:
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def write(self) -> None:
        self.data["seconds"] = round(time.time() - self.started, 1)
        temporary = self.json_path.with_name(f".{self.json_path.name}.tmp")
        temporary.write_text(json.dumps(self.data, indent=1, default=str))
        os.replace(temporary, self.json_path)

    def phase(self, name: str, function, *arguments) -> dict | None:
        """Run one phase; its result (or the error) goes into the summary at once."""
        self.say(f"== {name}")
        start = time.time()
        try:
            result = function(self, *arguments)
        except EnvironmentProblem:
            raise
        except Terminated:
            self.data["phases"][name] = {"status": "failed", "error": "terminated by SIGTERM"}
            raise
        except Exception as error:  # a failed phase is recorded and the check goes on
            self.say(f"{name} FAILED: {type(error).__name__}: {error}")
            self.log.write(traceback.format_exc())
            self.data["phases"][name] = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
            result = None
        else:
            self.data["phases"][name] = {"status": "passed", **result}
        self.data["phases"][name]["seconds"] = round(time.time() - start, 1)
        self.write()
        return result

    def finish(self, status: str) -> None:
        self.data["status"] = status
        self.data["finished"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        self.write()
        self.log.close()


def steady_rate(run, first: int, seconds: float) -> dict:
    """Units/s of ``run(units)`` once its fixed cost (start-up, warm-up, the final save) is taken out: ``run(first)``
    and a longer run are timed and the rate is (extra units) / (extra seconds). The longer run starts at
    ``2 * first`` units and grows (at most twice) until the extra units take at least ``seconds``."""

    def timed(units: int) -> float:
        start = time.perf_counter()
        run(units)
        return time.perf_counter() - start

    short = timed(first)
    units = 2 * first
    long = timed(units)
    for _ in range(2):  # longer runs until the extra units take ``seconds`` (noise can hide a short difference)
        if long - short >= seconds:
            break
        estimate = (units - first) / (long - short) if long > short else first / short
        units = first + max(2 * (units - first), math.ceil(estimate * seconds))
        long = timed(units)
    if long <= short:
        raise RuntimeError(f"{units} units took {long:.2f} s, {first} took {short:.2f} s: noise exceeds the work")
    return {"rate": (units - first) / (long - short), "runs": [[first, round(short, 3)], [units, round(long, 3)]]}


def steady_block_rate(blocks: list[dict]) -> float:
    """Output voxels/s of one blockwise worker once it runs: the blocks that started after the first block ended (the
    first one includes cuDNN autotuning), over the time from that end to the last block's end."""
    first_end = min(block["end"] for block in blocks)
    later = [block for block in blocks if block["start"] >= first_end]
    if not later:
        raise RuntimeError(f"{len(blocks)} block(s) overlapping the first: no steady state (one worker expected)")
    return sum(block["voxels"] for block in later) / (max(block["end"] for block in later) - first_end)


# ---------------------------------------------------------------------------------------------------------- phases


def environment(report: Report, device_name: str) -> dict:
    import torch

    version = tuple(int(part) for part in torch.__version__.split("+")[0].split(".")[:2])
    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "platform": platform.platform(),
        "cpus": len(os.sched_getaffinity(0)),
        "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"),
    }
    report.say(f"python {info['python']}, torch {info['torch']} (CUDA {info['torch_cuda']}), {info['cpus']} CPUs")
    if version < MIN_TORCH:
        raise EnvironmentProblem(f"torch {torch.__version__} is older than {'.'.join(map(str, MIN_TORCH))}")
    if device_name == "cuda":
        if not torch.cuda.is_available():
            raise EnvironmentProblem("--device cuda but torch sees no GPU (torch.cuda.is_available() is False)")
        properties = torch.cuda.get_device_properties(0)
        info.update(
            gpu=properties.name,
            gpus_visible=torch.cuda.device_count(),
            compute_capability=f"{properties.major}.{properties.minor}",
            gpu_memory_gib=round(properties.total_memory / 2**30, 1),
            cudnn=torch.backends.cudnn.version(),
        )
        report.say(
            f"GPU {properties.name}, compute capability {info['compute_capability']}, {info['gpu_memory_gib']} GiB "
            f"({info['gpus_visible']} visible, the check uses the first), cuDNN {info['cudnn']}"
        )
    packages = {}
    for name in DEPENDENCIES:
        try:
            distribution = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise EnvironmentProblem(f"{name} is not installed: add it to the wheel folder") from None
        packages[name] = {"version": distribution.version, "location": str(distribution.locate_file(""))}
        report.say(f"  {name} {distribution.version} ({packages[name]['location']})")
    info["packages"] = packages
    return info


def matrix(report: Report, device, tiny: bool, seconds: float) -> dict:
    import torch
    from predict import matmul_rate

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    size = 256 if tiny else (8192 if device.type == "cuda" else 2048)
    rate = matmul_rate(device, dtype, size, seconds=min(seconds, 3.0))
    name = str(dtype).removeprefix("torch.")
    report.say(f"{name} matrix product {size}^3: {rate / 1e12:.2f} TFLOP/s")
    return {"dtype": name, "size": size, "tflops": rate / 1e12}


def training_config(tiny: bool, device_name: str, amp: str, workers: int):
    """``configs/isbi_ws.yaml`` (``isbi_ws_smoke`` when tiny) for a timing run: no validation, S1 only."""
    from affcons.config import load_config, validate
    from affcons.train.config import CRACConfig

    data = load_config(CRACConfig, "isbi_ws_smoke" if tiny else "isbi_ws").model_dump(mode="json")
    data["validation"]["volume"] = None
    data["pseudo"]["s2"]["enabled"] = False
    data["data"]["num_workers"] = workers
    data["run"].update(device=device_name, amp=amp, iterations=10**6, checkpoint_every=10**6)
    return validate(CRACConfig, data, "gpu check training")


def training(report: Report, device, tiny: bool, seconds: float, workers: int, work: Path) -> dict:
    import torch

    from affcons.devices import cuda_capability
    from affcons.train.dataset import CropDataset, make_loader
    from affcons.train.strategies import CRACStrategy
    from affcons.train.trainer import Trainer, seed_everything

    result = {"loader_workers": workers}
    config = training_config(tiny, device.type, "none", workers)
    dataset = CropDataset(config.data, config.model.offsets, config.run.seed, config.run.batch_size)
    result.update(crop=list(config.data.crop), batch=config.run.batch_size, filters=list(config.model.filters))
    batches = iter(make_loader(dataset, 0, workers, pin_memory=device.type == "cuda"))
    next(batches)  # the workers' start-up and first batch are not timed
    count = 4 if tiny else max(16, 4 * workers)
    start = time.perf_counter()
    for _ in range(count):
        next(batches)
    loader = result["loader_batches_per_s"] = count / (time.perf_counter() - start)
    del batches
    report.say(f"data loader alone: {loader:.2f} batches/s with {workers} worker(s)")

    capability = cuda_capability(device)
    for amp in ("none", "bf16"):
        key = "fp32" if amp == "none" else "bf16"
        skip = None
        if amp == "bf16" and device.type != "cuda":
            skip = "the trainer applies run.amp on CUDA only"
        elif amp == "bf16" and capability < (8, 0):
            skip = f"compute capability {capability[0]}.{capability[1]} < 8.0 (no bf16 tensor cores)"
        if skip:
            result[key] = {"skipped": skip}
            report.say(f"training {key}: skipped ({skip})")
            continue
        config = training_config(tiny, device.type, amp, workers)
        seed_everything(config.run.seed, config.run.deterministic)
        strategy = CRACStrategy(config, device)
        stage_dir = work / f"train-{key}"
        trainer = Trainer(strategy, config, dataset, stage_dir, "crac", config.run.iterations, device)
        warm = 1 if tiny else 10
        trainer.run(stop_at=warm)  # cuDNN set-up, allocator growth, first batches
        measured = steady_rate(lambda n, t=trainer: t.run(stop_at=t.iteration + n), 1 if tiny else 10, seconds)
        result[key] = {"iterations_per_s": measured["rate"], "runs": measured["runs"], "warm_up": warm}
        bound = " (loader-bound: add --loader-workers)" if measured["rate"] > 0.8 * loader else ""
        report.say(f"training {key}: {measured['rate']:.2f} iterations/s, steady state{bound}")
        del trainer, strategy
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if "skipped" not in result["bf16"]:
        result["bf16_speedup"] = result["bf16"]["iterations_per_s"] / result["fp32"]["iterations_per_s"]
        report.say(f"training bf16 / fp32: {result['bf16_speedup']:.2f}x")
    result["cudnn_deterministic"] = config.run.deterministic
    return result


def prediction(report: Report, device, tiny: bool, seconds: float, batch: int, matrix_result, work: Path) -> dict:
    import numpy as np
    import torch
    from funlib.geometry import Roi
    from predict import count_flops, make_checkpoint, run_blockwise, time_whole_volume

    from affcons.devices import resolve_precision
    from affcons.io import create_volume, open_volume
    from affcons.nets import load_model
    from affcons.predict import SHORT_RANGE, PatchGrid, Predictor

    gpu = device.type == "cuda"
    if tiny:
        filters, embedding, patch, margin = [2, 2, 2, 2, 2], 2, (6, 48, 48), (1, 8, 8)
        volume, block = (8, 64, 64), (4, 32, 64)
    else:
        filters, embedding, patch, margin = [28, 36, 48, 64, 80], 16, (18, 160, 160), (4, 16, 16)
        volume, block = (80, 1024, 1024), (20, 512, 512)
    checkpoint = make_checkpoint(work / "model.pt", filters, embedding)
    networks, _ = load_model(checkpoint)
    grid = PatchGrid(patch, margin)
    voxel_size = (50, 4, 4)
    roi = Roi((0, 0, 0), tuple(v * s for v, s in zip(volume, voxel_size)))
    raw_path = str(work / "raw.zarr/raw")
    array = create_volume(raw_path, roi, voxel_size, np.uint8, chunk_shape=grid.tile, mode="w")
    array[roi] = np.random.default_rng(0).integers(0, 256, volume, dtype=np.uint8)
    raw = open_volume(raw_path)
    if gpu:
        torch.backends.cudnn.benchmark = True  # as the blockwise workers run
    result = {"volume": list(volume), "block": list(block), "patch": list(patch), "margin": list(margin)}
    result["batch"] = batch
    report.say(f"volume {list(volume)} voxels, patch {list(patch)}, margin {list(margin)}, batch {batch}")

    flops = None
    for precision in ("fp32", "bf16"):
        predictor = Predictor(
            networks, grid, "implicit", SHORT_RANGE, device=device, precision=precision, batch_size=batch
        )
        flops = flops or count_flops(predictor) / math.prod(grid.tile)
        rate = time_whole_volume(predictor, raw, seconds)
        result[f"whole_{precision}_voxels_per_s"] = rate
        report.say(f"whole-volume {precision}: {rate:,.0f} output voxels/s")
    result["flop_per_output_voxel"] = flops

    precision = resolve_precision("auto", device)
    options = {
        "checkpoint": str(checkpoint),
        "raw": raw_path,
        "out": str(work / "out.zarr/affs"),
        "run_dir": str(work / "run"),
        "map": "implicit",
        "channels": "short",
        "patch": patch,
        "margin": margin,
        "batch_size": batch,
        "precision": precision,
        "device": device.type,
        "block_size": tuple(b * v for b, v in zip(block, voxel_size)),
        "chunk_shape": grid.tile,
        "execution": {"workers": 1, "progress": False},
    }
    if gpu:
        options["gpus"] = [0]
        torch.cuda.empty_cache()
    else:
        options["threads"] = 1 if tiny else len(os.sched_getaffinity(0))
    config, summary, wall, blocks = run_blockwise(options)
    if config.batch_size != batch or config.precision != precision:
        raise RuntimeError(f"blockwise ran batch {config.batch_size} {config.precision}, not {batch} {precision}")
    rate = steady_block_rate(blocks)
    result.update(
        blockwise_precision=precision,
        blockwise_voxels_per_s=rate,
        blockwise_blocks=len(blocks),
        blockwise_wall_s=round(wall, 3),
        blockwise_span_s=summary.get("timers", {}).get("span_s"),
        blockwise_over_whole=rate / result[f"whole_{precision}_voxels_per_s"],
    )
    report.say(
        f"blockwise {precision}, batch {batch}, one worker: {rate:,.0f} output voxels/s in steady state "
        f"({result['blockwise_over_whole']:.2f}x whole-volume {precision}; {len(blocks)} blocks, {wall:.1f} s "
        "wall with worker start-up)"
    )
    if matrix_result:
        peak = matrix_result["tflops"] * 1e12
        for key in (f"whole_{precision}", "blockwise"):
            fraction = result[f"{key}_voxels_per_s"] * flops / peak
            result[f"{key}_fraction_of_matrix_rate"] = fraction
            report.say(f"{key}: {fraction:.2%} of the measured {matrix_result['dtype']} matrix rate")
    return result


# ------------------------------------------------------------------------------------------------------------ main


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu-check.json and gpu-check.log (created)")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny networks, crops and volumes (the CPU test)")
    parser.add_argument("--seconds", type=float, help="length of each steady-state window (default 8, tiny 1)")
    parser.add_argument("--loader-workers", type=int, help="data-loader workers (default: CPUs - 1, at most 12)")
    parser.add_argument("--batch-size", type=int, help="patches per forward pass, whole-volume and blockwise (8)")
    parser.add_argument("--work-dir", help="where the temporary work folder is made (default: the system's)")
    parser.add_argument("--skip", nargs="*", default=[], choices=("training", "prediction"), help="phases to skip")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    report = Report(Path(args.out), args)
    seconds = args.seconds if args.seconds is not None else (1.0 if args.tiny else 8.0)
    workers = args.loader_workers if args.loader_workers is not None else (1 if args.tiny else None)
    work = Path(tempfile.mkdtemp(prefix="affcons-gpu-check-", dir=args.work_dir))
    status = "failed"
    try:
        report.data["environment"] = environment(report, args.device)
        report.write()
        from affcons.devices import select_device

        device = select_device("cuda:0" if args.device == "cuda" else "cpu")
        workers = workers if workers is not None else max(1, min(12, report.data["environment"]["cpus"] - 1))
        matrix_result = report.phase("matrix", matrix, device, args.tiny, seconds)
        if "training" not in args.skip:
            report.phase("training", training, device, args.tiny, seconds, workers, work)
        if "prediction" not in args.skip:
            batch = args.batch_size or (2 if args.tiny else 8)
            report.phase("prediction", prediction, device, args.tiny, seconds, batch, matrix_result, work)
        failed = [name for name, phase in report.data["phases"].items() if phase["status"] != "passed"]
        status = "failed" if failed else "passed"
        report.say(
            f"gpu check {status}" + (f" (failed: {', '.join(failed)})" if failed else "") + f"; {report.json_path}"
        )
        return 1 if failed else 0
    except EnvironmentProblem as problem:
        report.say(f"gpu check cannot run here: {problem}")
        report.data["error"] = str(problem)
        return 2
    except Terminated:
        report.say("gpu check terminated (SIGTERM: the time limit?); the summary holds the phases done so far")
        report.data["error"] = "terminated by SIGTERM"
        return 1
    finally:
        report.finish(status)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
