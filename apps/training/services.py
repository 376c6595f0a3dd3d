"""Model versions: start, execute in a worker, and cancel them, with progress sent over Channels."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.accounts import audit
from ml.errors import CheckpointError, NephrowebError, SettingsError
from nephroweb.leases import (
    LeaseLost,
    acquire_lease,
    release_lease,
    renew_interval_seconds,
    renew_lease,
)
from nephroweb.time_remaining import estimate_seconds_remaining

from . import snapshots
from .models import ModelVersion, TrainingSnapshot

logger = logging.getLogger(__name__)

TRAINING_GROUP = "training"
# SAM's input side: a crop of this size reaches the image encoder without resizing.
DEFAULT_CROP_PX = 1024
# A base_checkpoint naming the small ImageNet EfficientNet-Lite0 model instead of a file.
EFFICIENTNET_BASE = "efficientnet-lite0"
FINAL_STATES = (
    ModelVersion.Status.SUCCEEDED, ModelVersion.Status.FAILED, ModelVersion.Status.CANCELLED
)


class TrainingStateError(NephrowebError):
    """The requested change does not fit the model version's current status."""

    status_code = 409


def training_config(overrides: dict | None = None):
    """Validate ``overrides`` against TrainingConfig and return the config.

    Raises:
        SettingsError: A key is unknown or a value is invalid. The message names the field.
    """
    from ml.training import TrainingConfig

    return TrainingConfig.from_dict(dict(overrides or {}))


def versions_dir(version_id: int) -> Path:
    """Return the checkpoint folder of a version, NEPHROWEB_DATA_DIR/training/versions/<id>."""
    return Path(settings.DATA_DIR) / "training" / "versions" / str(version_id)


def start_training(
    snapshot: TrainingSnapshot,
    user=None,
    base_checkpoint: str | None = None,
    config_overrides: dict | None = None,
    *,
    base_version: ModelVersion | None = None,
    name: str = "",
    mpp: float | None = None,
    crop_px: int | None = None,
    enqueue: bool = True,
) -> ModelVersion:
    """Create a queued model version and enqueue its task once the row is committed.

    The run starts from ``base_version``'s weights when one is given, otherwise from the
    SAM checkpoint ``base_checkpoint`` (empty: the configured one). The base_checkpoint
    ``EFFICIENTNET_BASE`` starts instead from a small model whose image encoder is
    ImageNet EfficientNet-Lite0, which trains on a CPU in minutes. ``config_overrides``
    are TrainingConfig fields. Without a "device" the worker trains on CUDA when it has a
    GPU and on the CPU otherwise. ``mpp`` and ``crop_px`` default to the base version's,
    and without a base version to the proposal working mpp and 1024.

    Raises:
        SettingsError: A config field, ``mpp`` or ``crop_px`` is invalid, the base version
            has not succeeded, or both a base version and a checkpoint are given.
    """
    overrides = dict(config_overrides or {})
    config = training_config(overrides)
    if base_version is not None:
        check_base_version(base_version, base_checkpoint)
        mpp = base_version.mpp if mpp is None else mpp
        crop_px = base_version.crop_px if crop_px is None else crop_px
    mpp = float(settings.NEPHROWEB_PROPOSALS["mpp"]) if mpp is None else mpp
    crop_px = DEFAULT_CROP_PX if crop_px is None else crop_px
    if base_checkpoint == EFFICIENTNET_BASE and isinstance(crop_px, int) and crop_px % 16:
        raise SettingsError(
            f"crop_px is {crop_px}, but the EfficientNet-Lite0 encoder needs a multiple of 16. "
            "Choose e.g. 256."
        )
    if isinstance(mpp, bool) or not isinstance(mpp, (int, float)) or not 0.05 <= mpp <= 50:
        raise SettingsError(f"mpp is {mpp!r}, expected microns per pixel from 0.05 to 50.")
    if isinstance(crop_px, bool) or not isinstance(crop_px, int) or not 16 <= crop_px <= 4096:
        raise SettingsError(f"crop_px is {crop_px!r}, expected a whole number from 16 to 4096.")
    with transaction.atomic():
        version = ModelVersion.objects.create(
            name=name or "",
            snapshot=snapshot,
            base_version=base_version,
            base_checkpoint=base_checkpoint or "",
            config=config.to_dict(),
            device_auto="device" not in overrides,
            mpp=float(mpp),
            crop_px=crop_px,
            class_names=list(snapshot.class_names),
            created_by=user,
        )
        if not version.name:
            version.name = f"model-{version.pk}"
            version.save(update_fields=["name"])
        audit.record(
            audit.Action.TRAIN, user=user, target_type=audit.Target.MODEL_VERSION,
            target_id=version.pk, detail={
                "name": version.name, "snapshot": snapshot.pk,
                "base_version": base_version.pk if base_version else None,
                "base_checkpoint": version.base_checkpoint,
            },
        )
        if enqueue:
            from .tasks import run_training

            transaction.on_commit(lambda: run_training.delay(version.pk))
    logger.info(
        "Queued training of model version %s on snapshot %s from %s", version.pk, snapshot.pk,
        f"model version {base_version.pk}" if base_version else base_checkpoint or "a SAM checkpoint",
    )
    return version


