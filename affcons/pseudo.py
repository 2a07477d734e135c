"""Pseudo-labels of CRAC: entropy, the S1 adaptive percentile and the S2 confidence-net filter (method.md section 4).

The contract (style item 14): :class:`PseudoLabeler` returns ``(pseudo_labels, filter_mask)``. ``pseudo_labels`` are
the teacher's probabilities in [0, 1] (relu of the cosine similarity for the implicit map, the sigmoid output for the
explicit map), detached unless asked otherwise; ``filter_mask`` is a float 0/1 tensor of the same shape that is 1
only on valid, unlabelled affinities that pass S1 (and S2 after the gate).

* Entropy: ``H(p) = -[p ln(p + 1e-10) + (1 - p) ln(1 - p + 1e-10)]``.
* S1: ``alpha_t = alpha0 (1 - t / T)^power``; the threshold ``gamma_t`` is the ``100 (1 - alpha_t)`` percentile of H
  (linear interpolation, like ``np.percentile``) over the valid unlabelled entries of the batch; keep ``H < gamma_t``.
  Above ``max_elements`` candidates a fixed-size random subset (seeded by the iteration) estimates the percentile.
* S2: a frozen confidence net predicts, for every channel of every sample (batched as B*C samples), the probability
  that the binarised affinity is wrong from ``(raw, H_c, p_c)``; keep ``E < threshold``. Active for ``t > gate``.
"""

import torch

from affcons.errors import ConfigError

ENTROPY_EPS = 1e-10


def binary_entropy(prob: torch.Tensor) -> torch.Tensor:
    """Per-element binary entropy in nats; ``prob`` in [0, 1]."""
    prob = prob.float()
    return -(prob * torch.log(prob + ENTROPY_EPS) + (1.0 - prob) * torch.log(1.0 - prob + ENTROPY_EPS))


def alpha_schedule(iteration: int, alpha0: float, total_iterations: int, power: float) -> float:
    """``alpha0 * (1 - t / T)^power``, clamped at 0 for ``t >= T``."""
    if total_iterations <= 0:
        raise ConfigError(f"the schedule length T must be positive, got {total_iterations}")
    return alpha0 * max(0.0, 1.0 - iteration / total_iterations) ** power


def percentile(values: torch.Tensor, q: float, max_elements: int = 16_000_000, seed: int = 0) -> torch.Tensor:
    """The ``q``-quantile (0..1) of a 1-D tensor with ``np.percentile``'s linear interpolation, via ``kthvalue``.

    When ``values`` holds more than ``max_elements`` entries, a random subset of ``max_elements`` entries drawn with a
    generator seeded by ``seed`` is used (deterministic, independent of the global RNG).
    """
    if values.ndim != 1 or values.numel() == 0:
        raise ConfigError(f"percentile needs a non-empty 1-D tensor, got shape {tuple(values.shape)}")
    if not 0.0 <= q <= 1.0:
        raise ConfigError(f"quantile must lie in [0, 1], got {q}")
    if values.numel() > max_elements:
        generator = torch.Generator(device="cpu").manual_seed(seed)
        index = torch.randperm(values.numel(), generator=generator)[:max_elements].to(values.device)
        values = values[index]
    n = values.numel()
    position = q * (n - 1)
    lower = int(position)
    upper = min(lower + 1, n - 1)
    low_value = torch.kthvalue(values, lower + 1).values
    if upper == lower:
        return low_value
    high_value = torch.kthvalue(values, upper + 1).values
    return low_value + (position - lower) * (high_value - low_value)


def s1_mask(
    entropy: torch.Tensor, candidates: torch.Tensor, alpha: float, max_elements: int = 16_000_000, seed: int = 0
) -> tuple[torch.Tensor, float]:
    """S1 keep-mask ``H < gamma`` (bool, like ``entropy``) and ``gamma``; the percentile uses ``candidates`` only.

    With ``alpha == 0`` or no candidates every entry is kept (gamma = +inf).
    """
    selected = entropy[candidates]
    if alpha <= 0.0 or selected.numel() == 0:
        return torch.ones_like(entropy, dtype=torch.bool), float("inf")
    gamma = percentile(selected.float(), 1.0 - alpha, max_elements=max_elements, seed=seed)
    return entropy < gamma, float(gamma)


