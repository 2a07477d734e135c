"""The training loop shared by every stage: optimiser, AMP, checkpoints with exact resume, logging, validation.

Contracts:

* The loader yields batches as described in :mod:`affcons.train.dataset`; the loop moves them to the device.
* The strategy (:mod:`affcons.train.strategies`) computes the loss; the trainer owns the optimiser (one Adam over
  all ``strategy.trained`` parameters, method.md section 5), the ``GradScaler`` (fp16 only) and the RNG states.
* Checkpoints (:mod:`affcons.train.checkpoint`) go to ``<run_dir>/<stage>/checkpoints/``: ``checkpoint-NNNNNN.pt``
  every ``run.checkpoint_every`` iterations (the newest ``run.keep_checkpoints`` are kept), ``last.pt`` after every
  save, ``best.pt`` when validation improves; ``save_at`` iterations also go to ``<run_dir>/<stage>/predictors/``.
* Exact resume: model, EMA, optimiser, scaler, RNG states and the best score are restored, and the data stream
  continues at sample ``iteration * batch`` (samples are functions of their stream index), so a resumed CPU run
  reproduces the uninterrupted loss curve.
* Tensorboard scalars and image slices go to ``<run_dir>/tensorboard/<stage>``; ``history.jsonl`` in the stage
  directory records the logged scalars and every validation.
"""

import contextlib
import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from affcons.config import validate
from affcons.errors import CheckpointError, ConfigError, OutputExistsError
from affcons.files import file_sha256
from affcons.train.checkpoint import load_state, rng_state, save_checkpoint, set_rng_state
from affcons.train.config import resolve_path
from affcons.train.dataset import LoadedVolume, make_loader
from affcons.train.validation import default_stride, is_better, predict_volume, score_segmentations

