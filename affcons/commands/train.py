"""``affcons pretrain`` and ``affcons train``: the CRAC training entry points.

* ``affcons pretrain -c=pretraining_snemi3d`` (``scripts/pre_training.py``): stage 1, the sparse-supervised warm-up
  of the embedding net with dropout perturbation, saving the perturbed predictors at ``stage1.save_at``; then
  stage 2, the confidence net (CPSN) trained on those frozen predictors, exported to ``<run_dir>/confidence.pt``.
* ``affcons train -c=seg_snemi3d_d5_u200`` (``scripts/main.py``, WS) or ``-c=seg_snemi3d_d5_1024_u200_ema``
  (``scripts/main_ema.py``, EMA): CRAC consistency training.

``-c`` takes a config name (``configs/NAME.yaml``) or a path. Outputs go to ``--run-dir`` (a path relative to the
current directory), else the config's ``run_dir``, else ``runs/<config name>``; config paths are relative to the
repository root. A run directory that already holds checkpoints is refused unless ``--resume`` is given.
"""

import argparse
import json
import logging
import sys
from pathlib import Path

from affcons.config import dump_config, load_config, resolve_config_path, validate
from affcons.errors import AffconsError, CheckpointError, ConfigError

logger = logging.getLogger(__name__)


def configure_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", required=True, help="config name (configs/NAME.yaml) or path")
    parser.add_argument("--run-dir", help="output directory (default: runs/<config name> under the repository)")
    parser.add_argument("--resume", action="store_true", help="continue from <run-dir>/<stage>/checkpoints/last.pt")
    parser.add_argument("--iterations", type=int, help="override run.iterations (pretrain: both stages)")
    parser.add_argument(
        "--stop-at",
        type=int,
        help="stop each stage after this iteration with a checkpoint (continue later with --resume)",
    )
    parser.add_argument("--device", help="override run.device (auto, cpu, cuda, cuda:N)")
    parser.add_argument("--num-workers", type=int, help="override data.num_workers")
    parser.add_argument("--validate-every", type=int, help="override validation.every (0: only at the end)")
    parser.add_argument("--no-validation", action="store_true", help="disable validation")
    parser.add_argument("--amp", choices=["none", "bf16", "fp16"], help="override run.amp (CUDA only)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the networks (CUDA only)")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (on a shared machine 1 is often much faster than oversubscribing)",
    )
    if _command(parser) != "pretrain":
        parser.add_argument(
            "--no-detach",
            action="store_true",
            help="let gradients flow through pseudo-labels, as the reference code does",
        )
        parser.add_argument("--confidence-checkpoint", help="override pseudo.s2.checkpoint (S2 confidence net)")
        parser.add_argument("--no-s2", action="store_true", help="disable strategy S2 (S1 only)")
    else:
        parser.add_argument("--stage", choices=["1", "2", "all"], default="all", help="which pre-training stage(s)")


def _command(parser: argparse.ArgumentParser) -> str:
    """``pretrain`` or ``train`` from the sub-parser's program name (``affcons pretrain``)."""
    return parser.prog.split()[-1]


def _set(data: dict, dotted: str, value) -> None:
    """``data[a][b] = value`` for ``dotted = "a.b"`` (the sections exist: they come from a model dump)."""
    *parents, last = dotted.split(".")
    for key in parents:
        data = data[key]
    data[last] = value


def load_run_config(command: str, args: argparse.Namespace):
    """The validated config of ``command`` with the command-line overrides applied."""
    from affcons.train.config import CRACConfig, PretrainConfig

    model = PretrainConfig if command == "pretrain" else CRACConfig
    base = load_config(model, args.config).model_dump(mode="json")
    if args.iterations is not None:
        if args.iterations < 1:
            raise ConfigError(f"--iterations must be positive, got {args.iterations}")
        if command == "pretrain":
            base["stage1"]["iterations"] = base["stage2"]["iterations"] = args.iterations
            base["stage1"]["save_at"] = sorted({min(i, args.iterations) for i in base["stage1"]["save_at"]})
        else:
            base["run"]["iterations"] = args.iterations
    for option, dotted in (
        ("device", "run.device"),
        ("num_workers", "data.num_workers"),
        ("validate_every", "validation.every"),
        ("amp", "run.amp"),
    ):
        if getattr(args, option, None) is not None:
            _set(base, dotted, getattr(args, option))
    if args.compile:
        base["run"]["compile"] = True
    if args.no_validation:
        base["validation"]["volume"] = None
    if command != "pretrain":
        if args.no_detach:
            base["loss"]["detach_pseudo"] = False
        if args.confidence_checkpoint is not None:
            base["pseudo"]["s2"]["checkpoint"] = args.confidence_checkpoint
        if args.no_s2:
            base["pseudo"]["s2"]["enabled"] = False
    return validate(model, base, f"{resolve_config_path(args.config)} with command-line overrides")


