"""Settings of a training run: the validated, JSON-ready configuration and the schedule.

Every field is checked when the config is created, and ``from_dict`` rejects keys it
does not know, so a typo in a stored or submitted config fails loudly instead of being
ignored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ml.errors import SettingsError


def _check_int(name: str, value: Any, minimum: int, fix: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise SettingsError(
            f"{name} is {value!r}, expected a whole number of at least {minimum}. {fix}".strip()
        )


def _check_float(name: str, value: Any, minimum: float, maximum: float = math.inf) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not minimum <= value <= maximum
    ):
        allowed = f"from {minimum} to {maximum}" if math.isfinite(maximum) else f">= {minimum}"
        raise SettingsError(f"{name} is {value!r}, expected a finite number {allowed}.")


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise SettingsError(f"{name} is {value!r}, expected true or false.")


def _from_mapping(cls: type, data: Any, name: str) -> Any:
    """Build dataclass ``cls`` from a mapping, rejecting keys it does not define."""
    if not isinstance(data, Mapping):
        raise SettingsError(f"{name} is {data!r}, expected a mapping of field names to values.")
    known = {spec.name for spec in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SettingsError(
            f"{name} contains unknown keys {unknown}. Allowed keys are {sorted(known)}."
        )
    return cls(**data)


@dataclass(frozen=True)
class LossWeights:
    """Factors of the four loss terms in the total loss. Each is >= 0 and one is > 0."""

    dice: float = 1.0
    bce: float = 1.0
    ce: float = 1.0
    iou_mse: float = 1.0

    def __post_init__(self) -> None:
        for spec in fields(self):
            _check_float(f"loss_weights.{spec.name}", getattr(self, spec.name), 0.0)
        if not any(getattr(self, spec.name) > 0 for spec in fields(self)):
            raise SettingsError("loss_weights are all 0. Give at least one loss a weight above 0.")


@dataclass(frozen=True)
class AugmentConfig:
    """Image-level augmentation, applied to the image and its masks alike.

    Attributes:
        flips: Flip left-right with probability 0.5.
        rotations_90: Rotate by 0, 90, 180 or 270 degrees, each equally likely.
        color_jitter: Half-width of the uniform factor on each channel's optical
            density, 0 (off) to 0.5. A value of 0.1 scales the stain density by 0.9..1.1.
    """

    flips: bool = True
    rotations_90: bool = True
    color_jitter: float = 0.05

    def __post_init__(self) -> None:
        _check_bool("augment.flips", self.flips)
        _check_bool("augment.rotations_90", self.rotations_90)
        _check_float("augment.color_jitter", self.color_jitter, 0.0, 0.5)


@dataclass(frozen=True)
class TrainingConfig:
    """Settings of one training run. Saved with each checkpoint and model.

    Attributes:
        epochs: Passes over every training instance.
        batch_size: Prompts per forward pass, drawn from any images.
        learning_rate: Peak AdamW learning rate, reached after the warm-up.
        weight_decay: AdamW decoupled weight decay.
        warmup_steps: Optimizer steps of linear warm-up, followed by cosine decay to 0.
        grad_accumulation: Batches whose gradients add up to one optimizer step.
        points_per_instance: Foreground points per prompt, 0 for box-only prompts.
        use_box_prompts: Add each instance's jittered bounding box to its prompt.
        box_jitter_fraction: Standard deviation of each box edge's shift, as a fraction
            of the box side (at most 20 px).
        freeze_image_encoder: Keep the image encoder fixed and cache its embeddings.
        freeze_prompt_encoder: Keep the prompt encoder fixed.
        loss_weights: Factors of the loss terms.
        class_weights: "balanced" weighs cross-entropy by inverse class frequency in
            the training samples; None weighs every class 1.
        augment: Flip, rotation and colour augmentation.
        early_stopping_patience: Stop after this many epochs without a lower validation
            loss; None never stops early. Needs validation samples.
        seed: Seed of every random draw of the run.
        device: "cpu" or "cuda".
        bf16_autocast: Run forward passes in bfloat16 autocast (CUDA only).
        embedding_cache_max_entries: Most cached image embeddings, least recently used
            dropped first; None keeps all. One entry is C x G x G float32 on the CPU,
            4 MiB for the official models (256 x 64 x 64).
    """

    epochs: int = 10
    batch_size: int = 16
    learning_rate: float = 1e-4
    weight_decay: float = 0.01
    warmup_steps: int = 20
    grad_accumulation: int = 1
    points_per_instance: int = 1
    use_box_prompts: bool = True
    box_jitter_fraction: float = 0.1
    freeze_image_encoder: bool = True
    freeze_prompt_encoder: bool = True
    loss_weights: LossWeights = field(default_factory=LossWeights)
    class_weights: str | None = "balanced"
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    early_stopping_patience: int | None = 5
    seed: int = 0
    device: str = "cpu"
    bf16_autocast: bool = False
    embedding_cache_max_entries: int | None = None

    def __post_init__(self) -> None:
        _check_int("epochs", self.epochs, 1)
        _check_int("batch_size", self.batch_size, 1)
        _check_float("learning_rate", self.learning_rate, 0.0, 1.0)
        if self.learning_rate == 0:
            raise SettingsError("learning_rate is 0, so nothing would train. Give a value > 0.")
        _check_float("weight_decay", self.weight_decay, 0.0)
        _check_int("warmup_steps", self.warmup_steps, 0)
        _check_int("grad_accumulation", self.grad_accumulation, 1)

        _check_int("points_per_instance", self.points_per_instance, 0)
        _check_bool("use_box_prompts", self.use_box_prompts)
        if self.points_per_instance == 0 and not self.use_box_prompts:
            raise SettingsError(
                "points_per_instance is 0 and use_box_prompts is false, so prompts would be "
                "empty. Set points_per_instance to at least 1 or use_box_prompts to true."
            )
        _check_float("box_jitter_fraction", self.box_jitter_fraction, 0.0, 1.0)

        _check_bool("freeze_image_encoder", self.freeze_image_encoder)
        _check_bool("freeze_prompt_encoder", self.freeze_prompt_encoder)
        if not isinstance(self.loss_weights, LossWeights):
            raise SettingsError(
                f"loss_weights is {self.loss_weights!r}, expected a LossWeights. "
                "Use TrainingConfig.from_dict for plain mappings."
            )
        if self.class_weights not in ("balanced", None):
            raise SettingsError(
                f"class_weights is {self.class_weights!r}, expected 'balanced' or None."
            )
        if not isinstance(self.augment, AugmentConfig):
            raise SettingsError(
                f"augment is {self.augment!r}, expected an AugmentConfig. "
                "Use TrainingConfig.from_dict for plain mappings."
            )
        if self.early_stopping_patience is not None:
            _check_int(
                "early_stopping_patience", self.early_stopping_patience, 1,
                "Use None to turn early stopping off.",
            )

        _check_int("seed", self.seed, 0)
        if self.device not in ("cpu", "cuda"):
            raise SettingsError(f"device is {self.device!r}, expected 'cpu' or 'cuda'.")
        _check_bool("bf16_autocast", self.bf16_autocast)
        if self.bf16_autocast and self.device != "cuda":
            raise SettingsError(
                f"bf16_autocast is true with device {self.device!r}. It is supported only "
                "with device 'cuda'; set it to false on the CPU."
            )
        if self.embedding_cache_max_entries is not None:
            _check_int(
                "embedding_cache_max_entries", self.embedding_cache_max_entries, 1,
                "Use None for no limit.",
            )

    def to_dict(self) -> dict[str, Any]:
        """Return the settings as JSON-ready nested dicts."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainingConfig:
        """Build a config from ``to_dict`` output. Missing keys take their defaults.

        Raises:
            SettingsError: A key is unknown, at the top level or inside ``loss_weights``
                or ``augment``, or a value is invalid.
        """
        if not isinstance(data, Mapping):
            raise SettingsError(f"Training config is {data!r}, expected a mapping.")
        values = dict(data)
        if "loss_weights" in values:
            values["loss_weights"] = _from_mapping(LossWeights, values["loss_weights"], "loss_weights")
        if "augment" in values:
            values["augment"] = _from_mapping(AugmentConfig, values["augment"], "augment")
        return _from_mapping(cls, values, "Training config")


def learning_rate_at(step: int, total_steps: int, config: TrainingConfig) -> float:
    """Return the learning rate of 0-based optimizer step ``step``.

    The rate rises linearly to ``learning_rate`` over ``warmup_steps`` steps, then falls
    along a half cosine that would reach 0 at ``total_steps``.
    """
    peak = config.learning_rate
    if step < config.warmup_steps:
        return peak * (step + 1) / config.warmup_steps
    decay_steps = max(1, total_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / decay_steps)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))
