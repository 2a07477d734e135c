"""CRAC networks: builders, the paired model used at inference, and loading trained checkpoints.

* :func:`build_affinity_net` -- explicit affinities, 12 channels + sigmoid (``UNet_PNI``).
* :func:`build_embedding_net` -- ``emd``-dimensional embeddings (``UNet_PNI_embedding``); implicit affinities follow
  from :func:`~affcons.nets.embedding.implicit_affinities`.
* :func:`build_confidence_net` -- CPSN: 3 inputs (raw, entropy, affinity), transposeS + cat, 1 channel + sigmoid.
* :class:`CRACNetworks` -- both main nets and the offsets; :meth:`CRACNetworks.affinities` gives the implicit,
  explicit and mean maps of a raw crop.
* :func:`load_model` -- ``(CRACNetworks, config)`` from a training checkpoint (live or EMA weights), and
  :func:`predict_affinities` -- the implicit / explicit / mean maps of a float32 raw crop without gradients.
"""

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from affcons.devices import select_device  # noqa: F401 (its historical home; the device rules are in affcons.devices)
from affcons.errors import CheckpointError, VolumeError
from affcons.nets.embedding import implicit_affinities, offset_validity
from affcons.nets.unet import DropoutPerturbation, UNetPNI, fold_batchnorm

__all__ = [
    "CRACNetworks",
    "DropoutPerturbation",
    "UNetPNI",
    "build_affinity_net",
    "build_confidence_net",
    "build_embedding_net",
    "fold_batchnorm",
    "fill_short_range_borders",
    "implicit_affinities",
    "load_model",
    "offset_validity",
    "predict_affinities",
]

OUTPUTS = ("implicit", "explicit", "mean")


def build_affinity_net(model_config) -> UNetPNI:
    """Explicit affinity net from a :class:`~affcons.train.config.ModelConfig`."""
    return UNetPNI(
        in_channels=1,
        out_channels=len(model_config.offsets),
        filters=model_config.filters,
        upsample="bilinear",
        merge="add",
        activation="sigmoid",
        bn_momentum=model_config.bn_momentum,
    )


def build_embedding_net(model_config, dropout: float | None = None) -> UNetPNI:
    """Embedding net (no output activation); ``dropout`` adds the (inactive) perturbation modules."""
    return UNetPNI(
        in_channels=1,
        out_channels=model_config.embedding_channels,
        filters=model_config.filters,
        upsample="bilinear",
        merge="add",
        activation=None,
        bn_momentum=model_config.bn_momentum,
        dropout=dropout,
    )


def build_confidence_net(confidence_config) -> UNetPNI:
    """CPSN from a :class:`~affcons.train.config.ConfidenceModelConfig`: inputs (raw, entropy, affinity)."""
    return UNetPNI(
        in_channels=3,
        out_channels=1,
        filters=confidence_config.filters,
        upsample="transposeS",
        merge="cat",
        activation="sigmoid",
        bn_momentum=confidence_config.bn_momentum,
    )


def fill_short_range_borders(affs: torch.Tensor) -> torch.Tensor:
    """Copy index 1 into the invalid first slice/row/column of the three nearest-neighbour channels (inference only,
    as ``inference_embs.py`` does); ``affs`` is (B, C, D, H, W) with C >= 3. Returns a new tensor."""
    out = affs.clone()
    if out.shape[2] > 1:
        out[:, 0, 0] = out[:, 0, 1]
    if out.shape[3] > 1:
        out[:, 1, :, 0] = out[:, 1, :, 1]
    if out.shape[4] > 1:
        out[:, 2, :, :, 0] = out[:, 2, :, :, 1]
    return out