def run_directory(args: argparse.Namespace, config) -> Path:
    from affcons.train.config import REPO_ROOT, resolve_path

    if args.run_dir:
        return Path(args.run_dir).expanduser().resolve()
    if config.run_dir:
        return resolve_path(config.run_dir)
    return REPO_ROOT / "runs" / resolve_config_path(args.config).stem


def run(args: argparse.Namespace) -> int:
    command = getattr(args, "command", None) or "train"
    if args.threads is not None:
        import torch

        torch.set_num_threads(max(1, args.threads))
    config = load_run_config(command, args)
    run_dir = run_directory(args, config)
    summary = pretrain(config, run_dir, args) if command == "pretrain" else train(config, run_dir, args)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _load_data(config):
    """Device, seeds, data (a missing volume is a VolumeError naming it) and the validation volume; writes nothing."""
    from affcons.nets import select_device
    from affcons.train.dataset import CropDataset, load_volume

    device = select_device(config.run.device)
    with_truth = config.kind == "crac" and config.needs_truth()
    dataset = CropDataset(config.data, config.model.offsets, config.run.seed, config.run.batch_size, with_truth)
    validation = None
    if config.validation.volume is not None:
        validation = load_volume(config.validation.volume, "validation.volume", need_labels=True)
    return device, dataset, validation


def _write_run_files(config, run_dir: Path, dataset) -> None:
    """The run directory with the config used and the sparse-label report."""
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(config, run_dir / f"config-{config.kind}.yaml")
    (run_dir / "sparse.json").write_text(
        json.dumps(
            {
                "id_fraction": dataset.sparse_report.id_fraction,
                "voxel_fraction": dataset.sparse_report.voxel_fraction,
                "labelled_fraction": dataset.sparse_report.labelled_fraction,
                "kept_ids": list(dataset.sparse_report.kept_ids),
                "total_ids": dataset.sparse_report.total_ids,
            },
            indent=1,
        )
    )


def train(config, run_dir: Path, args: argparse.Namespace) -> dict:
    """CRAC training (WS, EMA or supervised baseline)."""
    from affcons.train.config import resolve_path
    from affcons.train.strategies import CRACStrategy, load_confidence_net
    from affcons.train.trainer import Trainer, prepare_stage_dir, seed_everything

    stage_dir = run_dir / "crac"
    prepare_stage_dir(stage_dir, args.resume)
    device, dataset, validation = _load_data(config)
    s2 = config.pseudo.s2
    uses_s2 = config.variant != "supervised" and s2.enabled and config.pseudo.source == "teacher"
    needs_confidence_net = uses_s2 and (config.s2_gate() < config.run.iterations or config.pseudo.measure_every > 0)
    if needs_confidence_net:  # checked before anything is written
        if not s2.checkpoint:
            raise ConfigError("pseudo.s2.enabled needs pseudo.s2.checkpoint (run `affcons pretrain`), or --no-s2")
        check_confidence_checkpoint(resolve_path(s2.checkpoint))
    _write_run_files(config, run_dir, dataset)
    logger.info("run directory %s, device %s", run_dir, device)
    confidence_net = None
    if needs_confidence_net:
        confidence_net = load_confidence_net(resolve_path(s2.checkpoint), device)
    seed_everything(config.run.seed, config.run.deterministic)
    strategy = CRACStrategy(config, device, confidence_net)
    trainer = Trainer(
        strategy,
        config,
        dataset,
        stage_dir,
        "crac",
        config.run.iterations,
        device,
        validation,
        tensorboard_dir=run_dir / "tensorboard" / "crac",
    )
    if args.resume:
        trainer.resume()
    summary = trainer.run(stop_at=args.stop_at)
    summary["run_dir"] = str(run_dir)
    summary["sparse"] = dataset.sparse_report.summary()
    return summary


