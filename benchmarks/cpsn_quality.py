"""How well confidence nets (CPSN, S2) detect wrong pseudo-labels, on the training sections of a run.

The reduced protocol (``crac_protocol.py``) measures the filters during training, for the one confidence net a run
used. This script compares several confidence nets (e.g. the checkpoints of one longer stage-2 run) on the same
maps, on fixed crops of the run's training data (its config and sparse labels, no augmentation), with the dense labels
that training never saw as the truth. The maps ("teachers") come from either

* ``--run``: the final nets of a CRAC run (EMA teachers for an EMA run), in eval mode: both maps, S1 at its end-of-run
  alpha, as S2 filters them at the end of training; or
* ``--pretrain``: the frozen stage-1 predictors of a pre-training run, perturbed as stage 2 sees them (seeded): the
  implicit map of each, without S1 -- the confidence net's own training distribution.

Per confidence net, teacher and channel group it prints:

* ``unfiltered``: precision of all candidate pseudo-labels (valid, unlabelled pairs touching a neurite; right = on
  the same side of 0.5 as the truth),
* ``S2 kept`` / ``S2 prec``: the fraction of them the filter keeps and their precision (a filter does its job when
  this rises above ``unfiltered``),
* ``AUC``: the area under the ROC curve of the predicted error probability as a detector of wrong pseudo-labels on
  those pairs (0.5 = chance; from 1000-bin histograms), also per offset, and ``AUC lab`` the same on the labelled
  pairs against the sparse labels -- the task stage 2 trains the confidence net on,
* ``inside`` / ``prec in`` / ``AUC in``: the share of the candidates with both voxels inside neurites (the split and
  merge decisions; the rest pair a neurite voxel with a boundary voxel), the unfiltered precision and the AUC on them,
* ``S2 kept / prec at threshold`` (groups 1-1-1 and 2-3-3): the operating curve of S2 alone on the scored pairs at
  thresholds 0.1-0.7 (the protocol's is 0.5), to choose a threshold on the training sections,
* ``high`` / ``high lab``: the share of the wrong pseudo-labels that say "same object" (affinity above 0.5, truth 0:
  a missed boundary) among the candidates and among the labelled pairs; the rest are false boundaries. A confidence
  net learns the kind of error its training predictors make.

``--pick`` names the confidence net to use, by a rule fixed before any protocol run uses it (sixth session): the
highest mean AUC over the two nearest channel groups (1-1-1, 2-3-3) of every teacher map, measured with ``--run`` on
the trained nets of control (e) of the same volume and seed (``crac_protocol.py``'s ``no-consistency`` unit). It
also names an S2 threshold for that net (eighth session, from the operating curve): the largest threshold at which
S2's precision on the nearest pairs (group 1-1-1, the ones the segmentation uses) of every map is at least
:data:`TARGET_PRECISION` -- about what S1+S2 reach on gala, where CRAC works -- or, where none reaches it, the one with
the highest such precision among those keeping at least 1 % of the pairs.

Usage (repository root)::

    python benchmarks/cpsn_quality.py --run runs/crac_protocol/n600/isbi/crac-ws-seed555 \\
        --confidence runs/crac_protocol/n600/isbi/pretrain-seed555/confidence.pt
    python benchmarks/cpsn_quality.py --pretrain runs/crac_protocol/n600/isbi/pretrain-seed555 \\
        --confidence runs/crac_protocol/n600/isbi/pretrain-seed555/confidence.pt
"""

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from affcons.nets import build_embedding_net, load_model  # noqa: E402
from affcons.nets.embedding import implicit_affinities, offset_validity  # noqa: E402
from affcons.pseudo import PseudoLabeler, channel_groups, filter_counts  # noqa: E402
from affcons.train.checkpoint import read_checkpoint  # noqa: E402
from affcons.train.dataset import CropDataset  # noqa: E402
from affcons.train.strategies import load_confidence_net  # noqa: E402