def check_base_version(base_version: ModelVersion, base_checkpoint: str | None = None) -> None:
    """Check that a new version can start from ``base_version``'s weights.

    Raises:
        SettingsError: The base version has not succeeded or has no weights, or a SAM
            checkpoint is given as well. The message names the base_version field.
    """
    if base_checkpoint:
        raise SettingsError(
            f"base_version {base_version.pk} and checkpoint {base_checkpoint!r} are both given. "
            "A model version starts either from an earlier version or from a SAM checkpoint; "
            "leave one empty."
        )
    if base_version.status != ModelVersion.Status.SUCCEEDED:
        raise SettingsError(
            f"base_version {base_version.pk} ({base_version.name}) has status "
            f"{base_version.status!r}. Choose a model version whose training succeeded."
        )
    if not base_version.weights_path or not base_version.weights_sha256:
        raise SettingsError(
            f"base_version {base_version.pk} ({base_version.name}) has no stored weights. "
            "Choose another model version or train this one again."
        )


def cancel_training(version: ModelVersion, *, user=None) -> ModelVersion:
    """Ask a queued or running version to stop.

    A queued version is cancelled at once. A running one stops before its next batch,
    and its worker then sets the status to cancelled.

    Raises:
        TrainingStateError: The version has already finished (status 409).
    """
    with transaction.atomic():
        version = ModelVersion.objects.select_for_update().get(pk=version.pk)
        if version.status in FINAL_STATES:
            raise TrainingStateError(
                f"Model version {version.pk} has already finished ({version.status}). "
                "Only queued or running versions can be cancelled."
            )
        version.cancel_requested = True
        fields = ["cancel_requested"]
        if version.status == ModelVersion.Status.QUEUED:
            version.status = ModelVersion.Status.CANCELLED
            version.finished_at = timezone.now()
            fields += ["status", "finished_at"]
        version.save(update_fields=fields)
        audit.record(
            audit.Action.CANCEL, user=user, target_type=audit.Target.MODEL_VERSION,
            target_id=version.pk, detail={"name": version.name, "status": version.status},
        )
    publish_version(version)
    return version


# ---------------------------------------------------------------------------- lease


def _acquire_lease(version_id: int, owner: str) -> bool:
    return acquire_lease(ModelVersion, version_id, owner)


# ---------------------------------------------------------------------------- execute


