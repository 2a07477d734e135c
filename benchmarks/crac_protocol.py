"""The reduced CRAC protocol: five arms and a sixth control, three seeds, two volumes; resumable per unit.

Does CRAC's own output beat sparse supervision? Every arm trains on the same sparsely labelled training sections (10 %
of the instances, whole masks, the same ids for every arm and seed: sparse seed 555) and is scored on separate
evaluation sections against their dense labels:

  volume  training sections (dense labels hidden from training)        evaluation sections
  isbi    ISBI 2012 ssTEM (4x4x50 nm), sections 0-19, 512x512           sections 20-29
  gala    gala FIB-SEM (~10 nm isotropic), train-image.h5 (50x100x200)  test-image.h5 (50x100x200)

Arms (the reduced CPU settings below, identical for all):

  (a) supervised      the explicit affinity net on the sparse labels only;
  (b) crac-ws         CRAC, weight sharing, with pre-training (stage 1 + the CPSN confidence net), S1 and S2;
  (c) crac-ema        CRAC, EMA teachers (decay 0.99, warmed up), otherwise as (b);
  (d) oracle          (b)'s training with the pseudo-labels replaced by the true affinities on every valid unlabelled
                      pair (dense training labels): the upper bound of what better pseudo-labels can give;
  (e) no-consistency  (b) with pseudo_weight 0 (both nets on the sparse labels alone);
  (f) oracle-filter   (b)'s training with S1 and S2 replaced by a perfect filter: each teacher's pseudo-labels kept
                      exactly where they lie on the true side of 0.5 (dense training labels): the upper bound of
                      what better filters can give with these teachers.

Seeds 555, 556, 557 for (a)-(c) and (e), 555 for (d) and (f) (``--seeds`` runs the seeds it names for every arm
given, e.g. the oracle's 556-557); a seed changes the network initialisation and the crop stream (and the
pre-training), never the labelled instances. The agglomeration threshold of each map is chosen on the
training sections (lowest VOI against their dense labels) and applied to the evaluation sections; the best threshold
on the evaluation sections is recorded too, as a diagnostic only. Nothing is tuned on the evaluation sections.

Schedules (docs/design/crac.md section 12 says why): N = 600 CRAC iterations; pre-training stage 1 N/2 iterations
(predictors saved at 5/25/50/75/100 % of it, the reference's 1k/5k/10k/15k/20k of 20k) and stage 2 (CPSN) N/2; S2 from
25 % of the run (the reference's 5000 of 20k); pseudo_weight ramped up over the first 25 % (exp(-5 (1 - t/R)^2));
EMA decay min(1 - 1/(t + 1), 0.99). The filters are measured every 25 iterations on the training crops against their
hidden dense labels (pairs kept by S1 and S1+S2, and how many are right, per channel group).

Each finished unit writes ``benchmarks/results/crac_protocol/n<N>/<volume>/<arm>-seed<k>.json`` (and
``pretrain-seed<k>.json``); a re-run skips finished units and resumes an interrupted one from its last checkpoint
(every 100 iterations, under ``runs/crac_protocol``). ``--table`` only prints the table of what has finished.

``--cpsn-variant NAME[@ITERATION|@pick]`` runs (b)/(c) with the confidence net of ``benchmarks/cpsn_variants.py``'s
variant NAME (trained for the same volume and seed; its exported net, its stage-2 checkpoint at ITERATION, or the one
``cpsn_quality.py --pick`` picked on the training sections for this volume and seed, recorded in
``benchmarks/results/cpsn_quality/<volume>-no-consistency-seed<k>-<NAME>.json``) instead of the protocol's
pre-training: the unit is named ``<arm>+<NAME>[@...]`` (``crac-ws+stage1-long@pick-seed556.json``; seeds of one name
form one row of the table) and listed after its arm. ``--s2-threshold T`` runs (b)/(c) with S2 keeping the affinities
whose predicted error is below T instead of 0.5 (unit ``<arm>[+<NAME>...]+s2t<T>``); ``--s2-threshold pick`` takes the
threshold that ``cpsn_quality.py --pick`` chose for the picked net from its operating curve on the training sections
(unit ``...+s2t@pick``).

    nohup nice -n 15 python benchmarks/crac_protocol.py > crac-protocol-run.log 2>&1 &   # everything, resumable
    python benchmarks/crac_protocol.py --table                                           # the table so far
    python benchmarks/crac_protocol.py --volumes isbi --arms supervised --seeds 555      # one unit
    python benchmarks/crac_protocol.py --volumes isbi --arms crac-ws --seeds 556 --cpsn-variant stage1-long@pick
"""

