"""CRAC losses (method.md section 4) with the section 8 fixes.

All maps are ``(B, C, D, H, W)``. Weights are explicit products, never updated in place (no x100 aliasing):

* ``W`` -- class-balance weights (:func:`affcons.train.sparse.class_balance_weights`, computed inside M_lab),
* ``s_c`` -- channel weights, ``short_range_weight`` (10) for the three nearest-neighbour channels, 1 otherwise,
* ``M`` -- a 0/1 region: M_lab for the supervised terms, ``(1 - M_lab) * M_filter`` for the pseudo terms; it always
  includes the offset validity mask, so invalid borders never contribute.

:func:`weighted_mse` is the reference ``WeightedMSE`` evaluated per channel on the channel's valid region:
``sum(W * (x - y)^2) / (B * N_c)`` with ``N_c`` the number of valid voxels of channel c, summed over channels.
"""

import math

import torch

from affcons.errors import ConfigError


def channel_weights(num_channels: int, short_range_weight: float = 10.0, short_range: int = 3) -> torch.Tensor:
    """``s_c``: ``short_range_weight`` for the first ``short_range`` channels, 1 for the others (float32, (C,))."""
    weights = torch.ones(num_channels, dtype=torch.float32)
    weights[:short_range] = short_range_weight
    return weights


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``sum_c sum_{b,p} weight * (pred - target)^2 / (B * N_c)``, where ``N_c = valid[c].sum()``.

    Args:
        pred, target, weight: (B, C, D, H, W); ``weight`` must already be zero outside the region to supervise.
        valid: (C, D, H, W) bool, the offset validity of each channel (only its voxel count is used).
    """
    if pred.shape != target.shape or pred.shape != weight.shape:
        raise ConfigError(
            f"weighted_mse: shapes differ: pred {tuple(pred.shape)}, target {tuple(target.shape)}, "
            f"weight {tuple(weight.shape)}"
        )
    per_channel = (weight * (pred.float() - target.float()) ** 2).sum(dim=(0, 2, 3, 4))
    counts = valid.reshape(valid.shape[0], -1).sum(dim=1).clamp(min=1).to(per_channel.dtype)
    return (per_channel / (pred.shape[0] * counts)).sum()


def supervised_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    balance: torch.Tensor,
    label_mask: torch.Tensor,
    valid: torch.Tensor,
    channel_weight: torch.Tensor,
) -> torch.Tensor:
    """``sum_c s_c * WMSE(pred[c], target[c], W[c] * M_lab[c])`` (L_sup_imp or L_sup_exp, before ``emb_weight``).

    ``label_mask`` (B, C, ...) must be zero on invalid pairs; ``channel_weight`` is ``s`` of shape (C,).
    """
    weight = balance * label_mask * channel_weight.view(1, -1, 1, 1, 1).to(balance)
    return weighted_mse(pred, target, weight, valid)


def pseudo_loss(
    pred: torch.Tensor,
    pseudo_target: torch.Tensor,
    balance: torch.Tensor,
    filter_mask: torch.Tensor,
    valid: torch.Tensor,
    channel_weight: torch.Tensor,
) -> torch.Tensor:
    """``sum_c s_c * WMSE(pred[c], pseudo[c], W[c] * filter[c])`` (L_pse_imp or L_pse_exp, before ``pseudo_weight``).

    ``filter_mask`` comes from :func:`affcons.pseudo.pseudo_labels` and already excludes labelled and invalid pairs.
    """
    weight = balance * filter_mask * channel_weight.view(1, -1, 1, 1, 1).to(balance)
    return weighted_mse(pred, pseudo_target, weight, valid)


def confidence_loss(
    error_prob: torch.Tensor,
    affinity: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor,
    threshold: float = 0.5,
    balance: str = "all",
) -> tuple[torch.Tensor, dict[str, float]]:
    """CPSN loss: weighted BCE between the predicted error probability and ``|bin(affinity) - target|`` inside ``mask``.

    ``balance="all"`` (the reference): wrong voxels get weight ``#correct / #wrong + 1``, correct ones 1 (no division
    by zero: without wrong voxels every weight is 1). ``balance="per_side"``: the pairs predicted above and below
    ``threshold`` are balanced separately, each of the four (side, wrong/correct) cells present getting an equal share
    of the total weight, so which side an affinity lies on is no evidence of an error: the net must find errors from
    the image and the entropy, not learn the error kind (missed or false boundaries) of its training predictors.
    The BCE is averaged over the masked voxels. All tensors have the same shape; ``mask`` is 0/1 (M_lab and offset
    validity of the sampled channels).

    Returns the loss and diagnostics (``error_fraction`` inside the mask, ``wrong_weight``: the mean weight of a
    wrong voxel).
    """
    high = (affinity > threshold).float()
    wrong = (high - target).abs() * mask
    n_mask = mask.sum()
    n_wrong = wrong.sum()
    if balance == "all":
        n_correct = n_mask - n_wrong
        wrong_weight = n_correct / n_wrong + 1.0 if float(n_wrong) > 0 else torch.ones((), device=mask.device)
        weight = mask * torch.where(wrong > 0, wrong_weight, torch.ones_like(wrong))
    elif balance == "per_side":
        cells = [mask * side * kind for side in (high, 1.0 - high) for kind in (wrong, 1.0 - wrong)]
        counts = [cell.sum() for cell in cells]
        present = max(1, sum(int(float(count) > 0) for count in counts))  # an empty mask has no weight at all
        weight = sum(cell * (n_mask / (present * count.clamp(min=1))) for cell, count in zip(cells, counts))
        wrong_weight = (weight * wrong).sum() / n_wrong if float(n_wrong) > 0 else torch.ones((), device=mask.device)
    else:
        raise ValueError(f"balance must be 'all' or 'per_side', not {balance!r}")
    # written out instead of F.binary_cross_entropy, which refuses to run inside a CUDA autocast region
    prob = error_prob.float().clamp(1e-7, 1 - 1e-7)
    bce = -(weight * (wrong * torch.log(prob) + (1.0 - wrong) * torch.log1p(-prob))).sum()
    loss = bce / n_mask.clamp(min=1)
    return loss, {"error_fraction": float(n_wrong / n_mask.clamp(min=1)), "wrong_weight": float(wrong_weight)}


def branch_losses(terms: dict[str, torch.Tensor], emb_weight: float, pseudo_weight: float) -> dict[str, torch.Tensor]:
    """The loss split by network: ``embedding = emb_weight * sup_imp + pseudo_weight * pse_imp`` and ``affinity =
    emb_weight * sup_exp + pseudo_weight * pse_exp`` (absent terms count 0; a branch without terms is left out).

    With detached pseudo-labels each branch depends on one network only, so the branches can be backpropagated
    separately (in parallel) with the same gradients as their sum.
    """
    members = {"embedding": ("sup_imp", "pse_imp"), "affinity": ("sup_exp", "pse_exp")}
    branches = {}
    for branch, (supervised, pseudo) in members.items():
        if supervised not in terms and pseudo not in terms:
            continue
        zero = next(iter(terms.values())).new_zeros(())
        branches[branch] = emb_weight * terms.get(supervised, zero) + pseudo_weight * terms.get(pseudo, zero)
    return branches


def rampup_weight(iteration: int, rampup_iterations: float) -> float:
    """``exp(-5 (1 - t / R)^2)`` for ``t < R``, else 1 (Laine & Aila 2017; the mean-teacher ramp-up); ``R <= 0``
    means no ramp-up (1 from the first iteration)."""
    if rampup_iterations <= 0 or iteration >= rampup_iterations:
        return 1.0
    return math.exp(-5.0 * (1.0 - max(iteration, 0) / rampup_iterations) ** 2)
