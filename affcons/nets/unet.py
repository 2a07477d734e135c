"""The PNI / "superhuman" residual 3-D U-Net shared by the three CRAC networks (method.md section 3).

Anisotropic by design: pooling and upsampling act on y and x only (factor 2, four times), z is never resampled, so the
input depth is preserved and y/x must be multiples of 16. Every convolution is followed by BatchNorm (momentum 0.001
by default, as in the reference code) and ELU, except the bias-carrying input/output convolutions.

The network is built from three small blocks:

* :class:`ResBlockPNI` -- ``r = ELU(BN(conv133(x)))``, ``y = BN(conv333(ELU(BN(conv333(r)))))``,
  ``out = ELU(BN(r + y))``; convolutions without bias.
* :class:`Upsample` -- ``bilinear`` (trilinear x(1,2,2), align_corners=True, then a 1x1x1 conv) for the affinity and
  embedding nets, ``transposeS`` (depthwise ConvTranspose3d with kernel = stride = (1,2,2), then a 1x1x1 conv) for the
  confidence net.
* :class:`Merge` -- ``add``: ``BN+ELU(up + skip)`` then a residual block f->f; ``cat``: ``BN+ELU(cat(up, skip))``
  then a residual block 2f->f.

:class:`DropoutPerturbation` is the explicit replacement of the reference code's dropout that is created inside
``forward`` (method.md section 8, item 11): it is active exactly when its ``active`` flag is set, independently of
``train()``/``eval()``, so frozen perturbed predictors are perturbed on purpose and nothing else is.

:func:`fold_batchnorm` gives an inference copy of an eval-mode net with its BatchNorms folded into the convolutions.
"""

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from affcons.errors import ConfigError, VolumeError

DEFAULT_FILTERS: tuple[int, ...] = (28, 36, 48, 64, 80)
UPSAMPLE_MODES = ("bilinear", "transposeS")
MERGE_MODES = ("add", "cat")


