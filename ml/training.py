"""Fine-tune a class-aware SAM on instance masks with known classes.

Each ground-truth instance gives one prompt per epoch: ``points_per_instance`` foreground
points drawn uniformly from its mask, and, when ``use_box_prompts`` is set, its bounding
box with a small jitter. The model predicts one mask, its IoU and class logits per prompt.

Losses, per prompt and averaged over a batch:

- Dice and BCE between the mask logits and the ground-truth mask. The mask is
  downsampled to the logit resolution (4G x 4G, 256 x 256 for the official models) by
  area averaging, so its border pixels are soft targets in 0..1. This avoids upsampling
  every logit map to S x S, which costs 16 times the memory.
- Cross-entropy between the class logits and the instance's class, optionally weighted
  by inverse class frequency.
- MSE between the IoU head and the IoU of the thresholded prediction (logit > 0) with the
  mask thresholded at 0.5. That IoU is computed without gradients.

With a frozen image encoder every image embedding is computed once per (image, flip and
rotation transform) and reused across epochs (``EmbeddingCache``). The colour jitter of a
cached embedding is therefore fixed per (image, transform), so an image is seen in at
most eight colour variants over the whole run. A trainable image encoder recomputes the
embeddings every step and gets the same augmentations, as the augmentation draw does not
depend on the cache.

Checkpoints go to ``checkpoint_dir`` after every epoch (see ``ml.training_checkpoints``)
and a later call with the same folder resumes after the last finished epoch. The random
draws of each epoch (order, augmentation, prompts) derive from ``(seed, epoch)``, so a
resumed run repeats exactly what an uninterrupted run would have done and a checkpoint
needs no generator state.

Usage::

    model, _ = from_sam(load_sam(checkpoint).model, ["glomerulus", "vessel"])
    config = TrainingConfig(epochs=20, batch_size=16, device="cuda", bf16_autocast=True)
    result = train(model, train_samples, val_samples, config, Path("runs/v7"))
    model, metadata = load_class_aware(result.checkpoint_path)
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ml.class_aware import ClassAwareSam, DecoderOutput, set_trainable
from ml.errors import NephrowebError, SettingsError
from ml.evaluation import EvaluationInstance, evaluate_instances
from ml.model_files import ClassAwareMetadata
# AugmentConfig is imported for callers that take every training name from this module.
from ml.training_config import AugmentConfig, LossWeights, TrainingConfig, learning_rate_at  # noqa: F401
# STATE_FILE, BEST_MODEL_FILE, RESUMABLE_CHANGES and EpochRecord keep their old import path.
from ml.training_checkpoints import (  # noqa: F401
    BEST_MODEL_FILE,
    RESUMABLE_CHANGES,
    STATE_FILE,
    EpochRecord,
    RunState,
    resume_run,
    run_metadata,
    save_checkpoint,
)
from ml.training_data import (
    IDENTITY_TRANSFORM,
    AugmentationChoice,
    PromptItem,
    TrainingSample,
    balanced_class_weights,
    build_prompt_batch,
    choose_augmentation,
    derive_seed,
    model_input_image,
    prompt_items,
    samples_fingerprint,
)

logger = logging.getLogger(__name__)

ProgressCallback = Callable[[int, int, Mapping[str, float]], None]


class TrainingError(NephrowebError, RuntimeError):
    """Training cannot continue, for example because a loss is not finite."""


# ---------------------------------------------------------------------------- losses


@dataclass(frozen=True)
class LossTerms:
    """Loss terms of one batch, each a scalar tensor, and their weighted sum ``total``."""

    dice: torch.Tensor
    bce: torch.Tensor
    ce: torch.Tensor
    iou_mse: torch.Tensor
    total: torch.Tensor

    def as_floats(self) -> dict[str, float]:
        """Return each term as a Python float."""
        return {spec.name: float(getattr(self, spec.name).detach()) for spec in fields(self)}


def dice_loss(probabilities: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Return the mean soft Dice loss of (N, ...) probabilities against targets in 0..1.

    Identical binary masks give exactly 0. Two empty masks also give 0.
    """
    probabilities = probabilities.flatten(1)
    targets = targets.flatten(1)
    intersection = (probabilities * targets).sum(dim=1)
    total = probabilities.sum(dim=1) + targets.sum(dim=1)
    smooth = 1.0
    return (1.0 - (2.0 * intersection + smooth) / (total + smooth)).mean()


