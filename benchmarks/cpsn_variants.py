"""Stage-2 variants of the reduced protocol's confidence net (CPSN), for ``cpsn_quality.py`` to compare.

Each variant re-trains stage 2 of one protocol pre-training (``crac_protocol.py``; its stage-1 predictors are reused,
not re-trained, except by ``stage1-long``) with one change to the protocol's pre-training config, from the same seed,
keeping a checkpoint every 100 iterations:

* ``long``: stage 2 five times longer (5 N/2 iterations instead of N/2; its first N/2 are the protocol's stage 2),
* ``lr1e-4``: the reference's learning rate 1e-4 instead of the protocol's 1e-3 (N iterations),
* ``wide``: the CPSN as wide as the main nets (8-12-16-24-32 instead of 4-6-8-12-16; N iterations),
* ``late``: only the stage-1 predictors of the second half of stage 1 (e.g. iterations 150, 225, 300 of 300 instead
  of 15, 75, 150, 225, 300), closer to the trained nets the CPSN filters during CRAC (N iterations),
* ``stage1-long``: a new stage 1 as long as the CRAC run (N iterations, predictors at the same fractions of it; the
  reference's stage 1 spans its first 20k iterations), then stage 2 (N iterations). It trains its own stage 1 (from
  the protocol's seed): a stage 1 of another length cannot reuse the protocol's predictors.
* ``stage1-long-balanced``: ``stage1-long`` with the CPSN loss balanced per side (``stage2.error_balance:
  per_side``: wrong vs correct separately among the affinities above and below 0.5, both sides equal), so it cannot
  learn the error kind of its predictors (mostly missed boundaries on ISBI) as a prior on the affinity; it copies
  ``stage1-long``'s stage 1 when that has finished (same config and seed).

Runs go to ``runs/crac_protocol/n<N>/<volume>/cpsn-<variant>-seed<k>/`` (``--iterations N`` for a protocol run of
another length than 600) and resume when re-run. Usage::

    python benchmarks/cpsn_variants.py --volume isbi --seed 555 --variants long,lr1e-4,wide
    python benchmarks/cpsn_variants.py --volume isbi --seed 555 --variants stage1-long-balanced --iterations 1200
"""

import argparse
import logging
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from affcons.config import validate  # noqa: E402
from affcons.train.config import PretrainConfig  # noqa: E402
from benchmarks.crac_protocol import (  # noqa: E402
    SETTINGS,
    VOLUMES,
    pretrain_config,
    protocol_settings,
    runs_dir,
    stage1_save_at,
)

