"""A small class-aware SAM that learns the synthetic sample slide on a CPU, for the offline demo.

No official SAM checkpoint can be downloaded offline, so the demo trains its own model
from random weights on the slide of ``ml.sample_slide``, whose tubules and glomeruli are
known circles. The recipe:

1. Read the slide at ``DEMO_MPP`` and cut it into crops of ``DEMO_TILE_PX``, the tile
   size of ``demo_segmentation_settings``, so training crops match the segmentation tiles.
2. Each crop's objects become instance masks of "tubule" or "glomerulus". Two discs of
   radius 10 px on interstitium and glass, away from every object, become "background"
   instances, so that grid prompts off any object are dropped by ``segment_slide``.
3. Train with ``demo_training_config``: single-point prompts (the prompts of
   ``segment_slide``), the prompt encoder and decoder trainable from random weights, the
   ImageNet EfficientNet-Lite0 encoder frozen so that its embeddings are cached, no
   augmentation.

``measure_demo_model`` segments the slide with ``demo_segmentation_settings`` and
reports, per class, the share of known objects matched by a prediction at IoU >= 0.5
and the share of matched objects given the right class.

Measured with ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/train_demo_model.py`` on a
2-core x86_64 CPU shared with other jobs: 40 epochs (1760 steps on 41 crops, 704
instances) took 245 s and brought the mask Dice loss from 0.96 to 0.34. ``segment_slide``
then kept 905 instances and matched 222 of 266 objects at IoU 0.5 (tubule 0.854,
glomerulus 0.833), all with the right class. With one prediction per object, precision
at IoU 0.5 is therefore at most 222 / 905 = 0.25.

The earlier recipe used six background discs of radius 5 px per crop, flips, rotations
and colour jitter. Its Dice loss stayed at 0.90 for 3300 steps and it segmented nothing.

NOTE: training and measuring both use the whole slide. Recall on the slide's right half
after training on the left half only, as the app's demo does, was not measured.

Usage::

    truth = write_sample_slide(path)
    model = build_demo_model()
    train(model, demo_training_samples(truth), [], demo_training_config(), folder)
    measured = measure_demo_model(model, truth)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from safetensors import SafetensorError
from safetensors.torch import load_file
from shapely.strtree import STRtree

from ml.class_aware import ClassAwareSam
from ml.efficientnet_lite import build_efficientnet_class_aware, efficientnet_architecture
from ml.errors import CheckpointError
from ml.sam import state_dict_problems
from ml.sample_slide import SampleObject, SampleTruth
from ml.segmentation import SegmentationSettings, segment_slide
from ml.slide import open_slide
from ml.tiling import tile_grid
from ml.tissue import detect_tissue
from ml.training_config import AugmentConfig, TrainingConfig
from ml.training_data import TrainingSample

logger = logging.getLogger(__name__)

DEMO_CLASS_NAMES = ("tubule", "glomerulus", "background")
# At 2 µm/px a tubule of the sample slide is 18..30 px across and a glomerulus 80..100 px.
DEMO_MPP = 2.0
DEMO_TILE_PX = 256

# EfficientNet-Lite0 with ImageNet weights up to stride 16 gives a 16 x 16 embedding grid
# and 64 x 64 mask logits for the 256 px input. It is frozen, so each crop is encoded once
# per flip and rotation and a training step runs only the prompt encoder and decoder. A frozen
# random 2-block ViT of width 64 in its place left the Dice loss at 0.90 and the class
# loss near chance (1.0) after 37 epochs (about 1000 steps) on this slide.
DEMO_ARCHITECTURE = efficientnet_architecture(DEMO_TILE_PX)

# Background instances per crop: discs of this radius, at least this far from any object.
# With the training settings of demo_training_config on all 41 crops, six discs of radius
# 5 px per crop kept the mask Dice loss at 0.90 for 400 steps, so the decoder learnt no
# masks. Two discs of radius 10 px let it fall to 0.57 in the same 400 steps, and no
# background discs to 0.52.
BACKGROUND_DISCS_PER_CROP = 2
BACKGROUND_DISC_RADIUS_PX = 10
BACKGROUND_CLEARANCE_PX = 8
CROP_OVERLAP_PX = 64


@dataclass(frozen=True)
class DemoMeasurement:
    """Segmentation quality of a model on the sample slide.

    Attributes:
        recall_per_class: Per sample label, the share of objects that some predicted
            instance overlaps with IoU >= 0.5.
        class_accuracy: Share of matched objects whose best match has the right class.
        objects: Known objects per label.
        predictions: Instances that ``segment_slide`` kept.
    """

    recall_per_class: dict[str, float]
    class_accuracy: float
    objects: dict[str, int]
    predictions: int

    @property
    def recall(self) -> float:
        """Share of all known objects matched at IoU >= 0.5."""
        total = sum(self.objects.values())
        return sum(self.recall_per_class[name] * count for name, count in self.objects.items()) / total


def build_demo_model(seed: int = 0) -> ClassAwareSam:
    """Build the demo model: ImageNet EfficientNet-Lite0, then a prompt encoder and decoder
    with random weights drawn from ``seed``."""
    return build_efficientnet_class_aware(DEMO_CLASS_NAMES, DEMO_TILE_PX, seed)


def load_demo_model(weights_path: str | Path) -> ClassAwareSam:
    """Load demo weights saved by ``train`` (``best.safetensors``) into a new demo model.

    ``ml.model_files.load_class_aware`` cannot read them because it always builds a ViT
    image encoder.

    Raises:
        CheckpointError: The file is missing, unreadable or contains other tensors.
    """
    path = Path(weights_path)
    try:
        tensors = load_file(path)
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"Cannot read demo model weights {path}: {exc}") from exc
    model = build_demo_model()
    problems = state_dict_problems(model, tensors)
    if problems:
        raise CheckpointError(
            f"{path} does not contain demo model weights: {'; '.join(problems)}. Train the demo "
            "model again with demo_training_config."
        )
    model.load_state_dict(tensors, strict=True)
    model.eval()
    return model


def demo_training_config(epochs: int = 40, seed: int = 0) -> TrainingConfig:
    """Return the demo's training settings: the decoder and prompt encoder train on single
    points, the pretrained image encoder stays frozen."""
    return TrainingConfig(
        epochs=epochs,
        batch_size=16,
        learning_rate=1e-3,
        warmup_steps=20,
        points_per_instance=1,
        use_box_prompts=False,
        freeze_image_encoder=True,
        freeze_prompt_encoder=False,
        class_weights="balanced",
        augment=AugmentConfig(flips=False, rotations_90=False, color_jitter=0.0),
        early_stopping_patience=None,
        seed=seed,
        device="cpu",
    )


def demo_segmentation_settings() -> SegmentationSettings:
    """Return segmentation settings that fit the demo model and the sample slide's sizes.

    A glomerulus covers up to 12% of a 256 px tile at 2 µm/px, so the maximum mask area
    is 20% of the tile instead of the default 4%. A 16 x 16 prompt grid puts a point every
    16 px, less than the smallest tubule's 18 px.
    """
    return SegmentationSettings(
        mpp=DEMO_MPP,
        tile_px=DEMO_TILE_PX,
        points_per_side=16,
        points_per_batch=64,
        max_area_fraction=0.2,
        min_predicted_iou=0.5,
        min_class_probability=0.5,
        background_class="background",
    )


def demo_training_samples(
    truth: SampleTruth, max_crops: int | None = None, seed: int = 0
) -> list[TrainingSample]:
    """Cut the sample slide into crops with their object and background instances.

    Args:
        truth: The slide written by ``write_sample_slide``, with its objects.
        max_crops: Keep only the first this many crops that contain an object, or all.
        seed: Seed of the background disc positions.
    """
    rng = np.random.default_rng(seed)
    class_index = {name: index for index, name in enumerate(DEMO_CLASS_NAMES)}
    samples = []
    with open_slide(truth.path) as slide:
        frame = slide.working_frame(DEMO_MPP)
        for tile in tile_grid(frame.width_px, frame.height_px, DEMO_TILE_PX, CROP_OVERLAP_PX):
            rgb = frame.read(slide, tile.x_px, tile.y_px, tile.w_px, tile.h_px)
            masks, labels = [], []
            for obj in truth.objects:
                mask = _object_mask(obj, frame.from_level0, tile.x_px, tile.y_px, rgb.shape[:2])
                if mask.any():
                    masks.append(mask)
                    labels.append(class_index[obj.label])
            if not masks:
                continue
            for disc in _background_discs(np.any(masks, axis=0), rng):
                masks.append(disc)
                labels.append(class_index["background"])
            samples.append(
                TrainingSample(rgb, np.stack(masks), np.asarray(labels, dtype=np.int64))
            )
            if max_crops is not None and len(samples) == max_crops:
                break
    logger.info(
        "Demo training samples: %d crops of %d px at %g µm/px, %d instances",
        len(samples), DEMO_TILE_PX, DEMO_MPP, sum(sample.num_instances for sample in samples),
    )
    return samples


def _object_mask(
    obj: SampleObject, from_level0, x_px: float, y_px: float, shape: tuple[int, int]
) -> np.ndarray:
    """Rasterise one circular object into a crop whose top-left is (x_px, y_px) working px."""
    center = from_level0(*obj.center_level0)
    edge = from_level0(obj.center_level0[0] + obj.radius_level0, obj.center_level0[1])
    radius_px = edge.x_px - center.x_px
    # cv2 draws on pixel centres, so the pixel-edge position moves by half a pixel.
    center_x = center.x_px - x_px - 0.5
    center_y = center.y_px - y_px - 0.5
    mask = np.zeros(shape, dtype=np.uint8)
    shift = 4
    scale = 1 << shift
    cv2.circle(
        mask,
        (round(center_x * scale), round(center_y * scale)),
        round(radius_px * scale),
        1,
        thickness=-1,
        lineType=cv2.LINE_8,
        shift=shift,
    )
    return mask.astype(bool)


def _background_discs(objects_mask: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
    """Return up to ``BACKGROUND_DISCS_PER_CROP`` disc masks clear of every object."""
    free = (~objects_mask).astype(np.uint8)
    clearance = cv2.distanceTransform(free, cv2.DIST_L2, 5)
    rows, cols = np.nonzero(clearance >= BACKGROUND_CLEARANCE_PX + BACKGROUND_DISC_RADIUS_PX)
    if len(rows) == 0:
        return []
    chosen = rng.choice(len(rows), size=min(BACKGROUND_DISCS_PER_CROP, len(rows)), replace=False)
    discs = []
    for index in chosen:
        disc = np.zeros(objects_mask.shape, dtype=np.uint8)
        cv2.circle(disc, (int(cols[index]), int(rows[index])), BACKGROUND_DISC_RADIUS_PX, 1, -1)
        discs.append(disc.astype(bool))
    return discs


def measure_demo_model(
    model: ClassAwareSam,
    truth: SampleTruth,
    settings: SegmentationSettings | None = None,
) -> DemoMeasurement:
    """Segment the sample slide and match the predictions to its known objects."""
    settings = settings or demo_segmentation_settings()
    model.eval()
    with open_slide(truth.path) as slide:
        result = segment_slide(slide, model, settings, detect_tissue(slide))
    predictions = result.instances
    tree = STRtree([labeled.polygon_level0 for labeled in predictions])

    found: dict[str, int] = {}
    objects: dict[str, int] = {}
    right_class = 0
    for obj in truth.objects:
        objects[obj.label] = objects.get(obj.label, 0) + 1
        best_iou, best_class = _best_match(obj, tree, predictions)
        if best_iou >= 0.5:
            found[obj.label] = found.get(obj.label, 0) + 1
            right_class += best_class == obj.label
    matched = sum(found.values())
    measurement = DemoMeasurement(
        recall_per_class={name: found.get(name, 0) / count for name, count in objects.items()},
        class_accuracy=right_class / matched if matched else 0.0,
        objects=objects,
        predictions=len(predictions),
    )
    logger.info("Demo model on the sample slide: %s", measurement)
    return measurement


def _best_match(obj: SampleObject, tree: STRtree, predictions: Sequence) -> tuple[float, str]:
    """Return the highest IoU of a prediction with ``obj`` and that prediction's class."""
    best_iou, best_class = 0.0, ""
    for index in tree.query(obj.polygon_level0):
        polygon = predictions[int(index)].polygon_level0
        union = polygon.union(obj.polygon_level0).area
        iou = polygon.intersection(obj.polygon_level0).area / union if union else 0.0
        if iou > best_iou:
            best_iou, best_class = iou, predictions[int(index)].class_name
    return best_iou, best_class
