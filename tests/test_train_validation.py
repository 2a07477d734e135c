"""Stitched prediction of a validation volume: batches of patches, Gaussian blending back to the input."""

import numpy as np
import torch

from affcons.train.validation import patch_starts, predict_volume

torch.set_num_threads(1)


def test_predict_volume_blends_batches_of_patches_back_to_the_input():
    raw = np.random.default_rng(0).random((7, 40, 56)).astype(np.float32)
    sizes = []

    def predict(batch: torch.Tensor) -> torch.Tensor:  # a per-voxel function: blending must give it back exactly
        sizes.append(batch.shape[0])
        return torch.cat([2 * batch, batch.square(), batch], dim=1)

    for batch_size in (1, 2, 3):
        sizes.clear()
        out = predict_volume(predict, raw, (4, 32, 32), (3, 16, 16), 2, torch.device("cpu"), batch_size=batch_size)
        assert out.shape == (2, 7, 40, 56)
        np.testing.assert_allclose(out[0], 2 * raw, rtol=1e-5)
        np.testing.assert_allclose(out[1], raw**2, rtol=1e-5)
        padded = (7, 40 + 2 * 8, 56 + 2 * 8)  # y/x padded by (patch - stride) / 2 on each side
        count = int(np.prod([len(patch_starts(s, p, t)) for s, p, t in zip(padded, (4, 32, 32), (3, 16, 16))]))
        assert len(sizes) == -(-count // batch_size)  # every patch once, batch_size at a time
        # on the CPU a lone patch travels as a pair (PyTorch's fast 3-D convolution needs a batch above 1)
        assert min(sizes) == 2 if batch_size <= 2 else min(sizes) >= 2
