"""Automatic SAM masks for one image: Meta's generator, and a cheaper one with the same masks.

``ReferenceMaskGenerator`` runs segment-anything's ``SamAutomaticMaskGenerator`` with one
crop layer. ``FastMaskGenerator`` gives the same masks for the same settings, but drops
most candidates on the decoder's low-resolution logits (256 x 256 for a 1024 px model
input), so fewer masks are upsampled to image size and none is run-length encoded:

1. Encode the image once with ``SamPredictor.set_image`` (Meta's resize and
   normalisation), in float32 or under bfloat16 autocast (``encoder_dtype``).
2. Prompt a ``points_per_side`` x ``points_per_side`` grid of single foreground points,
   ``points_per_batch`` prompts per decoder call, with three masks per prompt. The
   decoder transformer runs for every prompt, and the mask upscaling only for prompts
   with at least one mask above ``pred_iou_thresh``.
3. Drop masks whose predicted IoU is not above ``pred_iou_thresh`` (the same values as
   Meta's), then masks whose stability score on the low-resolution logits is below
   ``stability_score_thresh - LOW_RES_STABILITY_MARGIN``.
4. Upsample the remaining candidates with ``Sam.postprocess_masks``, a batch at a time,
   and keep only their full-resolution stability score, box and area. Drop those whose
   full-resolution stability score is below ``stability_score_thresh``, as Meta does.
5. Remove duplicates with one box NMS per image (``torchvision.ops.nms``, scored by
   predicted IoU, on Meta's inclusive boxes), then drop survivors larger than
   ``max_area_px`` when the caller gives one.
6. Upsample the survivors again and threshold them at ``Sam.mask_threshold``.

So the masks equal Meta's, except where the low-resolution stability score lies more
than the margin below the full-resolution one; docs/proposals.md gives the measured gap.

Usage::

    generator = FastMaskGenerator(loaded.model, points_per_side=32)
    generated = generator.generate(tile_rgb)
    masks = [record.mask for record in generated.records]
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from segment_anything import SamAutomaticMaskGenerator, SamPredictor
from segment_anything.modeling import Sam
from segment_anything.utils.amg import batched_mask_to_box, build_point_grid

from ml.errors import SettingsError
from ml.mask_generator_options import (  # noqa: F401  re-exported for callers
    ENCODER_DTYPES,
    MASK_GENERATORS,
    check_generator_options,
)
from ml.two_way_transformer import (
    forward_shared_image,
    prompts_per_chunk,
    upscale_image_tokens,
)

logger = logging.getLogger(__name__)


# Logit offset of the stability score, as SamAutomaticMaskGenerator's default
# stability_score_offset in segment-anything 1.0. The mask threshold is Sam.mask_threshold.
STABILITY_OFFSET = 1.0

# A candidate whose low-resolution stability score is this far below the threshold is
# still upsampled and judged on its full-resolution score. On smooth discs of 5 to 60
# low-resolution pixels radius the two scores differ by at most 0.014 (measured in
# tests/ml/test_mask_generation.py), so 0.05 leaves room for rougher masks.
LOW_RES_STABILITY_MARGIN = 0.05


@dataclass(frozen=True)
class MaskRecord:
    """One generated mask.

    Attributes:
        mask: (H, W) bool mask at image size.
        predicted_iou: The decoder's estimate of the mask's IoU with the true object.
        stability_score: IoU of the mask thresholded one logit above and one below the
            mask threshold, at image size (Meta's definition).
        low_res_stability_score: The same score on the low-resolution logits, which the
            fast generator filters on. Equal to ``stability_score`` for the reference.
    """

    mask: np.ndarray
    predicted_iou: float
    stability_score: float
    low_res_stability_score: float


@dataclass(frozen=True)
class GeneratedMasks:
    """Masks of one image and what they cost.

    Attributes:
        records: Masks after NMS, highest predicted IoU first.
        dropped_too_large: Masks past NMS dropped before the final upsampling because
            their area is above ``max_area_px``. Always 0 for the reference.
        encoder_seconds: Wall time of the image encoder, preprocessing included.
        mask_generation_seconds: Wall time of everything after the encoder.
    """

    records: tuple[MaskRecord, ...]
    dropped_too_large: int
    encoder_seconds: float
    mask_generation_seconds: float


class MaskGenerator(Protocol):
    """Anything that turns an (H, W, 3) uint8 RGB image into GeneratedMasks."""

    def generate(
        self, image_rgb: np.ndarray, *, max_area_px: float | None = None
    ) -> GeneratedMasks: ...


@contextlib.contextmanager
def encoder_precision(device: torch.device, encoder_dtype: str):
    """Run the enclosed code in float32, or under bfloat16 autocast on ``device``.

    NOTE: only the CPU autocast path has been run; CUDA autocast is untested here.
    """
    if encoder_dtype == "float32":
        yield
        return
    with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
        yield


class FastMaskGenerator:
    """Automatic masks equal to SamAutomaticMaskGenerator's, filtered at low resolution.

    The arguments mean what they mean for SamAutomaticMaskGenerator (one crop layer,
    stability offset 1.0, binary masks, no small-region post-processing), plus:

    Args:
        encoder_dtype: "float32", or "bfloat16" to run the image encoder under autocast.
            The decoder always runs in float32.

    Cost: one encoder pass, ``points_per_side**2`` prompts through the decoder
    transformer, one upsampling of each candidate that passes the predicted-IoU filter
    and the low-resolution stability filter, and a second one of each survivor of NMS.
    """

    def __init__(
        self,
        model: Sam,
        *,
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        box_nms_thresh: float = 0.7,
        encoder_dtype: str = "float32",
    ) -> None:
        check_generator_options("fast", encoder_dtype)
        self.model = model
        self.predictor = SamPredictor(model)
        self.points_per_side = points_per_side
        self.points_per_batch = points_per_batch
        self.pred_iou_thresh = pred_iou_thresh
        self.stability_score_thresh = stability_score_thresh
        self.box_nms_thresh = box_nms_thresh
        self.encoder_dtype = encoder_dtype

    @torch.no_grad()
    def generate(
        self, image_rgb: np.ndarray, *, max_area_px: float | None = None
    ) -> GeneratedMasks:
        """Generate the masks of an (H, W, 3) uint8 RGB image.

        Masks past NMS whose area is above ``max_area_px`` image pixels are not
        returned but counted in ``dropped_too_large``. None returns every mask. NMS runs
        before this filter, so the filter never changes which other masks survive.
        """
        started = time.perf_counter()
        device = self.predictor.device
        with encoder_precision(device, self.encoder_dtype):
            self.predictor.set_image(image_rgb)
        features = self.predictor.features.float()
        encoded = time.perf_counter()

        height_px, width_px = image_rgb.shape[:2]
        points_xy = build_point_grid(self.points_per_side) * np.array([width_px, height_px])
        model_points_xy = self.predictor.transform.apply_coords(points_xy, (height_px, width_px))
        logits, predicted_ious = self._decode_all(features, model_points_xy, device)

        # The low-resolution logits cover the padded model input; keep the image's part.
        input_h, input_w = self.predictor.input_size
        upscale = self.model.image_encoder.img_size / logits.shape[-1]
        logits = logits[:, : math.ceil(input_h / upscale), : math.ceil(input_w / upscale)]

        # Logits stay on the model's device; the per-mask values move to the CPU.
        low_res_stability = stability_scores(logits, self.model.mask_threshold).cpu()
        predicted_ious = predicted_ious.cpu()
        if self.stability_score_thresh > 0.0:
            candidates = low_res_stability >= self.stability_score_thresh - LOW_RES_STABILITY_MARGIN
            logits = logits[candidates.to(logits.device)]
            predicted_ious = predicted_ious[candidates]
            low_res_stability = low_res_stability[candidates]

        image_hw = (height_px, width_px)
        stability, boxes_xyxy, areas_px = self._measure_full_res(logits, image_hw)
        if self.stability_score_thresh > 0.0:
            stable = stability >= self.stability_score_thresh
            logits, predicted_ious = logits[stable.to(logits.device)], predicted_ious[stable]
            low_res_stability, stability = low_res_stability[stable], stability[stable]
            boxes_xyxy, areas_px = boxes_xyxy[stable], areas_px[stable]

        keep = torchvision.ops.nms(boxes_xyxy.float(), predicted_ious, self.box_nms_thresh)
        dropped_too_large = 0
        if max_area_px is not None:
            small_enough = areas_px[keep] <= max_area_px
            dropped_too_large = int((~small_enough).sum())
            keep = keep[small_enough]

        records = self._upsample_records(
            logits[keep.to(logits.device)],
            predicted_ious[keep],
            stability[keep],
            low_res_stability[keep],
            image_hw,
        )
        finished = time.perf_counter()
        logger.debug(
            "Fast masks: %d records, %d too large, encoder %.2f s, masks %.2f s",
            len(records), dropped_too_large, encoded - started, finished - encoded,
        )
        return GeneratedMasks(
            records=records,
            dropped_too_large=dropped_too_large,
            encoder_seconds=encoded - started,
            mask_generation_seconds=finished - encoded,
        )

    def _decode_all(
        self, features: torch.Tensor, model_points_xy: np.ndarray, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode every prompt and return the masks above the predicted-IoU threshold.

        Returns (N, h, w) low-resolution logits and (N,) predicted IoUs.

        Masks keep Meta's order: prompt by prompt, three masks per prompt.
        """
        logits_batches = []
        iou_batches = []
        for start in range(0, len(model_points_xy), self.points_per_batch):
            batch_xy = torch.as_tensor(
                model_points_xy[start : start + self.points_per_batch], device=device
            )
            labels = torch.ones(len(batch_xy), 1, dtype=torch.int, device=device)
            logits, predicted_ious = decode_multimask(
                self.model, features, batch_xy[:, None, :], labels, self.pred_iou_thresh
            )
            logits_batches.append(logits)
            iou_batches.append(predicted_ious)
        return torch.cat(logits_batches), torch.cat(iou_batches)

    def _upsample(self, logits: torch.Tensor, image_hw: tuple[int, int]):
        """Yield (start index, (B, H, W) image-size logits) for batches of low-res logits."""
        for start in range(0, len(logits), self.points_per_batch):
            low_res = _pad_to_model_grid(logits[start : start + self.points_per_batch], self.model)
            yield start, self.model.postprocess_masks(
                low_res, self.predictor.input_size, image_hw
            )[:, 0]

    def _measure_full_res(
        self, logits: torch.Tensor, image_hw: tuple[int, int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Return the full-resolution stability scores, inclusive xyxy boxes and areas.

        Only these (N,) and (N, 4) values are kept, so memory stays at one batch of
        image-size masks however many candidates there are.
        """
        stability = torch.zeros(len(logits))
        boxes_xyxy = torch.zeros((len(logits), 4), dtype=torch.int64)
        areas_px = torch.zeros(len(logits), dtype=torch.int64)
        for start, full in self._upsample(logits, image_hw):
            batch = slice(start, start + len(full))
            masks = full > self.model.mask_threshold
            stability[batch] = stability_scores(full, self.model.mask_threshold).cpu()
            boxes_xyxy[batch] = batched_mask_to_box(masks).cpu().long()
            areas_px[batch] = masks.flatten(1).sum(dim=1).cpu()
        return stability, boxes_xyxy, areas_px

    def _upsample_records(
        self,
        logits: torch.Tensor,
        predicted_ious: torch.Tensor,
        stability: torch.Tensor,
        low_res_stability: torch.Tensor,
        image_hw: tuple[int, int],
    ) -> tuple[MaskRecord, ...]:
        """Upsample the survivors and build their records, in NMS order."""
        records = []
        for start, full in self._upsample(logits, image_hw):
            masks = (full > self.model.mask_threshold).cpu().numpy()
            for offset, mask in enumerate(masks):
                index = start + offset
                records.append(
                    MaskRecord(
                        mask=mask,
                        predicted_iou=float(predicted_ious[index]),
                        stability_score=float(stability[index]),
                        low_res_stability_score=float(low_res_stability[index]),
                    )
                )
        return tuple(records)


def decode_multimask(
    model: Sam,
    features: torch.Tensor,
    points_xy: torch.Tensor,
    labels: torch.Tensor,
    pred_iou_thresh: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode point prompts into three masks each and keep those above ``pred_iou_thresh``.

    The same computation as ``MaskDecoder.forward`` with ``multimask_output=True``, except
    that the mask upscaling, which is a per-prompt cost, only runs for prompts with at
    least one kept mask. A threshold of 0 keeps every mask, as in Meta's generator.

    Args:
        features: (1, C, h, w) image embedding.
        points_xy: (B, 1, 2) points in model-input pixels.
        labels: (B, 1) point labels, 1 for foreground.

    Returns:
        (K, 4h, 4w) low-resolution logits and (K,) predicted IoUs of the kept masks, in
        prompt order and mask order within a prompt.
    """
    decoder = model.mask_decoder
    sparse, dense = model.prompt_encoder(points=(points_xy, labels), boxes=None, masks=None)
    # Without mask inputs the dense embedding is the same for every prompt.
    image_tokens = features + dense[:1]
    image_pe = model.prompt_encoder.get_dense_pe()
    output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
    grid_hw = tuple(image_tokens.shape[-2:])

    # The largest per-prompt tensor is the upscaled (C', 4h, 4w) float32 image.
    upscaled_bytes = 16 * grid_hw[0] * grid_hw[1] * decoder.transformer_dim // 8 * 4
    chunk = prompts_per_chunk(upscaled_bytes)
    logits_parts, iou_parts = [], []
    for start in range(0, sparse.shape[0], chunk):
        prompt_tokens = sparse[start : start + chunk]
        tokens = torch.cat(
            [output_tokens.expand(prompt_tokens.shape[0], -1, -1), prompt_tokens], dim=1
        )
        token_out, image_out = forward_shared_image(
            decoder.transformer, image_tokens, image_pe, tokens
        )

        # Output 0 is the single-mask output; the multimask outputs are 1..3.
        predicted_ious = decoder.iou_prediction_head(token_out[:, 0, :])[:, 1:]
        passed = predicted_ious > pred_iou_thresh if pred_iou_thresh > 0.0 else (
            torch.ones_like(predicted_ious, dtype=torch.bool)
        )
        prompts = passed.any(dim=1)
        if not bool(prompts.any()):
            continue
        upscaled = upscale_image_tokens(decoder.output_upscaling, image_out[prompts], grid_hw)
        mask_tokens = token_out[prompts, 2 : 1 + decoder.num_mask_tokens, :]
        hyper_in = torch.stack(
            [decoder.output_hypernetworks_mlps[index + 1](mask_tokens[:, index, :])
             for index in range(mask_tokens.shape[1])],
            dim=1,
        )
        kept_prompts, up_channels, up_height, up_width = upscaled.shape
        logits = hyper_in @ upscaled.reshape(kept_prompts, up_channels, up_height * up_width)
        logits = logits.reshape(kept_prompts, hyper_in.shape[1], up_height, up_width)
        logits_parts.append(logits[passed[prompts]])
        iou_parts.append(predicted_ious[passed])
    if not logits_parts:
        empty_hw = (4 * grid_hw[0], 4 * grid_hw[1])
        return features.new_zeros((0, *empty_hw)), features.new_zeros(0)
    return torch.cat(logits_parts), torch.cat(iou_parts)


def stability_scores(logits: torch.Tensor, mask_threshold: float) -> torch.Tensor:
    """Return (N,) stability scores of (N, H, W) logits, NaN for an empty low mask.

    The score is |logits > t + 1| / |logits > t - 1|, which equals the IoU of the two
    masks because the first lies inside the second.
    """
    high = (logits > mask_threshold + STABILITY_OFFSET).flatten(1).sum(dim=1)
    low = (logits > mask_threshold - STABILITY_OFFSET).flatten(1).sum(dim=1)
    return high.float() / low.float()


def _pad_to_model_grid(logits: torch.Tensor, model: Sam) -> torch.Tensor:
    """Pad cropped (N, h, w) low-res logits back to the decoder grid as (N, 1, H, W).

    ``Sam.postprocess_masks`` expects the full decoder output. The padding lies in the
    model input's padding, which postprocess_masks crops away again.
    """
    grid = model.prompt_encoder.mask_input_size
    pad_w = grid[1] - logits.shape[-1]
    pad_h = grid[0] - logits.shape[-2]
    return F.pad(logits, (0, pad_w, 0, pad_h))[:, None]


class ReferenceMaskGenerator:
    """Meta's SamAutomaticMaskGenerator, with the encoder's wall time measured."""

    def __init__(
        self,
        model: Sam,
        *,
        points_per_side: int = 32,
        points_per_batch: int = 64,
        pred_iou_thresh: float = 0.88,
        stability_score_thresh: float = 0.95,
        box_nms_thresh: float = 0.7,
    ) -> None:
        self.model = model
        self.generator = SamAutomaticMaskGenerator(
            model,
            points_per_side=points_per_side,
            points_per_batch=points_per_batch,
            pred_iou_thresh=pred_iou_thresh,
            stability_score_thresh=stability_score_thresh,
            stability_score_offset=STABILITY_OFFSET,
            box_nms_thresh=box_nms_thresh,
            output_mode="binary_mask",
        )

    def generate(
        self, image_rgb: np.ndarray, *, max_area_px: float | None = None
    ) -> GeneratedMasks:
        """Generate the masks of an (H, W, 3) uint8 RGB image with Meta's generator.

        ``max_area_px`` is accepted for the MaskGenerator interface and ignored, so every
        mask is returned.
        """
        encoder_spans: list[float] = []

        def start_encoder(*_):
            encoder_spans.append(-time.perf_counter())

        def stop_encoder(*_):
            encoder_spans[-1] += time.perf_counter()

        encoder = self.model.image_encoder
        hooks = (
            encoder.register_forward_pre_hook(start_encoder),
            encoder.register_forward_hook(stop_encoder),
        )
        started = time.perf_counter()
        try:
            meta_records = self.generator.generate(image_rgb)
        finally:
            for hook in hooks:
                hook.remove()
        total = time.perf_counter() - started

        records = tuple(
            MaskRecord(
                mask=np.asarray(record["segmentation"], dtype=bool),
                predicted_iou=float(record["predicted_iou"]),
                stability_score=float(record["stability_score"]),
                low_res_stability_score=float(record["stability_score"]),
            )
            for record in meta_records
        )
        encoder_seconds = sum(encoder_spans)
        return GeneratedMasks(
            records=records,
            dropped_too_large=0,
            encoder_seconds=encoder_seconds,
            mask_generation_seconds=total - encoder_seconds,
        )


def build_mask_generator(
    model: Sam,
    mask_generator: str = "fast",
    *,
    points_per_side: int = 32,
    points_per_batch: int = 64,
    pred_iou_thresh: float = 0.88,
    stability_score_thresh: float = 0.95,
    box_nms_thresh: float = 0.7,
    encoder_dtype: str = "float32",
) -> MaskGenerator:
    """Build the named generator ("fast" or "reference") with SamAutomaticMaskGenerator's settings.

    ``encoder_dtype`` applies to the fast generator only.

    Raises:
        SettingsError: Unknown generator or dtype, or bfloat16 with the reference.
    """
    check_generator_options(mask_generator, encoder_dtype)
    shared = {
        "points_per_side": points_per_side,
        "points_per_batch": points_per_batch,
        "pred_iou_thresh": pred_iou_thresh,
        "stability_score_thresh": stability_score_thresh,
        "box_nms_thresh": box_nms_thresh,
    }
    if mask_generator == "reference":
        return ReferenceMaskGenerator(model, **shared)
    return FastMaskGenerator(model, **shared, encoder_dtype=encoder_dtype)