import argparse
import json
import logging
import math
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from affcons.config import validate  # noqa: E402
from affcons.nets import load_model  # noqa: E402
from affcons.train.config import REPO_ROOT, CRACConfig, PretrainConfig, VolumeConfig  # noqa: E402
from affcons.train.dataset import load_volume  # noqa: E402
from affcons.train.validation import predict_volume, score_segmentations  # noqa: E402
from benchmarks.crac_isbi import boundary_separation  # noqa: E402

ISBI = "data/isbi2012_3d/isbi2012_with_3d_neurite_labels.h5"
GALA = "data/gala_fibsem"
VOLUMES = {
    "isbi": {
        "train": {
            "raw": f"{ISBI}:raw",
            "labels": f"{ISBI}:labels/neurites_3dcc",
            "roi": {"begin": [0, 0, 0], "end": [20, 512, 512]},
        },
        "evaluation": {
            "raw": f"{ISBI}:raw",
            "labels": f"{ISBI}:labels/neurites_3dcc",
            "roi": {"begin": [20, 0, 0], "end": [30, 512, 512]},
        },
        "margin": [0, 24, 24],
        "patch": [12, 544, 544],
        "stride": [12, 512, 512],
    },
    "gala": {
        "train": {"raw": f"{GALA}/train-image.h5:stack", "labels": f"{GALA}/train-gt.lzf.h5:stack"},
        "evaluation": {"raw": f"{GALA}/test-image.h5:stack", "labels": f"{GALA}/test-gt.lzf.h5:stack"},
        "margin": [0, 10, 10],  # the sections are 100 voxels high: crop 80 + 2 x 10
        "patch": [12, 128, 224],
        "stride": [12, 96, 192],
    },
}
CRAC_ARMS = ("crac-ws", "crac-ema")  # the arms with a confidence net (pre-training or --cpsn-variant)
CONTROLS = ("oracle", "no-consistency", "oracle-filter")  # arms compared with the baseline besides CRAC's
ARMS = ("supervised", *CRAC_ARMS, *CONTROLS)
# (e) has three seeds too: it separates what the consistency terms add from what the two nets give without them
SEEDS = {arm: (555, 556, 557) for arm in ("supervised", *CRAC_ARMS, "no-consistency")}
CONTROL_SEEDS = (555,)
THRESHOLDS = [round(0.1 * i, 1) for i in range(1, 10)]
TIE = 1e-6  # score differences below this are rounding (e.g. two maps that both merge everything), not wins
SETTINGS = {
    "iterations": 600,
    "filters": [8, 12, 16, 24, 32],
    "embedding_channels": 16,
    "confidence_filters": [4, 6, 8, 12, 16],
    "crop": [8, 80, 80],
    "batch_size": 2,
    "bn_momentum": 0.1,
    "lr": 1e-3,
    "adam_eps": 1e-8,
    "sparse_fraction": 0.1,
    "pretrain_fraction": 0.5,  # each pre-training stage, as a fraction of N
    "save_at": [0.05, 0.25, 0.5, 0.75, 1.0],  # stage-1 predictors, fractions of stage 1
    "gate_fraction": 0.25,
    "pseudo_rampup": 0.25,
    "ema_decay": 0.99,
    "measure_every": 25,
    "checkpoint_every": 100,
}
RESULTS = REPO_ROOT / "benchmarks" / "results" / "crac_protocol"
RUNS = REPO_ROOT / "runs" / "crac_protocol"
PICKS = REPO_ROOT / "benchmarks" / "results" / "cpsn_quality"


def protocol_settings(iterations: int | None) -> dict:
    """:data:`SETTINGS` for a run of ``iterations`` CRAC iterations (None: the protocol's own length)."""
    return dict(SETTINGS, **({"iterations": iterations} if iterations else {}))


