"""Typed configs of pre-training (``affcons pretrain``) and CRAC training (``affcons train``).

Every section is a :class:`~affcons.config.StrictModel`: unknown keys are rejected with the key's name, values are
frozen. Relative paths (volumes, checkpoints, run directories) are resolved against the repository root
(``Path(affcons.__file__).parents[1]``), never the current directory: see :func:`resolve_path`. Training geometry
(crops, margins, ROIs) is in voxels of the training volume, as in the reference code.

Defaults are the values of method.md (CRAC at HEAD, with the section 8 fixes); comments name the reference key.
"""

from pathlib import Path
from typing import Literal

import pydantic

from affcons.affinities import CRAC_OFFSETS
from affcons.config import REPO_ROOT, StrictModel
from affcons.errors import ConfigError

Triple = tuple[int, int, int]


def resolve_path(path: str | Path) -> Path:
    """Absolute path; a relative ``path`` is taken relative to the repository root (not the cwd).

    A volume spec ``file.h5:dataset`` keeps its ``:dataset`` suffix (only the file part is resolved).
    """
    text = str(path)
    file_part, sep, inner = _split_h5(text)
    resolved = Path(file_part).expanduser()
    if not resolved.is_absolute():
        resolved = REPO_ROOT / resolved
    return Path(f"{resolved}{sep}{inner}") if sep else resolved


def _split_h5(spec: str) -> tuple[str, str, str]:
    for suffix in (".h5:", ".hdf5:", ".hdf:"):
        position = spec.find(suffix)
        if position >= 0:
            cut = position + len(suffix) - 1
            return spec[:cut], ":", spec[cut + 1 :]
    return spec, "", ""


class ModelConfig(StrictModel):
    """The explicit-affinity and embedding networks (method.md section 3, ``MODEL.*``)."""

    filters: list[int] = [28, 36, 48, 64, 80]  # MODEL.filters: widths of levels 0-3 and the centre
    embedding_channels: int = 16  # MODEL.emd: embedding dimension of the implicit branch
    bn_momentum: float = 0.001  # BatchNorm momentum (reference class default); larger values suit short runs
    offsets: list[Triple] = [tuple(o) for o in CRAC_OFFSETS]  # DATA.shift_channels, (dz, dy, dx) per channel

    @pydantic.field_validator("filters")
    @classmethod
    def _five_filters(cls, value: list[int]) -> list[int]:
        if len(value) != 5 or min(value) < 1:
            raise ValueError(f"need 5 positive widths, got {value}")
        return value

    @pydantic.field_validator("offsets")
    @classmethod
    def _offsets(cls, value: list[Triple]) -> list[Triple]:
        if len(value) < 3 or [tuple(o) for o in value[:3]] != [(-1, 0, 0), (0, -1, 0), (0, 0, -1)]:
            raise ValueError("the first three offsets must be the nearest neighbours (-1,0,0), (0,-1,0), (0,0,-1)")
        return value


class ConfidenceModelConfig(StrictModel):
    """The confidence / error network CPSN (``SCPNNetwork``): 3 inputs, transposeS upsampling, cat merge."""

    filters: list[int] = [28, 36, 48, 64, 80]  # widths of levels 0-3 and the centre
    bn_momentum: float = 0.001  # BatchNorm momentum


class RoiConfig(StrictModel):
    """A box in voxels of a volume: ``begin`` inclusive, ``end`` exclusive; ``end: null`` means the volume's end."""

    begin: Triple = (0, 0, 0)  # first voxel (z, y, x)
    end: Triple | None = None  # one past the last voxel (z, y, x); null = the whole remaining volume


class SparseConfig(StrictModel):
    """Simulated sparse annotation: keep a random subset of whole 3-D instances (method.md section 9, item 1)."""

    mode: Literal["all", "fraction", "count"] = "fraction"  # all = labels are used as given (already sparse)
    value: float = 0.05  # fraction of ids (mode fraction) or number of ids (mode count)
    seed: int = 555  # the subset is a deterministic function of the seed and the set of ids


class VolumeConfig(StrictModel):
    """One training or validation volume: raw EM and (optionally) instance labels."""

    raw: str  # "file.h5:dataset", or a zarr array path; relative paths are taken from the repository root
    labels: str | None = None  # same syntax; id 0 = unlabelled / membrane
    roi: RoiConfig = RoiConfig()  # part of the volume to use, in voxels
    raw_scale: float = 255.0  # raw is divided by this (uint8 -> [0, 1])


