"""CRAC versus a sparse-supervised baseline on the bundled ISBI 2012 volume (data/isbi2012_3d).

Protocol (the same for every method): train on sections 0-19 with sparse labels (a fixed random 10 % of the 3-D
neurite ids, seed 555, whole instances, borders widened), evaluate on sections 20-29 against the dense labels.
Methods, with the same crop size, batch size, iterations and seed:

  (a) supervised -- the explicit affinity net trained on the sparse labels only (L_sup_exp);
  (b) crac-ws    -- CRAC, weight-sharing variant (both nets, cross-representation pseudo-labels);
  (c) crac-ema   -- CRAC, EMA variant (pseudo-labels from EMA teachers).

Each trained model predicts the whole validation sub-volume (stitched, Gaussian blending); the 3 nearest-neighbour
affinities are segmented (watershed fragments + mean agglomeration) at thresholds 0.1..0.9 and scored with VOI
split/merge (nats) and ARAND; the table shows each map at its best threshold (lowest VOI). For CRAC the implicit map
is the method's output; the explicit and mean maps are diagnostics.

Default: a REDUCED CPU version (small networks and 8x80x80 crops, 600 iterations, lr 1e-3, BatchNorm momentum 0.1
instead of 0.001 so that the eval-mode running statistics follow the weights within the run; S2 stays off because its
gate, 5000, exceeds the run length). Why these values (docs/design/crac.md section 10): with per-channel class-balance
weights the supervised baseline separates boundaries within 100-300 iterations of these crops (sep 0.12 -> 0.29 on
sections 20-29, the untrained net 0.006); with momentum 0.01 its eval-mode maps lag far behind its train-mode ones
(sep 0.07 vs 0.32 at 200 iterations); 600 iterations of all three methods plus the evaluations fit in about 45-60
minutes on a shared 2-core machine with ``--threads 1``. ``--full --device cuda``: the reference architecture and
crops, a pre-training run for the S2 confidence net, longer training, and a fp32 vs AMP throughput measurement.
Outputs go to --out-dir (default runs/benchmark_crac_isbi under the repository root).

    nice python benchmarks/crac_isbi.py                       # reduced CPU version (~45-60 min, shared 2 cores)
    python benchmarks/crac_isbi.py --full --device cuda       # unreduced, on a GPU
"""

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from affcons.affinities import NEAREST_NEIGHBOUR_OFFSETS, affinities_from_labels, shifted_pair_slices  # noqa: E402
from affcons.config import validate  # noqa: E402
from affcons.nets import select_device  # noqa: E402
from affcons.train.config import REPO_ROOT, CRACConfig, PretrainConfig, RoiConfig, VolumeConfig  # noqa: E402
from affcons.train.dataset import CropDataset, load_volume  # noqa: E402
from affcons.train.strategies import (  # noqa: E402
    ConfidenceStrategy,
    CRACStrategy,
    EmbeddingWarmupStrategy,
    load_confidence_net,
)
from affcons.train.trainer import Trainer, seed_everything  # noqa: E402
from affcons.train.validation import predict_volume, score_segmentations  # noqa: E402

ISBI = "data/isbi2012_3d/isbi2012_with_3d_neurite_labels.h5"
METHODS = ("supervised", "crac-ws", "crac-ema")
#: Control, run only when named in --methods: CRAC WS with the consistency terms off (pseudo_weight 0), i.e. both
#: networks trained on the sparse labels alone -- what the cross-representation terms add.
CONTROLS = ("crac-ws-no-consistency",)
THRESHOLDS = [round(0.1 * i, 1) for i in range(1, 10)]

REDUCED = {
    "filters": [8, 12, 16, 24, 32],
    "embedding_channels": 16,
    "crop": [8, 80, 80],
    "margin": [0, 24, 24],
    "batch_size": 2,
    "iterations": 600,
    "bn_momentum": 0.1,
    "pretrain_iterations": 0,
    "lr": 1e-3,
    "adam_eps": 1e-8,
    "eval_patch": [12, 544, 544],
    "eval_stride": [12, 512, 512],
}
FULL = {
    "filters": [28, 36, 48, 64, 80],
    "embedding_channels": 16,
    "crop": [18, 160, 160],
    "margin": [0, 50, 50],
    "batch_size": 2,
    "iterations": 20000,
    "bn_momentum": 0.001,
    "pretrain_iterations": 5000,
    "lr": 1e-4,
    "adam_eps": 0.01,
    "eval_patch": [18, 160, 160],
    "eval_stride": [10, 80, 80],
}