def results_dir(settings: dict) -> Path:
    """Results of one run length only: ``benchmarks/results/crac_protocol/n<N>``."""
    return RESULTS / f"n{settings['iterations']}"


def runs_dir(settings: dict) -> Path:
    return RUNS / f"n{settings['iterations']}"


def unit_seeds(arm: str) -> tuple[int, ...]:
    return SEEDS.get(arm, CONTROL_SEEDS)


def unit_order(volumes: list[str], arms: list[str], seeds: set[int] | None) -> list[tuple[str, str, int]]:
    """The (volume, arm, seed) units to run: every arm's protocol seeds (:func:`unit_seeds`), or exactly ``seeds``
    for every arm (controls included) when given; the first seed of every arm on every volume first, then the next."""
    per_arm = {arm: unit_seeds(arm) if seeds is None else tuple(sorted(seeds)) for arm in arms}
    order = []
    for rank in range(max((len(s) for s in per_arm.values()), default=0)):
        for volume in volumes:
            for arm in arms:
                if rank < len(per_arm[arm]):
                    order.append((volume, arm, per_arm[arm][rank]))
    return order


def unit_arms(results: dict, volume: str, arms=ARMS) -> list[str]:
    """``arms`` in protocol order, each followed by its confidence-net variants (``<arm>+<variant>``) in ``results``."""
    labels = []
    for arm in arms:
        labels.append(arm)
        labels += sorted(label for v, label in results if v == volume and label.startswith(f"{arm}+"))
    return labels


def common_config(volume: str, seed: int, settings: dict, num_workers: int) -> dict:
    spec = VOLUMES[volume]
    return {
        "data": {
            "train": spec["train"],
            "sparse": {"mode": "fraction", "value": settings["sparse_fraction"], "seed": 555},
            "crop": settings["crop"],
            "margin": spec["margin"],
            "num_workers": num_workers,
        },
        "model": {
            "filters": settings["filters"],
            "embedding_channels": settings["embedding_channels"],
            "bn_momentum": settings["bn_momentum"],
        },
        "run": {
            "iterations": settings["iterations"],
            "batch_size": settings["batch_size"],
            "seed": seed,
            "checkpoint_every": settings["checkpoint_every"],
            "keep_checkpoints": 1,
            "log_every": settings["measure_every"],
            "image_every": 0,
            "device": "cpu",
        },
        "optim": {"lr": settings["lr"], "eps": settings["adam_eps"]},
        "validation": {"volume": None},
    }


def stage1_save_at(stage: int, settings: dict) -> list[int]:
    """The iterations of the stage-1 predictors for a stage 1 of ``stage`` iterations."""
    return sorted({max(1, round(f * stage)) for f in settings["save_at"]})


def pretrain_config(volume: str, seed: int, settings: dict, num_workers: int) -> PretrainConfig:
    data = common_config(volume, seed, settings, num_workers)
    stage = max(1, round(settings["pretrain_fraction"] * settings["iterations"]))
    data.update(
        {
            "kind": "pretrain",
            "confidence_model": {"filters": settings["confidence_filters"], "bn_momentum": settings["bn_momentum"]},
            "stage1": {"iterations": stage, "save_at": stage1_save_at(stage, settings)},
            "stage2": {"iterations": stage},
        }
    )
    return validate(PretrainConfig, data, f"protocol pre-training config ({volume}, seed {seed})")


def unit_label(arm: str, variant: str | None, s2_threshold: str | None) -> str:
    """``<arm>[+<variant>][+s2t<T>|+s2t@pick]``: the unit's name in result files and the table."""
    label = f"{arm}+{variant}" if variant else arm
    if s2_threshold is None:
        return label
    return f"{label}+s2t@pick" if s2_threshold == "pick" else f"{label}+s2t{float(s2_threshold):g}"


