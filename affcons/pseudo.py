"""Pseudo-labels of CRAC: entropy, the S1 adaptive percentile and the S2 confidence-net filter (method.md section 4).

The contract (style item 14): :class:`PseudoLabeler` returns ``(pseudo_labels, filter_mask)``. ``pseudo_labels`` are
the teacher's probabilities in [0, 1] (relu of the cosine similarity for the implicit map, the sigmoid output for the
explicit map), detached unless asked otherwise; ``filter_mask`` is a float 0/1 tensor of the same shape that is 1
only on valid, unlabelled affinities that pass S1 (and S2 after the gate).

* Entropy: ``H(p) = -[p ln(p + 1e-10) + (1 - p) ln(1 - p + 1e-10)]``.
* S1: ``alpha_t = alpha0 (1 - t / T)^power``; the threshold ``gamma_t`` is the ``100 (1 - alpha_t)`` percentile of H
  (linear interpolation, like ``np.percentile``) over the valid unlabelled entries of the batch; keep ``H < gamma_t``.
  Above ``max_elements`` candidates a fixed-size random sample (seeded by the iteration, drawn on the device)
  estimates the percentile.
* S2: a frozen confidence net predicts, for every channel of every sample (batched as B*C samples), the probability
  that the binarised affinity is wrong from ``(raw, H_c, p_c)``; keep ``E < threshold``. Active for ``t > gate``.
* :func:`filter_counts` measures the filters against true affinities (kept pairs and right pseudo-labels per channel
  group), for benchmarks on training sections whose dense labels are hidden from training.
"""

from dataclasses import dataclass

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


