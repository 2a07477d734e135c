"""Implicit affinities: cosine similarities of L2-normalised embeddings at a list of offsets (method.md section 3).

For an offset ``o`` the implicit affinity of voxel ``p`` is ``<e(p), e(p + o)>`` with ``e`` the embedding normalised
along the channel axis. It is defined only where ``p + o`` lies inside the crop; elsewhere it is 0 and the validity
mask is False. Callers must mask those borders everywhere (losses, entropy percentiles, pseudo-labels): method.md
section 8, item 4. The computation is one slice product per offset, with no loop over voxels.
"""

from collections.abc import Sequence

import torch
from torch.nn import functional as F

from affcons.affinities import shifted_pair_slices
from affcons.errors import VolumeError


def offset_validity(shape: Sequence[int], offsets: Sequence[Sequence[int]], device=None) -> torch.Tensor:
    """Bool tensor ``(len(offsets), *shape)``: True where the partner voxel ``p + o`` lies inside ``shape``."""
    valid = torch.zeros((len(offsets), *shape), dtype=torch.bool, device=device)
    for channel, offset in enumerate(offsets):
        at_p, _ = shifted_pair_slices(tuple(shape), tuple(offset))
        valid[(channel, *at_p)] = True
    return valid


def implicit_affinities(embedding: torch.Tensor, offsets: Sequence[Sequence[int]], eps: float = 1e-12) -> torch.Tensor:
    """Cosine similarities of ``embedding`` (B, E, D, H, W) at each offset: ``(B, len(offsets), D, H, W)`` in [-1, 1].

    Entries whose partner falls outside the crop are 0 (see :func:`offset_validity`). The result is differentiable.
    """
    if embedding.ndim != 5:
        raise VolumeError(f"embedding must be (B, E, D, H, W), got shape {tuple(embedding.shape)}")
    # contiguous: the slice products below backpropagate by copying into a tensor of this layout, which is ~20x
    # slower into a channels-last one (measured on CPU)
    normalised = F.normalize(embedding.float(), p=2.0, dim=1, eps=eps).contiguous()
    spatial = tuple(normalised.shape[2:])
    channels = []
    for offset in offsets:
        at_p, at_partner = shifted_pair_slices(spatial, tuple(offset))
        product = normalised[(slice(None), slice(None), *at_p)] * normalised[(slice(None), slice(None), *at_partner)]
        similarity = product.sum(dim=1)
        # zero-pad back to the full crop: F.pad takes (x_before, x_after, y_before, y_after, z_before, z_after)
        pad = []
        for axis in (2, 1, 0):
            start, stop = at_p[axis].start, at_p[axis].stop
            if stop <= start:  # offset longer than the crop: nothing valid on this channel
                similarity = normalised.new_zeros((normalised.shape[0], *spatial))
                pad = [0] * 6
                break
            pad += [start, spatial[axis] - stop]
        channels.append(F.pad(similarity, pad))
    return torch.stack(channels, dim=1)