def arm_config(
    volume: str,
    arm: str,
    seed: int,
    settings: dict,
    num_workers: int,
    confidence: Path | None,
    s2_threshold: float | None = None,
):
    data = common_config(volume, seed, settings, num_workers)
    data["kind"] = "crac"
    data["variant"] = {"supervised": "supervised", "crac-ema": "ema"}.get(arm, "ws")
    data["validation"]["output"] = "explicit" if arm == "supervised" else "implicit"
    data["loss"] = {
        "pseudo_weight": 0.0 if arm == "no-consistency" else 1.0,
        "pseudo_rampup": settings["pseudo_rampup"],
    }
    data["pseudo"] = {
        "source": {"oracle": "oracle", "oracle-filter": "oracle_filter"}.get(arm, "teacher"),
        "measure_every": 0 if arm == "supervised" else settings["measure_every"],
        "s2": {
            "enabled": confidence is not None,
            "gate_fraction": settings["gate_fraction"],
            "checkpoint": str(confidence) if confidence is not None else None,
            **({} if s2_threshold is None else {"threshold": s2_threshold}),
        },
    }
    if arm == "crac-ema":
        data.update({"ema_decay": settings["ema_decay"], "ema_warmup": True})
    return validate(CRACConfig, data, f"protocol config ({volume}, {arm}, seed {seed})")


def read_history(path: Path) -> list[dict]:
    """The rows of a history.jsonl, one per iteration (a resumed run may repeat iterations: the last row wins)."""
    rows = {}
    if path.exists():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if "iteration" in row and "validation" not in row:
                rows[row["iteration"]] = row
    return [rows[key] for key in sorted(rows)]