BINS = 1000
#: S2 thresholds of the operating curve (:func:`operating_curve`); the protocol uses 0.5
CURVE_THRESHOLDS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
#: teacher name -> (its map of a raw batch (B, 1, D, H, W) as (B, C, D, H, W), whether it is an implicit map)
Teachers = dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], bool]]
#: per batch, teacher name -> (its map, whether it is an implicit map)
Maps = list[dict[str, tuple[torch.Tensor, bool]]]


def fixed_batches(config, crops: int, seed: int) -> list[dict]:
    """``crops`` training crops of the run's data (its sparse labels, no augmentation) with their dense truth, in
    batches of the run's batch size; the same crops for every confidence net."""
    data = config.data.model_copy(update={"augment": config.data.augment.model_copy(update={"probability": 0.0})})
    dataset = CropDataset(data, config.model.offsets, seed, config.run.batch_size, with_truth=True)
    samples = [dataset[index] for index in range(crops)]
    batches = []
    for start in range(0, crops, config.run.batch_size):
        group = samples[start : start + config.run.batch_size]
        batch = {key: torch.as_tensor(np.stack([sample[key] for sample in group])) for key in group[0]}
        batch["raw"] = batch["raw"].contiguous(memory_format=torch.channels_last_3d)
        batches.append(batch)
    return batches


@torch.no_grad()
def teacher_maps(teachers: Teachers, batches: list[dict]) -> Maps:
    """Every teacher's map of every batch, computed once for all the confidence nets."""
    return [
        {name: (predict(batch["raw"]), implicit) for name, (predict, implicit) in teachers.items()} for batch in batches
    ]


def crac_teachers(run_dir: Path) -> tuple[Teachers, object]:
    """Both maps of a CRAC run's final nets (its EMA teachers for an EMA run) and the run's config."""
    checkpoint = run_dir / "crac" / "checkpoints" / "last.pt"
    _, recorded = read_checkpoint(checkpoint)
    networks, config = load_model(checkpoint, use_ema=recorded.variant == "ema")
    networks.to(memory_format=torch.channels_last_3d)
    return {
        "explicit": (lambda raw: networks.affinity_net(raw).float(), False),
        "implicit": (lambda raw: implicit_affinities(networks.embedding_net(raw), config.model.offsets).float(), True),
    }, config


def predictor_teachers(run_dir: Path, seed: int) -> tuple[Teachers, object]:
    """The implicit maps of a pre-training run's stage-1 predictors, with the dropout perturbation stage 2 uses
    (reseeded per call: the same maps on every run), and the run's config."""
    teachers, config = {}, None
    for path in sorted((run_dir / "stage1" / "predictors").glob("embedding-*.pt")):
        state, config = read_checkpoint(path)
        net = build_embedding_net(config.model, dropout=config.stage1.dropout)
        net.load_state_dict(state["models"]["embedding"])
        net.eval().requires_grad_(False).set_perturbation(True)

        def implicit(raw: torch.Tensor, net=net, offsets=config.model.offsets) -> torch.Tensor:
            torch.manual_seed(seed)
            return implicit_affinities(net(raw), offsets).float()

        teachers[f"predictor-{path.stem.split('-')[-1]}"] = (implicit, True)
    if not teachers:
        raise SystemExit(f"{run_dir / 'stage1' / 'predictors'} holds no stage-1 predictors")
    return teachers, config


def auc_from_histograms(wrong: torch.Tensor, right: torch.Tensor) -> float | None:
    """P(score of a wrong label > score of a right one) + half the ties, from two histograms over the same bins."""
    n_wrong, n_right = float(wrong.sum()), float(right.sum())
    if n_wrong == 0 or n_right == 0:
        return None
    right_below = torch.cumsum(right, 0) - right  # right labels in lower bins
    return float((wrong * (right_below + 0.5 * right)).sum()) / (n_wrong * n_right)


def operating_curve(wrong: torch.Tensor, right: torch.Tensor, thresholds=CURVE_THRESHOLDS) -> dict[str, dict]:
    """S2 at other thresholds, from the error-score histograms of wrong and right labels (:data:`BINS` bins over
    [0, 1]): per threshold t, the fraction of the scored pairs with a predicted error below t (``kept``) and the
    fraction of those that are right (``precision``, None when nothing is kept)."""
    total = float(wrong.sum() + right.sum())
    curve = {}
    for threshold in thresholds:
        below = int(round(threshold * BINS))
        kept_right, kept_wrong = float(right[:below].sum()), float(wrong[:below].sum())
        kept = kept_right + kept_wrong
        curve[f"{threshold:g}"] = {
            "kept": kept / total if total else 0.0,
            "precision": kept_right / kept if kept else None,
        }
    return curve