def program_version() -> str:
    """Return the nephroweb version recorded with trained models: the git commit, if known."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=settings.BASE_DIR,
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"git-{commit}" if commit else "unknown"


def execute_training(
    version_id: int,
    *,
    owner: str,
    on_epoch: Callable[[dict], None] | None = None,
) -> ModelVersion | None:
    """Train a queued model version to the end; idempotent and safe against re-delivery.

    Returns None when another worker holds the version's lease. A finished version
    (succeeded, failed or cancelled) is returned as it is. A running version whose
    worker died resumes after its last finished epoch from its checkpoint folder.
    ``on_epoch`` is called with each new epoch's metrics. Failures are stored on the
    version with a message for the user.
    """
    if not _acquire_lease(version_id, owner):
        logger.info("Model version %s is leased by another worker, so this delivery skips it", version_id)
        return None
    version = ModelVersion.objects.select_related("snapshot", "base_version").get(pk=version_id)
    try:
        if version.status in FINAL_STATES:
            logger.info("Model version %s is already %s, so there is nothing to do", version_id, version.status)
            return version
        if version.cancel_requested:
            _finish(version, ModelVersion.Status.CANCELLED, "Cancelled before training started.")
        else:
            _train(version, owner, on_epoch)
    except LeaseLost as exc:
        logger.warning("Model version %s stopped without storing anything: %s", version_id, exc)
        return version
    except NephrowebError as exc:
        _finish(version, ModelVersion.Status.FAILED, str(exc))
    except Exception as exc:  # noqa: BLE001  stored for the UI, logged with its traceback
        if not ModelVersion.objects.filter(pk=version_id).exists():
            logger.warning(
                "Model version %s was deleted while it trained, so it stopped (%s)",
                version_id, type(exc).__name__,
            )
            return version
        logger.exception("Model version %s failed", version_id)
        _finish(
            version, ModelVersion.Status.FAILED,
            f"Internal error ({type(exc).__name__}); the worker log has the details.",
        )
    finally:
        release_lease(ModelVersion, version_id, owner)
    version.refresh_from_db()
    publish_version(version)
    return version


def _train(version: ModelVersion, owner: str, on_epoch) -> None:
    """Load the base model and the snapshot's crops, train, and store the outcome."""
    import torch

    from ml.model_files import ClassAwareMetadata, ClassSpec
    from ml.training import TrainingConfig, train

    version.status = ModelVersion.Status.RUNNING
    version.started_at = version.started_at or timezone.now()
    version.message = ""
    version.save(update_fields=["status", "started_at", "message"])
    publish_version(version)

    config = TrainingConfig.from_dict(version.config)
    if version.device_auto:
        config = replace(config, device="cuda" if torch.cuda.is_available() else "cpu")
    if version.base_version_id is not None:
        model = _model_from_base_version(version, config.seed)
    elif version.base_checkpoint == EFFICIENTNET_BASE:
        model = _model_from_efficientnet(version, config.seed)
    else:
        model = _model_from_sam_checkpoint(version, config.seed)

    samples = snapshots.training_samples(version.snapshot, version.mpp, version.crop_px)
    if not samples.train:
        raise SettingsError(
            f"Snapshot {version.snapshot_id} has no training samples, because every annotation is "
            "on a validation patient or has no pixel at the working mpp. Take a snapshot with "
            "a smaller validation_fraction or more annotated patients."
        )
    if not samples.validation and config.early_stopping_patience is not None:
        logger.warning(
            "Model version %s has no validation samples; early stopping is turned off",
            version.pk,
        )
        config = replace(config, early_stopping_patience=None)
    version.config = config.to_dict()
    version.save(update_fields=["config", "base_checkpoint", "base_checkpoint_sha256"])

    colors = snapshots.class_colors()
    metadata = ClassAwareMetadata(
        classes=tuple(ClassSpec(name, colors.get(name, "#808080")) for name in model.class_names),
        architecture=model.architecture,
        mpp=version.mpp,
        tile_px=version.crop_px,
        training_config=config.to_dict(),
        data_snapshot_id=f"snapshot-{version.snapshot_id}",
        program_version=program_version(),
    )

    last_renewal = [time.monotonic()]

    def progress(epoch: int, optimizer_step: int, metrics) -> None:
        now = time.monotonic()
        epoch_end = "train_loss" in metrics
        if epoch_end or now - last_renewal[0] >= renew_interval_seconds():
            last_renewal[0] = now
            if not renew_lease(ModelVersion, version.pk, owner):
                raise LeaseLost(
                    f"Model version {version.pk}: lease of {owner} lost (deleted or taken over)"
                )
        if not epoch_end:
            return
        record = {"epoch": epoch, **{key: float(value) for key, value in metrics.items()}}
        version.metrics = [row for row in version.metrics if row["epoch"] < epoch] + [record]
        ModelVersion.objects.filter(pk=version.pk).update(metrics=version.metrics)
        publish_version(version)
        if on_epoch is not None:
            on_epoch(record)

    def should_stop() -> bool:
        return ModelVersion.objects.filter(pk=version.pk, cancel_requested=True).exists()

    result = train(
        model, samples.train, samples.validation, config, versions_dir(version.pk),
        progress=progress, should_stop=should_stop, metadata=metadata,
    )
    version.metrics = [_epoch_row(record) for record in result.history]
    version.best_epoch = result.best_epoch
    if result.cancelled:
        version.save(update_fields=["metrics", "best_epoch"])
        _finish(version, ModelVersion.Status.CANCELLED, "Cancelled during training.")
        return
    from ml.checkpoints import file_sha256

    version.weights_path = str(result.checkpoint_path)
    version.weights_sha256 = file_sha256(result.checkpoint_path)
    version.status = ModelVersion.Status.SUCCEEDED
    version.finished_at = timezone.now()
    version.save(update_fields=[
        "metrics", "best_epoch", "weights_path", "weights_sha256", "status", "finished_at",
    ])
    logger.info(
        "Model version %s succeeded: best epoch %d, weights %s",
        version.pk, version.best_epoch, version.weights_path,
    )