class AugmentConfig(StrictModel):
    """Training augmentations (method.md section 1): the mix fires with ``probability``, then each enabled one with
    ``p_each``, in the order flip, rotate, elastic, grayscale, noise, blur, missing section, misalignment."""

    probability: float = 0.5  # chance that the augmentation mix is applied to a sample at all
    p_each: float = 0.5  # chance of each enabled augmentation within the mix
    flip: bool = True  # random flips of z, y, x and y<->x transposition
    rotate: bool = True  # uniform 0-360 degree in-plane rotation (linear raw, nearest labels, constant 0 border)
    elastic: bool = True  # one 2-D displacement field shared by all sections
    elastic_alpha: float = 16.0  # displacement magnitude in voxels
    elastic_sigma: float = 4.0  # Gaussian smoothing of the displacement field in voxels
    grayscale: bool = True  # contrast, brightness and gamma, per section or per volume
    noise: bool = False  # additive Gaussian noise (extension)
    noise_std: float = 0.05  # its maximal standard deviation (raw in [0, 1])
    blur: bool = False  # in-plane Gaussian blur of the whole crop (extension)
    blur_sigma: float = 1.5  # its maximal sigma in voxels
    missing_section: bool = False  # blank out whole sections (extension)
    missing_max: int = 2  # at most this many sections
    misalignment: bool = False  # shift all sections from a random z on (extension)
    misalignment_max: int = 10  # maximal shift in voxels (must not exceed the crop margin)


class DataConfig(StrictModel):
    """Where training crops come from."""

    train: VolumeConfig  # the sparsely labelled training volume
    sparse: SparseConfig = SparseConfig()  # which instances are kept as labels
    widen_border: bool = True  # seg_widen_border: zero voxels whose 3x3 in-plane window holds two labelled ids
    # class-balance weights inside M_lab (method.md 8.7): per_channel = f of each offset channel; pooled = one f over
    # all channels (weight_binary_ratio, separate_weight=False), which up-weights positives of the nearest-neighbour
    # channels ~5x because the long-range channels are mostly 0 inside M_lab (docs/design/crac.md section 2)
    balance: Literal["per_channel", "pooled"] = "per_channel"
    unlabelled: VolumeConfig | None = None  # optional extra unlabelled sections (u<N>); labels must be null
    batch_size_unlabelled: int = 0  # crops per batch from ``unlabelled`` (0 = none; the code's default)
    crop: Triple = (18, 160, 160)  # network input (z, y, x); y and x multiples of 16
    margin: Triple = (0, 50, 50)  # context read around the crop for rotation/elastic, then cropped away
    num_workers: int = 2  # DataLoader worker processes (0 = load in the main process)
    augment: AugmentConfig = AugmentConfig()  # training augmentations

    @pydantic.model_validator(mode="after")
    def _check(self) -> "DataConfig":
        if self.crop[1] % 16 or self.crop[2] % 16:
            raise ValueError(f"crop {list(self.crop)}: y and x must be multiples of 16")
        if self.unlabelled is not None and self.unlabelled.labels is not None:
            raise ValueError("data.unlabelled.labels must be null (unlabelled sections carry no labels)")
        if self.batch_size_unlabelled and self.unlabelled is None:
            raise ValueError("batch_size_unlabelled > 0 needs data.unlabelled")
        return self


class OptimConfig(StrictModel):
    """One Adam over all trained parameters (method.md section 5); the learning rate is constant."""

    lr: float = 1e-4  # base_lr == end_lr
    betas: tuple[float, float] = (0.9, 0.999)  # Adam betas
    eps: float = 0.01  # Adam eps (large, as in the code)
    weight_decay: float = 1e-6  # Adam weight decay
    amsgrad: bool = True  # AMSGrad variant


class RunConfig(StrictModel):
    """Loop length, logging, checkpoints and the device."""

    iterations: int = 300000  # total_iters; iterations are counted from 1
    batch_size: int = 2  # sparsely labelled crops per iteration
    seed: int = 555  # seeds torch, numpy and python, and the per-sample data streams
    checkpoint_every: int = 1000  # save_freq; the last iteration is always saved
    keep_checkpoints: int = 3  # how many periodic checkpoints to keep (the best and the last are kept anyway)
    log_every: int = 100  # tensorboard scalars every N iterations
    image_every: int = 1000  # tensorboard image slices every N iterations (0 = never)
    device: str = "auto"  # "auto" (cuda when available), "cpu", "cuda", "cuda:1", ...
    amp: Literal["none", "bf16", "fp16"] = "none"  # autocast precision on CUDA (ignored on CPU)
    compile: bool = False  # torch.compile the networks on CUDA (ignored on CPU: ~5 % faster after ~10 min compiling)
    channels_last: bool = True  # CPU: channels-last 3-D tensors (oneDNN's faster 3-D convolutions; ignored on CUDA)
    # CPU: the two CRAC networks' forward and backward passes run in two threads (their graphs are disjoint when the
    # pseudo-labels are detached), so two cores are used without intra-op threads; ignored on CUDA
    parallel_branches: bool = True
    fused_optimizer: bool = True  # CPU: Adam's fused kernel (one pass over all parameters); ignored on CUDA
    # the frozen confidence net of S2 runs with its BatchNorms folded into its convolutions (nets.fold_batchnorm:
    # fewer full-size elementwise passes, ~1.2x per pass on the CPU; outputs within 2e-5)
    fold_confidence_batchnorm: bool = True
    deterministic: bool = True  # cudnn.deterministic, as in the reference setup_seed