class CRACNetworks(nn.Module):
    """The embedding net and the explicit affinity net of a CRAC run, with their offsets."""

    def __init__(
        self,
        embedding_net: UNetPNI,
        affinity_net: UNetPNI,
        offsets: Sequence[Sequence[int]],
        available: Sequence[str] = OUTPUTS,
    ):
        super().__init__()
        self.embedding_net = embedding_net
        self.affinity_net = affinity_net
        self.offsets = [tuple(int(v) for v in o) for o in offsets]
        #: the outputs backed by trained weights (a supervised-baseline checkpoint has only ``explicit``)
        self.available = tuple(available)

    @classmethod
    def from_config(cls, model_config) -> "CRACNetworks":
        """Fresh, initialised networks for a :class:`~affcons.train.config.ModelConfig`."""
        return cls(build_embedding_net(model_config), build_affinity_net(model_config), model_config.offsets)

    def forward(self, raw: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.affinities(raw)

    def folded(self) -> "CRACNetworks":
        """Inference copies of both (eval-mode) nets with their BatchNorms folded away (:func:`fold_batchnorm`)."""
        return CRACNetworks(
            fold_batchnorm(self.embedding_net), fold_batchnorm(self.affinity_net), self.offsets, self.available
        )

    def affinities(
        self, raw: torch.Tensor, outputs: Sequence[str] = OUTPUTS, fill_borders: bool = True
    ) -> dict[str, torch.Tensor]:
        """Affinity maps of a float32 raw crop (B, 1, D, H, W) or (D, H, W), values in [0, 1] (raw / 255).

        Returns a dict with the requested ``outputs``, each (B, C, D, H, W) in [0, 1]:
        ``implicit`` = relu(cosine similarities) (the primary output of CRAC), ``explicit`` = the sigmoid map,
        ``mean`` = their average. With ``fill_borders`` the invalid first slice/row/column of the nearest-neighbour
        channels of the implicit map is filled from its neighbour; long-range borders stay 0. Gradients are not
        disabled here: wrap in ``torch.no_grad()`` and call ``eval()`` for inference.
        """
        unknown = set(outputs) - set(OUTPUTS)
        if unknown:
            raise VolumeError(f"unknown affinity outputs {sorted(unknown)}; choose from {OUTPUTS}")
        untrained = set(outputs) - set(self.available)
        if untrained:
            raise CheckpointError(f"outputs {sorted(untrained)} are not trained in this model (has {self.available})")
        if raw.ndim == 3:
            raw = raw[None, None]
        if raw.ndim != 5 or raw.shape[1] != 1:
            raise VolumeError(f"raw must be (D, H, W) or (B, 1, D, H, W), got shape {tuple(raw.shape)}")
        result = {}
        if "implicit" in outputs or "mean" in outputs:
            implicit = torch.relu(implicit_affinities(self.embedding_net(raw), self.offsets))
            result["implicit"] = fill_short_range_borders(implicit) if fill_borders else implicit
        if "explicit" in outputs or "mean" in outputs:
            result["explicit"] = self.affinity_net(raw).float()
        if "mean" in outputs:
            result["mean"] = 0.5 * (result["implicit"] + result["explicit"])
        return {name: result[name] for name in outputs}


@torch.no_grad()
def predict_affinities(
    networks: CRACNetworks, raw: torch.Tensor, outputs: Sequence[str] = OUTPUTS, fill_borders: bool = True
) -> dict[str, torch.Tensor]:
    """Inference helper: ``networks.affinities`` without gradients, on the networks' device.

    ``raw`` is float32 (D, H, W) or (B, 1, D, H, W), raw / 255, with H and W multiples of 16. The networks should be
    in eval mode (:func:`load_model` returns them so). Returns ``{output: (B, C, D, H, W) float32 in [0, 1]}``.
    """
    device = next(networks.parameters()).device
    return networks.affinities(raw.to(device=device, dtype=torch.float32), outputs=outputs, fill_borders=fill_borders)


def load_model(
    checkpoint_path: str | Path, use_ema: bool = False, map_location: str | torch.device = "cpu"
) -> tuple[CRACNetworks, object]:
    """Load a CRAC training checkpoint (``affcons train``) as ``(CRACNetworks in eval mode, CRACConfig)``.

    ``use_ema`` selects the EMA copies (EMA runs only). A supervised-baseline checkpoint gives networks whose only
    output is ``explicit`` (see :attr:`CRACNetworks.available`). Pre-training checkpoints are refused. Raises
    :class:`~affcons.errors.CheckpointError` when the file is missing, not an affcons checkpoint, or its weights do not
    match the config it records.
    """
    from affcons.train.checkpoint import read_checkpoint  # late import: the checkpoint module imports the configs

    state, config = read_checkpoint(checkpoint_path, map_location=map_location)
    if state.get("config_kind") != "crac":
        raise CheckpointError(f"{checkpoint_path}: a {state.get('stage')!r} checkpoint, not a CRAC training checkpoint")
    models = state.get("ema") if use_ema else state.get("models")
    if use_ema and not models:
        raise CheckpointError(
            f"{checkpoint_path}: no EMA weights (not an EMA run); use its regular weights (leave out --use-ema / "
            "use_ema)"
        )
    names = ("affinity",) if config.variant == "supervised" else ("embedding", "affinity")
    if not models or any(name not in models for name in names):
        raise CheckpointError(f"{checkpoint_path}: holds {sorted(models or {})}, expected the nets {list(names)}")
    networks = CRACNetworks.from_config(config.model)
    if config.variant == "supervised":
        networks.available = ("explicit",)
    for name in names:
        module = networks.embedding_net if name == "embedding" else networks.affinity_net
        try:
            module.load_state_dict(models[name])
        except RuntimeError as error:
            raise CheckpointError(
                f"{checkpoint_path}: {name} weights do not match the recorded config: {error}"
            ) from None
    networks.eval()
    return networks, config