logger = logging.getLogger(__name__)


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed torch, numpy and python (``setup_seed`` of the reference code)."""
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
        torch.backends.cudnn.deterministic = deterministic
        torch.backends.cudnn.benchmark = not deterministic


class Trainer:
    """Runs one stage of training.

    Args:
        strategy: a strategy of :mod:`affcons.train.strategies`.
        config: the run config (``optim``, ``run``, ``validation`` sections are used).
        dataset: the :class:`~affcons.train.dataset.CropDataset` (stream of samples).
        stage_dir: ``<run_dir>/<stage>``.
        stage: stage name recorded in checkpoints.
        iterations: total iterations of this stage.
        device: where to train.
        validation_volume: the loaded validation volume or None.
        save_at: iterations whose checkpoints are also written to ``stage_dir/predictors`` (stage 1).
        tensorboard_dir: where the event files go.
    """

    def __init__(
        self,
        strategy,
        config,
        dataset,
        stage_dir: Path,
        stage: str,
        iterations: int,
        device: torch.device,
        validation_volume: LoadedVolume | None = None,
        save_at=(),
        tensorboard_dir: Path | None = None,
    ):
        self.strategy, self.config, self.dataset = strategy, config, dataset
        self.stage_dir, self.stage, self.iterations, self.device = Path(stage_dir), stage, iterations, device
        self.validation_volume = validation_volume
        self.save_at = sorted(set(save_at))
        self.tensorboard_dir = tensorboard_dir or self.stage_dir / "tensorboard"
        self.checkpoint_dir = self.stage_dir / "checkpoints"
        run = config.run
        self.use_cuda = device.type == "cuda"
        amp_dtypes = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}
        self.amp_dtype = amp_dtypes[run.amp] if self.use_cuda else None
        if not self.use_cuda and (run.amp != "none" or run.compile):
            logger.warning("run.amp=%s / run.compile=%s are ignored on %s", run.amp, run.compile, device)
        parameters = [p for module in strategy.trained.values() for p in module.parameters()]
        optim = config.optim
        self.optimizer = torch.optim.Adam(
            parameters,
            lr=optim.lr,
            betas=tuple(optim.betas),
            eps=optim.eps,
            weight_decay=optim.weight_decay,
            amsgrad=optim.amsgrad,
            fused=True if run.fused_optimizer and device.type == "cpu" else None,
        )
        self.scaler = torch.amp.GradScaler("cuda") if self.amp_dtype == torch.float16 else None
        if run.compile and self.use_cuda:
            for module in strategy.trained.values():
                module.compile()
        if run.channels_last and device.type == "cpu":
            modules = [*strategy.trained.values(), *(strategy.ema or {}).values(), *strategy.frozen.values()]
            for module in modules:
                module.to(memory_format=torch.channels_last_3d)
        self.parallel = run.parallel_branches and device.type == "cpu"
        self.executor = None  # the 2-thread pool of parallel branches, alive during run()
        self.iteration = 0
        self.best: dict | None = None
        self.history: list[dict] = []  # losses of this process, for tests and summaries

    # ------------------------------------------------------------------ checkpoints
    def _state(self) -> dict:
        config = self.config
        return {
            "stage": self.stage,
            "iteration": self.iteration,
            "config_kind": config.kind,
            "config": config.model_dump(mode="json"),
            "models": {name: module.state_dict() for name, module in self.strategy.trained.items()},
            "ema": (
                {name: module.state_dict() for name, module in self.strategy.ema.items()}
                if self.strategy.ema is not None
                else None
            ),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_state(self.device),
            "best": self.best,
        }

    def save(self, periodic: bool, best: bool = False, predictor: bool = False) -> Path:
        state = self._state()
        last = self.checkpoint_dir / "last.pt"
        save_checkpoint(last, state)
        if periodic:
            save_checkpoint(self.checkpoint_dir / f"checkpoint-{self.iteration:06d}.pt", state)
            self._prune()
        if best:
            save_checkpoint(self.checkpoint_dir / "best.pt", state)
        if predictor:
            lean = {k: state[k] for k in ("stage", "iteration", "config_kind", "config", "models")}
            save_checkpoint(self.stage_dir / "predictors" / f"embedding-{self.iteration:06d}.pt", lean)
        return last

    def _prune(self) -> None:
        keep = max(1, self.config.run.keep_checkpoints)
        periodic = sorted(self.checkpoint_dir.glob("checkpoint-*.pt"))
        for path in periodic[:-keep]:
            path.unlink()

    def resume(self, path: Path | None = None) -> None:
        """Restore everything from ``path`` (default ``checkpoints/last.pt``)."""
        path = path or self.checkpoint_dir / "last.pt"
        state = load_state(path, map_location="cpu")
        if state.get("stage") != self.stage:
            raise CheckpointError(f"{path}: a {state.get('stage')!r} checkpoint cannot resume stage {self.stage!r}")
        try:  # re-validated, so that keys added since the checkpoint was written compare at their defaults
            recorded_config = validate(type(self.config), state["config"], f"{path} (recorded config)")
        except ConfigError as error:
            raise CheckpointError(f"{path}: the recorded config is unusable: {error}") from None
        recorded = _comparable(recorded_config.model_dump(mode="json"))
        current = _comparable(self.config.model_dump(mode="json"))
        changed = _differences(recorded, current)
        if changed:
            raise CheckpointError(
                f"{path}: {', '.join(changed)} differ from the checkpoint's config; resume with the same config or "
                f"start a new --run-dir"
            )
        for name, module in self.strategy.trained.items():
            self._load_module(module, state["models"], name, path)
        if self.strategy.ema is not None:
            if not state.get("ema"):
                raise CheckpointError(f"{path}: has no EMA weights but this is an EMA run")
            for name, module in self.strategy.ema.items():
                self._load_module(module, state["ema"], name, path)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"], self.device)
        self.iteration = int(state["iteration"])
        self.best = state.get("best")
        logger.info("resumed %s from %s at iteration %d", self.stage, path, self.iteration)

    @staticmethod
    def _load_module(module, states: dict, name: str, path: Path) -> None:
        if name not in states:
            raise CheckpointError(f"{path}: no weights for {name!r} (has {sorted(states)})")
        try:
            getattr(module, "_orig_mod", module).load_state_dict(states[name])
        except RuntimeError as error:
            raise CheckpointError(f"{path}: {name} weights do not match the config: {error}") from None

    # ------------------------------------------------------------------ validation
    def validate(self) -> dict | None:
        cfg = self.config.validation
        if self.validation_volume is None:
            return None
        found = self.strategy.predictor(cfg.use_ema, cfg.output)
        if found is None:
            return None
        predict, modules = found
        modes = [module.training for module in modules]
        for module in modules:
            module.eval()
        patch = tuple(cfg.patch or self.config.data.crop)
        stride = tuple(cfg.stride or default_stride(patch))
        start = time.perf_counter()
        try:
            with self._autocast():
                affs = predict_volume(predict, self.validation_volume.raw, patch, stride, 3, self.device)
        finally:
            for module, mode in zip(modules, modes):
                module.train(mode)
        predicted = time.perf_counter() - start
        scores = score_segmentations(affs, self.validation_volume.labels, cfg.thresholds, cfg.scoring, cfg.metric)
        scores["seconds_predict"] = predicted
        scores["seconds_total"] = time.perf_counter() - start
        scores["iteration"] = self.iteration
        return scores

    # ------------------------------------------------------------------ loop
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type="cuda", dtype=self.amp_dtype)

    def _to_device(self, batch: dict) -> dict:
        return {key: value.to(self.device, non_blocking=True) for key, value in batch.items()}

    def _backward(self, output) -> None:
        """Backpropagate ``output.loss``, or its disjoint branches in parallel threads when there is an executor."""
        scale = self.scaler.scale if self.scaler is not None else (lambda loss: loss)
        if self.executor is None or len(output.branches) < 2:
            scale(output.loss).backward()
            return
        futures = [self.executor.submit(lambda loss=loss: scale(loss).backward()) for loss in output.branches]
        for future in futures:
            future.result()

    def run(self, stop_at: int | None = None) -> dict:
        """Train from ``self.iteration`` to ``self.iterations`` (or only up to ``stop_at``, saving a checkpoint
        there, as if interrupted); returns a summary."""
        from torch.utils.tensorboard import SummaryWriter

        run = self.config.run
        val = self.config.validation
        self.stage_dir.mkdir(parents=True, exist_ok=True)
        writer = SummaryWriter(str(self.tensorboard_dir), purge_step=self.iteration + 1 if self.iteration else None)
        history_file = (self.stage_dir / "history.jsonl").open("a")
        loader = make_loader(self.dataset, self.iteration, self.config.data.num_workers, pin_memory=self.use_cuda)
        batches = iter(loader)
        self.strategy.train()
        if self.parallel:
            self.executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="affcons-branch")
            self.strategy.executor = self.executor
        started, first_iteration = time.perf_counter(), self.iteration
        try:
            end = self.iterations if stop_at is None else min(stop_at, self.iterations)
            while self.iteration < end:
                wait_start = time.perf_counter()
                batch = self._to_device(next(batches))
                self.iteration += 1
                step_start = time.perf_counter()
                with self._autocast():
                    output = self.strategy.loss(batch, self.iteration)
                if not torch.isfinite(output.loss):
                    raise ConfigError(f"{self.stage}: loss is {float(output.loss)} at iteration {self.iteration}")
                loss_end = time.perf_counter()
                self.optimizer.zero_grad(set_to_none=True)
                self._backward(output)
                backward_end = time.perf_counter()
                if self.scaler is not None:
                    self.scaler.step(self.optimizer)
                    self.scaler.update()
                else:
                    self.optimizer.step()
                self.strategy.after_step(self.iteration)
                timing = {
                    "time/data": step_start - wait_start,
                    "time/loss": loss_end - step_start,
                    "time/backward": backward_end - loss_end,
                    "time/update": time.perf_counter() - backward_end,
                }
                self.history.append({"iteration": self.iteration, **output.scalars, **timing})
                t = self.iteration
                last = t == end
                if t % max(1, run.log_every) == 0 or last or t == 1:
                    for name, value in output.scalars.items():
                        if math.isfinite(value):
                            writer.add_scalar(name, value, t)
                    writer.add_scalar("time/step_seconds", time.perf_counter() - step_start, t)
                    history_file.write(json.dumps({"iteration": t, **output.scalars}) + "\n")
                    history_file.flush()
                    logger.info("%s %d/%d loss %.5f", self.stage, t, self.iterations, output.scalars["loss/total"])
                if run.image_every and (t % run.image_every == 0 or t == 1):
                    for name, image in output.images.items():
                        writer.add_image(f"images/{name}", image, t)
                improved = False
                if val.volume is not None and t >= val.start and ((val.every and t % val.every == 0) or last):
                    scores = self.validate()
                    if scores is not None:
                        value = scores[val.metric]
                        improved = is_better(value, None if self.best is None else self.best["value"])
                        if improved:
                            self.best = {
                                "metric": val.metric,
                                "value": value,
                                "iteration": t,
                                "scores": {k: v for k, v in scores.items() if k != "per_threshold"},
                            }
                        for key in ("voi_split", "voi_merge", "voi", "arand", "threshold"):
                            writer.add_scalar(f"validation/{key}", scores[key], t)
                        history_file.write(
                            json.dumps(
                                {
                                    "iteration": t,
                                    "validation": {k: v for k, v in scores.items() if k != "per_threshold"},
                                }
                            )
                            + "\n"
                        )
                        history_file.flush()
                        logger.info(
                            "%s %d validation: VOI split %.4f merge %.4f ARAND %.4f (threshold %.2f)%s",
                            self.stage,
                            t,
                            scores["voi_split"],
                            scores["voi_merge"],
                            scores["arand"],
                            scores["threshold"],
                            " best" if improved else "",
                        )
                periodic = t % max(1, run.checkpoint_every) == 0 or last
                predictor = t in self.save_at
                if periodic or improved or predictor:
                    self.save(periodic=periodic, best=improved, predictor=predictor)
        finally:
            history_file.close()
            writer.close()
            del batches
            if self.executor is not None:
                self.executor.shutdown()
                self.executor = self.strategy.executor = None
        elapsed = time.perf_counter() - started
        done = self.iteration - first_iteration
        return {
            "stage": self.stage,
            "iterations": self.iteration,
            "seconds": elapsed,
            "iterations_per_second": done / elapsed if elapsed > 0 else float("nan"),
            "best": self.best,
        }


#: config sections (and top-level keys) that a resume must not change
FIXED_SECTIONS = (
    "model",
    "optim",
    "loss",
    "pseudo",
    "variant",
    "ema_decay",
    "ema_warmup",
    "confidence_model",
    "stage1",
    "stage2",
)


def _comparable(config: dict) -> dict:
    """The config sections that must not change across a resume (run length, logging, validation, workers and the
    run directory may)."""
    fixed = {k: v for k, v in config.items() if k in FIXED_SECTIONS}
    for stage in ("stage1", "stage2"):
        if stage in fixed:
            fixed[stage] = {k: v for k, v in fixed[stage].items() if k != "iterations"}
    data = dict(config.get("data", {}))
    data.pop("num_workers", None)
    fixed["data"] = data
    fixed["seed"] = config.get("run", {}).get("seed")
    s2 = fixed.get("pseudo", {}).get("s2")
    if isinstance(s2, dict) and s2.get("checkpoint"):  # the confidence net by content: a moved file may resume
        fixed["pseudo"] = {**fixed["pseudo"], "s2": {**s2, "checkpoint": _file_identity(s2["checkpoint"])}}
    return fixed


def _file_identity(name: str) -> str:
    """``sha256:<hex>`` of the file ``name`` (repository-relative or absolute), or ``name`` itself if it is absent."""
    path = resolve_path(name)
    return f"sha256:{file_sha256(path)}" if path.is_file() else name


def _differences(recorded, current, name: str = "") -> list[str]:
    """Dotted names of the keys whose values differ between two nested config dicts."""
    if not (isinstance(recorded, dict) and isinstance(current, dict)):
        return [name or "the config"] if recorded != current else []
    names = []
    for key in sorted(set(recorded) | set(current)):
        names += _differences(recorded.get(key), current.get(key), f"{name}.{key}" if name else key)
    return names


def prepare_stage_dir(stage_dir: Path, resume: bool) -> None:
    """Refuse to overwrite a stage that has checkpoints unless resuming."""
    last = stage_dir / "checkpoints" / "last.pt"
    if last.exists() and not resume:
        raise OutputExistsError(f"{last} exists: pass --resume to continue that run, or choose another --run-dir")
    if resume and not last.exists():
        raise CheckpointError(f"--resume: {last} does not exist (nothing to resume in {stage_dir})")
