"""Checkpoints of a training run: save after every epoch, resume after the last one.

A checkpoint folder contains the model and optimizer of the last finished epoch
(``epoch_NNNN.safetensors`` and ``epoch_NNNN_optimizer.safetensors``), the model of the
best epoch (``best.safetensors``) and ``training_state.json``. The state JSON records the
run's config, class names, a fingerprint of the samples, the epoch history and the
SHA-256 of both epoch files. It is written last, so it always names complete files.
Nothing is pickled: tensors go to safetensors and the optimizer state is flattened to
named tensors.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ml.checkpoints import file_sha256
from ml.class_aware import ClassAwareSam
from ml.errors import CheckpointError, SettingsError
from ml.model_files import ClassAwareMetadata, ClassSpec, save_class_aware, write_atomically
from ml.training_config import TrainingConfig

logger = logging.getLogger(__name__)

STATE_FILE = "training_state.json"
STATE_FORMAT = "nephroweb-training-state"
STATE_FORMAT_VERSION = 1
BEST_MODEL_FILE = "best.safetensors"

# Config fields that may change when a run resumes. A different epoch count changes the
# length of the cosine schedule, so the result then differs from an uninterrupted run.
RESUMABLE_CHANGES = frozenset({"epochs", "device", "bf16_autocast"})


@dataclass(frozen=True)
class EpochRecord:
    """Metrics of one finished epoch.

    Attributes:
        epoch: 1-based epoch number.
        train_loss: Mean weighted total loss over the epoch's prompts.
        train_dice, train_bce, train_ce, train_iou_mse: Mean unweighted loss terms.
        val_loss: Mean weighted total loss on the validation prompts, None without them.
        val_class_accuracy: Share of validation prompts whose top class is right.
        learning_rate: Learning rate of the epoch's last optimizer step.
        seconds: Wall-clock duration of the epoch including validation.
        val_map: COCO mask mAP (IoU 0.50:0.05:0.95, mean over classes with validation
            instances) of the validation prompts' masks, None without them.
        val_map50: The same at IoU 0.5.
    """

    epoch: int
    train_loss: float
    train_dice: float
    train_bce: float
    train_ce: float
    train_iou_mse: float
    val_loss: float | None
    val_class_accuracy: float | None
    learning_rate: float
    seconds: float
    val_map: float | None = None
    val_map50: float | None = None


@dataclass
class RunState:
    """Mutable bookkeeping of a run, saved in the state JSON after every epoch."""

    epoch: int = 0
    optimizer_step: int = 0
    history: list[EpochRecord] = field(default_factory=list)
    best_epoch: int = 0
    best_val_loss: float | None = None
    epochs_without_improvement: int = 0
    stopped_early: bool = False




def run_metadata(
    model: ClassAwareSam, config: TrainingConfig, metadata: ClassAwareMetadata | None
) -> ClassAwareMetadata:
    """Return the metadata saved with every model of a run, ``config`` included.

    Without ``metadata`` the classes get grey colours, mpp 1.0 and tile size ``image_size``.
    """
    if metadata is None:
        metadata = ClassAwareMetadata(
            classes=tuple(ClassSpec(name, "#808080") for name in model.class_names),
            architecture=model.architecture,
            mpp=1.0,
            tile_px=model.image_size,
        )
    return replace(metadata, training_config=config.to_dict())


def _epoch_model_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}.safetensors"


def _epoch_optimizer_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}_optimizer.safetensors"


def save_checkpoint(
    folder: Path,
    model: ClassAwareSam,
    optimizer: torch.optim.Optimizer,
    state: RunState,
    config: TrainingConfig,
    fingerprint: Mapping[str, str],
    metadata: ClassAwareMetadata,
    improved: bool,
) -> None:
    """Write this epoch's model, optimizer and state, then drop the previous epoch's files.

    The state JSON is renamed into place last, so a crash while writing leaves the
    previous epoch's complete checkpoint in use.
    """
    model_name = _epoch_model_name(state.epoch)
    optimizer_name = _epoch_optimizer_name(state.epoch)
    model_sha256 = save_class_aware(model, folder / model_name, metadata)
    if improved:
        save_class_aware(model, folder / BEST_MODEL_FILE, metadata)

    tensors = _optimizer_tensors(optimizer)
    write_atomically(
        folder / optimizer_name, lambda temp: save_file(tensors, temp, metadata={"format": "pt"})
    )
    document = {
        "format": STATE_FORMAT,
        "format_version": STATE_FORMAT_VERSION,
        "epoch": state.epoch,
        "optimizer_step": state.optimizer_step,
        "best_epoch": state.best_epoch,
        "best_val_loss": state.best_val_loss,
        "epochs_without_improvement": state.epochs_without_improvement,
        "stopped_early": state.stopped_early,
        "history": [asdict(record) for record in state.history],
        "config": config.to_dict(),
        "class_names": list(model.class_names),
        "samples_sha256": dict(fingerprint),
        "model_file": model_name,
        "model_sha256": model_sha256,
        "optimizer_file": optimizer_name,
        "optimizer_sha256": file_sha256(folder / optimizer_name),
    }
    text = json.dumps(document, indent=2, allow_nan=False) + "\n"
    write_atomically(folder / STATE_FILE, lambda temp: temp.write_text(text, encoding="utf-8"))

    for old in folder.glob("epoch_*"):
        if not old.name.startswith(f"epoch_{state.epoch:04d}"):
            old.unlink(missing_ok=True)
    logger.debug("Saved checkpoint of epoch %d to %s", state.epoch, folder)


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """Flatten the optimizer's per-parameter state to ``state.<index>.<name>`` tensors."""
    tensors = {}
    for index, values in optimizer.state_dict()["state"].items():
        for name, value in values.items():
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(value)
            tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
    return tensors