def base_config(settings: dict, args) -> dict:
    volume = {"raw": f"{ISBI}:raw", "labels": f"{ISBI}:labels/neurites_3dcc"}
    return {
        "data": {
            "train": {**volume, "roi": {"begin": [0, 0, 0], "end": [20, 512, 512]}},
            "sparse": {"mode": "fraction", "value": args.sparse_fraction, "seed": 555},
            "crop": settings["crop"],
            "margin": settings["margin"],
            "num_workers": args.num_workers,
        },
        "model": {
            "filters": settings["filters"],
            "embedding_channels": settings["embedding_channels"],
            "bn_momentum": settings["bn_momentum"],
        },
        "run": {
            "iterations": settings["iterations"],
            "batch_size": settings["batch_size"],
            "seed": 555,
            "checkpoint_every": settings["iterations"],
            "log_every": 50,
            "image_every": 0,
            "device": args.device,
        },
        "optim": {"lr": settings["lr"], "eps": settings["adam_eps"]},
        "validation": {"volume": None},
    }


def method_config(method: str, settings: dict, args, confidence: Path | None) -> CRACConfig:
    data = base_config(settings, args)
    data["kind"] = "crac"
    data["variant"] = {"supervised": "supervised", "crac-ws": "ws", "crac-ema": "ema", "crac-ws-no-consistency": "ws"}[
        method
    ]
    data["validation"]["output"] = "explicit" if method == "supervised" else "implicit"
    if method == "crac-ws-no-consistency":
        data["loss"] = {"pseudo_weight": 0.0}
    data["pseudo"] = {
        "s2": {"enabled": confidence is not None, "checkpoint": str(confidence) if confidence is not None else None}
    }
    return validate(CRACConfig, data, f"benchmark config {method}")