def add_histograms(store: dict, prefix: str, scores: torch.Tensor, pairs: torch.Tensor, wrong: torch.Tensor) -> None:
    """Accumulate the histograms of ``scores`` on ``pairs`` split into wrong and right labels."""
    for kind, select in (("wrong", wrong), ("right", ~wrong)):
        hist = torch.histc(scores[pairs & select], bins=BINS, min=0.0, max=1.0)
        store[f"{prefix}/{kind}"] = store.get(f"{prefix}/{kind}", 0) + hist


@torch.no_grad()
def measure(confidence_net, config, batches: list[dict], maps: Maps) -> dict:
    """Filter counts and error-score histograms of one confidence net on the teachers' ``maps`` of ``batches``, summed
    over the batches, per teacher and channel group. S1 acts as at the end of a CRAC run; a pre-training config (no
    ``pseudo`` section) has no S1 (alpha 0 keeps everything)."""
    offsets = config.model.offsets
    groups = channel_groups(offsets)
    pseudo = getattr(config, "pseudo", None)
    iteration = config.run.iterations  # S2 active, S1 at its end-of-run alpha
    if pseudo is None:
        labeler = PseudoLabeler(alpha0=0.0, total_iterations=1, confidence_net=confidence_net, gate=0)
    else:
        labeler = PseudoLabeler(
            alpha0=pseudo.alpha0,
            total_iterations=pseudo.total_iterations or config.run.iterations,
            power=pseudo.power,
            confidence_net=confidence_net,
            gate=0,
            s2_threshold=pseudo.s2.threshold,
            chunk=pseudo.s2.chunk,
        )
    totals: dict[str, dict] = {}
    for batch, batch_maps in zip(batches, maps, strict=True):
        raw = batch["raw"]
        valid = offset_validity(tuple(raw.shape[2:]), offsets)
        labelled = valid.unsqueeze(0) & (batch["label_mask"] > 0)
        for name, (teacher, implicit) in batch_maps.items():
            result = labeler.filter(teacher, valid, batch["label_mask"], iteration, implicit=implicit, raw=raw)
            entry = totals.setdefault(name, {"counts": {}, "hist": {}})
            for key, value in filter_counts(result, batch["truth"], batch["truth_defined"], groups).items():
                entry["counts"][key] = entry["counts"].get(key, 0.0) + value
            high = result.prob > 0.5  # the pseudo-label says "same object"
            wrong = high != (batch["truth"] > 0.5)
            wrong_labelled = high != (batch["target"] > 0.5)
            pairs = result.candidates & batch["truth_defined"]
            inside = result.candidates & batch["truth_inside"]
            for channel in range(len(offsets)):
                add_histograms(
                    entry["hist"], f"channel{channel}", result.errors[:, channel], pairs[:, channel], wrong[:, channel]
                )
            for group, channels in groups.items():
                scores = result.errors[:, channels]
                add_histograms(entry["hist"], group, scores, pairs[:, channels], wrong[:, channels])
                add_histograms(entry["hist"], f"{group}/inside", scores, inside[:, channels], wrong[:, channels])
                add_histograms(
                    entry["hist"], f"{group}/labelled", scores, labelled[:, channels], wrong_labelled[:, channels]
                )
                for key, where, errors in (
                    ("wrong_high", pairs, wrong),
                    ("labelled/wrong_high", labelled, wrong_labelled),
                ):
                    missed = where[:, channels] & errors[:, channels] & high[:, channels]
                    counts, key = entry["counts"], f"{group}/{key}"
                    counts[key] = counts.get(key, 0.0) + float(missed.sum())
    summary = {}
    for name, entry in totals.items():
        counts, hist, rows = entry["counts"], entry["hist"], {}
        for group, channels in groups.items():
            pairs, kept = counts[f"{group}/pairs"], counts[f"{group}/s2_kept"]
            inside = float(hist[f"{group}/inside/wrong"].sum() + hist[f"{group}/inside/right"].sum())
            wrong = float(hist[f"{group}/wrong"].sum())  # the histograms count every scored pair
            wrong_labelled = float(hist[f"{group}/labelled/wrong"].sum())
            rows[group] = {
                "pairs": pairs,
                "unfiltered_precision": counts[f"{group}/right"] / max(pairs, 1),
                "s2_kept": kept / max(pairs, 1),
                "s2_precision": counts[f"{group}/s2_right"] / kept if kept else None,
                "auc": auc_from_histograms(hist[f"{group}/wrong"], hist[f"{group}/right"]),
                "auc_labelled": auc_from_histograms(hist[f"{group}/labelled/wrong"], hist[f"{group}/labelled/right"]),
                "inside_fraction": inside / max(pairs, 1),
                "inside_precision": float(hist[f"{group}/inside/right"].sum()) / max(inside, 1),
                "auc_inside": auc_from_histograms(hist[f"{group}/inside/wrong"], hist[f"{group}/inside/right"]),
                "wrong_high": counts[f"{group}/wrong_high"] / max(wrong, 1),
                "labelled_wrong_high": counts[f"{group}/labelled/wrong_high"] / max(wrong_labelled, 1),
                "s2_curve": operating_curve(hist[f"{group}/wrong"], hist[f"{group}/right"]),
                "auc_per_offset": {
                    ",".join(map(str, offsets[c])): auc_from_histograms(
                        hist[f"channel{c}/wrong"], hist[f"channel{c}/right"]
                    )
                    for c in channels
                },
            }
        summary[name] = rows
    return summary