class LossConfig(StrictModel):
    """Loss weights (method.md section 4)."""

    emb_weight: float = 10.0  # weight of the supervised terms
    pseudo_weight: float = 1.0  # weight of the cross-representation terms
    short_range_weight: float = 10.0  # s_c for the three nearest-neighbour channels, applied once
    detach_pseudo: bool = True  # stop gradients through pseudo-labels; false reproduces the code (--no-detach)
    # ramp-up of pseudo_weight over this fraction of run.iterations: w_t = pseudo_weight * exp(-5 (1 - t / R)^2) for
    # t < R (the mean-teacher / temporal-ensembling schedule); 0 = constant from the first iteration (reference)
    pseudo_rampup: float = 0.0

    @pydantic.field_validator("pseudo_rampup")
    @classmethod
    def _fraction(cls, value: float) -> float:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"must be a fraction of the run in [0, 1], got {value}")
        return value


class S2Config(StrictModel):
    """Strategy S2: the frozen confidence net masks affinities it predicts to be wrong."""

    enabled: bool = True  # use S2 after ``gate`` iterations
    gate: int = 5000  # S2 starts at iterations t > gate (hard-coded 5000 in the code)
    # the gate as a fraction of run.iterations (overrides ``gate``): the reference's 5000 of a 20k run is 0.25
    gate_fraction: float | None = None
    checkpoint: str | None = None  # confidence-net checkpoint (from ``affcons pretrain``), repo-relative
    threshold: float = 0.5  # an affinity is kept where the predicted error probability is below this
    chunk: int = 8  # (batch x channel) samples per confidence-net forward pass


class PseudoConfig(StrictModel):
    """Pseudo-label filtering (strategies S1 and S2)."""

    alpha0: float = 0.005  # S1: initial fraction of the most uncertain unlabelled affinities that are dropped
    power: float = 1.5  # S1: alpha_t = alpha0 * (1 - t / T) ** power
    total_iterations: int | None = None  # T of the schedule; null = run.iterations
    max_quantile_elements: int = 16_000_000  # the percentile subsamples (deterministically) above this many values
    s2: S2Config = S2Config()  # strategy S2
    # teacher = the other network's map (CRAC); oracle = the true affinities of the dense training labels on every
    # valid unlabelled pair (a control: the upper bound of what better pseudo-labels can give; no filter);
    # oracle_filter = the teacher's map, kept exactly where it lies on the true side of 0.5 (a control: a perfect
    # S1 + S2, the upper bound of what better filters can give with these teachers)
    source: Literal["teacher", "oracle", "oracle_filter"] = "teacher"
    # every N iterations, log how many pseudo-labels S1 and S1+S2 keep and how many are right, per channel group,
    # against the dense training labels (hidden from training); S2 is evaluated for this even before its gate. 0 = off
    measure_every: int = 0


class ValidationConfig(StrictModel):
    """Periodic validation: stitched prediction, fragments + agglomeration, VOI / ARAND; keeps the best checkpoint."""

    volume: VolumeConfig | None = None  # densely labelled validation volume; null = no validation
    every: int = 1000  # validate every N iterations and at the end (0 = only at the end)
    start: int = 0  # no validation before this iteration (the code scores segmentations only after 5000)
    output: Literal["implicit", "explicit", "mean"] = "implicit"  # which affinity map is segmented
    use_ema: bool = True  # EMA variant: validate the EMA copies
    patch: Triple | None = None  # prediction patch; null = data.crop
    stride: Triple | None = None  # patch stride; null = patch minus overlap of (8, 80, 80) clipped at half the patch
    thresholds: list[float] = [0.3, 0.4, 0.5, 0.6, 0.7]  # agglomeration thresholds; the best one is reported
    scoring: str = "mean"  # agglomeration scoring passed to affcons.segment.segment_affinities
    metric: Literal["voi", "arand"] = "voi"  # what "best" means (lower is better for both)


class PretrainStage1Config(StrictModel):
    """Stage 1: sparse-supervised warm-up of the embedding net with dropout perturbation; saves predictors."""

    iterations: int = 20000  # length of the warm-up
    save_at: list[int] = [1000, 5000, 10000, 15000, 20000]  # TRAIN.model_id: checkpoints used as perturbed predictors
    dropout: float = 0.1  # maximal random dropout rate (model_superhuman2_dropout)