class ResBlockPNI(nn.Module):
    """The PNI residual block: an in-plane (1,3,3) projection followed by two 3x3x3 convolutions and a skip."""

    def __init__(self, in_channels: int, out_channels: int, bn_momentum: float):
        super().__init__()
        self.project = nn.Conv3d(in_channels, out_channels, (1, 3, 3), padding=(0, 1, 1), bias=False)
        self.bn_project = nn.BatchNorm3d(out_channels, momentum=bn_momentum)
        self.conv1 = nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(out_channels, momentum=bn_momentum)
        self.conv2 = nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(out_channels, momentum=bn_momentum)
        self.bn_out = nn.BatchNorm3d(out_channels, momentum=bn_momentum)
        # (out_channels,) once fold_batchnorm has folded bn_out into conv2, else None (then not in the state dict)
        self.register_buffer("skip_scale", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = F.elu(self.bn_project(self.project(x)))
        y = self.bn2(self.conv2(F.elu(self.bn1(self.conv1(r)))))
        if self.skip_scale is not None:  # folded: bn_out(r + y) == skip_scale * r + y, y with bn_out's shift
            return F.elu(torch.addcmul(y, r, self.skip_scale.reshape(-1, 1, 1, 1)))
        return F.elu(self.bn_out(r + y))


class PointwiseConv3d(nn.Conv3d):
    """A 1x1x1 convolution (same parameters and state dict as ``nn.Conv3d(in, out, 1)``) computed as a matrix product
    over the channel axis of a channels-last view.

    On one CPU thread PyTorch routes 1x1 3-D convolutions to its native implementation, which returns contiguous
    tensors: in a channels-last network every such layer then forces layout copies downstream. ``F.linear`` on the
    ``(B, D, H, W, C)`` view keeps a channels-last input channels-last, without copies. Other inputs take the
    ordinary convolution.
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last_3d):
            return super().forward(x)
        weight = self.weight.reshape(self.out_channels, self.in_channels)
        return F.linear(x.permute(0, 2, 3, 4, 1), weight, self.bias).permute(0, 4, 1, 2, 3)


class Upsample(nn.Module):
    """x2 in y and x, then a 1x1x1 convolution (with bias) from ``in_channels`` to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, mode: str):
        super().__init__()
        if mode not in UPSAMPLE_MODES:
            raise ConfigError(f"upsample mode {mode!r} is not one of {UPSAMPLE_MODES}")
        self.mode = mode
        self.transposed = None
        if mode == "transposeS":
            self.transposed = nn.ConvTranspose3d(
                in_channels, in_channels, kernel_size=(1, 2, 2), stride=(1, 2, 2), groups=in_channels, bias=False
            )
        self.project = PointwiseConv3d(in_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.transposed is not None:
            x = self.transposed(x)
        else:
            x = F.interpolate(x, scale_factor=(1, 2, 2), mode="trilinear", align_corners=True)
        return self.project(x)


class Merge(nn.Module):
    """Merge the upsampled decoder features with the encoder skip, then a residual block."""

    def __init__(self, channels: int, mode: str, bn_momentum: float):
        super().__init__()
        if mode not in MERGE_MODES:
            raise ConfigError(f"merge mode {mode!r} is not one of {MERGE_MODES}")
        self.mode = mode
        merged = channels if mode == "add" else 2 * channels
        self.bn = nn.BatchNorm3d(merged, momentum=bn_momentum)
        self.block = ResBlockPNI(merged, channels, bn_momentum)
        # (channels,) each once fold_batchnorm has moved bn into the upsampling's projection and these, else None
        self.register_buffer("skip_scale", None)
        self.register_buffer("skip_shift", None)

    def forward(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.skip_scale is not None:  # folded: bn's scale and shift of the up channels are in up's projection
            scale, shift = self.skip_scale.reshape(-1, 1, 1, 1), self.skip_shift.reshape(-1, 1, 1, 1)
            if self.mode == "add":
                return self.block(F.elu(torch.addcmul(up, skip, scale)))
            return self.block(F.elu(torch.cat([up, torch.addcmul(shift, skip, scale)], dim=1)))
        merged = up + skip if self.mode == "add" else torch.cat([up, skip], dim=1)
        return self.block(F.elu(self.bn(merged)))


class DropoutPerturbation(nn.Module):
    """Random-rate dropout used to perturb predictors (stage 1 warm-up and the frozen nets of CPSN training).

    At each call a rate ``P ~ U(0, 1)`` is drawn and set to 0 when ``P > max_rate`` (so with probability
    ``1 - max_rate`` nothing happens, otherwise ``P ~ U(0, max_rate)``); then dropout with rate P is applied. It acts
    only while ``active`` is True, whatever ``train()``/``eval()`` says; it draws from the global torch RNG, which the
    trainer checkpoints, so a resumed run draws the same rates.
    """

    def __init__(self, max_rate: float):
        super().__init__()
        if not 0.0 <= max_rate < 1.0:
            raise ConfigError(f"dropout max_rate must lie in [0, 1), got {max_rate}")
        self.max_rate = max_rate
        self.active = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.active or self.max_rate == 0.0:
            return x
        rate = float(torch.rand(()))
        if rate > self.max_rate or rate == 0.0:
            return x
        return F.dropout(x, p=rate, training=True)

    def extra_repr(self) -> str:
        return f"max_rate={self.max_rate}, active={self.active}"


class UNetPNI(nn.Module):
    """Residual anisotropic U-Net: ``(B, in_channels, D, H, W) -> (B, out_channels, D, H, W)``.

    Args:
        in_channels: input channels (1 for EM, 3 for the confidence net).
        out_channels: output channels (12 affinities, 16 embedding dimensions, 1 error probability).
        filters: five widths, encoder levels 0-3 and the centre; the input convolution has ``filters[0]`` channels.
        upsample: ``"bilinear"`` or ``"transposeS"``.
        merge: ``"add"`` or ``"cat"``.
        activation: ``"sigmoid"`` or ``None`` (raw output, e.g. embeddings).
        bn_momentum: BatchNorm momentum (0.001 in the reference code).
        dropout: if set, a :class:`DropoutPerturbation` with this maximal rate after the last two decoder stages
            (inactive until ``set_perturbation(True)``).
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 12,
        filters: Sequence[int] = DEFAULT_FILTERS,
        upsample: str = "bilinear",
        merge: str = "add",
        activation: str | None = "sigmoid",
        bn_momentum: float = 0.001,
        dropout: float | None = None,
    ):
        super().__init__()
        filters = tuple(int(f) for f in filters)
        if len(filters) != 5 or min(filters) < 1:
            raise ConfigError(f"filters must be 5 positive widths (4 levels and the centre), got {list(filters)}")
        if activation not in ("sigmoid", None):
            raise ConfigError(f"activation must be 'sigmoid' or None, got {activation!r}")
        self.in_channels, self.out_channels, self.filters = in_channels, out_channels, filters
        self.activation = activation
        widths = (filters[0],) + filters  # input conv width, then encoder levels 0-3 and the centre
        self.embed_in = nn.Conv3d(in_channels, widths[0], (1, 5, 5), padding=(0, 2, 2), bias=True)
        self.encoder = nn.ModuleList(ResBlockPNI(widths[i], widths[i + 1], bn_momentum) for i in range(4))
        self.center = ResBlockPNI(widths[4], widths[5], bn_momentum)
        self.pool = nn.MaxPool3d((1, 2, 2))
        self.up = nn.ModuleList(Upsample(widths[5 - i], widths[4 - i], upsample) for i in range(4))
        self.merge = nn.ModuleList(Merge(widths[4 - i], merge, bn_momentum) for i in range(4))
        self.perturb = nn.ModuleList(
            DropoutPerturbation(dropout) if dropout is not None else nn.Identity() for _ in range(2)
        )
        self.embed_out = nn.Conv3d(widths[1], widths[1], (1, 5, 5), padding=(0, 2, 2), bias=True)
        self.out = PointwiseConv3d(widths[1], out_channels)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal convolution weights, zero biases, unit/zero BatchNorm affine parameters."""
        for module in self.modules():
            if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
                nn.init.kaiming_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm3d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def set_perturbation(self, active: bool) -> None:
        """Switch the dropout perturbation on or off (no-op without ``dropout``)."""
        for module in self.perturb:
            if isinstance(module, DropoutPerturbation):
                module.active = active

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise VolumeError(f"UNetPNI expects (B, {self.in_channels}, D, H, W), got {tuple(x.shape)}")
        if x.shape[-1] % 16 or x.shape[-2] % 16:
            raise VolumeError(f"UNetPNI needs y and x divisible by 16, got {tuple(x.shape[-3:])}")
        x = F.elu(self.embed_in(x))
        skips = []
        for block in self.encoder:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.center(x)
        for i in range(4):
            x = self.merge[i](self.up[i](x), skips[3 - i])
            if i >= 2:
                x = self.perturb[i - 2](x)
        x = self.out(F.elu(self.embed_out(x)))
        return torch.sigmoid(x) if self.activation == "sigmoid" else x


def _batchnorm_affine(bn: nn.BatchNorm3d) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel ``(scale, shift)`` of an eval-mode BatchNorm: ``bn(x) == scale * x + shift``."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return scale, bn.bias - bn.running_mean * scale


def _absorb(conv: nn.Conv3d, scale: torch.Tensor, shift: torch.Tensor) -> nn.Conv3d:
    """``conv`` followed by the per-channel map ``scale * x + shift``, as one convolution of the same class with a
    bias (the weight keeps its memory layout)."""
    folded = copy.deepcopy(conv)
    folded.weight.mul_(scale.reshape(-1, *[1] * (conv.weight.ndim - 1)))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(shift)
    folded.bias = nn.Parameter(bias * scale + shift, requires_grad=False)
    return folded


@torch.no_grad()
def fold_batchnorm(net: UNetPNI) -> UNetPNI:
    """An inference copy of an eval-mode ``net`` with its BatchNorms folded away.

    In each residual block ``bn_project``, ``bn1`` and ``bn2`` go into the convolution before them and ``bn_out``
    (which acts on the residual sum) into ``conv2`` and a per-channel scale of the skip; in each merge the BatchNorm
    of the merged channels goes into the upsampling's 1x1x1 projection (the up channels) and a scale and shift of
    the encoder skip. That removes one or two full-size elementwise passes per BatchNorm; outputs equal the net's up
    to rounding (within ~2e-5 for a sigmoid output). The copy has no gradients and must stay in eval mode; ``net``
    is unchanged. Used for the frozen confidence net of S2, whose cost is dominated by such passes
    (``benchmarks/crac_speed.py``), and for prediction (``benchmarks/predict.py``).
    """
    if net.training:
        raise ConfigError("fold_batchnorm needs an eval-mode net (BatchNorm running statistics)")
    folded = copy.deepcopy(net).requires_grad_(False)
    for block in folded.modules():
        if isinstance(block, ResBlockPNI) and block.skip_scale is None:
            block.project = _absorb(block.project, *_batchnorm_affine(block.bn_project))
            block.conv1 = _absorb(block.conv1, *_batchnorm_affine(block.bn1))
            out_scale, out_shift = _batchnorm_affine(block.bn_out)
            scale2, shift2 = _batchnorm_affine(block.bn2)
            block.conv2 = _absorb(block.conv2, scale2 * out_scale, shift2 * out_scale + out_shift)
            block.skip_scale = out_scale.clone()
            block.bn_project, block.bn1, block.bn2, block.bn_out = (nn.Identity() for _ in range(4))
    for upsample, merge in zip(folded.up, folded.merge):
        if merge.skip_scale is not None:
            continue
        scale, shift = _batchnorm_affine(merge.bn)
        up_channels = upsample.project.out_channels
        if merge.mode == "add":  # bn(up + skip) = (scale * up + shift) + scale * skip
            upsample.project = _absorb(upsample.project, scale, shift)
            merge.skip_scale, merge.skip_shift = scale.clone(), torch.zeros_like(shift)
        else:  # bn(cat(up, skip)) = cat(scale_u * up + shift_u, scale_s * skip + shift_s)
            upsample.project = _absorb(upsample.project, scale[:up_channels], shift[:up_channels])
            merge.skip_scale, merge.skip_shift = scale[up_channels:].clone(), shift[up_channels:].clone()
        merge.bn = nn.Identity()
    return folded