def _model_from_efficientnet(version: ModelVersion, seed: int):
    """Build a class-aware model on ImageNet EfficientNet-Lite0 for the version's crop size.

    The prompt encoder and decoder start from random weights drawn from ``seed``.
    """
    from ml.checkpoints import file_sha256
    from ml.efficientnet_lite import build_efficientnet_class_aware, weights_path

    model = build_efficientnet_class_aware(version.class_names, version.crop_px, seed)
    version.base_checkpoint_sha256 = file_sha256(weights_path())
    return model


def _model_from_sam_checkpoint(version: ModelVersion, seed: int):
    """Start a class-aware SAM from the version's SAM checkpoint (Meta's .pth format).

    The class token and class head, which SAM lacks, start from random weights drawn
    from ``seed``, so two runs of the same version start from the same model.
    """
    import torch

    from apps.annotations.services import load_model, resolve_checkpoint_for
    from ml.class_aware import from_sam

    checkpoint = resolve_checkpoint_for(settings.NEPHROWEB_SAM_TYPE, version.base_checkpoint)
    loaded = load_model(checkpoint, None)
    version.base_checkpoint = str(checkpoint)
    version.base_checkpoint_sha256 = loaded.sha256 or ""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, _ = from_sam(loaded.model, version.class_names)
    return model


def _model_from_base_version(version: ModelVersion, seed: int):
    """Load the base version's weights and give the model the snapshot's classes.

    The weights file must still have the SHA-256 that the base version's training wrote,
    so a replaced or damaged file fails the run instead of training on other weights.
    Classes are matched by name (``ml.class_head.change_classes``): a class new in the
    snapshot gets a fresh class-head row drawn from ``seed``, and a class that the
    snapshot lacks is dropped.

    Raises:
        CheckpointError: The weights file is missing, unreadable or has another SHA-256.
    """
    from ml.checkpoints import file_sha256
    from ml.class_head import change_classes
    from ml.model_files import load_class_aware

    base = version.base_version
    weights = Path(base.weights_path)
    try:
        sha256 = file_sha256(weights)
    except OSError as exc:
        raise CheckpointError(
            f"Weights of base version {base.pk} ({base.name}) cannot be read at {weights}: "
            f"{exc.strerror or exc}. Restore the file or choose another base version."
        ) from None
    if sha256 != base.weights_sha256:
        raise CheckpointError(
            f"Weights file {weights} of base version {base.pk} ({base.name}) has SHA-256 "
            f"{sha256}, but its training wrote {base.weights_sha256}. The file was replaced "
            "or damaged. Restore it or choose another base version."
        )
    model, _ = load_class_aware(weights)
    change = change_classes(model, version.class_names, seed=seed)
    if change.changed:
        logger.info(
            "Model version %s continues from version %s with new classes %s and without %s",
            version.pk, base.pk, list(change.added), list(change.dropped),
        )
    version.base_checkpoint = str(weights)
    version.base_checkpoint_sha256 = sha256
    return model


def _epoch_row(record) -> dict:
    from dataclasses import asdict

    return {key: value for key, value in asdict(record).items() if value is not None}


def _finish(version: ModelVersion, status: str, message: str) -> None:
    log = logger.warning if status == ModelVersion.Status.FAILED else logger.info
    log("Model version %s %s: %s", version.pk, status, message)
    ModelVersion.objects.filter(pk=version.pk).update(
        status=status, message=message, finished_at=timezone.now()
    )


# ---------------------------------------------------------------------------- events


def version_seconds_remaining(version: ModelVersion, now=None) -> int | None:
    """Estimate the seconds until a running version finishes its configured epochs.

    None unless the version is running and has finished an epoch. Early stopping can end
    training sooner, so the estimate is an upper bound in that case.
    """
    if version.status != ModelVersion.Status.RUNNING:
        return None
    epochs_total = int((version.config or {}).get("epochs") or 0)
    return estimate_seconds_remaining(version.started_at, len(version.metrics), epochs_total, now)


def version_payload(version: ModelVersion) -> dict:
    """Return the progress message of a version: its status, per-epoch metrics, time left."""
    return {
        "id": version.pk,
        "name": version.name,
        "status": version.status,
        "snapshot": version.snapshot_id,
        "base_version": version.base_version_id,
        "metrics": version.metrics,
        "best_epoch": version.best_epoch,
        "message": version.message,
        "seconds_remaining": version_seconds_remaining(version),
    }


def publish_version(version: ModelVersion) -> None:
    """Send the version's state to the "training" group (best effort: the API is the truth)."""
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(
            TRAINING_GROUP, {"type": "training.progress", "version": version_payload(version)}
        )
    except Exception:  # noqa: BLE001  a lost event is recovered by the browser's resync
        logger.warning("Could not publish progress of model version %s", version.pk, exc_info=True)
