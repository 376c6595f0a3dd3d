"""Class-aware SAM: one mask per prompt plus class logits from an extra decoder token.

The mask decoder keeps SAM's two-way transformer, IoU token, output upscaling and the
single-mask output token (Meta's mask token 0 with its hypernetwork MLP). It adds one
learned class token. The transformer receives the tokens in the order
[IoU, class, mask, prompt tokens], and an MLP maps the class token's output to one logit
per class. The image and prompt encoders are Meta's modules, unchanged.

Coordinates of point and box prompts are in model-input pixels: (x, y) in the frame of
the ``image_size`` x ``image_size`` image that the encoder receives. Boxes are xyxy.

Usage::

    model, report = from_sam(load_sam(checkpoint).model, ["glomerulus", "vessel"])
    set_trainable(model, image_encoder=False, prompt_encoder=False, mask_decoder=True)
    output = model(image_embeddings=embeddings, point_coords=points, point_labels=labels)
    loss = bce(output.mask_logits, masks) + ce(output.class_logits, classes)
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from segment_anything.modeling import MaskDecoder, Sam
from segment_anything.modeling.mask_decoder import MLP
from torch import nn

from ml.errors import CheckpointError, NephrowebError, SettingsError
from ml.sam import SamArchitecture, build_sam, infer_architecture
from ml.two_way_transformer import (
    forward_shared_image,
    prompts_per_chunk,
    upscale_image_tokens,
)

logger = logging.getLogger(__name__)

# The class head has the depth and hidden width of SAM's IoU head (segment-anything 1.0).
CLASS_HEAD_DEPTH = 3
CLASS_HEAD_HIDDEN_DIM = 256

# State-dict key prefixes of the parameters that an official SAM has no counterpart for.
NEW_KEY_PREFIXES = ("mask_decoder.class_token.", "mask_decoder.class_prediction_head.")

_OFFICIAL_MASK_TOKENS = "mask_decoder.mask_tokens.weight"
_OFFICIAL_HYPERNETWORK = re.compile(r"^mask_decoder\.output_hypernetworks_mlps\.(\d+)\.(.+)$")
_OFFICIAL_IOU_HEAD_LAYER = re.compile(r"^mask_decoder\.iou_prediction_head\.layers\.(\d+)\.")


class InputShapeError(NephrowebError, ValueError):
    """A tensor passed to the class-aware SAM has a shape that the model cannot use."""


@dataclass(frozen=True)
class DecoderOutput:
    """Outputs of the class-aware mask decoder for N prompts.

    Attributes:
        mask_logits: (N, 1, 4G, 4G) mask logits, where G is the image embedding's grid
            side (256 x 256 for the official models).
        iou_pred: (N, 1) predicted IoU of each mask with its object.
        class_logits: (N, num_classes) unnormalised class scores.
    """

    mask_logits: torch.Tensor
    iou_pred: torch.Tensor
    class_logits: torch.Tensor


@dataclass(frozen=True)
class ClassAwarePrediction:
    """Inference result for N prompts on one image.

    Attributes:
        masks: (N, S, S) bool masks in model-input pixels, S being ``image_size``.
        low_res_logits: (N, 1, 4G, 4G) mask logits, usable as ``mask_inputs`` of a
            following refinement step.
        iou_predictions: (N,) predicted IoU of each mask.
        class_probabilities: (N, num_classes) softmax over the class logits.
        class_names: Class name of each column of ``class_probabilities``.
    """

    masks: torch.Tensor
    low_res_logits: torch.Tensor
    iou_predictions: torch.Tensor
    class_probabilities: torch.Tensor
    class_names: tuple[str, ...]


@dataclass(frozen=True)
class InitReport:
    """Origins of the state-dict entries of a class-aware SAM built by ``from_sam``.

    Attributes:
        copied: Class-aware keys whose tensors were copied from the official SAM, whole
            or as the rows of the single-mask output.
        new: Class-aware keys that were freshly initialised (class token and class head).
        dropped: Official keys, or row ranges of them, that the class-aware SAM does not
            use, for example ``mask_decoder.mask_tokens.weight[1:4]``.
    """

    copied: tuple[str, ...]
    new: tuple[str, ...]
    dropped: tuple[str, ...]


class InitializedModel(NamedTuple):
    """Result of ``from_sam``. It unpacks as ``model, report``."""

    model: ClassAwareSam
    report: InitReport


class ClassAwareMaskDecoder(nn.Module):
    """SAM's mask decoder reduced to one mask per prompt, plus a class token and head.

    The constructor takes ``transformer``, ``iou_token``, ``output_upscaling`` and
    ``output_hypernetworks_mlps[0]`` from ``mask_decoder`` as they are, so this module
    shares those submodules with it. The one-row mask token, the one-output IoU head, the
    class token and the class head are new modules with random weights. ``from_sam``
    fills the first two from an official checkpoint.

    Args:
        mask_decoder: Meta's decoder whose pieces are reused.
        num_classes: Number of class logits.
    """

    def __init__(self, mask_decoder: MaskDecoder, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise SettingsError(f"num_classes is {num_classes}. Give at least one class.")
        dim = mask_decoder.transformer_dim
        official_iou_head = mask_decoder.iou_prediction_head

        self.transformer_dim = dim
        self.num_classes = num_classes
        self.transformer = mask_decoder.transformer
        self.iou_token = mask_decoder.iou_token
        self.class_token = nn.Embedding(1, dim)
        self.mask_token = nn.Embedding(1, dim)
        self.output_upscaling = mask_decoder.output_upscaling
        self.output_hypernetwork_mlp = mask_decoder.output_hypernetworks_mlps[0]
        self.iou_prediction_head = MLP(
            dim,
            official_iou_head.layers[0].out_features,
            1,
            official_iou_head.num_layers,
        )
        self.class_prediction_head = MLP(dim, CLASS_HEAD_HIDDEN_DIM, num_classes, CLASS_HEAD_DEPTH)

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> DecoderOutput:
        """Predict one mask, its IoU and class logits per prompt.

        Args:
            image_embeddings: (1, C, G, G) for N prompts on one image, or (N, C, G, G)
                for one prompt on each of N images.
            image_pe: (1, C, G, G) positional encoding of the embedding grid.
            sparse_prompt_embeddings: (N, K, C) point and box embeddings.
            dense_prompt_embeddings: (N, C, G, G) mask-input embeddings.

        Raises:
            InputShapeError: The shapes do not fit together.
        """
        self._check_shapes(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings
        )
        num_prompts = sparse_prompt_embeddings.shape[0]
        output_tokens = torch.cat(
            [self.iou_token.weight, self.class_token.weight, self.mask_token.weight], dim=0
        )
        output_tokens = output_tokens.unsqueeze(0).expand(num_prompts, -1, -1)
        tokens = torch.cat([output_tokens, sparse_prompt_embeddings], dim=1)

        if self._shares_one_image(image_embeddings, dense_prompt_embeddings):
            return self._decode_shared_image(
                image_embeddings + dense_prompt_embeddings[:1], image_pe, tokens
            )

        # One image embedding serves every prompt, as in SamPredictor. A batch of N
        # embeddings pairs embedding i with prompt i.
        source = image_embeddings.expand(num_prompts, -1, -1, -1) + dense_prompt_embeddings
        source_pe = image_pe.expand(num_prompts, -1, -1, -1)
        token_out, image_out = self.transformer(source, source_pe, tokens)
        return self._heads(token_out, image_out, tuple(source.shape[-2:]))

    @staticmethod
    def _shares_one_image(image_embeddings: torch.Tensor, dense: torch.Tensor) -> bool:
        """Return True for inference on one image without mask inputs, shared by every prompt.

        The prompt encoder expands one no-mask embedding over the batch, so its batch
        stride is 0. Mask inputs give a real batch.
        """
        return (
            not torch.is_grad_enabled()
            and image_embeddings.shape[0] == 1
            and (dense.shape[0] == 1 or dense.stride(0) == 0)
        )

    def _decode_shared_image(
        self, image_tokens: torch.Tensor, image_pe: torch.Tensor, tokens: torch.Tensor
    ) -> DecoderOutput:
        """Decode N prompts on one (1, C, G, G) image, a chunk of prompts at a time."""
        grid_hw = tuple(image_tokens.shape[-2:])
        up_channels = self.output_hypernetwork_mlp.layers[-1].out_features
        chunk = prompts_per_chunk(16 * grid_hw[0] * grid_hw[1] * up_channels * 4)
        outputs = []
        for start in range(0, tokens.shape[0], chunk):
            token_out, image_out = forward_shared_image(
                self.transformer, image_tokens, image_pe, tokens[start : start + chunk]
            )
            outputs.append(self._heads(token_out, image_out, grid_hw))
        return DecoderOutput(
            mask_logits=torch.cat([output.mask_logits for output in outputs]),
            iou_pred=torch.cat([output.iou_pred for output in outputs]),
            class_logits=torch.cat([output.class_logits for output in outputs]),
        )

    def _heads(
        self, token_out: torch.Tensor, image_out: torch.Tensor, grid_hw: tuple[int, int]
    ) -> DecoderOutput:
        """Turn the transformer's (B, T, C) tokens and (B, G*G, C) image into outputs."""
        batch = token_out.shape[0]
        # The hypernetwork turns the mask token into weights over the upscaled channels.
        upscaled = upscale_image_tokens(self.output_upscaling, image_out, grid_hw)
        _, up_channels, up_height, up_width = upscaled.shape
        mask_weights = self.output_hypernetwork_mlp(token_out[:, 2, :]).unsqueeze(1)
        mask_logits = mask_weights @ upscaled.reshape(batch, up_channels, up_height * up_width)
        return DecoderOutput(
            mask_logits=mask_logits.reshape(batch, 1, up_height, up_width),
            iou_pred=self.iou_prediction_head(token_out[:, 0, :]),
            class_logits=self.class_prediction_head(token_out[:, 1, :]),
        )

    def _check_shapes(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse: torch.Tensor,
        dense: torch.Tensor,
    ) -> None:
        dim = self.transformer_dim
        if sparse.ndim != 3 or sparse.shape[2] != dim:
            raise InputShapeError(
                f"sparse_prompt_embeddings has shape {tuple(sparse.shape)}, expected "
                f"(N, K, {dim}). Embed the prompts with the model's prompt encoder."
            )
        num_prompts = sparse.shape[0]
        if image_embeddings.ndim != 4 or image_embeddings.shape[1] != dim:
            raise InputShapeError(
                f"image_embeddings has shape {tuple(image_embeddings.shape)}, expected "
                f"(1 or N, {dim}, G, G). Use the output of the model's image encoder."
            )
        if image_embeddings.shape[0] not in (1, num_prompts):
            raise InputShapeError(
                f"image_embeddings contains {image_embeddings.shape[0]} images for "
                f"{num_prompts} prompts. Pass one embedding for all prompts, or one "
                "embedding per prompt."
            )
        grid = tuple(image_embeddings.shape[2:])
        if tuple(dense.shape) != (num_prompts, dim, *grid):
            raise InputShapeError(
                f"dense_prompt_embeddings has shape {tuple(dense.shape)}, expected "
                f"{(num_prompts, dim, *grid)} to match the prompts and image embeddings."
            )
        if image_pe.ndim != 4 or image_pe.shape[0] != 1 or tuple(image_pe.shape[1:]) != (
            dim,
            *grid,
        ):
            raise InputShapeError(
                f"image_pe has shape {tuple(image_pe.shape)}, expected {(1, dim, *grid)}. "
                "Use prompt_encoder.get_dense_pe()."
            )