PICK_GROUPS = ("1-1-1", "2-3-3")


def pick_scores(results: dict[str, dict]) -> dict[str, float]:
    """Per confidence net of ``results`` (net -> teacher -> group -> row): the mean AUC over :data:`PICK_GROUPS` of
    every teacher (a missing AUC counts 0.5, chance)."""
    scores = {}
    for net, rows in results.items():
        aucs = [rows[teacher][group]["auc"] for teacher in rows for group in PICK_GROUPS]
        scores[net] = float(np.mean([0.5 if auc is None else auc for auc in aucs]))
    return scores


def pick(results: dict[str, dict]) -> tuple[str, float]:
    """The confidence net with the highest :func:`pick_scores` score, and that score."""
    scores = pick_scores(results)
    best = max(scores, key=scores.get)
    return best, scores[best]


TARGET_PRECISION = 0.95
THRESHOLD_GROUP = "1-1-1"


def pick_threshold(rows: dict[str, dict]) -> float:
    """The S2 threshold for one confidence net (``rows``: teacher -> group -> row with ``s2_curve``): the largest
    curve threshold at which the precision on :data:`THRESHOLD_GROUP` of every teacher is at least
    :data:`TARGET_PRECISION`; where none is, the one with the highest such precision among those keeping >= 1 %."""
    worst = {}
    for threshold in rows[next(iter(rows))][THRESHOLD_GROUP]["s2_curve"]:
        points = [rows[teacher][THRESHOLD_GROUP]["s2_curve"][threshold] for teacher in rows]
        if all(point["kept"] >= 0.01 and point["precision"] is not None for point in points):
            worst[float(threshold)] = min(point["precision"] for point in points)
    if not worst:
        raise SystemExit(f"no S2 threshold keeps 1 % of the {THRESHOLD_GROUP} pairs of every map")
    reaching = [threshold for threshold, precision in worst.items() if precision >= TARGET_PRECISION]
    return max(reaching) if reaching else max(worst, key=worst.get)