def percentile(
    values: torch.Tensor,
    q: float,
    max_elements: int = 16_000_000,
    seed: int = 0,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """The ``q``-quantile (0..1) of floating-point ``values[mask]`` with ``np.percentile``'s linear interpolation.

    ``values`` has any shape; ``mask`` (bool, same shape, None = every entry) selects the entries. The selection is
    never compacted: entries outside it are filled with -inf/+inf so that one ``topk`` over the smaller tail gives both
    interpolation neighbours (O(N log k), no ``nonzero``). Above ``max_elements`` selected entries, ``max_elements``
    of them are drawn with replacement by a generator seeded with ``seed`` on the tensor's device (deterministic,
    independent of the global RNG, no host-side permutation).
    """
    if not 0.0 <= q <= 1.0:
        raise ConfigError(f"quantile must lie in [0, 1], got {q}")
    flat = values.reshape(-1)
    selected = None if mask is None else mask.reshape(-1)
    count = flat.numel() if selected is None else int(selected.sum())
    if count == 0:
        raise ConfigError(f"percentile needs at least one value, got shape {tuple(values.shape)} with none selected")
    if count > max_elements:
        pool = flat if selected is None else flat[selected]
        generator = torch.Generator(device=flat.device).manual_seed(seed)
        index = torch.randint(count, (max_elements,), generator=generator, device=flat.device)
        flat, selected, count = pool[index], None, max_elements
    position = q * (count - 1)
    lower = int(position)
    upper = min(lower + 1, count - 1)
    if lower < count // 2:  # the ranks lie in the lower half: the upper + 1 smallest entries
        filled = flat if selected is None else torch.where(selected, flat, torch.inf)
        smallest = torch.topk(filled, upper + 1, largest=False, sorted=True).values
        low_value, high_value = smallest[lower], smallest[upper]
    else:  # the count - lower largest entries, in descending order: rank lower is the last one
        filled = flat if selected is None else torch.where(selected, flat, -torch.inf)
        largest = torch.topk(filled, count - lower, largest=True, sorted=True).values
        low_value, high_value = largest[-1], largest[-1 - (upper - lower)]
    return low_value + (position - lower) * (high_value - low_value)


def s1_mask(
    entropy: torch.Tensor, candidates: torch.Tensor, alpha: float, max_elements: int = 16_000_000, seed: int = 0
) -> tuple[torch.Tensor, float]:
    """S1 keep-mask ``H < gamma`` (bool, like ``entropy``) and ``gamma``; the percentile uses ``candidates`` only.

    With ``alpha == 0`` or no candidates every entry is kept (gamma = +inf).
    """
    if alpha <= 0.0 or not bool(candidates.any()):
        return torch.ones_like(entropy, dtype=torch.bool), float("inf")
    gamma = percentile(entropy, 1.0 - alpha, max_elements=max_elements, seed=seed, mask=candidates)
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


@dataclass
class FilterResult:
    """One teacher map's pseudo-labels and the masks of both strategies (all (B, C, D, H, W)).

    ``prob``: the pseudo-labels in [0, 1]; ``candidates``: valid, unlabelled pairs (bool); ``s1``: candidates that
    pass S1 (bool); ``errors``: the confidence net's error probabilities, or None where S2 was not evaluated;
    ``s2_active``: whether S2 filters the training mask at this iteration (``t > gate``); ``alpha``, ``gamma``: the
    S1 schedule value and entropy threshold.
    """

    prob: torch.Tensor
    candidates: torch.Tensor
    s1: torch.Tensor
    errors: torch.Tensor | None
    s2_active: bool
    s2_threshold: float
    alpha: float
    gamma: float

    def s2(self) -> torch.Tensor | None:
        """S1 and S2 together (bool), or None without error maps."""
        return None if self.errors is None else self.s1 & (self.errors < self.s2_threshold)

    def mask(self) -> torch.Tensor:
        """The training mask (bool): S1, and S2 when active."""
        return self.s2() if self.s2_active else self.s1


def channel_groups(offsets) -> dict[str, list[int]]:
    """Consecutive (z, y, x) triples of ``offsets`` (CRAC's 12 offsets form 4 distance groups), named by their
    distances, e.g. ``"1-1-1"`` for the nearest neighbours and ``"4-27-27"``; a remainder forms the last group."""
    groups = {}
    for start in range(0, len(offsets), 3):
        members = list(range(start, min(start + 3, len(offsets))))
        name = "-".join(str(max(abs(int(v)) for v in offsets[c])) for c in members)
        groups[name] = members
    return groups


@torch.no_grad()
def filter_counts(
    result: FilterResult, truth: torch.Tensor, defined: torch.Tensor, groups: dict[str, list[int]]
) -> dict[str, float]:
    """How many pseudo-labels each filter keeps and how many of those are right, per channel group.

    ``truth`` (B, C, D, H, W) holds the true affinities (0/1) and ``defined`` (bool, same shape) the pairs whose truth
    counts: here, pairs with at least one voxel inside a neurite. A pseudo-label is right when it lies on the same side
    of 0.5 as the truth. Returns counts keyed ``"{group}/{name}"``, with ``name`` in ``pairs`` (defined candidates),
    ``right`` (right among them, no filter), ``s1_kept``, ``s1_right`` and, when S2 was evaluated, ``s2_kept`` and
    ``s2_right`` (S1 and S2 together). Counts add up over iterations: kept fraction = kept / pairs, precision =
    right / kept.
    """
    right = (result.prob > 0.5) == (truth > 0.5)
    pairs = result.candidates & defined
    masks = [("pairs", "right", pairs), ("s1_kept", "s1_right", result.s1 & pairs)]
    both = result.s2()
    if both is not None:
        masks.append(("s2_kept", "s2_right", both & pairs))
    counts = {}
    for group, channels in groups.items():
        for kept_name, right_name, mask in masks:
            kept = mask[:, channels]
            counts[f"{group}/{kept_name}"] = float(kept.sum())
            counts[f"{group}/{right_name}"] = float((kept & right[:, channels]).sum())
    return counts


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

    Calling it returns ``(pseudo_labels, filter_mask)``; :meth:`filter` returns the whole :class:`FilterResult`. The
    statistics of the last call (``alpha``, ``gamma``, ``kept_fraction`` of the valid unlabelled entries,
    ``s2_active``) are in :attr:`last_stats`. One instance serves one teacher map (the two maps of CRAC are filtered in
    parallel threads, each with its own labeler).
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

    def filter(
        self,
        teacher: torch.Tensor,
        valid: torch.Tensor,
        label_mask: torch.Tensor,
        iteration: int,
        implicit: bool = False,
        raw: torch.Tensor | None = None,
        evaluate_s2: bool = False,
    ) -> FilterResult:
        """Args:
        teacher: (B, C, D, H, W); cosine similarities if ``implicit`` (relu is applied), else probabilities.
        valid: (C, D, H, W) bool offset validity.
        label_mask: (B, C, D, H, W) 0/1 M_lab (labelled pairs are never pseudo-labelled).
        iteration: t, counted from 1.
        raw: (B, 1, D, H, W), needed by S2.
        evaluate_s2: run the confidence net even before the gate (for measurements; the training mask ignores it).
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
            errors = None
            if self.confidence_net is not None and (s2_active or evaluate_s2):
                if raw is None:
                    raise ConfigError("S2 needs the raw crop to feed the confidence net")
                errors = confidence_error_maps(self.confidence_net, raw, prob.detach(), entropy, chunk=self.chunk)
            result = FilterResult(prob, candidates, keep, errors, s2_active, self.s2_threshold, alpha, gamma)
            self.last_stats = {
                "alpha": alpha,
                "gamma": gamma,
                "kept_fraction": float(result.mask().sum()) / max(int(candidates.sum()), 1),
                "s2_active": float(s2_active),
            }
        return result

    def __call__(
        self,
        teacher: torch.Tensor,
        valid: torch.Tensor,
        label_mask: torch.Tensor,
        iteration: int,
        implicit: bool = False,
        raw: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(pseudo_labels, filter_mask)`` (float 0/1) of :meth:`filter`."""
        result = self.filter(teacher, valid, label_mask, iteration, implicit=implicit, raw=raw)
        return result.prob, result.mask().float()