class PretrainStage2Config(StrictModel):
    """Stage 2: train the confidence net on the frozen, perturbed stage-1 predictors."""

    iterations: int = 200000  # CPSN training length
    sampled_channels: int = 3  # affinity channels per iteration
    binarize_threshold: float = 0.5  # an affinity counts as 1 above this
    # class balance of the CPSN loss: "all" (reference: wrong vs correct over all pairs) or "per_side" (separately
    # above and below binarize_threshold, both sides equal: the error kind of the stage-1 predictors is not learnt)
    error_balance: Literal["all", "per_side"] = "all"


class CommonConfig(StrictModel):
    """Sections shared by pre-training and CRAC training."""

    data: DataConfig  # training crops
    model: ModelConfig = ModelConfig()  # affinity + embedding nets
    optim: OptimConfig = OptimConfig()  # Adam
    run: RunConfig = RunConfig()  # loop, logging, device
    loss: LossConfig = LossConfig()  # loss weights
    validation: ValidationConfig = ValidationConfig()  # periodic validation
    run_dir: str | None = None  # output directory; null = runs/<config name> under the repository root


class PretrainConfig(CommonConfig):
    """``affcons pretrain`` / ``scripts/pre_training.py``: stage 1 then stage 2."""

    kind: Literal["pretrain"] = "pretrain"  # config type tag
    confidence_model: ConfidenceModelConfig = ConfidenceModelConfig()  # CPSN architecture
    stage1: PretrainStage1Config = PretrainStage1Config()  # embedding warm-up
    stage2: PretrainStage2Config = PretrainStage2Config()  # confidence-net training

    @pydantic.model_validator(mode="after")
    def _check(self) -> "PretrainConfig":
        if not self.stage1.save_at or max(self.stage1.save_at) > self.stage1.iterations:
            raise ValueError(f"stage1.save_at {self.stage1.save_at} must be non-empty and <= stage1.iterations")
        if not 1 <= self.stage2.sampled_channels <= len(self.model.offsets):
            raise ValueError(f"stage2.sampled_channels must lie in 1..{len(self.model.offsets)}")
        return self


class CRACConfig(CommonConfig):
    """``affcons train`` / ``scripts/main.py`` (WS) and ``scripts/main_ema.py`` (EMA)."""

    kind: Literal["crac"] = "crac"  # config type tag
    variant: Literal["ws", "ema", "supervised"] = "ws"  # supervised = explicit net on the sparse labels only
    ema_decay: float = 0.99  # EMA variant: teacher = decay * teacher + (1 - decay) * student (not from the paper)
    # EMA variant: decay_t = min(1 - 1 / (t + 1), ema_decay), so the teacher follows the student closely early on
    # (mean teacher, Tarvainen & Valpola 2017); false = ema_decay from the first step
    ema_warmup: bool = False
    pseudo: PseudoConfig = PseudoConfig()  # pseudo-label filtering (the CPSN architecture comes from its checkpoint)

    @pydantic.model_validator(mode="after")
    def _check(self) -> "CRACConfig":
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}")
        if self.variant == "supervised" and self.validation.output != "explicit":
            raise ValueError("variant 'supervised' trains only the explicit net: set validation.output: explicit")
        fraction = self.pseudo.s2.gate_fraction
        if fraction is not None and not 0.0 <= fraction <= 1.0:
            raise ValueError(f"pseudo.s2.gate_fraction must lie in [0, 1], got {fraction}")
        if (self.pseudo.source != "teacher" or self.pseudo.measure_every) and self.data.sparse.mode == "all":
            raise ValueError(
                f"pseudo.source: {self.pseudo.source} and pseudo.measure_every need the dense labels behind the "
                "sparse ones (data.sparse.mode fraction or count)"
            )
        return self

    def s2_gate(self) -> int:
        """The S2 gate in iterations: ``gate_fraction * run.iterations`` (rounded) if set, else ``gate``."""
        fraction = self.pseudo.s2.gate_fraction
        return self.pseudo.s2.gate if fraction is None else round(fraction * self.run.iterations)

    def needs_truth(self) -> bool:
        """Whether training batches must carry the true affinities of the dense labels (oracles or measurements)."""
        return self.variant != "supervised" and (self.pseudo.source != "teacher" or self.pseudo.measure_every > 0)


def config_class(kind: str) -> type[CommonConfig]:
    """The config class of a checkpoint's or file's ``kind`` tag."""
    classes = {"pretrain": PretrainConfig, "crac": CRACConfig}
    if kind not in classes:
        raise ConfigError(f"unknown config kind {kind!r}; expected one of {sorted(classes)}")
    return classes[kind]
