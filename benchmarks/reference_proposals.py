"""The reference that the speed benchmark measures nephroweb's proposals against.

This is how a naive tool would propose instances on a slide, not nephroweb's code path:

1. Tiles of ``tile_px`` with 50 % overlap, every tile read and segmented, tissue or not.
2. segment-anything's ``SamAutomaticMaskGenerator`` on each tile as Meta ships it
   (``points_per_side`` x ``points_per_side`` prompts, binary masks at tile size).
3. The same size and tissue filters and the same tracing (``ml.tile_masks.trace_mask``)
   as ``ml.proposals``, so that the recall compares masks, not tracing conventions.
   OpenCV's contours, the naive choice, run through pixel centres and join pixels that
   touch at a corner. On speckled masks from random weights that moved the IoU of the
   same mask's two outlines below 0.8.
4. A pairwise merge (``pairwise_merge``) that applies the rules of ``ml.merge`` by
   comparing each instance with every instance kept so far, without a spatial index.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import shapely
import torch
import torch.nn.functional as F
from segment_anything import SamAutomaticMaskGenerator
from segment_anything.modeling import Sam
from torch import nn

from ml.class_aware import ClassAwareSam

from ml.instances import Instance
from ml.merge import CONFLICT_OVERLAP, DUPLICATE_OVERLAP
from ml.slide import Slide
from ml.tile_masks import TiledMaskSettings, image_size_in_tile, trace_mask
from ml.tiling import Tile, tile_grid
from ml.tissue import TissueMask

REFERENCE_OVERLAP_FRACTION = 0.5


@dataclass
class ReferenceResult:
    """Kept instances of the reference run and the seconds spent in each stage.

    Attributes:
        instances: Instances kept by ``pairwise_merge``, in level-0 pixels.
        stage_seconds: Seconds per stage: ``read``, ``mask_generation``, ``polygons``
            (filters and tracing) and ``merge``. ``mask_generation`` is the whole
            ``generate`` call with the encoder in it, so the caller subtracts the encoder
            seconds that it measures with hooks.
        tiles: Tiles segmented.
        masks_generated: Masks returned by the mask generator on all tiles.
        candidates: Instances that passed the filters and went into the merge.
    """

    instances: list[Instance]
    stage_seconds: dict[str, float] = field(default_factory=dict)
    tiles: int = 0
    masks_generated: int = 0
    candidates: int = 0


def reference_tiles(width_px: int, height_px: int, tile_px: int) -> list[Tile]:
    """Return the reference's tile grid: tiles of ``tile_px`` that overlap by half a tile."""
    return tile_grid(width_px, height_px, tile_px, int(tile_px * REFERENCE_OVERLAP_FRACTION))


def run_reference(
    slide: Slide,
    model: Sam,
    settings: TiledMaskSettings,
    tissue: TissueMask,
    generator: SamAutomaticMaskGenerator | None = None,
) -> ReferenceResult:
    """Propose instances on the whole slide the reference way, timing each stage.

    ``settings`` supplies the working mpp, tile size and the filters, and for the default
    generator the prompt grid and SAM thresholds of ``ProposalSettings``. Its overlap is
    ignored, because the reference always overlaps by half a tile. A caller with other
    thresholds passes its own ``generator``.
    """
    frame = slide.working_frame(settings.mpp)
    tiles = reference_tiles(frame.width_px, frame.height_px, settings.tile_px)
    if generator is None:
        generator = SamAutomaticMaskGenerator(
            model,
            points_per_side=settings.points_per_side,
            points_per_batch=settings.points_per_batch,
            pred_iou_thresh=settings.pred_iou_thresh,
            stability_score_thresh=settings.stability_score_thresh,
            box_nms_thresh=settings.box_nms_thresh,
            output_mode="binary_mask",
        )
    seconds = dict.fromkeys(("read", "mask_generation", "polygons", "merge"), 0.0)
    result = ReferenceResult(instances=[], stage_seconds=seconds, tiles=len(tiles))
    candidates: list[Instance] = []
    trace_counts = dict.fromkeys(
        ("dropped_too_small", "dropped_invalid_geometry", "dropped_outside_tissue",
         "components_discarded"),
        0,
    )

    for tile in tiles:
        started = time.perf_counter()
        rgb = frame.read(slide, tile.x_px, tile.y_px, tile.w_px, tile.h_px)
        seconds["read"] += time.perf_counter() - started

        started = time.perf_counter()
        records = generator.generate(rgb)
        seconds["mask_generation"] += time.perf_counter() - started
        result.masks_generated += len(records)

        started = time.perf_counter()
        image_w_px, image_h_px = image_size_in_tile(tile, frame)
        for record in records:
            mask = np.asarray(record["segmentation"], dtype=bool)[:image_h_px, :image_w_px]
            instance = _traced_instance(
                mask, record, slide, frame, tile, settings, tissue, trace_counts
            )
            if instance is not None:
                candidates.append(instance)
        seconds["polygons"] += time.perf_counter() - started

    started = time.perf_counter()
    result.instances = pairwise_merge(candidates)
    seconds["merge"] = time.perf_counter() - started
    result.candidates = len(candidates)
    return result