def mask_iou(predicted: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Return the (N,) IoU of (N, ...) bool masks. Two empty masks have IoU 1."""
    predicted = predicted.flatten(1)
    targets = targets.flatten(1)
    intersection = (predicted & targets).sum(dim=1).float()
    union = (predicted | targets).sum(dim=1).float()
    return torch.where(union > 0, intersection / union.clamp(min=1), torch.ones_like(union))


def compute_losses(
    output: DecoderOutput,
    target_masks: torch.Tensor,
    target_classes: torch.Tensor,
    weights: LossWeights,
    class_weights: torch.Tensor | None = None,
) -> LossTerms:
    """Compute the four loss terms of a batch in float32.

    Args:
        output: Decoder output for N prompts.
        target_masks: (N, 1, 4G, 4G) ground truth in 0..1 at the logit resolution.
        target_classes: (N,) class index of each prompt's instance.
        weights: Factors of the terms in ``total``.
        class_weights: (num_classes,) cross-entropy weights, or None for equal weights.
    """
    logits = output.mask_logits.float()
    targets = target_masks.float()
    dice = dice_loss(torch.sigmoid(logits), targets)
    bce = F.binary_cross_entropy_with_logits(logits, targets)
    ce = F.cross_entropy(output.class_logits.float(), target_classes, weight=class_weights)
    with torch.no_grad():
        real_iou = mask_iou(logits > 0, targets >= 0.5)
    iou_mse = F.mse_loss(output.iou_pred.float()[:, 0], real_iou)
    total = (
        weights.dice * dice + weights.bce * bce + weights.ce * ce + weights.iou_mse * iou_mse
    )
    return LossTerms(dice=dice, bce=bce, ce=ce, iou_mse=iou_mse, total=total)


def check_finite(terms: LossTerms, epoch: int, step: int) -> None:
    """Raise ``TrainingError`` naming the step when any loss term is NaN or infinite."""
    values = terms.as_floats()
    bad = {name: value for name, value in values.items() if not math.isfinite(value)}
    if bad:
        raise TrainingError(
            f"Loss is not finite at epoch {epoch}, optimizer step {step}: {bad}. Lower "
            "learning_rate, turn bf16_autocast off, or check the training images for "
            "invalid values. Training resumes from the last checkpoint when started again."
        )


# ---------------------------------------------------------------------------- embeddings


class EmbeddingCache:
    """Image embeddings of a frozen image encoder, computed once per key and kept on the CPU.

    Keys name an image and its augmentation, for example ``("train", 3, transform_id)``.
    The cache assumes that the encoder does not change while it is used.

    Args:
        model: Model whose image encoder computes the embeddings.
        max_entries: Most entries kept, least recently used dropped first; None keeps all.
        autocast: Context manager factory wrapped around every encoder run.
    """

    def __init__(
        self,
        model: ClassAwareSam,
        max_entries: int | None = None,
        autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
    ) -> None:
        self._model = model
        self._max_entries = max_entries
        self._autocast = autocast
        self._entries: OrderedDict[Hashable, torch.Tensor] = OrderedDict()
        self.encoder_runs = 0
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable, make_image: Callable[[], np.ndarray]) -> torch.Tensor:
        """Return the (1, C, G, G) float32 CPU embedding of ``key``.

        ``make_image`` returns the (S, S, 3) uint8 model-input image and is called only
        when the key is not cached.
        """
        cached = self._entries.get(key)
        if cached is not None:
            self._entries.move_to_end(key)
            self.hits += 1
            return cached
        embedding = embed_image(self._model, make_image(), self._autocast).cpu()
        self.encoder_runs += 1
        self._entries[key] = embedding
        if self._max_entries is not None and len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
        return embedding


def embed_image(
    model: ClassAwareSam,
    image_rgb: np.ndarray,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> torch.Tensor:
    """Return the (1, C, G, G) float32 embedding of one (S, S, 3) uint8 image, without gradients."""
    device = next(model.parameters()).device
    image = torch.from_numpy(image_rgb).permute(2, 0, 1).unsqueeze(0).float().to(device)
    with torch.no_grad(), autocast():
        return model.embed_images(image).float()


# ---------------------------------------------------------------------------- results


@dataclass(frozen=True)
class TrainingResult:
    """Outcome of ``train``.

    Attributes:
        history: One record per finished epoch, resumed epochs included.
        best_epoch: Epoch with the lowest validation loss, or the last epoch without
            validation samples. 0 when no epoch finished.
        stopped_early: Early stopping ended the run.
        cancelled: ``should_stop`` ended the run. The unfinished epoch is discarded and a
            later call with the same folder repeats it.
        checkpoint_path: Model of ``best_epoch`` (``best.safetensors``), loadable with
            ``load_class_aware``. None when no epoch finished.
        encoder_runs: Images passed through the image encoder during this call.
    """

    history: tuple[EpochRecord, ...]
    best_epoch: int
    stopped_early: bool
    cancelled: bool
    checkpoint_path: Path | None
    encoder_runs: int = 0


# ---------------------------------------------------------------------------- train


def train(
    model: ClassAwareSam,
    train_samples: Sequence[TrainingSample],
    val_samples: Sequence[TrainingSample],
    config: TrainingConfig,
    checkpoint_dir: str | os.PathLike[str],
    progress: ProgressCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
    *,
    metadata: ClassAwareMetadata | None = None,
) -> TrainingResult:
    """Fine-tune ``model`` in place, checkpointing every epoch and resuming if possible.

    When ``checkpoint_dir`` contains a checkpoint of the same run (same config apart from
    ``RESUMABLE_CHANGES``, same samples, same classes), the model and optimizer are
    restored from it and training continues with the next epoch. A finished run returns
    its stored result without training. When the call returns, ``model`` contains the
    weights of the last finished epoch and is in eval mode.

    Args:
        model: Class-aware SAM to train. Its trainable parts are set from ``config``.
        train_samples: Samples whose instances become training prompts.
        val_samples: Samples for the validation loss, with fixed prompts and no
            augmentation. May be empty when ``early_stopping_patience`` is None.
        config: Run settings.
        checkpoint_dir: Folder for checkpoints, created if missing.
        progress: Called as ``progress(epoch, optimizer_step, metrics)`` after every
            optimizer step, with the batch's loss terms and "lr", and once after each
            epoch with that epoch's ``EpochRecord`` fields.
        should_stop: Polled before every batch. When it returns True, training stops and
            the unfinished epoch is discarded.
        metadata: Class colours, mpp and tile size stored with every saved model, its
            ``training_config`` replaced by ``config``. Without it the models are saved
            with grey class colours, mpp 1.0 and tile size ``image_size``.

    Raises:
        SettingsError: Invalid samples or config, CUDA requested but unavailable, or a
            checkpoint of a different run in ``checkpoint_dir``.
        TrainingError: A loss became NaN or infinite.
        CheckpointError: The checkpoint in ``checkpoint_dir`` is incomplete or corrupt.
    """
    train_samples = list(train_samples)
    val_samples = list(val_samples)
    _check_inputs(model, train_samples, val_samples, config)
    device = torch.device(config.device)
    folder = Path(checkpoint_dir)
    folder.mkdir(parents=True, exist_ok=True)
    metadata = run_metadata(model, config, metadata)

    model.to(device)
    set_trainable(
        model,
        image_encoder=not config.freeze_image_encoder,
        prompt_encoder=not config.freeze_prompt_encoder,
        mask_decoder=True,
    )
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.AdamW(
        parameters, lr=config.learning_rate, weight_decay=config.weight_decay
    )
    fingerprint = {
        "train": samples_fingerprint(train_samples),
        "val": samples_fingerprint(val_samples),
    }
    state = resume_run(folder, model, optimizer, config, fingerprint)
    if state.epoch >= config.epochs or state.stopped_early:
        logger.info("Training run in %s is already finished at epoch %d", folder, state.epoch)
        model.eval()
        return _result(state, folder, cancelled=False)

    loop = _TrainingLoop(model, optimizer, train_samples, val_samples, config, device)
    logger.info(
        "Training %s for epochs %d..%d: %d training and %d validation prompts, "
        "%d optimizer steps per epoch, device %s",
        ", ".join(model.class_names), state.epoch + 1, config.epochs, len(loop.train_items),
        len(loop.val_items), loop.steps_per_epoch, config.device,
    )

    while state.epoch < config.epochs:
        epoch = state.epoch + 1
        started = time.perf_counter()
        epoch_losses = loop.run_epoch(epoch, state, progress, should_stop)
        if epoch_losses is None:
            logger.info("Training cancelled during epoch %d; resuming repeats it", epoch)
            model.eval()
            return _result(state, folder, cancelled=True, loop=loop)
        validation = loop.validate()
        record = EpochRecord(
            epoch=epoch,
            train_loss=epoch_losses["total"],
            train_dice=epoch_losses["dice"],
            train_bce=epoch_losses["bce"],
            train_ce=epoch_losses["ce"],
            train_iou_mse=epoch_losses["iou_mse"],
            val_loss=validation.loss,
            val_class_accuracy=validation.class_accuracy,
            learning_rate=optimizer.param_groups[0]["lr"],
            seconds=time.perf_counter() - started,
            val_map=validation.map,
            val_map50=validation.map50,
        )
        improved = _update_state(state, record, config)
        save_checkpoint(folder, model, optimizer, state, config, fingerprint, metadata, improved)
        logger.info(
            "Epoch %d/%d: train loss %.4f (dice %.4f, bce %.4f, ce %.4f, iou mse %.4f), "
            "val loss %s, val class accuracy %s, val mAP %s, lr %.3g, %.1f s",
            epoch, config.epochs, record.train_loss, record.train_dice, record.train_bce,
            record.train_ce, record.train_iou_mse, _format_optional(record.val_loss),
            _format_optional(record.val_class_accuracy), _format_optional(record.val_map),
            record.learning_rate, record.seconds,
        )
        if progress is not None:
            progress(epoch, state.optimizer_step, _record_metrics(record))
        if state.stopped_early:
            logger.info(
                "Early stopping after epoch %d: no lower validation loss for %d epochs "
                "(best epoch %d)", epoch, state.epochs_without_improvement, state.best_epoch,
            )
            break

    model.eval()
    return _result(state, folder, cancelled=False, loop=loop)


class _TrainingLoop:
    """Epoch and validation passes over fixed samples, with the embedding cache."""

    def __init__(
        self,
        model: ClassAwareSam,
        optimizer: torch.optim.Optimizer,
        train_samples: list[TrainingSample],
        val_samples: list[TrainingSample],
        config: TrainingConfig,
        device: torch.device,
    ) -> None:
        self.model = model
        self.optimizer = optimizer
        self.train_samples = train_samples
        self.val_samples = val_samples
        self.config = config
        self.device = device
        self.image_size = model.image_size
        self.logit_size = 4 * model.architecture.embedding_grid_size
        self.train_items = prompt_items(train_samples)
        self.val_items = prompt_items(val_samples)
        self.batches_per_epoch = math.ceil(len(self.train_items) / config.batch_size)
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / config.grad_accumulation)
        self.total_steps = config.epochs * self.steps_per_epoch

        self.class_weights = None
        if config.class_weights == "balanced":
            weights = balanced_class_weights(train_samples, len(model.class_names))
            self.class_weights = torch.from_numpy(weights).to(device)
            logger.info("Balanced class weights: %s", np.round(weights, 4).tolist())
        self.cache = (
            EmbeddingCache(model, config.embedding_cache_max_entries, self.autocast)
            if config.freeze_image_encoder
            else None
        )
        self.uncached_encoder_runs = 0

    @property
    def encoder_runs(self) -> int:
        """Images passed through the image encoder so far, cached or not."""
        cached = self.cache.encoder_runs if self.cache is not None else 0
        return cached + self.uncached_encoder_runs

    def autocast(self) -> contextlib.AbstractContextManager:
        """Return the bfloat16 autocast context when configured, else a no-op context."""
        if self.config.bf16_autocast:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def run_epoch(
        self,
        epoch: int,
        state: RunState,
        progress: ProgressCallback | None,
        should_stop: Callable[[], bool] | None,
    ) -> dict[str, float] | None:
        """Train one epoch and return its mean loss terms, or None when cancelled."""
        config = self.config
        # Every draw of the epoch derives from (seed, epoch), so a resumed run repeats it.
        torch.manual_seed(derive_seed(config.seed, "torch", epoch))
        order = np.random.default_rng(derive_seed(config.seed, "order", epoch)).permutation(
            len(self.train_items)
        )
        choices = {
            index: choose_augmentation(
                config.seed, epoch, index,
                flips=config.augment.flips,
                rotations_90=config.augment.rotations_90,
                color_jitter=config.augment.color_jitter,
            )
            for index in range(len(self.train_samples))
        }
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        sums: dict[str, float] = {}
        prompt_count = 0

        for batch_index in range(self.batches_per_epoch):
            if should_stop is not None and should_stop():
                self.optimizer.zero_grad(set_to_none=True)
                return None
            positions = order[batch_index * config.batch_size:(batch_index + 1) * config.batch_size]
            items = [self.train_items[position] for position in positions]
            seeds = [
                derive_seed(config.seed, "prompt", epoch, item.sample_index, item.instance_index)
                for item in items
            ]
            group_start = batch_index - batch_index % config.grad_accumulation
            group_size = min(config.grad_accumulation, self.batches_per_epoch - group_start)

            terms = self._forward(items, seeds, choices, "train", self.train_samples, epoch)
            check_finite(terms, epoch, state.optimizer_step + 1)
            (terms.total / group_size).backward()
            values = terms.as_floats()
            for name, value in values.items():
                sums[name] = sums.get(name, 0.0) + value * len(items)
            prompt_count += len(items)

            if batch_index + 1 == group_start + group_size:
                learning_rate = learning_rate_at(state.optimizer_step, self.total_steps, config)
                for group in self.optimizer.param_groups:
                    group["lr"] = learning_rate
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                state.optimizer_step += 1
                if progress is not None:
                    progress(epoch, state.optimizer_step, {**values, "lr": learning_rate})
        return {name: total / prompt_count for name, total in sums.items()}

    @torch.no_grad()
    def validate(self) -> Validation:
        """Return the mean validation loss, class accuracy and mask mAP (all None without data).

        Each validation instance is prompted once, as in training but without augmentation.
        The mAP is COCO's, through pycocotools, at the mask-logit resolution (4G x 4G per
        image): a prompt's mask is its logits above 0, its class the top class, and its
        score the predicted IoU times that class's probability.
        """
        if not self.val_items:
            return Validation(None, None, None, None)
        self.model.eval()
        identity = {
            index: AugmentationChoice(IDENTITY_TRANSFORM, (1.0, 1.0, 1.0))
            for index in range(len(self.val_samples))
        }
        loss_sum = 0.0
        correct = 0
        truth, predictions = [], []
        size = self.config.batch_size
        for start in range(0, len(self.val_items), size):
            items = self.val_items[start:start + size]
            seeds = [
                derive_seed(self.config.seed, "val-prompt", item.sample_index, item.instance_index)
                for item in items
            ]
            terms, output, batch = self._forward(
                items, seeds, identity, "val", self.val_samples, 0, return_output=True
            )
            check_finite(terms, 0, 0)
            loss_sum += float(terms.total) * len(items)
            correct += int((output.class_logits.argmax(dim=1) == batch.target_classes).sum())
            batch_truth, batch_predictions = _evaluation_instances(
                items, output, batch, self.model.class_names
            )
            truth += batch_truth
            predictions += batch_predictions
        self.model.train()
        mean = evaluate_instances(truth, predictions, self.model.class_names).mean
        return Validation(
            loss_sum / len(self.val_items), correct / len(self.val_items), mean.ap, mean.ap50
        )

    def _forward(
        self,
        items: list[PromptItem],
        seeds: list[int],
        choices: Mapping[int, AugmentationChoice],
        split: str,
        samples: list[TrainingSample],
        epoch: int,
        return_output: bool = False,
    ) -> Any:
        batch = build_prompt_batch(
            items,
            samples,
            {index: choice.transform_id for index, choice in choices.items()},
            seeds,
            self.config,
            self.image_size,
            self.logit_size,
            self.device,
        )
        embeddings = self._embeddings(items, choices, split, samples)
        with self.autocast():
            output = self.model(
                image_embeddings=embeddings,
                point_coords=batch.point_coords,
                point_labels=batch.point_labels,
                boxes_xyxy=batch.boxes_xyxy,
            )
        terms = compute_losses(
            output,
            batch.target_masks,
            batch.target_classes,
            self.config.loss_weights,
            self.class_weights,
        )
        if return_output:
            return terms, output, batch
        return terms

    def _embeddings(
        self,
        items: list[PromptItem],
        choices: Mapping[int, AugmentationChoice],
        split: str,
        samples: list[TrainingSample],
    ) -> torch.Tensor:
        """Return (N, C, G, G) embeddings, one per item, on the device."""
        unique = sorted({item.sample_index for item in items})

        def image_of(index: int) -> np.ndarray:
            return model_input_image(samples[index], choices[index], self.image_size)

        if self.cache is not None:
            per_sample = {
                index: self.cache.get(
                    (split, index, choices[index].transform_id),
                    lambda index=index: image_of(index),
                )
                for index in unique
            }
            stacked = torch.cat([per_sample[item.sample_index] for item in items])
            return stacked.to(self.device)

        # A trainable encoder runs on every distinct image of the batch, with gradients
        # in training and without them in validation (the caller's no_grad).
        images = torch.from_numpy(np.stack([image_of(index) for index in unique]))
        images = images.permute(0, 3, 1, 2).float().to(self.device)
        with self.autocast():
            embedded = self.model.embed_images(images)
        self.uncached_encoder_runs += len(unique)
        position = {index: row for row, index in enumerate(unique)}
        return embedded[[position[item.sample_index] for item in items]]


@dataclass(frozen=True)
class Validation:
    """Validation numbers of one epoch, each None without validation instances."""

    loss: float | None
    class_accuracy: float | None
    map: float | None
    map50: float | None


def _evaluation_instances(
    items: Sequence[PromptItem], output: DecoderOutput, batch, class_names: Sequence[str]
) -> tuple[list[EvaluationInstance], list[EvaluationInstance]]:
    """Turn one validation batch into truth and predictions for ml.evaluation, per image."""
    probabilities = output.class_logits.float().softmax(dim=1)
    top_probability, top_class = probabilities.max(dim=1)
    scores = output.iou_pred[:, 0].float().clamp(0, 1) * top_probability
    masks = (output.mask_logits[:, 0] > 0).cpu().numpy()
    targets = (batch.target_masks[:, 0] > 0.5).cpu().numpy()
    target_classes = batch.target_classes.cpu().tolist()
    truth, predictions = [], []
    for row, item in enumerate(items):
        if targets[row].any():
            truth.append(EvaluationInstance(
                item.sample_index, class_names[target_classes[row]], mask=targets[row]
            ))
        if masks[row].any():
            predictions.append(EvaluationInstance(
                item.sample_index, class_names[int(top_class[row])], mask=masks[row],
                score=float(scores[row]),
            ))
    return truth, predictions


def _check_inputs(
    model: ClassAwareSam,
    train_samples: list[TrainingSample],
    val_samples: list[TrainingSample],
    config: TrainingConfig,
) -> None:
    num_classes = len(model.class_names)
    for split, samples in (("train_samples", train_samples), ("val_samples", val_samples)):
        for index, sample in enumerate(samples):
            if not isinstance(sample, TrainingSample):
                raise SettingsError(
                    f"{split}[{index}] is a {type(sample).__name__}, expected a TrainingSample."
                )
            if sample.num_instances and sample.class_indices.max() >= num_classes:
                raise SettingsError(
                    f"{split}[{index}] has class index {int(sample.class_indices.max())}, but "
                    f"the model has {num_classes} classes ({', '.join(model.class_names)}). "
                    "Map every class name to its index in model.class_names."
                )
    if not prompt_items(train_samples):
        raise SettingsError(
            f"train_samples ({len(train_samples)} samples) contain no instances. "
            "Give at least one sample with an instance mask."
        )
    if config.early_stopping_patience is not None and not prompt_items(val_samples):
        raise SettingsError(
            f"early_stopping_patience is {config.early_stopping_patience} but val_samples "
            "contain no instances. Give validation samples or set it to None."
        )
    if config.device == "cuda" and not torch.cuda.is_available():
        raise SettingsError(
            "device is 'cuda' but PyTorch finds no CUDA device. Use device 'cpu' or run on "
            "a GPU worker."
        )


def _update_state(state: RunState, record: EpochRecord, config: TrainingConfig) -> bool:
    """Add ``record`` and update best epoch and early stopping. Return True if it is best."""
    state.epoch = record.epoch
    state.history.append(record)
    if record.val_loss is None:
        state.best_epoch = record.epoch
        return True
    if state.best_val_loss is None or record.val_loss < state.best_val_loss:
        state.best_val_loss = record.val_loss
        state.best_epoch = record.epoch
        state.epochs_without_improvement = 0
        return True
    state.epochs_without_improvement += 1
    patience = config.early_stopping_patience
    if patience is not None and state.epochs_without_improvement >= patience:
        state.stopped_early = True
    return False


def _result(
    state: RunState, folder: Path, cancelled: bool, loop: _TrainingLoop | None = None
) -> TrainingResult:
    best = folder / BEST_MODEL_FILE
    return TrainingResult(
        history=tuple(state.history),
        best_epoch=state.best_epoch,
        stopped_early=state.stopped_early,
        cancelled=cancelled,
        checkpoint_path=best if state.epoch > 0 else None,
        encoder_runs=loop.encoder_runs if loop is not None else 0,
    )


def _record_metrics(record: EpochRecord) -> dict[str, float]:
    return {
        name: float(value)
        for name, value in asdict(record).items()
        if name != "epoch" and value is not None
    }


def _format_optional(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"
