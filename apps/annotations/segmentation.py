"""Segmentation runs: a trained class-aware model version labels a whole slide.

A segmentation run is a ProposalRun with ``model_version`` set. Its instances have
source "model", a class and the class probability, and enter the review queue as
labelled proposals. A new run replaces the slide's pending model proposals (of any
version), never a reviewed instance, and drops a prediction that overlaps a reviewed one.
SAM zero-shot proposals on the same slide are left as they are.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import transaction

from apps.accounts import audit
from apps.analysis.predictions import Prediction, write_run_predictions
from ml.errors import CheckpointError, SettingsError

from . import services
from .journal import RunJournal
from .models import Instance, ProposalRun

logger = logging.getLogger(__name__)

SAM_TYPE_LABEL = "class-aware"


class ModelVersionUnusableError(SettingsError):
    """The chosen model version cannot segment: it has not succeeded or has no weights."""


def usable_model_versions():
    """Return the model versions that can segment a slide, newest first."""
    from apps.training.models import ModelVersion

    return ModelVersion.objects.filter(status=ModelVersion.Status.SUCCEEDED).exclude(weights_path="")


def unusable_reason(version_id: int) -> str:
    """Say why model version ``version_id`` cannot segment: it does not exist or has not succeeded."""
    from apps.training.models import ModelVersion

    version = ModelVersion.objects.filter(pk=version_id).first()
    if version is None:
        return f"Model version {version_id} does not exist. Choose one whose training succeeded."
    return (
        f"Model version {version_id} ({version.name}) has status {version.status!r}, so it "
        "cannot segment. Choose one whose training succeeded."
    )


def segmentation_settings(model_version, overrides: dict | None = None):
    """Build the run's settings: the model's mpp and tile size, then NEPHROWEB_SEGMENTATION,
    then ``overrides``; validated (SettingsError names the field)."""
    from ml.segmentation import SegmentationSettings

    background = "background" if "background" in model_version.class_names else None
    values = {
        "mpp": model_version.mpp,
        "tile_px": model_version.crop_px,
        "min_area_um2": settings.NEPHROWEB_PROPOSALS.get("min_area_um2", 100.0),
        "background_class": background,
        **settings.NEPHROWEB_SEGMENTATION,
        **(overrides or {}),
    }
    return SegmentationSettings.from_dict(values)


def start_segmentation_run(slide, model_version, *, user=None, overrides=None, enqueue=True):
    """Create a queued segmentation run of ``model_version`` on ``slide`` and enqueue its
    task once the row is committed.

    Raises:
        ModelVersionUnusableError: The version has not succeeded or has no weights.
        SettingsError: An override is invalid.
    """
    if not usable_model_versions().filter(pk=model_version.pk).exists():
        raise ModelVersionUnusableError(
            f"model_version {model_version.pk} ({model_version.name}) has status "
            f"{model_version.status!r} and cannot segment. Choose a version whose training "
            "succeeded."
        )
    run_settings = segmentation_settings(model_version, overrides)
    with transaction.atomic():
        run = ProposalRun.objects.create(
            slide=slide, model_version=model_version, sam_type=SAM_TYPE_LABEL,
            checkpoint=model_version.weights_path, settings=run_settings.to_dict(),
            created_by=user,
        )
        audit.record(
            audit.Action.SEGMENT, user=user, target_type=audit.Target.PROPOSAL_RUN,
            target_id=run.pk, slide_id=slide.pk,
            detail={"model_version": model_version.pk, "model_version_name": model_version.name},
        )
        if enqueue:
            from .tasks import run_segmentation

            transaction.on_commit(lambda: run_segmentation.delay(run.pk))
    logger.info(
        "Queued segmentation run %s of model version %s on slide %s",
        run.pk, model_version.pk, slide.pk,
    )
    return run


_model_cache: dict = {}


def load_model_version(model_version):
    """Load a version's weights once per worker process, checking the file's SHA-256.

    Raises:
        CheckpointError: The file is missing, unreadable, or differs from the one that
            training wrote.
    """
    import torch

    from ml.checkpoints import file_sha256
    from ml.model_files import load_class_aware

    key = (model_version.weights_path, model_version.weights_sha256)
    if key in _model_cache:
        return _model_cache[key]
    try:
        sha256 = file_sha256(model_version.weights_path)
    except OSError as exc:
        raise CheckpointError(
            f"Weights of model version {model_version.pk} cannot be read at "
            f"{model_version.weights_path}: {exc.strerror or exc}."
        ) from None
    if model_version.weights_sha256 and sha256 != model_version.weights_sha256:
        raise CheckpointError(
            f"Weights file {model_version.weights_path} of model version {model_version.pk} "
            f"has SHA-256 {sha256}, but training wrote {model_version.weights_sha256}. "
            "The file was replaced or damaged; train the version again."
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded = load_class_aware(model_version.weights_path, device=device)
    _model_cache.clear()
    _model_cache[key] = loaded
    return loaded


def execute_segmentation_run(run_id: int, *, owner: str) -> ProposalRun | None:
    """Run a queued segmentation run to the end (see services.execute_run)."""
    return services.execute_run(run_id, owner=owner, body=_segment_and_store)


def _segment_and_store(run: ProposalRun, report) -> None:
    from ml.segmentation import SegmentationSettings, segment_slide
    from ml.tissue import detect_tissue

    version = run.model_version
    loaded = load_model_version(version)
    run.checkpoint_sha256 = version.weights_sha256
    run.save(update_fields=["checkpoint_sha256"])
    run_settings = SegmentationSettings.from_dict(run.settings)
    with services.open_run_slide(run) as slide_file:
        tissue = detect_tissue(slide_file)
        result = segment_slide(
            slide_file, loaded, run_settings, tissue, progress=report,
            journal=RunJournal(run.pk, version.weights_sha256),
        )
    candidates = [
        (labeled.polygon_level0, {
            "class_name": labeled.class_name,
            "class_confidence": labeled.class_probability,
            "predicted_iou": labeled.instance.predicted_iou,
            "stability_score": labeled.instance.stability_score,
        })
        for labeled in result.instances
    ]
    write_run_predictions(run, [
        Prediction(
            geometry_level0=labeled.polygon_level0,
            class_name=labeled.class_name,
            class_probability=labeled.class_probability,
            predicted_iou=labeled.instance.predicted_iou,
        )
        for labeled in result.instances
    ])
    stored = services.store_run_instances(
        run, candidates, source=Instance.Source.MODEL, counts=dict(result.counts),
        tiles_total=result.tiles_processed, class_names=list(result.kept_per_class),
    )
    logger.info("Segmentation run %s stored %d labelled proposals", run.pk, stored)