VARIANTS = {
    "long": lambda stage: {"stage2": {"iterations": 5 * stage}},
    "lr1e-4": lambda stage: {"optim": {"lr": 1e-4}, "stage2": {"iterations": 2 * stage}},
    "wide": lambda stage: {"confidence_model": {"filters": SETTINGS["filters"]}, "stage2": {"iterations": 2 * stage}},
    "late": lambda stage: {
        "stage1": {"save_at": [i for i in stage1_save_at(stage, SETTINGS) if i >= stage // 2]},
        "stage2": {"iterations": 2 * stage},
    },
    "stage1-long": lambda stage: {
        "stage1": {"iterations": 2 * stage, "save_at": stage1_save_at(2 * stage, SETTINGS)},
        "stage2": {"iterations": 2 * stage},
    },
    "stage1-long-balanced": lambda stage: {
        "stage1": {"iterations": 2 * stage, "save_at": stage1_save_at(2 * stage, SETTINGS)},
        "stage2": {"iterations": 2 * stage, "error_balance": "per_side"},
    },
}
#: variant -> the variant whose stage 1 (same config, same seed) it copies when that one has finished
SHARES_STAGE1 = {"stage1-long-balanced": "stage1-long"}


def merge(base: dict, change: dict) -> dict:
    """``base`` with the nested keys of ``change`` replaced."""
    out = dict(base)
    for key, value in change.items():
        out[key] = merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return out


def variant_config(volume: str, seed: int, variant: str, num_workers: int, settings: dict = SETTINGS) -> PretrainConfig:
    """The protocol's pre-training config for (volume, seed) with the variant's change; every checkpoint kept."""
    protocol = pretrain_config(volume, seed, settings, num_workers)
    stage = protocol.stage2.iterations
    data = merge(protocol.model_dump(mode="json"), VARIANTS[variant](stage))
    data["run"]["keep_checkpoints"] = data["stage2"]["iterations"] // data["run"]["checkpoint_every"] + 1
    return validate(PretrainConfig, data, f"CPSN variant {variant} ({volume}, seed {seed})")


def stage1_source(
    volume: str, seed: int, variant: str, config: PretrainConfig, num_workers: int, settings: dict = SETTINGS
) -> Path | None:
    """A finished stage 1 the variant can copy (the same stage-1 config: the protocol pre-training's or that of the
    variant named in :data:`SHARES_STAGE1`), or None when it must train its own."""
    volume_runs = runs_dir(settings) / volume
    if config.stage1 == pretrain_config(volume, seed, settings, num_workers).stage1:
        source = volume_runs / f"pretrain-seed{seed}" / "stage1"
        if not (source / "predictors").is_dir():
            raise SystemExit(
                f"{source} has no stage-1 predictors: run benchmarks/crac_protocol.py for {volume} "
                f"(--iterations {settings['iterations']}) first"
            )
        return source
    shared = SHARES_STAGE1.get(variant)
    if shared and variant_config(volume, seed, shared, num_workers, settings).stage1 == config.stage1:
        source = volume_runs / f"cpsn-{shared}-seed{seed}" / "stage1"
        if (source / "predictors").is_dir() and (source / "checkpoints" / "last.pt").is_file():
            return source
    return None  # the same seed gives the same predictors, so training them again is only slower


def prepare_stage1(
    run_dir: Path,
    volume: str,
    seed: int,
    variant: str,
    config: PretrainConfig,
    num_workers: int,
    settings: dict = SETTINGS,
) -> str:
    """Copies a finished stage 1 (:func:`stage1_source`) into a new run, recording it in ``stage1/copied-from.txt``;
    returns the stages to train: ``"2"`` after a copy, else ``"all"`` (an own stage 1 resumes until it has finished)."""
    copied = run_dir / "stage1" / "copied-from.txt"
    if not (run_dir / "stage1").exists():
        source = stage1_source(volume, seed, variant, config, num_workers, settings)
        if source is not None:
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.copytree(source, run_dir / "stage1")
            copied.write_text(f"{source}\n")
    return "2" if copied.is_file() else "all"


def run_variant(volume: str, seed: int, variant: str, num_workers: int, settings: dict = SETTINGS) -> Path:
    """Stage 2 of the variant on copied stage-1 predictors (:func:`prepare_stage1`), or both stages; returns its run
    directory."""
    from affcons.commands.train import pretrain

    run_dir = runs_dir(settings) / volume / f"cpsn-{variant}-seed{seed}"
    config = variant_config(volume, seed, variant, num_workers, settings)
    stages = prepare_stage1(run_dir, volume, seed, variant, config, num_workers, settings)
    resume = any((run_dir / stage / "checkpoints" / "last.pt").exists() for stage in ("stage1", "stage2"))
    pretrain(config, run_dir, argparse.Namespace(resume=resume, stop_at=None, stage=stages))
    return run_dir


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volume", choices=sorted(VOLUMES), required=True)
    parser.add_argument("--seed", type=int, default=555, help="the protocol pre-training's seed")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"subset of {','.join(VARIANTS)}")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--num-workers", type=int, default=1, help="DataLoader worker processes")
    parser.add_argument(
        "--iterations",
        type=int,
        help=f"N of the protocol run the variants belong to (default {SETTINGS['iterations']})",
    )
    args = parser.parse_args(argv)
    settings = protocol_settings(args.iterations)
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        parser.error(f"unknown variants {sorted(unknown)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(max(1, args.threads))
    for variant in variants:
        print(run_variant(args.volume, args.seed, variant, args.num_workers, settings), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