def pretrain_confidence(settings: dict, args, device, out_dir: Path) -> Path:
    """Stage 1 + stage 2 of pre-training (full mode), returning the exported confidence checkpoint."""
    n = settings["pretrain_iterations"]
    data = base_config(settings, args)
    data.update(
        {
            "kind": "pretrain",
            "stage1": {"iterations": n, "save_at": sorted({n // 5, n // 2, n})},
            "stage2": {"iterations": n},
        }
    )
    config = validate(PretrainConfig, data, "benchmark pre-training config")
    dataset = CropDataset(config.data, config.model.offsets, config.run.seed, config.run.batch_size)
    seed_everything(config.run.seed, True)
    stage1 = Trainer(
        EmbeddingWarmupStrategy(config, device),
        config,
        dataset,
        out_dir / "stage1",
        "pretrain-stage1",
        n,
        device,
        save_at=config.stage1.save_at,
    )
    stage1.run()
    predictors = [out_dir / "stage1" / "predictors" / f"embedding-{i:06d}.pt" for i in config.stage1.save_at]
    seed_everything(config.run.seed + 1, True)
    stage2 = Trainer(
        ConfidenceStrategy(config, device, predictors),
        config,
        dataset,
        out_dir / "stage2",
        "pretrain-stage2",
        n,
        device,
    )
    stage2.run()
    return out_dir / "stage2" / "checkpoints" / "last.pt"


def train(method: str, config: CRACConfig, device, out_dir: Path, confidence: Path | None):
    dataset = CropDataset(config.data, config.model.offsets, config.run.seed, config.run.batch_size)
    seed_everything(config.run.seed, True)
    net = load_confidence_net(confidence, device) if confidence is not None else None
    strategy = CRACStrategy(config, device, net)
    trainer = Trainer(strategy, config, dataset, out_dir / method, "crac", config.run.iterations, device)
    summary = trainer.run()
    return strategy, summary, dataset.sparse_report, trainer.history


def throughput(method: str, config: CRACConfig, device, out_dir: Path, confidence, amp: str, steps: int) -> float:
    """Iterations per second of ``steps`` iterations after 5 warm-up iterations, with ``run.amp = amp``."""
    data = config.model_dump(mode="json")
    data["run"].update({"amp": amp, "iterations": steps + 5, "checkpoint_every": 10**9, "log_every": 10**9})
    timed = validate(CRACConfig, data, "throughput config")
    dataset = CropDataset(timed.data, timed.model.offsets, timed.run.seed, timed.run.batch_size)
    seed_everything(timed.run.seed, True)
    net = load_confidence_net(confidence, device) if confidence is not None else None
    trainer = Trainer(
        CRACStrategy(timed, device, net), timed, dataset, out_dir / f"{method}-{amp}", "crac", steps + 5, device
    )
    trainer.run(stop_at=5)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    trainer.run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def boundary_separation(affs, labels) -> float:
    """Did the map learn in-plane boundaries? Mean y/x affinity of pairs inside one neurite minus that of pairs that
    cross a boundary (neurite/neurite or neurite/membrane), on the dense validation labels; 0 = no signal."""
    target, inside_volume = affinities_from_labels(labels.astype(np.int64), NEAREST_NEIGHBOUR_OFFSETS, unlabelled=None)
    labelled = labels > 0
    inside, across = [], []
    for c in (1, 2):
        at_p, at_q = shifted_pair_slices(labels.shape, NEAREST_NEIGHBOUR_OFFSETS[c])
        known = np.zeros(labels.shape, dtype=bool)
        known[at_p] = labelled[at_p] | labelled[at_q]
        known &= inside_volume[c] > 0
        inside.append(affs[c][known & (target[c] == 1)])
        across.append(affs[c][known & (target[c] == 0)])
    return float(np.concatenate(inside).mean() - np.concatenate(across).mean())


def evaluate_method(strategy: CRACStrategy, method: str, validation, patch, stride, device) -> dict:
    networks = strategy.validation_networks(use_ema=True)
    networks.eval()
    outputs = ("explicit",) if method == "supervised" else ("implicit", "explicit")

    def predict(raw: torch.Tensor) -> torch.Tensor:
        maps = networks.affinities(raw, outputs=outputs)
        return torch.cat([maps[name][:, :3] for name in outputs], dim=1)

    start = time.perf_counter()
    affs = predict_volume(predict, validation.raw, patch, stride, 3 * len(outputs), device)
    maps = {name: affs[3 * i : 3 * i + 3] for i, name in enumerate(outputs)}
    if method != "supervised":
        maps["mean"] = 0.5 * (maps["implicit"] + maps["explicit"])
    results = {}
    for name, values in maps.items():
        results[name] = score_segmentations(values, validation.labels, THRESHOLDS, "mean", "voi")
        results[name]["separation"] = boundary_separation(values, validation.labels)
    results["seconds"] = time.perf_counter() - start
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the unreduced version (meant for a GPU)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    parser.add_argument("--iterations", type=int, help="training iterations per method (default 600 / 20000)")
    parser.add_argument("--pretrain-iterations", type=int, help="full mode: iterations of each pre-training stage")
    parser.add_argument("--filters", help="comma-separated widths, overriding the mode's default")
    parser.add_argument("--crop", help="comma-separated z,y,x crop, overriding the mode's default")
    parser.add_argument("--lr", type=float, help="Adam learning rate (default: reduced 1e-3, full 1e-4 as in CRAC)")
    parser.add_argument("--adam-eps", type=float, help="Adam eps (default: reduced 1e-8, full 0.01 as in CRAC)")
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"subset of {','.join(METHODS + CONTROLS)} (the control only when named)",
    )
    parser.add_argument("--sparse-fraction", type=float, default=0.1, help="fraction of ids labelled (0.1)")
    parser.add_argument("--num-workers", type=int, default=1, help="DataLoader workers")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is best on a shared machine)")
    parser.add_argument("--throughput-steps", type=int, default=50, help="full/GPU mode: iterations timed per setting")
    parser.add_argument("--val-size", type=int, default=512, help="validation y/x extent (512 = whole sections)")
    parser.add_argument("--out-dir", help="output directory (default runs/benchmark_crac_isbi)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(max(1, args.threads))
    settings = dict(FULL if args.full else REDUCED)
    if args.iterations:
        settings["iterations"] = args.iterations
    if args.pretrain_iterations is not None:
        settings["pretrain_iterations"] = args.pretrain_iterations
    if args.filters:
        settings["filters"] = [int(v) for v in args.filters.split(",")]
    if args.crop:
        settings["crop"] = [int(v) for v in args.crop.split(",")]
    for key in ("lr", "adam_eps"):
        if getattr(args, key) is not None:
            settings[key] = getattr(args, key)
    if not args.full:  # one patch covering the validation sections (fast on a CPU; the nets are fully convolutional)
        settings["eval_patch"] = [12, args.val_size + 32, args.val_size + 32]
        settings["eval_stride"] = [12, args.val_size, args.val_size]
    methods = [m for m in args.methods.split(",") if m]
    unknown = set(methods) - set(METHODS + CONTROLS)
    if unknown:
        parser.error(f"unknown methods {sorted(unknown)}")
    device = select_device(args.device)
    out_dir = Path(args.out_dir).resolve() if args.out_dir else REPO_ROOT / "runs" / "benchmark_crac_isbi"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    mode = "FULL" if args.full else "REDUCED CPU"
    print(
        f"CRAC ISBI benchmark -- {mode} version on {device}"
        + ("" if args.full else " (small networks, crops and iteration counts: not the paper's setting)")
    )
    print(
        f"settings: {json.dumps(settings)}; threads {torch.get_num_threads()}; sparse fraction {args.sparse_fraction}"
    )
    total_start = time.perf_counter()

    confidence = None
    if settings["pretrain_iterations"] > 0 and any(m != "supervised" for m in methods):
        start = time.perf_counter()
        confidence = pretrain_confidence(settings, args, device, out_dir / "pretraining")
        print(
            f"pre-training (stage 1 + stage 2, {settings['pretrain_iterations']} iterations each): "
            f"{time.perf_counter() - start:.0f} s; S2 active after iteration 5000"
        )
    else:
        print(
            "S2 (confidence net) off: no pre-training in this mode"
            if not args.full
            else "S2 off: --pretrain-iterations 0"
        )

    validation = load_volume(
        VolumeConfig(
            raw=f"{ISBI}:raw",
            labels=f"{ISBI}:labels/neurites_3dcc",
            roi=RoiConfig(begin=(20, 0, 0), end=(30, args.val_size, args.val_size)),
        ),
        "validation",
        need_labels=True,
    )
    patch, stride = tuple(settings["eval_patch"]), tuple(settings["eval_stride"])
    rows, report, speeds = [], None, {}
    # control: the networks at initialisation (same seed), to show what the untrained maps already score
    control = method_config("crac-ws", settings, args, None)
    seed_everything(control.run.seed, True)
    scores = evaluate_method(CRACStrategy(control, device), "crac-ws", validation, patch, stride, device)
    for name in ("implicit", "explicit"):
        rows.append(("untrained", name, float("nan"), scores[name]))
    print(f"  untrained control: evaluation {scores['seconds']:.0f} s", flush=True)
    for method in methods:
        config = method_config(method, settings, args, confidence if method != "supervised" else None)
        strategy, summary, report, history = train(
            method, config, device, out_dir, confidence if method != "supervised" else None
        )
        scores = evaluate_method(strategy, method, validation, patch, stride, device)
        speeds[method] = summary["iterations_per_second"]
        for name in ("implicit", "explicit", "mean"):
            if name in scores:
                rows.append((method, name, summary["iterations_per_second"], scores[name]))
        print(
            f"  {method}: {summary['iterations']} iterations in {summary['seconds']:.0f} s "
            f"({summary['iterations_per_second']:.2f} it/s), evaluation {scores['seconds']:.0f} s",
            flush=True,
        )
        tail = history[-50:]
        terms = {
            key.split("/")[1]: float(np.mean([h[key] for h in tail]))
            for key in tail[0]
            if key.startswith("loss/") or key.startswith("pseudo/kept")
        }
        print(
            f"    mean of the last {len(tail)} iterations: "
            + ", ".join(f"{key} {value:.4g}" for key, value in terms.items()),
            flush=True,
        )
        if device.type == "cuda":
            for amp in ("none", "bf16"):
                speeds[f"{method} {amp}"] = throughput(
                    method,
                    config,
                    device,
                    out_dir / "throughput",
                    confidence if method != "supervised" else None,
                    amp,
                    args.throughput_steps,
                )
        (out_dir / f"{method}-scores.json").write_text(json.dumps(scores, indent=1, default=str))

    print(f"\nsparse labels: {report.summary()}")
    print(
        f"validation: sections 20-29 (10 x {args.val_size} x {args.val_size}), dense labels; "
        f"thresholds {THRESHOLDS[0]}..{THRESHOLDS[-1]}"
    )
    width = max(len(m) for m in ("untrained", *methods))
    header = (
        f"{'method':<{width}} {'map':<9} {'it/s':>6} {'thr':>4} {'VOI split':>9} {'VOI merge':>9} {'VOI':>7} "
        f"{'ARAND':>7} {'sep':>7}"
    )
    print(header)
    print("-" * len(header))
    for method, name, speed, s in rows:
        primary = "*" if (method == "supervised" or name == "implicit") else " "
        primary = " " if method == "untrained" else primary
        print(
            f"{method:<{width}} {name + primary:<9} {speed:>6.2f} {s['threshold']:>4.1f} {s['voi_split']:>9.4f} "
            f"{s['voi_merge']:>9.4f} {s['voi']:>7.4f} {s['arand']:>7.4f} {s['separation']:>7.3f}"
        )
    print("* = the method's output (CRAC: implicit map); the other maps are diagnostics. VOI, ARAND: lower is better.")
    print(
        "sep = mean in-plane affinity inside neurites minus across boundaries (0: no boundary learned; higher is "
        "better); 'untrained' = the networks at initialisation."
    )
    if device.type == "cuda":
        print("\nthroughput (iterations/s, training step incl. data loading):")
        for method in methods:
            print(f"  {method:<{width}} fp32 {speeds[f'{method} none']:.2f}   AMP bf16 {speeds[f'{method} bf16']:.2f}")
    else:
        print("throughput: fp32 on CPU as in the it/s column (AMP is CUDA-only)")
    print(f"total time {time.perf_counter() - total_start:.0f} s; outputs in {out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