class ClassAwareSam(nn.Module):
    """SAM's image and prompt encoders with the class-aware mask decoder.

    The constructor takes ``image_encoder``, ``prompt_encoder`` and the decoder pieces
    from ``sam`` as they are (shared, not copied). Use ``from_sam`` to start from an
    official checkpoint without touching the source model.

    Args:
        sam: Meta's model whose modules are reused.
        class_names: One name per class logit, in logit order.
    """

    def __init__(self, sam: Sam, class_names: Sequence[str]) -> None:
        super().__init__()
        names = tuple(class_names)
        if not names:
            raise SettingsError("class_names is empty. Give at least one class name.")
        if len(set(names)) != len(names):
            raise SettingsError(f"class_names {list(names)} contains duplicates. Name each once.")

        self.architecture: SamArchitecture = infer_architecture(sam.state_dict())
        self.class_names: tuple[str, ...] = names
        self.image_encoder = sam.image_encoder
        self.prompt_encoder = sam.prompt_encoder
        self.mask_decoder = ClassAwareMaskDecoder(sam.mask_decoder, len(names))
        self.register_buffer("pixel_mean", sam.pixel_mean.detach().clone(), persistent=False)
        self.register_buffer("pixel_std", sam.pixel_std.detach().clone(), persistent=False)

    @property
    def image_size(self) -> int:
        """Side of the square model input in pixels."""
        return self.architecture.image_size

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise RGB images and run the image encoder.

        Args:
            images: (B, 3, S, S) float RGB in 0..255, already resized to the model input
                size S (``image_size``).

        Returns:
            (B, C, G, G) image embeddings.
        """
        size = self.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
            raise InputShapeError(
                f"images has shape {tuple(images.shape)}, expected (B, 3, {size}, {size}). "
                f"Resize and pad each image to {size} x {size} RGB first."
            )
        return self.image_encoder((images - self.pixel_mean) / self.pixel_std)

    def forward(
        self,
        *,
        images: torch.Tensor | None = None,
        image_embeddings: torch.Tensor | None = None,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes_xyxy: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
    ) -> DecoderOutput:
        """Predict low-resolution mask logits, IoU and class logits for N prompts.

        Pass either ``images`` or precomputed ``image_embeddings``, with 1 image for all
        N prompts or N images with one prompt each.

        Args:
            images: (1 or N, 3, S, S) float RGB in 0..255 at the model input size.
            image_embeddings: (1 or N, C, G, G) outputs of ``embed_images``.
            point_coords: (N, P, 2) point (x, y) in model-input pixels.
            point_labels: (N, P) 1 for foreground, 0 for background points.
            boxes_xyxy: (N, 4) boxes in model-input pixels.
            mask_inputs: (N, 1, 4G, 4G) mask logits from an earlier prediction.

        Raises:
            InputShapeError: Neither or both image inputs, no prompt, or shapes that do
                not fit together.
        """
        if (images is None) == (image_embeddings is None):
            raise InputShapeError("Pass exactly one of images and image_embeddings.")
        if image_embeddings is None:
            image_embeddings = self.embed_images(images)
        points = self._points(point_coords, point_labels)
        if points is None and boxes_xyxy is None:
            raise InputShapeError(
                "No prompt was given. Pass point_coords with point_labels, or boxes_xyxy."
            )
        if boxes_xyxy is not None and (boxes_xyxy.ndim != 2 or boxes_xyxy.shape[1] != 4):
            raise InputShapeError(
                f"boxes_xyxy has shape {tuple(boxes_xyxy.shape)}, expected (N, 4)."
            )
        if (
            points is not None
            and boxes_xyxy is not None
            and points[0].shape[0] != boxes_xyxy.shape[0]
        ):
            raise InputShapeError(
                f"point_coords has {points[0].shape[0]} prompts but boxes_xyxy has "
                f"{boxes_xyxy.shape[0]}. Give both for the same N prompts."
            )

        sparse, dense = self.prompt_encoder(points=points, boxes=boxes_xyxy, masks=mask_inputs)
        return self.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
        )

    @torch.no_grad()
    def predict(
        self,
        image_embedding: torch.Tensor,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes_xyxy: torch.Tensor | None = None,
        mask_inputs: torch.Tensor | None = None,
        mask_threshold: float = 0.0,
    ) -> ClassAwarePrediction:
        """Segment and classify N prompts on one image, without gradients.

        Args:
            image_embedding: (C, G, G) or (1, C, G, G) embedding of one image.
            point_coords: (N, P, 2) point (x, y) in model-input pixels.
            point_labels: (N, P) 1 for foreground, 0 for background points.
            boxes_xyxy: (N, 4) boxes in model-input pixels.
            mask_inputs: (N, 1, 4G, 4G) mask logits from an earlier prediction.
            mask_threshold: Logit above which a pixel belongs to the mask.

        Returns:
            Masks upsampled bilinearly to S x S model-input pixels, with IoU and class
            probabilities.
        """
        if image_embedding.ndim == 3:
            image_embedding = image_embedding.unsqueeze(0)
        if image_embedding.ndim != 4 or image_embedding.shape[0] != 1:
            raise InputShapeError(
                f"image_embedding has shape {tuple(image_embedding.shape)}, expected "
                "(C, G, G) or (1, C, G, G) for one image."
            )
        output = self(
            image_embeddings=image_embedding,
            point_coords=point_coords,
            point_labels=point_labels,
            boxes_xyxy=boxes_xyxy,
            mask_inputs=mask_inputs,
        )
        size = self.image_size
        upsampled = F.interpolate(
            output.mask_logits, (size, size), mode="bilinear", align_corners=False
        )
        return ClassAwarePrediction(
            masks=upsampled[:, 0] > mask_threshold,
            low_res_logits=output.mask_logits,
            iou_predictions=output.iou_pred[:, 0],
            class_probabilities=torch.softmax(output.class_logits, dim=1),
            class_names=self.class_names,
        )

    @staticmethod
    def _points(
        point_coords: torch.Tensor | None, point_labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        if point_coords is None and point_labels is None:
            return None
        if point_coords is None or point_labels is None:
            raise InputShapeError("Pass point_coords and point_labels together.")
        if point_coords.ndim != 3 or point_coords.shape[2] != 2:
            raise InputShapeError(
                f"point_coords has shape {tuple(point_coords.shape)}, expected (N, P, 2)."
            )
        if tuple(point_labels.shape) != tuple(point_coords.shape[:2]):
            raise InputShapeError(
                f"point_labels has shape {tuple(point_labels.shape)}, expected "
                f"{tuple(point_coords.shape[:2])} to match point_coords."
            )
        return point_coords, point_labels


def build_class_aware_sam(
    architecture: SamArchitecture, class_names: Sequence[str]
) -> ClassAwareSam:
    """Build a class-aware SAM with random weights, in eval mode (for loading saved weights).

    An ``efficientnet_lite0`` architecture gets that encoder in place of the ViT, with
    random weights too.
    """
    model = ClassAwareSam(build_sam(architecture), class_names)
    if architecture.image_encoder == "efficientnet_lite0":
        from ml.efficientnet_lite import EfficientNetLite0Encoder

        model.image_encoder = EfficientNetLite0Encoder()
        model.architecture = architecture
    model.eval()
    return model


def map_official_state_dict(
    official: dict[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map an official SAM state dict onto class-aware key names.

    The single-mask output of Meta's decoder is mask token 0, hypernetwork MLP 0 and row
    0 of the IoU head's last layer. Those become ``mask_token``,
    ``output_hypernetwork_mlp`` and the one-output IoU head. Every other key keeps its
    name.

    Returns:
        The mapped tensors (row slices are views of the source tensors) and the dropped
        official keys, a row range written as ``key[first:end]``.
    """
    iou_layers = [
        int(match.group(1)) for key in official if (match := _OFFICIAL_IOU_HEAD_LAYER.match(key))
    ]
    if not iou_layers or _OFFICIAL_MASK_TOKENS not in official:
        raise CheckpointError(
            "SAM state dict has no mask_decoder.iou_prediction_head or "
            f"{_OFFICIAL_MASK_TOKENS}, so it is not an official SAM. Load one with load_sam."
        )
    iou_last_layer = f"mask_decoder.iou_prediction_head.layers.{max(iou_layers)}."
    single_row_keys = {
        _OFFICIAL_MASK_TOKENS: "mask_decoder.mask_token.weight",
        iou_last_layer + "weight": iou_last_layer + "weight",
        iou_last_layer + "bias": iou_last_layer + "bias",
    }

    mapped: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, tensor in official.items():
        hypernetwork = _OFFICIAL_HYPERNETWORK.match(key)
        if key in single_row_keys:
            mapped[single_row_keys[key]] = tensor[:1]
            if tensor.shape[0] > 1:
                dropped.append(f"{key}[1:{tensor.shape[0]}]")
        elif hypernetwork is None:
            mapped[key] = tensor
        elif hypernetwork.group(1) == "0":
            mapped[f"mask_decoder.output_hypernetwork_mlp.{hypernetwork.group(2)}"] = tensor
        else:
            dropped.append(key)
    return mapped, dropped


