"""What one training iteration computes, per stage: CRAC (WS, EMA, supervised-only), stage-1 warm-up, CPSN.

A strategy owns its networks and exposes

* ``trained``: ``{name: module}`` whose parameters the optimiser updates (and checkpoints store under ``models``);
* ``ema``: ``{name: module}`` of EMA copies or None (checkpointed under ``ema``);
* ``frozen``: ``{name: module}`` of networks used but not trained (the CPSN of S2, the stage-1 predictors);
* ``loss(batch, iteration) -> StepOutput``: the loss and what to log (the batch follows the contract of
  :mod:`affcons.train.dataset`, already on the device);
* ``after_step(iteration)``: called after each optimiser step (EMA update);
* ``predictor(use_ema)``: ``raw (1, 1, D, H, W) -> affinities (1, C, D, H, W)`` for validation, or None;
* ``executor``: set by the trainer to a 2-thread pool on CPU (``run.parallel_branches``); CRAC then runs the two
  networks' forward passes and pseudo-label filters in parallel and returns the loss split by network
  (``StepOutput.branches``) for a parallel backward.

CRAC (method.md section 4), with ``s`` the channel weights, ``W`` the class-balance weights, ``M_lab`` the labelled
mask, ``A_imp`` the implicit and ``A_exp`` the explicit map::

    L_sup = emb_weight * (sum_c s_c WMSE(A_imp, Y, W M_lab) + sum_c s_c WMSE(A_exp, Y, W M_lab))
    L_pse = pseudo_weight * (sum_c s_c WMSE(A_imp, P_exp, W F_exp) + sum_c s_c WMSE(A_exp, P_imp, W F_imp))

where ``(P_exp, F_exp)`` come from the explicit teacher and ``(P_imp, F_imp)`` from the implicit teacher
(relu of the cosine similarities) via :class:`~affcons.pseudo.PseudoLabeler`. The teacher is the live network in
the WS variant and an EMA copy of it in the EMA variant. Two controls use the dense labels behind the sparse ones:
``pseudo.source: oracle`` replaces ``P`` by the true affinities and ``F`` by every valid unlabelled pair;
``pseudo.source: oracle_filter`` keeps ``P`` and replaces ``F`` by the pairs where ``P`` lies on the true side of 0.5
(a perfect filter). ``pseudo_weight`` ramps up over
``loss.pseudo_rampup`` of the run; the EMA decay warms up with ``ema_warmup``.
"""

import copy
import logging
from dataclasses import dataclass, field

import torch
from torch import nn

from affcons.errors import CheckpointError, ConfigError
from affcons.losses import (
    branch_losses,
    channel_weights,
    confidence_loss,
    pseudo_loss,
    rampup_weight,
    supervised_loss,
)
from affcons.nets import (
    CRACNetworks,
    build_confidence_net,
    build_embedding_net,
    fill_short_range_borders,
    fold_batchnorm,
    implicit_affinities,
    offset_validity,
)
from affcons.pseudo import FilterResult, PseudoLabeler, binary_entropy, channel_groups, filter_counts
from affcons.train.checkpoint import read_checkpoint

logger = logging.getLogger(__name__)


@dataclass
class StepOutput:
    """The loss of one iteration, scalars to log, and (lazily built) image slices (C, H, W) in [0, 1].

    ``branches``: when not empty, losses whose sum is ``loss`` and whose autograd graphs are disjoint (one per
    network), which the trainer may backpropagate in parallel.
    """

    loss: torch.Tensor
    scalars: dict[str, float] = field(default_factory=dict)
    images: dict[str, torch.Tensor] = field(default_factory=dict)
    branches: tuple[torch.Tensor, ...] = ()