def print_rows(label: str, summary: dict) -> None:
    def fixed(value, scale: float = 1.0, digits: int = 1) -> str:
        return "--" if value is None else f"{scale * value:.{digits}f}"

    for teacher, rows in summary.items():
        for group, row in rows.items():
            cells = [
                f"{int(row['pairs']):>9}",
                f"{fixed(row['unfiltered_precision'], 100):>10}",
                f"{fixed(row['s2_kept'], 100):>7}",
                f"{fixed(row['s2_precision'], 100):>7}",
                f"{fixed(row['auc'], digits=3):>6}",
                f"{fixed(row['auc_labelled'], digits=3):>7}",
                f"{fixed(row['inside_fraction'], 100):>6}",
                f"{fixed(row['inside_precision'], 100):>7}",
                f"{fixed(row['auc_inside'], digits=3):>6}",
                f"{fixed(row['wrong_high'], 100):>5}",
                f"{fixed(row['labelled_wrong_high'], 100):>8}",
            ]
            print(f"{label:<32} {teacher:<16} {group:<8} " + " ".join(cells))
        for group in PICK_GROUPS:
            curve = rows[group]["s2_curve"]
            print(
                f"{'':<32} {teacher:<16} {group:<8} S2 kept / prec at threshold: "
                + ", ".join(
                    f"{t} {fixed(point['kept'], 100)}/{fixed(point['precision'], 100)}" for t, point in curve.items()
                )
            )
        per_offset = {k: v for row in rows.values() for k, v in row["auc_per_offset"].items()}
        print(
            f"{'':<32} {teacher:<16} AUC per offset (z,y,x): "
            + ", ".join(f"({k}) {fixed(v, digits=2)}" for k, v in per_offset.items())
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="a CRAC run directory (its crac/checkpoints/last.pt)")
    source.add_argument("--pretrain", type=Path, help="a pre-training run directory (its stage-1 predictors)")
    parser.add_argument("--confidence", type=Path, nargs="+", required=True, help="confidence-net checkpoints")
    parser.add_argument("--crops", type=int, default=32, help="training crops to measure on")
    parser.add_argument(
        "--seed", type=int, default=1000, help="crop stream and perturbation seed (not a training seed)"
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--pick", action="store_true", help="name the net the fixed rule picks (see above)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.run is not None:
        teachers, config = crac_teachers(args.run)
    else:
        teachers, config = predictor_teachers(args.pretrain, args.seed)
    batches = fixed_batches(config, args.crops, args.seed)
    maps = teacher_maps(teachers, batches)
    print(f"{args.crops} crops of the training data of {args.run or args.pretrain} (seed {args.seed}); % except AUC")
    print(
        f"{'confidence net':<32} {'teacher':<16} {'group':<8} {'pairs':>9} {'unfiltered':>10} {'S2 kept':>7} "
        f"{'S2 prec':>7} {'AUC':>6} {'AUC lab':>7} {'inside':>6} {'prec in':>7} {'AUC in':>6} {'high':>5} "
        f"{'high lab':>8}"
    )
    results = {}
    for path in args.confidence:
        net = load_confidence_net(path, torch.device("cpu")).to(memory_format=torch.channels_last_3d)
        label = f"{path.parents[2].name}:{path.stem}" if path.parent.name == "checkpoints" else path.parent.name
        results[str(path)] = measure(net, config, batches, maps)
        print_rows(label, results[str(path)])
    picked = None
    if args.pick:
        path, mean_auc = pick(results)
        scores = pick_scores(results)
        threshold = pick_threshold(results[path])
        picked = {
            "confidence": path,
            "mean_auc": mean_auc,
            "groups": list(PICK_GROUPS),
            "scores": scores,
            "s2_threshold": threshold,
        }
        print("mean AUC: " + ", ".join(f"{Path(net).name} {score:.3f}" for net, score in scores.items()))
        print(f"picked {path}: mean AUC {mean_auc:.3f} over groups {', '.join(PICK_GROUPS)} of every map")
        print(f"S2 threshold: {threshold:g} (target precision {TARGET_PRECISION:.0%} on {THRESHOLD_GROUP} of each map)")
    if args.json:
        command = "python benchmarks/cpsn_quality.py " + " ".join(sys.argv[1:] if argv is None else argv)
        source = str(args.run or args.pretrain)
        summary = {"command": command, "source": source, "crops": args.crops, "seed": args.seed, "results": results}
        if picked:
            summary["picked"] = picked
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
