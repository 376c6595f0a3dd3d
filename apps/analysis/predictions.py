"""The stored output of a segmentation run: every prediction, before the review queue's filter.

The review queue drops a prediction that overlaps a reviewed instance, so the queue is not
all the model predicted. Read-outs and evaluations of a model measure this file instead. It is
a GeoJSON FeatureCollection in level-0 pixels, written once per run, atomically.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry

from apps.annotations.models import ProposalRun
from ml.errors import NephrowebError

logger = logging.getLogger(__name__)

PREDICTIONS_SUBDIR = "predictions"


class PredictionsFileError(NephrowebError, ValueError):
    """A run's predictions file is missing or cannot be read."""


@dataclass(frozen=True, eq=False)
class Prediction:
    """One labelled instance a model version predicted, in level-0 pixels."""

    geometry_level0: BaseGeometry
    class_name: str
    class_probability: float
    predicted_iou: float

    @property
    def score(self) -> float:
        """Ranking score for COCO matching: class probability times predicted IoU."""
        return self.class_probability * self.predicted_iou


def write_run_predictions(run: ProposalRun, predictions: list[Prediction]) -> Path:
    """Write ``predictions`` as the run's GeoJSON file and record its path on the run."""
    directory = Path(settings.MEDIA_ROOT) / PREDICTIONS_SUBDIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"run-{run.pk}.geojson"
    features = [
        {
            "type": "Feature",
            "geometry": mapping(prediction.geometry_level0),
            "properties": {
                "class_name": prediction.class_name,
                "class_probability": prediction.class_probability,
                "predicted_iou": prediction.predicted_iou,
            },
        }
        for prediction in predictions
    ]
    collection = {"type": "FeatureCollection", "features": features}
    handle, temporary_name = tempfile.mkstemp(dir=directory, prefix=path.name, suffix=".part")
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(collection, stream)
        os.replace(temporary_name, path)
    except BaseException:
        Path(temporary_name).unlink(missing_ok=True)
        raise
    ProposalRun.objects.filter(pk=run.pk).update(predictions_file=str(path))
    run.predictions_file = str(path)
    logger.info("Run %s: wrote %d predictions to %s", run.pk, len(predictions), path)
    return path


def load_run_predictions(run: ProposalRun) -> list[Prediction]:
    """Read the predictions a segmentation run wrote.

    Raises:
        PredictionsFileError: the run has no predictions file (it failed, predates this
            file, or is a SAM proposal run), or the file is missing or damaged.
    """
    if not run.predictions_file:
        raise PredictionsFileError(
            f"Run {run.pk} on slide {run.slide_id} has no stored predictions. Runs before "
            "read-outs existed kept none: segment the slide again with this model version."
        )
    path = Path(run.predictions_file)
    try:
        with path.open() as stream:
            collection = json.load(stream)
        return [
            Prediction(
                geometry_level0=shape(feature["geometry"]),
                class_name=feature["properties"]["class_name"],
                class_probability=float(feature["properties"]["class_probability"]),
                predicted_iou=float(feature["properties"]["predicted_iou"]),
            )
            for feature in collection["features"]
        ]
    except FileNotFoundError as error:
        raise PredictionsFileError(
            f"The predictions file of run {run.pk} is missing: {path}. Segment the slide again."
        ) from error
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        # shapely's shape() raises AttributeError for a geometry that is null or not an
        # object.
        raise PredictionsFileError(
            f"The predictions file of run {run.pk} cannot be read ({path}): {error}. "
            "Segment the slide again."
        ) from error


def latest_segmentation_run(slide, model_version) -> ProposalRun | None:
    """Return the slide's newest succeeded segmentation run of ``model_version``, if any."""
    return (
        ProposalRun.objects.filter(
            slide=slide, model_version=model_version, status=ProposalRun.Status.SUCCEEDED
        )
        .order_by("-finished_at", "-id")
        .first()
    )