def _slice_image(volume: torch.Tensor) -> torch.Tensor:
    """Middle z-slice of a (D, H, W) map of the first sample, as a (1, H, W) image in [0, 1]."""
    return volume[volume.shape[0] // 2].detach().float().clamp(0, 1)[None].cpu()


class _Base:
    """Shared helpers: offset validity per crop shape, channel weights, device."""

    def __init__(self, offsets, short_range_weight: float, device: torch.device):
        self.offsets = [tuple(o) for o in offsets]
        self.device = device
        self.channel_weight = channel_weights(len(self.offsets), short_range_weight).to(device)
        self._valid: dict[tuple, torch.Tensor] = {}
        self.ema: dict[str, nn.Module] | None = None
        self.frozen: dict[str, nn.Module] = {}
        self.executor = None  # a concurrent.futures executor (set by the trainer) or None

    def run_all(self, *functions):
        """Call ``functions`` (no arguments) in parallel threads when an executor is set, else in order; returns
        their results in order."""
        if self.executor is None:
            return [function() for function in functions]
        return [future.result() for future in [self.executor.submit(function) for function in functions]]

    def valid(self, spatial: tuple[int, ...]) -> torch.Tensor:
        if spatial not in self._valid:
            self._valid[spatial] = offset_validity(spatial, self.offsets, device=self.device)
        return self._valid[spatial]

    def train(self) -> None:
        for module in self.trained.values():
            module.train()

    def after_step(self, iteration: int) -> None:
        pass


def ema_decay_at(step: int, decay: float, warmup: bool) -> float:
    """The EMA decay after optimiser step ``step`` (from 1): ``min(1 - 1 / (step + 1), decay)`` with ``warmup``
    (mean teacher), else ``decay``."""
    return min(1.0 - 1.0 / (step + 1), decay) if warmup else decay


def load_confidence_net(path, device: torch.device) -> nn.Module:
    """The frozen CPSN (eval mode, no gradients) of a checkpoint written by ``affcons pretrain``."""
    state, config = read_checkpoint(path, map_location="cpu")
    models = state.get("models") or {}
    if "confidence" not in models:
        raise CheckpointError(f"{path}: holds {sorted(models)}, not a confidence net (run `affcons pretrain` first)")
    net = build_confidence_net(config.confidence_model)
    try:
        net.load_state_dict(models["confidence"])
    except RuntimeError as error:
        raise CheckpointError(f"{path}: confidence weights do not match the recorded config: {error}") from None
    net.to(device).eval()
    for parameter in net.parameters():
        parameter.requires_grad_(False)
    return net


class CRACStrategy(_Base):
    """CRAC consistency training: ``variant`` ``ws`` (weight sharing), ``ema`` (mean teacher) or ``supervised``
    (explicit net on the sparse labels only, the baseline)."""

    def __init__(self, config, device: torch.device, confidence_net: nn.Module | None = None):
        super().__init__(config.model.offsets, config.loss.short_range_weight, device)
        self.config = config
        self.variant = config.variant
        self.networks = CRACNetworks.from_config(config.model).to(device)
        if self.variant == "supervised":
            self.trained = {"affinity": self.networks.affinity_net}
        else:
            self.trained = {"embedding": self.networks.embedding_net, "affinity": self.networks.affinity_net}
        if self.variant == "ema":
            self.ema = {name: copy.deepcopy(module) for name, module in self.trained.items()}
            for module in self.ema.values():
                module.requires_grad_(False)
        if confidence_net is not None:
            if config.run.fold_confidence_batchnorm:
                confidence_net = fold_batchnorm(confidence_net)
            self.frozen["confidence"] = confidence_net
        pseudo = config.pseudo
        # one labeler per teacher map: the two maps are filtered in parallel threads
        self.labelers = {
            name: PseudoLabeler(
                alpha0=pseudo.alpha0,
                total_iterations=pseudo.total_iterations or config.run.iterations,
                power=pseudo.power,
                detach=config.loss.detach_pseudo,
                confidence_net=confidence_net,
                gate=config.s2_gate(),
                s2_threshold=pseudo.s2.threshold,
                chunk=pseudo.s2.chunk,
                max_elements=pseudo.max_quantile_elements,
            )
            for name in ("explicit", "implicit")
        }
        self.groups = channel_groups(self.offsets)

    def train(self) -> None:
        super().train()
        if self.ema is not None:
            # the teachers use batch statistics like the students; their running stats are copied from the students
            for module in self.ema.values():
                module.train()

    def _explicit(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The explicit map and its teacher's (the EMA copy's, None otherwise)."""
        a_exp = self.networks.affinity_net(raw).float()
        if self.ema is None:
            return a_exp, None
        with torch.no_grad():
            return a_exp, self.ema["affinity"](raw).float()

    def _implicit(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The implicit map (cosine similarities) and its teacher's (the EMA copy's, None otherwise)."""
        a_imp = implicit_affinities(self.networks.embedding_net(raw), self.offsets)
        if self.ema is None:
            return a_imp, None
        with torch.no_grad():
            return a_imp, implicit_affinities(self.ema["embedding"](raw), self.offsets)

    def loss(self, batch: dict, iteration: int) -> StepOutput:
        raw, target, label_mask, weight = batch["raw"], batch["target"], batch["label_mask"], batch["weight"]
        valid = self.valid(tuple(raw.shape[2:]))
        s = self.channel_weight
        loss_cfg = self.config.loss
        if self.variant == "supervised":
            a_exp, _ = self._explicit(raw)
            terms = {"sup_exp": supervised_loss(a_exp, target, weight, label_mask, valid, s)}
            return self._output(terms, {}, {}, raw, target, a_exp, None, 0.0)
        (a_imp, teacher_imp), (a_exp, teacher_exp) = self.run_all(
            lambda: self._implicit(raw), lambda: self._explicit(raw)
        )
        teacher_imp = a_imp if teacher_imp is None else teacher_imp
        teacher_exp = a_exp if teacher_exp is None else teacher_exp
        terms = {
            "sup_imp": supervised_loss(a_imp, target, weight, label_mask, valid, s),
            "sup_exp": supervised_loss(a_exp, target, weight, label_mask, valid, s),
        }
        scalars, images = {}, {}
        pseudo_weight = loss_cfg.pseudo_weight * rampup_weight(
            iteration, loss_cfg.pseudo_rampup * self.config.run.iterations
        )
        measure = self.config.pseudo.measure_every
        measure = bool(measure) and iteration % measure == 0 and "truth" in batch
        if loss_cfg.pseudo_weight > 0 or measure:

            def labels(name: str, teacher: torch.Tensor) -> FilterResult:
                return self.labelers[name].filter(
                    teacher, valid, label_mask, iteration, implicit=name == "implicit", raw=raw, evaluate_s2=measure
                )

            from_exp, from_imp = self.run_all(
                lambda: labels("explicit", teacher_exp), lambda: labels("implicit", teacher_imp)
            )
            if measure:
                truth, defined = batch["truth"], batch["truth_defined"]
                for name, result in (("explicit", from_exp), ("implicit", from_imp)):
                    counts = filter_counts(result, truth, defined, self.groups)
                    scalars.update({f"filter/{name}/{key}": value for key, value in counts.items()})
            source = self.config.pseudo.source
            if source == "teacher":
                pseudo_exp, filter_exp = from_exp.prob, from_exp.mask().float()
                pseudo_imp, filter_imp = from_imp.prob, from_imp.mask().float()
            else:
                # valid unlabelled pairs of the labelled crops (crops of data.unlabelled have no dense labels)
                truth, labelled = batch["truth"], batch["labelled"].view(-1, 1, 1, 1, 1)
                if source == "oracle":
                    pseudo_exp = pseudo_imp = truth
                    filter_exp = filter_imp = (from_exp.candidates & labelled).float()
                else:  # oracle_filter: a perfect filter on the teachers' pseudo-labels
                    pseudo_exp, pseudo_imp = from_exp.prob, from_imp.prob
                    filter_exp, filter_imp = (
                        (result.candidates & labelled & ((result.prob > 0.5) == (truth > 0.5))).float()
                        for result in (from_exp, from_imp)
                    )
            if loss_cfg.pseudo_weight > 0:
                terms["pse_imp"] = pseudo_loss(a_imp, pseudo_exp, weight, filter_exp, valid, s)
                terms["pse_exp"] = pseudo_loss(a_exp, pseudo_imp, weight, filter_imp, valid, s)
            stats_exp, stats_imp = self.labelers["explicit"].last_stats, self.labelers["implicit"].last_stats
            scalars.update(
                {
                    "pseudo/weight": pseudo_weight,
                    "pseudo/alpha": stats_exp["alpha"],
                    "pseudo/gamma_explicit": stats_exp["gamma"],
                    "pseudo/gamma_implicit": stats_imp["gamma"],
                    "pseudo/kept_explicit": stats_exp["kept_fraction"],
                    "pseudo/kept_implicit": stats_imp["kept_fraction"],
                    "pseudo/s2_active": stats_exp["s2_active"],
                }
            )
            images.update({"filter_explicit_y": filter_exp[0, 1], "filter_implicit_y": filter_imp[0, 1]})
        return self._output(terms, scalars, images, raw, target, a_exp, a_imp, pseudo_weight)

    def _output(self, terms, scalars, images, raw, target, a_exp, a_imp, pseudo_weight: float) -> StepOutput:
        branches = branch_losses(terms, self.config.loss.emb_weight, pseudo_weight)
        loss = sum(branches.values())
        scalars.update({f"loss/{name}": float(value.detach()) for name, value in terms.items()})
        scalars["loss/total"] = float(loss.detach())
        images.update({"raw": raw[0, 0], "target_y": target[0, 1], "explicit_y": a_exp[0, 1]})
        if a_imp is not None:
            images["implicit_y"] = torch.relu(a_imp[0, 1])
        # with detached pseudo-labels the two branches share no graph (the trainer may run them in parallel)
        disjoint = len(branches) > 1 and self.config.loss.detach_pseudo
        return StepOutput(
            loss,
            scalars,
            {name: _slice_image(value) for name, value in images.items()},
            tuple(branches.values()) if disjoint else (),
        )

    @torch.no_grad()
    def after_step(self, iteration: int) -> None:
        if self.ema is None:
            return
        decay = ema_decay_at(iteration, self.config.ema_decay, self.config.ema_warmup)
        for name, teacher in self.ema.items():
            student = self.trained[name]
            for t_param, s_param in zip(teacher.parameters(), student.parameters()):
                t_param.mul_(decay).add_(s_param.detach(), alpha=1.0 - decay)
            for t_buffer, s_buffer in zip(teacher.buffers(), student.buffers()):
                t_buffer.copy_(s_buffer)

    def validation_networks(self, use_ema: bool) -> CRACNetworks:
        """The networks to validate (EMA copies when ``use_ema`` and this is an EMA run)."""
        if use_ema and self.ema is not None:
            return CRACNetworks(self.ema["embedding"], self.ema["affinity"], self.offsets)
        return self.networks

    def predictor(self, use_ema: bool, output: str):
        networks = self.validation_networks(use_ema)
        if self.variant == "supervised" and output != "explicit":
            raise ConfigError("variant 'supervised' trains only the explicit net: set validation.output: explicit")

        def predict(raw: torch.Tensor) -> torch.Tensor:
            return networks.affinities(raw, outputs=(output,))[output]

        return predict, list(networks.modules())


class EmbeddingWarmupStrategy(_Base):
    """Pre-training stage 1: ``emb_weight * sum_c s_c WMSE(A_imp, Y, W M_lab)`` with the dropout perturbation on."""

    def __init__(self, config, device: torch.device):
        super().__init__(config.model.offsets, config.loss.short_range_weight, device)
        self.config = config
        self.net = build_embedding_net(config.model, dropout=config.stage1.dropout).to(device)
        self.net.set_perturbation(True)
        self.trained = {"embedding": self.net}

    def loss(self, batch: dict, iteration: int) -> StepOutput:
        raw = batch["raw"]
        valid = self.valid(tuple(raw.shape[2:]))
        a_imp = implicit_affinities(self.net(raw), self.offsets)
        sup = supervised_loss(a_imp, batch["target"], batch["weight"], batch["label_mask"], valid, self.channel_weight)
        loss = self.config.loss.emb_weight * sup
        images = {"raw": raw[0, 0], "target_y": batch["target"][0, 1], "implicit_y": torch.relu(a_imp[0, 1])}
        return StepOutput(
            loss,
            {"loss/sup_imp": float(sup.detach()), "loss/total": float(loss.detach())},
            {name: _slice_image(value) for name, value in images.items()},
        )

    def predictor(self, use_ema: bool, output: str):
        if output != "implicit":
            raise ConfigError("pre-training validates the implicit map only: set validation.output: implicit")
        net = self.net

        def predict(raw: torch.Tensor) -> torch.Tensor:
            # validation sees the unperturbed net
            net.set_perturbation(False)
            try:
                affs = torch.relu(implicit_affinities(net(raw), self.offsets))
            finally:
                net.set_perturbation(True)
            return fill_short_range_borders(affs)

        return predict, [net]


class ConfidenceStrategy(_Base):
    """Pre-training stage 2: the CPSN learns where the frozen, perturbed stage-1 predictors are wrong.

    Each iteration draws one predictor uniformly and ``sampled_channels`` channels without replacement (global torch
    RNG, checkpointed), computes ``A = relu(A_imp)`` and ``H(A)``, and trains on the BCE of
    :func:`affcons.losses.confidence_loss` inside M_lab.
    """

    def __init__(self, config, device: torch.device, predictor_paths):
        super().__init__(config.model.offsets, config.loss.short_range_weight, device)
        self.config = config
        self.net = build_confidence_net(config.confidence_model).to(device)
        self.trained = {"confidence": self.net}
        self.predictors = []
        for path in predictor_paths:
            state, _ = read_checkpoint(path, map_location="cpu")
            predictor = build_embedding_net(config.model, dropout=config.stage1.dropout)
            try:
                predictor.load_state_dict(state["models"]["embedding"])
            except (KeyError, RuntimeError) as error:
                raise CheckpointError(f"{path}: not a stage-1 embedding checkpoint of this config ({error})") from None
            predictor.to(device).eval().requires_grad_(False)
            predictor.set_perturbation(True)  # dropout stays on for the frozen predictors (diversity)
            self.predictors.append(predictor)
            self.frozen[f"predictor{len(self.predictors) - 1}"] = predictor
        if not self.predictors:
            raise CheckpointError("stage 2 needs at least one stage-1 predictor checkpoint")

    def loss(self, batch: dict, iteration: int) -> StepOutput:
        raw = batch["raw"]
        spatial = tuple(raw.shape[2:])
        valid = self.valid(spatial)
        choice = int(torch.randint(len(self.predictors), ()))
        channels = torch.randperm(len(self.offsets))[: self.config.stage2.sampled_channels].tolist()
        with torch.no_grad():
            affs = torch.relu(implicit_affinities(self.predictors[choice](raw), self.offsets))[:, channels]
            entropy = binary_entropy(affs)
        batch_size = raw.shape[0]
        k = len(channels)
        inputs = torch.stack([raw.expand(batch_size, k, *spatial), entropy, affs], dim=2)
        errors = self.net(inputs.reshape(batch_size * k, 3, *spatial)).float().reshape(batch_size, k, *spatial)
        mask = batch["label_mask"][:, channels] * valid[channels].unsqueeze(0)
        stage2 = self.config.stage2
        loss, stats = confidence_loss(
            errors, affs, batch["target"][:, channels], mask, stage2.binarize_threshold, stage2.error_balance
        )
        scalars = {
            "loss/confidence": float(loss.detach()),
            "loss/total": float(loss.detach()),
            "confidence/predictor": float(choice),
            "confidence/error_fraction": stats["error_fraction"],
            "confidence/wrong_weight": stats["wrong_weight"],
        }
        wrong = ((affs[0, 0] > self.config.stage2.binarize_threshold).float() - batch["target"][0, channels[0]]).abs()
        images = {"raw": raw[0, 0], "affinity": affs[0, 0], "wrong": wrong * mask[0, 0], "error_prob": errors[0, 0]}
        return StepOutput(loss, scalars, {name: _slice_image(value) for name, value in images.items()})

    def predictor(self, use_ema: bool, output: str):
        return None