def from_sam(sam: Sam, class_names: Sequence[str]) -> InitializedModel:
    """Start a class-aware SAM from an official SAM, leaving ``sam`` unchanged.

    Every official weight that the class-aware decoder keeps is copied through
    ``map_official_state_dict``. The class token and class head start random. The
    returned model is in eval mode with only the mask decoder trainable.

    A note on equivalence: the mask for a prompt is not equal to Meta's single-mask
    output even before training, because the extra class token takes part in the
    transformer's attention. This is by design. Fine-tuning adapts the decoder to it.

    Returns:
        The model and an ``InitReport`` that names copied, new and dropped keys.

    Raises:
        CheckpointError: ``sam``'s state dict does not have the official layout.
    """
    official = sam.state_dict()
    # Limitation: the deep copy keeps two models in memory at once (an estimated 5 GB for vit_h).
    model = ClassAwareSam(copy.deepcopy(sam), class_names)
    mapped, dropped = map_official_state_dict(official)

    expected = model.state_dict()
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    not_new = [key for key in missing if not key.startswith(NEW_KEY_PREFIXES)]
    mismatched = [
        f"{key} {tuple(mapped[key].shape)} != {tuple(expected[key].shape)}"
        for key in sorted(set(mapped) & set(expected))
        if mapped[key].shape != expected[key].shape
    ]
    if not_new or unexpected or mismatched:
        raise CheckpointError(
            "SAM state dict does not match the class-aware SAM. "
            f"Missing keys: {not_new or 'none'}. Unexpected keys: {unexpected or 'none'}. "
            f"Shape mismatches (SAM != class-aware): {mismatched or 'none'}. "
            "Start from a model built by ml.sam.build_sam or loaded by load_sam."
        )
    model.load_state_dict(mapped, strict=False)
    model.eval()
    set_trainable(model)

    report = InitReport(
        copied=tuple(sorted(mapped)), new=tuple(missing), dropped=tuple(sorted(dropped))
    )
    logger.info(
        "Initialised class-aware SAM with %d classes from SAM: %d tensors copied, %d new (%s), "
        "%d dropped (%s)",
        len(model.class_names), len(report.copied), len(report.new), ", ".join(report.new),
        len(report.dropped), ", ".join(report.dropped),
    )
    logger.debug("Copied tensors: %s", ", ".join(report.copied))
    return InitializedModel(model, report)


def set_trainable(
    model: ClassAwareSam,
    *,
    image_encoder: bool = False,
    prompt_encoder: bool = False,
    mask_decoder: bool = True,
) -> None:
    """Set ``requires_grad`` on each part's parameters. The defaults train the decoder only."""
    model.image_encoder.requires_grad_(image_encoder)
    model.prompt_encoder.requires_grad_(prompt_encoder)
    model.mask_decoder.requires_grad_(mask_decoder)
    logger.debug(
        "Trainable parts: image_encoder=%s prompt_encoder=%s mask_decoder=%s",
        image_encoder, prompt_encoder, mask_decoder,
    )


def trainable_parameter_names(model: nn.Module) -> list[str]:
    """Return the names of parameters with ``requires_grad`` set, in module order."""
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad]