def run_pretraining(volume: str, seed: int, settings: dict, args) -> Path:
    """Stage 1 + stage 2 for (volume, seed), resumable; returns the exported confidence checkpoint."""
    from affcons.commands.train import pretrain

    run_dir = runs_dir(settings) / volume / f"pretrain-seed{seed}"
    export = run_dir / "confidence.pt"
    result = results_dir(settings) / volume / f"pretrain-seed{seed}.json"
    if export.exists() and result.exists():
        return export
    config = pretrain_config(volume, seed, settings, args.num_workers)
    resume = (run_dir / "stage1" / "checkpoints" / "last.pt").exists()
    print(f"[{time.strftime('%H:%M:%S')}] {volume} pre-training seed {seed} ({'resumed' if resume else 'new'})")
    start = time.perf_counter()
    summary = pretrain(config, run_dir, argparse.Namespace(resume=resume, stop_at=None, stage="all"))
    stage2 = read_history(run_dir / "stage2" / "history.jsonl")
    tail = stage2[-max(1, len(stage2) // 5) :]
    write_json(
        result,
        {
            "volume": volume,
            "seed": seed,
            "stage1_iterations": config.stage1.iterations,
            "stage1_save_at": config.stage1.save_at,
            "stage2_iterations": config.stage2.iterations,
            "seconds": time.perf_counter() - start,
            "confidence_loss_last_fifth": float(np.mean([row["loss/confidence"] for row in tail])),
            "confidence_error_fraction_last_fifth": float(np.mean([row["confidence/error_fraction"] for row in tail])),
            "summary": summary,
        },
    )
    return export


def evaluate(checkpoint: Path, arm: str, volume: str, volumes: dict) -> dict:
    """Every map of a trained model: threshold chosen on the training sections, scores on the evaluation sections."""
    networks, _ = load_model(checkpoint, use_ema=arm == "crac-ema")
    networks.to(memory_format=torch.channels_last_3d)
    outputs = ("explicit",) if arm == "supervised" else ("implicit", "explicit")
    spec = VOLUMES[volume]

    def predict(raw: torch.Tensor) -> torch.Tensor:
        maps = networks.affinities(raw, outputs=outputs)
        return torch.cat([maps[name][:, :3] for name in outputs], dim=1)

    scores = {}
    for part in ("train", "evaluation"):
        loaded = volumes[part]
        affs = predict_volume(predict, loaded.raw, spec["patch"], spec["stride"], 3 * len(outputs), torch.device("cpu"))
        maps = {name: affs[3 * i : 3 * i + 3] for i, name in enumerate(outputs)}
        if arm != "supervised":
            maps["mean"] = 0.5 * (maps["implicit"] + maps["explicit"])
        for name, values in maps.items():
            scored = score_segmentations(values, loaded.labels, THRESHOLDS, "mean", "voi")
            entry = scores.setdefault(name, {})
            if part == "train":
                entry["threshold"] = scored["threshold"]
                entry["train"] = {k: scored[k] for k in ("voi_split", "voi_merge", "voi", "arand")}
            else:
                chosen = scored["per_threshold"][entry["threshold"]]
                entry["evaluation"] = dict(chosen)
                entry["evaluation_best_threshold"] = scored["threshold"]
                entry["evaluation_best"] = {k: scored[k] for k in ("voi_split", "voi_merge", "voi", "arand")}
                entry["separation"] = boundary_separation(values, loaded.labels)
    return scores


def filter_summary(history: list[dict], gate: int) -> dict:
    """Summed filter counts of the measured iterations after the S2 gate, per teacher map and channel group."""
    summary = {}
    for row in history:
        if row["iteration"] <= gate:
            continue
        for key, value in row.items():
            if key.startswith("filter/"):
                _, name, group, count = key.split("/")
                bucket = summary.setdefault(name, {}).setdefault(group, {})
                bucket[count] = bucket.get(count, 0.0) + value
    return summary


def pick_record(volume: str, variant_name: str, seed: int, iterations: int = SETTINGS["iterations"]) -> Path:
    """Where ``cpsn_quality.py --pick`` records the checkpoint it picks of a variant for (volume, seed); runs of
    another length than the protocol's keep theirs in ``n<N>/``."""
    name = f"{volume}-no-consistency-seed{seed}-{variant_name}.json"
    return PICKS / name if iterations == SETTINGS["iterations"] else PICKS / f"n{iterations}" / name


def unit_s2_threshold(
    volume: str, variant: str | None, seed: int, requested: str | None, iterations: int = SETTINGS["iterations"]
) -> float | None:
    """The S2 threshold of a (b)/(c) unit: None (the config's 0.5), a number, or ``pick``: the one that
    ``cpsn_quality.py --pick`` named for the picked net of ``variant`` (which must be ``NAME@pick``)."""
    if requested is None:
        return None
    if requested != "pick":
        return float(requested)
    name, _, iteration = (variant or "").partition("@")
    if iteration != "pick":
        raise SystemExit("--s2-threshold pick needs --cpsn-variant NAME@pick (the threshold belongs to the picked net)")
    record = pick_record(volume, name, seed, iterations)
    threshold = json.loads(record.read_text())["picked"].get("s2_threshold") if record.is_file() else None
    if threshold is None:
        raise SystemExit(
            f"{record} names no S2 threshold: run benchmarks/cpsn_quality.py --pick again (see its --help)"
        )
    return float(threshold)


def variant_confidence(volume_runs: Path, variant: str, seed: int, iterations: int = SETTINGS["iterations"]) -> Path:
    """The confidence net of ``NAME[@ITERATION|@pick]``: the variant's exported net, its stage-2 checkpoint at
    ITERATION, or the stage-2 checkpoint that ``cpsn_quality.py --pick`` picked for this volume and seed."""
    name, _, iteration = variant.partition("@")
    run_dir = volume_runs / f"cpsn-{name}-seed{seed}"
    checkpoints = run_dir / "stage2" / "checkpoints"
    if not iteration:
        return run_dir / "confidence.pt"
    if iteration != "pick":
        return checkpoints / f"checkpoint-{int(iteration):06d}.pt"
    record = pick_record(volume_runs.name, name, seed, iterations)
    if not record.is_file():
        raise SystemExit(
            f"{record} is missing: run benchmarks/cpsn_quality.py --run {volume_runs}/no-consistency-seed{seed} "
            f"--confidence {checkpoints}/checkpoint-*.pt --crops 16 --pick --json {record}"
        )
    picked = Path(json.loads(record.read_text())["picked"]["confidence"])
    if picked.parent.parent.parent.name != run_dir.name:
        raise SystemExit(f"{record} picked {picked}, which is not a stage-2 checkpoint of {run_dir.name}")
    return checkpoints / picked.name


def run_unit(volume: str, arm: str, seed: int, settings: dict, volumes: dict, args) -> None:
    from affcons.commands.train import train

    variant = args.cpsn_variant if arm in CRAC_ARMS else None
    requested = getattr(args, "s2_threshold", None) if arm in CRAC_ARMS else None
    label = unit_label(arm, variant, requested)
    result = results_dir(settings) / volume / f"{label}-seed{seed}.json"
    if result.exists():
        return
    confidence = None
    if variant:
        confidence = variant_confidence(runs_dir(settings) / volume, variant, seed, settings["iterations"])
        if not confidence.is_file():
            raise SystemExit(
                f"{confidence} is missing: run benchmarks/cpsn_variants.py --volume {volume} --seed {seed} "
                f"--variants {variant.split('@')[0]} --iterations {settings['iterations']} first"
            )
    elif arm in CRAC_ARMS:
        confidence = run_pretraining(volume, seed, settings, args)
    threshold = unit_s2_threshold(volume, variant, seed, requested, settings["iterations"])
    config = arm_config(volume, arm, seed, settings, args.num_workers, confidence, threshold)
    run_dir = runs_dir(settings) / volume / f"{label}-seed{seed}"
    checkpoint = run_dir / "crac" / "checkpoints" / "last.pt"
    resume = checkpoint.exists()
    print(f"[{time.strftime('%H:%M:%S')}] {volume} {label} seed {seed} ({'resumed' if resume else 'new'})", flush=True)
    start = time.perf_counter()
    summary = train(config, run_dir, argparse.Namespace(resume=resume, stop_at=None))
    trained = time.perf_counter() - start
    scores = evaluate(checkpoint, arm, volume, volumes)
    history = read_history(run_dir / "crac" / "history.jsonl")
    tail = history[-max(1, len(history) // 5) :]
    terms = sorted({key for row in tail for key in row if key.startswith("loss/")})
    write_json(
        result,
        {
            "volume": volume,
            "arm": label,
            "cpsn_variant": variant,
            "seed": seed,
            "settings": settings,
            "config": config.model_dump(mode="json"),
            "sparse": summary["sparse"],
            "iterations": summary["iterations"],
            "seconds_train": trained,
            "seconds_evaluate": time.perf_counter() - start - trained,
            "iterations_per_second": summary["iterations_per_second"],
            "losses_last_fifth": {key: float(np.mean([row[key] for row in tail if key in row])) for key in terms},
            "filters_after_gate": filter_summary(history, config.s2_gate()),
            "gate": config.s2_gate(),
            "scores": scores,
            "command": " ".join(sys.argv),
        },
    )
    print(
        f"[{time.strftime('%H:%M:%S')}] {volume} {label} seed {seed}: "
        + ", ".join(
            f"{name} VOI {s['evaluation']['voi']:.3f} ARAND {s['evaluation']['arand']:.3f} (t {s['threshold']})"
            for name, s in scores.items()
        )
        + f"; {trained:.0f} s training",
        flush=True,
    )


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` atomically, with paths inside the repository recorded relative to its root."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    text = json.dumps(data, indent=1, default=str)
    temporary.write_text(text.replace(json.dumps(f"{REPO_ROOT}{os.sep}")[1:-1], ""))
    temporary.replace(path)


def load_results(settings: dict) -> dict:
    """``{(volume, arm): [result, ...]}`` of every finished unit."""
    found = {}
    for path in sorted(results_dir(settings).glob("*/*-seed*.json")):
        data = json.loads(path.read_text())
        if "arm" in data:
            found.setdefault((data["volume"], data["arm"]), []).append(data)
    return found


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; NaN for one value)."""
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if len(array) > 1 else math.nan


def print_table(settings: dict) -> None:
    results = load_results(settings)
    if not results:
        print(f"no finished units under {results_dir(settings)}")
        return
    print("\nScores on the evaluation sections at the threshold chosen on the training sections (VOI in nats; lower")
    print("is better); mean +- sample standard deviation over the finished seeds; 'best t' = the evaluation's own best")
    print("threshold (a diagnostic, not used to choose anything). * = the method's output (CRAC: implicit map).")
    header = (
        f"{'volume':<6} {'arm':<15} {'map':<9} {'n':>2} {'VOI split':>14} {'VOI merge':>14} {'VOI':>14} "
        f"{'ARAND':>14} {'sep':>6} {'VOI, best t':>12}"
    )
    print(header)
    print("-" * len(header))
    for volume in VOLUMES:
        for arm in unit_arms(results, volume):
            runs = results.get((volume, arm), [])
            if not runs:
                continue
            for name in ("implicit", "explicit", "mean"):
                if name not in runs[0]["scores"]:
                    continue
                cells = []
                for key in ("voi_split", "voi_merge", "voi", "arand"):
                    mean, std = mean_std([r["scores"][name]["evaluation"][key] for r in runs])
                    cells.append(f"{mean:.3f} +- {std:.3f}" if not math.isnan(std) else f"{mean:.3f}        ")
                separation = np.mean([r["scores"][name]["separation"] for r in runs])
                best = np.mean([r["scores"][name]["evaluation_best"]["voi"] for r in runs])
                star = "*" if arm == "supervised" or name == "implicit" else " "
                print(
                    f"{volume:<6} {arm:<15} {name + star:<9} {len(runs):>2} "
                    + " ".join(f"{c:>14}" for c in cells)
                    + f" {separation:>6.3f} {best:>12.3f}"
                )
    print_verdict(results)
    print_filters(results)


def evaluation_scores(runs: list[dict], name: str, key: str) -> list[float]:
    """Map ``name``'s ``key`` score on the evaluation sections, one value per run."""
    return [run["scores"][name]["evaluation"][key] for run in runs]


def compare(runs: list[dict], name: str, reference: dict[str, tuple[float, float]]) -> str:
    """``runs``' map ``name`` (mean over seeds) against ``reference[key] = (mean, spread)`` on VOI and ARAND: "yes" when
    better by more than the spread (NaN spread: never)."""
    cells = []
    for key in ("voi", "arand"):
        reference_mean, spread = reference[key]
        arm_mean, _ = mean_std(evaluation_scores(runs, name, key))
        better = not math.isnan(spread) and reference_mean - arm_mean > max(spread, TIE)
        cells.append(
            f"{key.upper()} {arm_mean:.3f} vs {reference_mean:.3f} +- {spread:.3f}: {'yes' if better else 'no'}"
        )
    return "; ".join(cells)


def print_verdict(results: dict) -> None:
    """Does each CRAC map beat the baseline by more than one standard deviation of the baseline?"""
    print("\nAcceptance: CRAC map mean better than the baseline mean by more than the baseline's standard deviation")
    for volume in VOLUMES:
        baseline = results.get((volume, "supervised"), [])
        if len(baseline) < 2:
            continue
        reference = {key: mean_std(evaluation_scores(baseline, "explicit", key)) for key in ("voi", "arand")}
        for arm in unit_arms(results, volume, (*CRAC_ARMS, *CONTROLS)):
            runs = results.get((volume, arm), [])
            for name in ("implicit", "mean", "explicit") if runs else ():
                print(f"  {volume:<5} {arm:<15} {name:<9} (n={len(runs)}) " + compare(runs, name, reference))
    print_consistency_effect(results)


def print_consistency_effect(results: dict) -> None:
    """Each CRAC map against the same map of (e) (both nets, no consistency terms): what the consistency terms add.

    The spread is (e)'s standard deviation, or the baseline's while (e) has a single seed."""
    print("\nConsistency terms: CRAC map mean better than the same map of (e) no-consistency by more than the spread")
    print("((e)'s standard deviation; the baseline's while (e) has one seed)")
    for volume in VOLUMES:
        control = results.get((volume, "no-consistency"), [])
        baseline = results.get((volume, "supervised"), [])
        for arm in unit_arms(results, volume, CRAC_ARMS) if control else ():
            runs = results.get((volume, arm), [])
            for name in ("implicit", "mean", "explicit") if runs else ():
                reference = {}
                for key in ("voi", "arand"):
                    control_mean, spread = mean_std(evaluation_scores(control, name, key))
                    if math.isnan(spread) and len(baseline) > 1:
                        spread = mean_std(evaluation_scores(baseline, "explicit", key))[1]
                    reference[key] = (control_mean, spread)
                print(
                    f"  {volume:<5} {arm:<15} {name:<9} (n={len(runs)} vs {len(control)}) "
                    + compare(runs, name, reference)
                )


def percent(counts: dict, numerator: str, denominator: str) -> str:
    """``100 * counts[numerator] / counts[denominator]`` formatted, or ``--`` when not measured."""
    if not counts.get(denominator) or numerator not in counts:
        return "--"
    return f"{100 * counts[numerator] / counts[denominator]:.1f}"


def print_filters(results: dict) -> None:
    """Kept fraction and precision of the pseudo-labels after the S2 gate, summed over seeds."""
    print("\nPseudo-label filters on the training crops after the S2 gate, against the hidden dense labels")
    print("(pairs: valid unlabelled pairs touching a neurite; prec: % of pseudo-labels on the right side of 0.5;")
    print("kept: % of the pairs; 'unfiltered' = precision of all pairs)")
    header = (
        f"{'volume':<6} {'arm':<15} {'teacher':<9} {'group':<9} {'pairs':>10} {'unfiltered':>10} "
        f"{'S1 kept':>8} {'S1 prec':>8} {'S1+S2 kept':>10} {'S1+S2 prec':>10}"
    )
    print(header)
    print("-" * len(header))
    for volume in VOLUMES:
        for arm in unit_arms(results, volume):
            totals = {}
            for run in results.get((volume, arm), []):
                for name, groups in run.get("filters_after_gate", {}).items():
                    for group, counts in groups.items():
                        bucket = totals.setdefault((name, group), {})
                        for key, value in counts.items():
                            bucket[key] = bucket.get(key, 0.0) + value
            for (name, group), counts in sorted(totals.items()):
                print(
                    f"{volume:<6} {arm:<15} {name:<9} {group:<9} {int(counts.get('pairs', 0)):>10} "
                    f"{percent(counts, 'right', 'pairs'):>10} {percent(counts, 's1_kept', 'pairs'):>8} "
                    f"{percent(counts, 's1_right', 's1_kept'):>8} {percent(counts, 's2_kept', 'pairs'):>10} "
                    f"{percent(counts, 's2_right', 's2_kept'):>10}"
                )


def s2_threshold_argument(text: str) -> str:
    """``--s2-threshold``'s value: ``pick`` or a number in (0, 1), kept as text (it names the unit)."""
    if text == "pick":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither 'pick' nor a number") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"{text} does not lie in (0, 1)")
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", default=",".join(VOLUMES), help=f"subset of {','.join(VOLUMES)}")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"subset of {','.join(ARMS)}")
    parser.add_argument(
        "--seeds",
        help="comma-separated seeds for every arm given, controls included (default: 555-557, and 555 for (d))",
    )
    parser.add_argument("--iterations", type=int, help=f"CRAC iterations N (default {SETTINGS['iterations']})")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 on a shared machine)")
    parser.add_argument("--num-workers", type=int, default=1, help="DataLoader worker processes")
    parser.add_argument("--table", action="store_true", help="only print the table of the finished units")
    parser.add_argument(
        "--cpsn-variant",
        help="NAME[@ITERATION|@pick]: (b)/(c) with a cpsn_variants.py variant's confidence net (unit <arm>+<variant>)",
    )
    parser.add_argument(
        "--s2-threshold",
        type=s2_threshold_argument,
        help="T in (0, 1) or 'pick': S2 keeps the affinities whose predicted error is below T in (b)/(c) instead of 0.5"
        " ('pick': the threshold cpsn_quality.py --pick named for the picked net; unit <arm>...+s2t<T>|+s2t@pick)",
    )
    args = parser.parse_args(argv)
    settings = protocol_settings(args.iterations)
    if args.table:
        print_table(settings)
        return 0
    volumes = [v for v in args.volumes.split(",") if v]
    arms = [a for a in args.arms.split(",") if a]
    unknown = (set(volumes) - set(VOLUMES)) | (set(arms) - set(ARMS))
    if unknown:
        parser.error(f"unknown volumes or arms {sorted(unknown)}")
    wanted_seeds = None if args.seeds is None else {int(s) for s in args.seeds.split(",")}
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(max(1, args.threads))
    print(
        f"CRAC reduced protocol on CPU; settings {json.dumps(settings)}; results in {results_dir(settings)}", flush=True
    )
    loaded = {}
    for volume, arm, seed in unit_order(volumes, arms, wanted_seeds):
        if volume not in loaded:
            spec = VOLUMES[volume]
            loaded[volume] = {
                part: load_volume(VolumeConfig(**spec[part]), f"{volume}.{part}", need_labels=True)
                for part in ("train", "evaluation")
            }
        run_unit(volume, arm, seed, settings, loaded[volume], args)
    print_table(settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