def _traced_instance(mask, record, slide, frame, tile, settings, tissue, counts) -> Instance | None:
    """Apply the proposal filters to one mask and trace it, or return None."""
    area_px = int(np.count_nonzero(mask))
    if area_px == 0 or area_px > settings.max_area_px:
        return None
    if area_px * settings.mpp**2 < settings.min_area_um2:
        return None
    traced = trace_mask(mask, (0, 0), slide, frame, tile, settings, tissue, counts, counts)
    if traced is None:
        return None
    return Instance(
        polygon_level0=traced.polygon_level0,
        predicted_iou=float(record["predicted_iou"]),
        stability_score=float(record["stability_score"]),
        tile_index=tile.index,
        touches_interior_edge=traced.touches_interior_edge,
    )


def pairwise_merge(instances: Sequence[Instance]) -> list[Instance]:
    """Merge by the duplicate and conflict rules of ``ml.merge``, comparing pair by pair.

    Each instance is compared with every instance kept so far, so the work grows with N x
    kept. The pass orders and tie-breakers are those of ``ml.merge.merge_instances``, so
    both return the same kept set.
    """
    polygons = [instance.polygon_level0 for instance in instances]
    areas = [polygon.area for polygon in polygons]
    wkb_keys = [shapely.to_wkb(shapely.normalize(polygon)) for polygon in polygons]

    def overlap(i: int, j: int) -> float:
        if instances[i].tile_index == instances[j].tile_index:
            return 0.0
        if not polygons[i].intersects(polygons[j]):
            return 0.0
        return polygons[i].intersection(polygons[j]).area / min(areas[i], areas[j])

    area_order = sorted(
        range(len(instances)),
        key=lambda i: (-areas[i], -instances[i].predicted_iou, instances[i].tile_index, wkb_keys[i]),
    )
    after_duplicates = _keep_greedily(area_order, lambda i, j: overlap(i, j) >= DUPLICATE_OVERLAP)
    conflict_order = sorted(
        after_duplicates,
        key=lambda i: (
            instances[i].touches_interior_edge,
            -instances[i].predicted_iou,
            -areas[i],
            instances[i].tile_index,
            wkb_keys[i],
        ),
    )
    kept = _keep_greedily(conflict_order, lambda i, j: overlap(i, j) > CONFLICT_OVERLAP)
    return [instances[i] for i in kept]


def _keep_greedily(order: list[int], clashes: Callable[[int, int], bool]) -> list[int]:
    kept: list[int] = []
    for i in order:
        if not any(clashes(i, j) for j in kept):
            kept.append(i)
    return kept


class ClassAwareAsSam(nn.Module):
    """A class-aware SAM behind the interface that Meta's generator expects of ``Sam``.

    ``SamAutomaticMaskGenerator`` can then drive nephroweb's class-aware model the way it
    drives SAM. The decoder gives one mask per prompt, where Meta's gives three. It
    reports a predicted IoU of -1 for a mask whose most probable class is
    ``background_class`` or whose class probability is below ``min_class_probability``.
    So the generator's ``pred_iou_thresh`` also applies the class filters of
    ``ml.segmentation``. Each prompt decodes its own copy of the image embedding, as in
    Meta's decoder.
    """

    mask_threshold = 0.0
    image_format = "RGB"

    def __init__(
        self, model: ClassAwareSam, background_class: str | None, min_class_probability: float
    ) -> None:
        super().__init__()
        self.model = model
        self.image_encoder = _ClassAwareEncoder(model)
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = _ClassAwareDecoder(model, background_class, min_class_probability)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """Pad a (1, 3, h, w) 0..255 image to the model size with the mean colour.

        ``Sam.preprocess`` normalises, then pads with zeros; the class-aware model
        normalises inside ``embed_images``, so padding with the mean gives the same input.
        """
        size = self.model.image_size
        height, width = image.shape[-2:]
        padded = self.model.pixel_mean.reshape(1, 3, 1, 1).expand(1, 3, size, size).clone()
        padded[..., :height, :width] = image
        return padded

    def postprocess_masks(
        self, masks: torch.Tensor, input_size: tuple[int, ...], original_size: tuple[int, ...]
    ) -> torch.Tensor:
        """Upsample low-resolution logits to the original image, as ``Sam.postprocess_masks``."""
        size = self.model.image_size
        masks = F.interpolate(masks, (size, size), mode="bilinear", align_corners=False)
        masks = masks[..., : input_size[0], : input_size[1]]
        return F.interpolate(masks, original_size, mode="bilinear", align_corners=False)


class _ClassAwareEncoder(nn.Module):
    def __init__(self, model: ClassAwareSam) -> None:
        super().__init__()
        self.model = model
        self.img_size = model.image_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.embed_images(images)


class _ClassAwareDecoder(nn.Module):
    def __init__(
        self, model: ClassAwareSam, background_class: str | None, min_class_probability: float
    ) -> None:
        super().__init__()
        self.model = model
        names = list(model.class_names)
        self.background_index = names.index(background_class) if background_class else -1
        self.min_class_probability = min_class_probability

    def forward(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        multimask_output: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = sparse_prompt_embeddings.shape[0]
        output = self.model.mask_decoder(
            image_embeddings.expand(prompts, -1, -1, -1),
            image_pe,
            sparse_prompt_embeddings,
            dense_prompt_embeddings,
        )
        probabilities, classes = torch.softmax(output.class_logits, dim=1).max(dim=1)
        rejected = (classes == self.background_index) | (
            probabilities < self.min_class_probability
        )
        iou = output.iou_pred.masked_fill(rejected[:, None], -1.0)
        return output.mask_logits, iou
