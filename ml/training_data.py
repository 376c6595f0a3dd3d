"""Training samples, image-level augmentation and prompt batches for class-aware SAM.

A ``TrainingSample`` is one image with its instance masks and class indices, from any
source (tiles of a slide, a test fixture). Before training, each sample is resized so its
longer side equals the model input size S and padded at the bottom and right to S x S,
as SAM's own preprocessing does. Augmentation then applies one of the eight flip and
90-degree rotation transforms to image and masks alike, plus an optional colour jitter of
the image.

Coordinate frame: every point and box produced here is in model-input pixels, (x, y)
in the S x S frame that the image encoder receives, and boxes are xyxy.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ml.errors import SettingsError

if TYPE_CHECKING:
    from ml.training import TrainingConfig

logger = logging.getLogger(__name__)

# Transform ids 0..7: the number of counter-clockwise quarter turns (0..3), and 4 added
# when the image is flipped left-right before turning. Id 0 is the identity.
IDENTITY_TRANSFORM = 0
NUM_TRANSFORMS = 8


@dataclass(frozen=True)
class TrainingSample:
    """One image with its ground-truth instances.

    Attributes:
        image_rgb: (H, W, 3) uint8 RGB image.
        instance_masks: (K, H, W) bool, one mask per instance. K may be 0.
        class_indices: (K,) integer class index of each instance, in the model's logit order.
    """

    image_rgb: np.ndarray
    instance_masks: np.ndarray
    class_indices: np.ndarray

    def __post_init__(self) -> None:
        image = self.image_rgb
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
            raise SettingsError(
                f"image_rgb has type {type(image).__name__} dtype {getattr(image, 'dtype', None)}, "
                "expected a uint8 numpy array. Convert the image with np.asarray(..., np.uint8)."
            )
        if image.ndim != 3 or image.shape[2] != 3 or min(image.shape[:2]) < 1:
            raise SettingsError(
                f"image_rgb has shape {image.shape}, expected (H, W, 3) RGB. Drop any alpha "
                "channel and pass one image."
            )

        masks = self.instance_masks
        if not isinstance(masks, np.ndarray) or masks.dtype != np.bool_:
            raise SettingsError(
                f"instance_masks has dtype {getattr(masks, 'dtype', None)}, expected bool. "
                "Pass masks.astype(bool)."
            )
        if masks.ndim != 3 or masks.shape[1:] != image.shape[:2]:
            raise SettingsError(
                f"instance_masks has shape {masks.shape}, expected (K, {image.shape[0]}, "
                f"{image.shape[1]}) to match image_rgb."
            )

        classes = np.asarray(self.class_indices)
        if classes.shape != (masks.shape[0],) or (
            classes.size and not np.issubdtype(classes.dtype, np.integer)
        ):
            raise SettingsError(
                f"class_indices has shape {classes.shape} and dtype {classes.dtype}, expected "
                f"({masks.shape[0]},) integers, one per instance mask."
            )
        if classes.size and classes.min() < 0:
            raise SettingsError(
                f"class_indices contains {int(classes.min())}. Class indices start at 0."
            )

        empty = [index for index in range(masks.shape[0]) if not masks[index].any()]
        if empty:
            raise SettingsError(
                f"instance_masks {empty} are empty. Drop instances without pixels before training."
            )
        object.__setattr__(self, "class_indices", classes.astype(np.int64))

    @property
    def num_instances(self) -> int:
        """Number of instances K."""
        return int(self.instance_masks.shape[0])


@dataclass(frozen=True)
class AugmentationChoice:
    """Augmentation of one image for one epoch.

    Attributes:
        transform_id: Flip and rotation transform, 0..7 (0 is the identity).
        color_scales: (3,) factors on each RGB channel's optical density, 1 for none.
    """

    transform_id: int
    color_scales: tuple[float, float, float]


def derive_seed(*parts: int | str) -> int:
    """Return a 63-bit seed that depends only on ``parts``, stable across processes."""
    text = "/".join(str(part) for part in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def choose_augmentation(
    seed: int,
    epoch: int,
    sample_index: int,
    *,
    flips: bool,
    rotations_90: bool,
    color_jitter: float,
) -> AugmentationChoice:
    """Draw the augmentation of one sample in one epoch, deterministic for the arguments.

    The colour jitter depends on ``(seed, sample_index, transform_id)`` and not on the
    epoch, so each cached (image, transform) embedding always shows the same colours.
    """
    rng = np.random.default_rng(derive_seed(seed, "transform", epoch, sample_index))
    turns = int(rng.integers(4)) if rotations_90 else 0
    flipped = bool(rng.integers(2)) if flips else False
    transform_id = turns + (4 if flipped else 0)
    return AugmentationChoice(
        transform_id, color_scales_for(seed, sample_index, transform_id, color_jitter)
    )


def color_scales_for(
    seed: int, sample_index: int, transform_id: int, color_jitter: float
) -> tuple[float, float, float]:
    """Draw per-channel optical-density factors uniformly from [1 - jitter, 1 + jitter]."""
    if color_jitter == 0:
        return (1.0, 1.0, 1.0)
    rng = np.random.default_rng(derive_seed(seed, "color", sample_index, transform_id))
    low, high = 1.0 - color_jitter, 1.0 + color_jitter
    return tuple(float(value) for value in rng.uniform(low, high, size=3))


def apply_transform(array: np.ndarray, transform_id: int) -> np.ndarray:
    """Apply flip and rotation transform ``transform_id`` to the first two axes (H, W)."""
    if not 0 <= transform_id < NUM_TRANSFORMS:
        raise SettingsError(f"transform_id {transform_id} is invalid. Use 0..7.")
    if transform_id >= 4:
        array = array[:, ::-1]
    return np.ascontiguousarray(np.rot90(array, k=transform_id % 4, axes=(0, 1)))


def jitter_colors(image_rgb: np.ndarray, color_scales: tuple[float, float, float]) -> np.ndarray:
    """Scale each channel's optical density, a simple stand-in for stain variation.

    Optical density is ``-log((I + 1) / 256)``, so a factor above 1 darkens that channel's
    stain and white background stays white.
    """
    if color_scales == (1.0, 1.0, 1.0):
        return image_rgb
    density = -np.log((image_rgb.astype(np.float32) + 1.0) / 256.0)
    density *= np.asarray(color_scales, dtype=np.float32)
    restored = 256.0 * np.exp(-density) - 1.0
    return np.clip(np.rint(restored), 0, 255).astype(np.uint8)


def resized_shape(height: int, width: int, image_size: int) -> tuple[int, int]:
    """Return the (H, W) that fits the longer side to ``image_size``, as SAM's resize does."""
    scale = image_size / max(height, width)
    return max(1, int(height * scale + 0.5)), max(1, int(width * scale + 0.5))