def check_confidence_checkpoint(path: Path) -> None:
    """A missing S2 confidence net is a CheckpointError that says which pre-training writes it, and the options.

    ``affcons pretrain -c NAME`` writes ``runs/NAME/confidence.pt``: a missing file of that form names ``NAME`` when
    ``configs/NAME.yaml`` exists.
    """
    if path.is_file():
        return
    how = "run the pre-training first (`affcons pretrain -c CONFIG` writes runs/CONFIG/confidence.pt)"
    if path.name == "confidence.pt":
        try:
            resolve_config_path(path.parent.name)
            how = f"run the pre-training first: `affcons pretrain -c {path.parent.name}`"
        except ConfigError:
            pass
    raise CheckpointError(
        f"checkpoint {path} does not exist: strategy S2 needs this confidence net; {how}; "
        "or name another with --confidence-checkpoint PATH; or train without S2: --no-s2"
    )


def pretrain(config, run_dir: Path, args: argparse.Namespace) -> dict:
    """Stage 1 (embedding warm-up with dropout perturbation) then stage 2 (confidence net)."""
    from affcons.train.checkpoint import load_state, save_checkpoint
    from affcons.train.strategies import ConfidenceStrategy, EmbeddingWarmupStrategy
    from affcons.train.trainer import Trainer, prepare_stage_dir, seed_everything

    device, dataset, validation = _load_data(config)
    _write_run_files(config, run_dir, dataset)
    logger.info("run directory %s, device %s", run_dir, device)
    summaries = {"run_dir": str(run_dir), "sparse": dataset.sparse_report.summary()}
    stage1_dir, stage2_dir = run_dir / "stage1", run_dir / "stage2"
    if args.stage in ("1", "all"):
        if not _finished(stage1_dir, config.stage1.iterations, args.resume):
            prepare_stage_dir(stage1_dir, args.resume)
            seed_everything(config.run.seed, config.run.deterministic)
            strategy = EmbeddingWarmupStrategy(config, device)
            trainer = Trainer(
                strategy,
                config,
                dataset,
                stage1_dir,
                "pretrain-stage1",
                config.stage1.iterations,
                device,
                validation,
                save_at=config.stage1.save_at,
                tensorboard_dir=run_dir / "tensorboard" / "stage1",
            )
            if args.resume:
                trainer.resume()
            summaries["stage1"] = trainer.run(stop_at=args.stop_at)
            if trainer.iteration < config.stage1.iterations:
                return summaries  # stopped early on purpose (--stop-at)
    if args.stage in ("2", "all"):
        predictors = [stage1_dir / "predictors" / f"embedding-{i:06d}.pt" for i in config.stage1.save_at]
        missing = [str(p) for p in predictors if not p.is_file()]
        if missing:
            raise CheckpointError(f"stage 2 needs the stage-1 predictors {missing}; run `affcons pretrain --stage 1`")
        resume2 = args.resume and (stage2_dir / "checkpoints" / "last.pt").exists()
        prepare_stage_dir(stage2_dir, resume2)
        seed_everything(config.run.seed + 1, config.run.deterministic)
        strategy = ConfidenceStrategy(config, device, predictors)
        trainer = Trainer(
            strategy,
            config,
            dataset,
            stage2_dir,
            "pretrain-stage2",
            config.stage2.iterations,
            device,
            None,
            tensorboard_dir=run_dir / "tensorboard" / "stage2",
        )
        if resume2:
            trainer.resume()
        summaries["stage2"] = trainer.run(stop_at=args.stop_at)
        if trainer.iteration >= config.stage2.iterations:
            state = load_state(stage2_dir / "checkpoints" / "last.pt")
            export = run_dir / "confidence.pt"
            save_checkpoint(
                export,
                {"stage": "confidence", **{k: state[k] for k in ("iteration", "config_kind", "config", "models")}},
            )
            summaries["confidence_checkpoint"] = str(export)
    return summaries


def _finished(stage_dir: Path, iterations: int, resume: bool) -> bool:
    """Whether a resumed stage already reached ``iterations`` (then it is skipped)."""
    from affcons.train.checkpoint import load_state

    last = stage_dir / "checkpoints" / "last.pt"
    return resume and last.exists() and int(load_state(last)["iteration"]) >= iterations


def main(argv: list[str] | None = None) -> int:
    """``python scripts/<entry>.py``: ``argv[0]`` is ``pretrain`` or ``train``, the rest are the options."""
    argv = sys.argv[1:] if argv is None else argv
    command, options = argv[0], argv[1:]
    parser = argparse.ArgumentParser(prog=f"affcons {command}", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    configure_parser(parser)
    args = parser.parse_args(options)
    args.command = command
    if not args.verbose:  # numexpr (imported by pandas, by dask) logs its thread count at INFO when first imported
        logging.getLogger("numexpr").setLevel(logging.WARNING)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        return run(args)
    except AffconsError as error:
        print(f"affcons {command}: error: {error}", file=sys.stderr)
        return 2