def resume_run(
    folder: Path,
    model: ClassAwareSam,
    optimizer: torch.optim.Optimizer,
    config: TrainingConfig,
    fingerprint: Mapping[str, str],
) -> RunState:
    """Restore model, optimizer and run state from ``folder``, or start fresh if it has none."""
    state_path = folder / STATE_FILE
    if not state_path.is_file():
        return RunState()
    try:
        document = json.loads(state_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"Training state {state_path} cannot be read ({exc}). Delete the folder "
            f"{folder} to start the run again."
        ) from exc
    if not isinstance(document, dict) or document.get("format") != STATE_FORMAT:
        raise CheckpointError(
            f"{state_path} is not a training state file. Use an empty checkpoint_dir."
        )
    _check_same_run(document, state_path, model, config, fingerprint)

    model_path = folder / document["model_file"]
    optimizer_path = folder / document["optimizer_file"]
    for path, key in ((model_path, "model_sha256"), (optimizer_path, "optimizer_sha256")):
        if not path.is_file() or file_sha256(path) != document[key]:
            raise CheckpointError(
                f"Checkpoint file {path} named in {state_path} is missing or was changed "
                f"after the state was written. Delete the folder {folder} to start again."
            )
    model.load_state_dict(load_file(model_path), strict=True)
    model.to(torch.device(config.device))
    _load_optimizer(optimizer, load_file(optimizer_path))

    history = [EpochRecord(**record) for record in document["history"]]
    state = RunState(
        epoch=document["epoch"],
        optimizer_step=document["optimizer_step"],
        history=history,
        best_epoch=document["best_epoch"],
        best_val_loss=document["best_val_loss"],
        epochs_without_improvement=document["epochs_without_improvement"],
        stopped_early=document["stopped_early"],
    )
    logger.info(
        "Resuming training from %s after epoch %d (optimizer step %d)",
        folder, state.epoch, state.optimizer_step,
    )
    return state


def _check_same_run(
    document: Mapping[str, Any],
    state_path: Path,
    model: ClassAwareSam,
    config: TrainingConfig,
    fingerprint: Mapping[str, str],
) -> None:
    saved_config = document.get("config", {})
    current = config.to_dict()
    changed = sorted(
        name
        for name in set(saved_config) | set(current)
        if name not in RESUMABLE_CHANGES and saved_config.get(name) != current.get(name)
    )
    if changed:
        raise SettingsError(
            f"checkpoint_dir contains a checkpoint with different settings: "
            f"{', '.join(changed)} (saved in {state_path}). Use a new checkpoint_dir or the "
            "saved settings."
        )
    if document.get("class_names") != list(model.class_names):
        raise SettingsError(
            f"checkpoint_dir contains a checkpoint for classes {document.get('class_names')}, but the "
            f"model has {list(model.class_names)}. Use a new checkpoint_dir."
        )
    if document.get("samples_sha256") != dict(fingerprint):
        raise SettingsError(
            f"checkpoint_dir contains a checkpoint trained on different training or validation "
            f"samples "
            f"(see {state_path}). Use a new checkpoint_dir for new data."
        )


def _load_optimizer(optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    current = optimizer.state_dict()
    expected = set(range(len(current["param_groups"][0]["params"])))
    if not set(state) <= expected:
        raise CheckpointError(
            f"Optimizer checkpoint has state for parameters {sorted(set(state) - expected)}, "
            "which the model does not train. Delete the checkpoint folder to start again."
        )
    current["state"] = state
    optimizer.load_state_dict(current)