def resize_and_pad_image(image_rgb: np.ndarray, image_size: int) -> np.ndarray:
    """Resize the longer side to ``image_size`` (bilinear) and zero-pad to S x S."""
    height, width = resized_shape(*image_rgb.shape[:2], image_size)
    resized = cv2.resize(image_rgb, (width, height), interpolation=cv2.INTER_LINEAR)
    padded = np.zeros((image_size, image_size, 3), dtype=np.uint8)
    padded[:height, :width] = resized
    return padded


def resize_and_pad_mask(mask: np.ndarray, image_size: int) -> np.ndarray:
    """Resize a bool mask like its image (nearest neighbour) and pad to S x S with False."""
    height, width = resized_shape(*mask.shape, image_size)
    resized = cv2.resize(
        mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST
    ).astype(bool)
    padded = np.zeros((image_size, image_size), dtype=bool)
    padded[:height, :width] = resized
    return padded


def model_input_image(
    sample: TrainingSample, choice: AugmentationChoice, image_size: int
) -> np.ndarray:
    """Return the (S, S, 3) uint8 image that the encoder receives for ``choice``."""
    image = jitter_colors(sample.image_rgb, choice.color_scales)
    return apply_transform(resize_and_pad_image(image, image_size), choice.transform_id)


def model_input_mask(
    sample: TrainingSample, instance_index: int, transform_id: int, image_size: int
) -> np.ndarray:
    """Return instance ``instance_index``'s (S, S) bool mask in the model-input frame."""
    mask = resize_and_pad_mask(sample.instance_masks[instance_index], image_size)
    return apply_transform(mask, transform_id)