@torch.no_grad()
def confidence_error_maps(
    confidence_net: torch.nn.Module, raw: torch.Tensor, prob: torch.Tensor, entropy: torch.Tensor, chunk: int = 8
) -> torch.Tensor:
    """Predicted error probabilities ``E`` (B, C, D, H, W) for every channel of ``prob``.

    Inputs per (sample, channel): ``[raw, H_c, p_c]`` in that order (the code's ``SCPNNetwork`` input), run as
    ``B * C`` samples in chunks of ``chunk``. The net is used as is (callers freeze it and set ``eval()``).
    """
    batch, channels = prob.shape[:2]
    spatial = prob.shape[2:]
    stacked = torch.stack(
        [raw.expand(batch, channels, *spatial).float(), entropy.float(), prob.float()], dim=2
    ).reshape(batch * channels, 3, *spatial)
    outputs = [confidence_net(stacked[start : start + chunk]).float() for start in range(0, stacked.shape[0], chunk)]
    return torch.cat(outputs, dim=0).reshape(batch, channels, *spatial)


class PseudoLabeler:
    """Pseudo-labels of one teacher map and the mask of affinities they may supervise (S1, then S2 after the gate).

    Args:
        alpha0, total_iterations, power: the S1 schedule ``alpha_t = alpha0 (1 - t / T)^power``.
        detach: stop gradients through the pseudo-labels (``False`` reproduces the reference code).
        confidence_net: the frozen CPSN for S2, or None for S1 only.
        gate: S2 acts for iterations ``t > gate``.
        s2_threshold: keep affinities whose predicted error probability is below this.
        chunk: (sample, channel) pairs per confidence-net pass.
        max_elements: percentile subsampling limit.

    Calling it returns ``(pseudo_labels, filter_mask)``; the statistics of the last call (``alpha``, ``gamma``,
    ``kept_fraction`` of the valid unlabelled entries, ``s2_active``) are in :attr:`last_stats`.
    """

    def __init__(
        self,
        alpha0: float = 0.005,
        total_iterations: int = 300000,
        power: float = 1.5,
        detach: bool = True,
        confidence_net: torch.nn.Module | None = None,
        gate: int = 5000,
        s2_threshold: float = 0.5,
        chunk: int = 8,
        max_elements: int = 16_000_000,
    ):
        if alpha0 < 0 or alpha0 >= 1:
            raise ConfigError(f"alpha0 must lie in [0, 1), got {alpha0}")
        self.alpha0, self.total_iterations, self.power = alpha0, total_iterations, power
        self.detach, self.confidence_net, self.gate = detach, confidence_net, gate
        self.s2_threshold, self.chunk, self.max_elements = s2_threshold, chunk, max_elements
        self.last_stats: dict[str, float] = {}

    def __call__(
        self,
        teacher: torch.Tensor,
        valid: torch.Tensor,
        label_mask: torch.Tensor,
        iteration: int,
        implicit: bool = False,
        raw: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Args:
        teacher: (B, C, D, H, W); cosine similarities if ``implicit`` (relu is applied), else probabilities.
        valid: (C, D, H, W) bool offset validity.
        label_mask: (B, C, D, H, W) 0/1 M_lab (labelled pairs are never pseudo-labelled).
        iteration: t, counted from 1.
        raw: (B, 1, D, H, W), needed by S2.
        """
        prob = torch.relu(teacher.float()) if implicit else teacher.float()
        if self.detach:
            prob = prob.detach()
        with torch.no_grad():
            entropy = binary_entropy(prob)
            candidates = valid.unsqueeze(0) & (label_mask <= 0)
            alpha = alpha_schedule(iteration, self.alpha0, self.total_iterations, self.power)
            keep, gamma = s1_mask(entropy, candidates, alpha, max_elements=self.max_elements, seed=iteration)
            keep &= candidates
            s2_active = self.confidence_net is not None and iteration > self.gate
            if s2_active:
                if raw is None:
                    raise ConfigError("S2 needs the raw crop to feed the confidence net")
                errors = confidence_error_maps(self.confidence_net, raw, prob.detach(), entropy, chunk=self.chunk)
                keep &= errors < self.s2_threshold
            self.last_stats = {
                "alpha": alpha,
                "gamma": gamma,
                "kept_fraction": float(keep.sum()) / max(int(candidates.sum()), 1),
                "s2_active": float(s2_active),
            }
        return prob, keep.float()
