"""Build, load and save SAM models in Meta's official checkpoint format.

The official format is a plain ``state_dict`` (parameter name -> tensor) saved with
``torch.save``. Loading uses ``weights_only=True``, so a file whose pickle would run code
is rejected instead of executed. The architecture is inferred from tensor shapes, which
lets the same loader read vit_b, vit_l, vit_h and the tiny random models that tests use.

Usage::

    loaded = load_sam(resolve_checkpoint("vit_b", cache_dir=cache), sam_type="vit_b")
    masks = SamAutomaticMaskGenerator(loaded.model).generate(image_rgb)
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import tempfile
import zipfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)

from ml.checkpoints import file_sha256
from ml.errors import CheckpointError, SettingsError

logger = logging.getLogger(__name__)

# Fixed parts of Meta's build_sam (segment-anything 1.0, build_sam.py). Every official
# checkpoint shares them, so they are not fields of SamArchitecture.
_PIXEL_MEAN = (123.675, 116.28, 103.53)
_PIXEL_STD = (58.395, 57.12, 57.375)
_MLP_RATIO = 4
_MASK_IN_CHANNELS = 16
_NUM_MULTIMASK_OUTPUTS = 3
_DECODER_DEPTH = 2
_DECODER_MLP_DIM = 2048
_DECODER_NUM_HEADS = 8
_IOU_HEAD_DEPTH = 3
_IOU_HEAD_HIDDEN_DIM = 256

_BLOCK_KEY = re.compile(r"^image_encoder\.blocks\.(\d+)\.")


IMAGE_ENCODERS = ("vit", "efficientnet_lite0")


@dataclass(frozen=True)
class SamArchitecture:
    """Hyperparameters that differ between SAM variants.

    Attributes:
        encoder_embed_dim: ViT token width.
        encoder_depth: Number of ViT blocks.
        encoder_num_heads: Attention heads per ViT block.
        encoder_global_attn_indexes: Blocks with global attention. The others use windows.
        window_size: Side of the attention window in tokens.
        prompt_embed_dim: Width of image embeddings, prompt embeddings and the decoder.
        image_size: Side of the square model input in pixels (images are resized to it).
        patch_size: Side of one ViT patch in pixels.
        image_encoder: "vit" for SAM's ViT (every official model), or
            "efficientnet_lite0" for the ImageNet EfficientNet-Lite0 of
            ``ml.efficientnet_lite``, a small CPU option whose ViT fields are unused.
    """

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    window_size: int = 14
    prompt_embed_dim: int = 256
    image_size: int = 1024
    patch_size: int = 16
    image_encoder: str = "vit"

    def __post_init__(self) -> None:
        if self.image_encoder not in IMAGE_ENCODERS:
            raise SettingsError(
                f"image_encoder is {self.image_encoder!r}, expected one of {list(IMAGE_ENCODERS)}."
            )
        object.__setattr__(
            self, "encoder_global_attn_indexes", tuple(self.encoder_global_attn_indexes)
        )
        if self.encoder_embed_dim % self.encoder_num_heads:
            raise SettingsError(
                f"encoder_embed_dim {self.encoder_embed_dim} is not divisible by "
                f"encoder_num_heads {self.encoder_num_heads}. Choose a divisor."
            )
        if self.image_size % self.patch_size:
            raise SettingsError(
                f"image_size {self.image_size} is not a multiple of patch_size "
                f"{self.patch_size}. Choose a multiple."
            )
        if any(not 0 <= i < self.encoder_depth for i in self.encoder_global_attn_indexes):
            raise SettingsError(
                f"encoder_global_attn_indexes {self.encoder_global_attn_indexes} must lie in "
                f"[0, {self.encoder_depth - 1}] for encoder_depth {self.encoder_depth}."
            )

    @property
    def embedding_grid_size(self) -> int:
        """Side of the image embedding in tokens (64 for the official models)."""
        return self.image_size // self.patch_size


VIT_B = SamArchitecture(768, 12, 12, (2, 5, 8, 11))
VIT_L = SamArchitecture(1024, 24, 16, (5, 11, 17, 23))
VIT_H = SamArchitecture(1280, 32, 16, (7, 15, 23, 31))
ARCHITECTURES: dict[str, SamArchitecture] = {"vit_b": VIT_B, "vit_l": VIT_L, "vit_h": VIT_H}

# About 0.44 M parameters (1.8 MB on disk). SamAutomaticMaskGenerator with 4 x 4 prompts
# takes about 1 s per 1024 px tile on a 2-core CPU (measured with tests/ml/test_proposals.py).
# Random weights show plumbing only, never segmentation quality.
TINY_TEST = SamArchitecture(
    encoder_embed_dim=32,
    encoder_depth=2,
    encoder_num_heads=2,
    encoder_global_attn_indexes=(1,),
    window_size=4,
    prompt_embed_dim=32,
    image_size=256,
    patch_size=16,
)


@dataclass(frozen=True)
class LoadedSam:
    """A SAM model ready for inference, with where it came from.

    Attributes:
        model: The model in eval mode with gradients off, on the requested device.
        architecture: Architecture inferred from the checkpoint's tensor shapes.
        sam_type: "vit_b", "vit_l" or "vit_h" when the architecture matches one, else None.
        path: Checkpoint file that was loaded.
        sha256: Hex SHA-256 of the checkpoint file, or None when not computed.
    """

    model: Sam
    architecture: SamArchitecture
    sam_type: str | None
    path: Path
    sha256: str | None


def build_sam(architecture: SamArchitecture) -> Sam:
    """Build a randomly initialised SAM from Meta's modules, in eval mode.

    The layout equals segment-anything 1.0's ``build_sam_vit_*`` for the official
    architectures, so official checkpoints load into it with matching key names.
    """
    grid = architecture.embedding_grid_size
    model = Sam(
        image_encoder=ImageEncoderViT(
            depth=architecture.encoder_depth,
            embed_dim=architecture.encoder_embed_dim,
            img_size=architecture.image_size,
            mlp_ratio=_MLP_RATIO,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=architecture.encoder_num_heads,
            patch_size=architecture.patch_size,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=architecture.encoder_global_attn_indexes,
            window_size=architecture.window_size,
            out_chans=architecture.prompt_embed_dim,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=architecture.prompt_embed_dim,
            image_embedding_size=(grid, grid),
            input_image_size=(architecture.image_size, architecture.image_size),
            mask_in_chans=_MASK_IN_CHANNELS,
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=_NUM_MULTIMASK_OUTPUTS,
            transformer=TwoWayTransformer(
                depth=_DECODER_DEPTH,
                embedding_dim=architecture.prompt_embed_dim,
                mlp_dim=_DECODER_MLP_DIM,
                num_heads=_DECODER_NUM_HEADS,
            ),
            transformer_dim=architecture.prompt_embed_dim,
            iou_head_depth=_IOU_HEAD_DEPTH,
            iou_head_hidden_dim=_IOU_HEAD_HIDDEN_DIM,
        ),
        pixel_mean=list(_PIXEL_MEAN),
        pixel_std=list(_PIXEL_STD),
    )
    model.eval()
    return model


def infer_architecture(state_dict: dict[str, torch.Tensor]) -> SamArchitecture:
    """Infer a SamArchitecture from the tensor shapes of a SAM state dict.

    Reads the embed and patch size from ``patch_embed``, the input size from ``pos_embed``,
    the depth from the block count and the head count from ``rel_pos_h``'s width (the
    head dim). A block is global when its ``rel_pos_h`` has ``2 * grid - 1`` rows and
    windowed when it has ``2 * window_size - 1``.

    Raises:
        CheckpointError: A tensor that the inference needs is missing or has a shape
            that no SAM image encoder produces.
    """
    try:
        patch_weight = state_dict["image_encoder.patch_embed.proj.weight"]
        pos_embed = state_dict["image_encoder.pos_embed"]
        neck_weight = state_dict["image_encoder.neck.0.weight"]
    except KeyError as exc:
        raise CheckpointError(
            f"State dict has no tensor {exc.args[0]!r}, so it is not a SAM checkpoint."
        ) from None

    embed_dim, _, patch_size, _ = patch_weight.shape
    grid = pos_embed.shape[1]
    block_indexes = sorted(
        {int(match.group(1)) for key in state_dict if (match := _BLOCK_KEY.match(key))}
    )
    if not block_indexes or block_indexes != list(range(len(block_indexes))):
        raise CheckpointError(
            f"Image encoder blocks {block_indexes} are not numbered 0..N-1, so the "
            "checkpoint is not a SAM image encoder."
        )

    global_indexes: list[int] = []
    window_sizes: set[int] = set()
    head_dim = None
    for index in block_indexes:
        rel_pos = state_dict.get(f"image_encoder.blocks.{index}.attn.rel_pos_h")
        if rel_pos is None:
            raise CheckpointError(
                f"Image encoder block {index} has no rel_pos_h tensor. Only SAM encoders with "
                "relative position embeddings are supported."
            )
        head_dim = rel_pos.shape[1]
        # NOTE: a window as large as the grid would look global, but no SAM variant uses one.
        if rel_pos.shape[0] == 2 * grid - 1:
            global_indexes.append(index)
        else:
            window_sizes.add((rel_pos.shape[0] + 1) // 2)
    if len(window_sizes) > 1:
        raise CheckpointError(
            f"Windowed blocks use different window sizes {sorted(window_sizes)}, but SAM uses one."
        )

    return SamArchitecture(
        encoder_embed_dim=int(embed_dim),
        encoder_depth=len(block_indexes),
        encoder_num_heads=int(embed_dim // head_dim),
        encoder_global_attn_indexes=tuple(global_indexes),
        window_size=window_sizes.pop() if window_sizes else SamArchitecture.window_size,
        prompt_embed_dim=int(neck_weight.shape[0]),
        image_size=int(grid * patch_size),
        patch_size=int(patch_size),
    )


def sam_type_for(architecture: SamArchitecture) -> str | None:
    """Return "vit_b", "vit_l" or "vit_h" for an official architecture, else None."""
    for name, official in ARCHITECTURES.items():
        if architecture == official:
            return name
    return None


def load_sam(
    path: str | os.PathLike[str],
    sam_type: str | None = None,
    device: str | torch.device = "cpu",
    *,
    compute_sha256: bool = True,
) -> LoadedSam:
    """Load a SAM checkpoint in the official format and return the model ready for inference.

    Args:
        path: ``.pth`` file with a plain state dict, as Meta publishes them.
        sam_type: Expected "vit_b", "vit_l" or "vit_h", or None to accept any SAM layout.
        device: Torch device for the model.
        compute_sha256: Hash the file for provenance (one extra read of the file,
            about 1 s per GB).

    Raises:
        CheckpointError: The file is missing, truncated, not a plain state dict, has a
            different architecture than ``sam_type``, or has missing or unexpected keys.
        SettingsError: ``sam_type`` is not an official SAM type.
    """
    checkpoint = Path(path)
    if sam_type is not None and sam_type not in ARCHITECTURES:
        allowed = ", ".join(sorted(ARCHITECTURES))
        raise SettingsError(f"sam_type {sam_type!r} is not one of {allowed} or None.")
    if not checkpoint.is_file():
        raise CheckpointError(f"SAM checkpoint {checkpoint} was not found. Check the path.")

    state_dict = _read_state_dict(checkpoint)
    architecture = infer_architecture(state_dict)
    inferred_type = sam_type_for(architecture)
    if sam_type is not None and inferred_type != sam_type:
        raise CheckpointError(
            f"SAM checkpoint {checkpoint} was requested as {sam_type}, but its tensors describe "
            f"{inferred_type or 'a non-official architecture'} ({architecture}). "
            "Pass the matching sam_type or the right file."
        )

    model = build_sam(architecture)
    _load_strict(model, state_dict, checkpoint)
    model.to(device)
    model.eval()
    model.requires_grad_(False)

    sha256 = file_sha256(checkpoint) if compute_sha256 else None
    logger.info(
        "Loaded SAM %s from %s on %s (sha256 %s)",
        inferred_type or "custom", checkpoint, device, sha256 or "not computed",
    )
    return LoadedSam(model, architecture, inferred_type, checkpoint.resolve(), sha256)


def _read_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    try:
        payload = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch 2.14's weights-only unpickler reports a byte that is no pickle opcode it
        # reads as "Unsupported operand N": text, an image or another binary format.
        if "Unsupported operand" in str(exc):
            raise CheckpointError(
                f"SAM checkpoint {checkpoint} is not a PyTorch checkpoint: it is neither a "
                "torch.save zip archive nor a pickle that torch.load reads. Pass the .pth "
                "file of an official SAM checkpoint, or download it again."
            ) from exc
        if "weights only" in str(exc).lower():
            raise CheckpointError(
                f"SAM checkpoint {checkpoint} is not a plain state dict; refusing to unpickle "
                "it because it contains Python objects that would run code on load. Save only "
                "model.state_dict() with torch.save."
            ) from exc
        raise CheckpointError(
            f"SAM checkpoint {checkpoint} cannot be read ({exc}). The file may be truncated "
            "or corrupt. Download it again."
        ) from exc
    except (RuntimeError, EOFError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise CheckpointError(
            f"SAM checkpoint {checkpoint} cannot be read ({exc}). The file may be truncated "
            "or corrupt. Download it again."
        ) from exc

    if not isinstance(payload, dict) or not all(
        isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in payload.items()
    ):
        raise CheckpointError(
            f"SAM checkpoint {checkpoint} is not a plain state dict, so it was rejected. It "
            f"contains a {type(payload).__name__} with non-tensor entries. Save only "
            "model.state_dict() with torch.save."
        )
    return payload


def state_dict_problems(model: torch.nn.Module, state_dict: dict[str, torch.Tensor]) -> list[str]:
    """List missing, unexpected and mis-shaped keys of ``state_dict`` for ``model``, by name."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    mismatched = sorted(
        f"{key} {tuple(state_dict[key].shape)} != {tuple(expected[key].shape)}"
        for key in set(expected) & set(state_dict)
        if state_dict[key].shape != expected[key].shape
    )
    problems = []
    if missing:
        problems.append(f"Missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"Unexpected keys: {', '.join(unexpected)}")
    if mismatched:
        problems.append(f"Shape mismatches (file != model): {', '.join(mismatched)}")
    return problems


def _load_strict(model: Sam, state_dict: dict[str, torch.Tensor], checkpoint: Path) -> None:
    """Load every tensor, reporting missing, unexpected and mis-shaped keys by name."""
    problems = state_dict_problems(model, state_dict)
    if problems:
        raise CheckpointError(
            f"SAM checkpoint {checkpoint} does not match the SAM layout inferred from it. "
            + ". ".join(problems)
            + ". Use an official SAM checkpoint or one saved by save_checkpoint."
        )
    model.load_state_dict(state_dict, strict=True)


def save_checkpoint(model: Sam, path: str | os.PathLike[str]) -> str:
    """Save a model's state dict in the official format, atomically, and return its SHA-256.

    The tensors are copied to CPU, written to a temporary file in the target folder,
    fsynced and renamed over ``path``, so readers never see a half-written file.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    state_dict = {key: value.detach().cpu() for key, value in model.state_dict().items()}

    fd, temp_name = tempfile.mkstemp(prefix=f"{target.name}.", suffix=".part", dir=target.parent)
    temp_path = Path(temp_name)
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(state_dict, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_path, target)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise

    sha256 = file_sha256(target)
    logger.info("Saved SAM checkpoint %s (sha256 %s)", target, sha256)
    return sha256