def sample_points(mask: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Draw ``count`` foreground points uniformly, with replacement, from the mask's pixels.

    Returns:
        (count, 2) float32 (x, y) pixel indices. SAM's prompt encoder adds the half-pixel
        shift to the pixel centre itself.
    """
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise SettingsError("Cannot sample points from an empty mask. Drop empty instances.")
    picks = rng.integers(rows.size, size=count)
    return np.stack([cols[picks], rows[picks]], axis=1).astype(np.float32)


def jittered_box_xyxy(
    mask: np.ndarray, jitter_fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """Return the mask's bounding box with each edge moved by Gaussian noise.

    The noise has a standard deviation of ``jitter_fraction`` times the box side along
    that axis, at most 20 px, and the box is clipped to the image. The box spans pixel
    edges: a one-pixel mask at (x, y) gives (x, y, x + 1, y + 1) before jitter.

    Returns:
        (4,) float32 xyxy box in the mask's pixel frame.
    """
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise SettingsError("Cannot draw a box around an empty mask. Drop empty instances.")
    box = np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], dtype=np.float32)
    if jitter_fraction > 0:
        side = np.array([box[2] - box[0], box[3] - box[1]] * 2, dtype=np.float32)
        sigma = np.minimum(jitter_fraction * side, 20.0)
        box = box + rng.normal(0.0, 1.0, size=4).astype(np.float32) * sigma
    height, width = mask.shape
    box[[0, 2]] = np.clip(box[[0, 2]], 0, width)
    box[[1, 3]] = np.clip(box[[1, 3]], 0, height)
    # Keep at least one pixel between the edges after jitter and clipping.
    box[2] = max(box[2], min(box[0] + 1, width))
    box[3] = max(box[3], min(box[1] + 1, height))
    return box


def balanced_class_weights(samples: list[TrainingSample], num_classes: int) -> np.ndarray:
    """Return inverse-frequency class weights normalised to a mean of 1 over the classes.

    A class without instances counts as one instance, so it gets the largest weight.
    """
    counts = np.zeros(num_classes, dtype=np.float64)
    for sample in samples:
        counts += np.bincount(sample.class_indices, minlength=num_classes)[:num_classes]
    inverse = 1.0 / np.maximum(counts, 1.0)
    return (inverse / inverse.mean()).astype(np.float32)


def samples_fingerprint(samples: list[TrainingSample]) -> str:
    """Return a SHA-256 over every sample's image, masks and classes, in order."""
    digest = hashlib.sha256()
    for sample in samples:
        for array in (sample.image_rgb, sample.instance_masks, sample.class_indices):
            digest.update(str(array.shape).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class PromptItem:
    """One instance of one sample, the unit that becomes a prompt."""

    sample_index: int
    instance_index: int


@dataclass(frozen=True)
class PromptBatch:
    """Model inputs and targets for N prompts, on the training device.

    Attributes:
        point_coords: (N, P, 2) points (x, y) in model-input pixels, or None.
        point_labels: (N, P) ones, or None.
        boxes_xyxy: (N, 4) boxes in model-input pixels, or None.
        target_masks: (N, 1, 4G, 4G) ground truth in 0..1 at the logit resolution.
        target_classes: (N,) class indices.
    """

    point_coords: torch.Tensor | None
    point_labels: torch.Tensor | None
    boxes_xyxy: torch.Tensor | None
    target_masks: torch.Tensor
    target_classes: torch.Tensor


def prompt_items(samples: Sequence[TrainingSample]) -> list[PromptItem]:
    """List every instance of every sample, in sample order."""
    return [
        PromptItem(sample_index, instance_index)
        for sample_index, sample in enumerate(samples)
        for instance_index in range(sample.num_instances)
    ]


def build_prompt_batch(
    items: Sequence[PromptItem],
    samples: Sequence[TrainingSample],
    transform_ids: Mapping[int, int],
    rng_seeds: Sequence[int],
    config: TrainingConfig,
    image_size: int,
    logit_size: int,
    device: torch.device,
) -> PromptBatch:
    """Sample the prompts of ``items`` inside their transformed masks.

    Args:
        transform_ids: Flip and rotation transform of each sample index in this epoch.
        rng_seeds: One seed per item for its points and box jitter.
        logit_size: Side 4G of the mask logits, the resolution of the targets.
    """
    points, boxes, masks, classes = [], [], [], []
    for item, item_seed in zip(items, rng_seeds, strict=True):
        sample = samples[item.sample_index]
        mask = model_input_mask(
            sample, item.instance_index, transform_ids[item.sample_index], image_size
        )
        rng = np.random.default_rng(item_seed)
        if config.points_per_instance:
            points.append(sample_points(mask, config.points_per_instance, rng))
        if config.use_box_prompts:
            boxes.append(jittered_box_xyxy(mask, config.box_jitter_fraction, rng))
        masks.append(mask)
        classes.append(int(sample.class_indices[item.instance_index]))

    full_masks = torch.from_numpy(np.stack(masks)).unsqueeze(1).float()
    target_masks = F.interpolate(full_masks, size=(logit_size, logit_size), mode="area")
    point_coords = torch.from_numpy(np.stack(points)).to(device) if points else None
    point_labels = (
        torch.ones(point_coords.shape[:2], dtype=torch.int64, device=device)
        if point_coords is not None
        else None
    )
    return PromptBatch(
        point_coords=point_coords,
        point_labels=point_labels,
        boxes_xyxy=torch.from_numpy(np.stack(boxes)).to(device) if boxes else None,
        target_masks=target_masks.to(device),
        target_classes=torch.tensor(classes, dtype=torch.int64, device=device),
    )
