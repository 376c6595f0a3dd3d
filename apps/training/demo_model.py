"""The offline demo's model: the sample slide's known objects become reviewed annotations,
and the first start queues a model version trained on them.

No SAM weights can be downloaded offline, so the demo model starts from the small
ImageNet EfficientNet-Lite0 base (``services.EFFICIENTNET_BASE``) with the recipe of
``ml.demo_model``. The worker trains it in the background. Later starts find the version
and queue nothing, so the trained model is kept in the data folder like any other.

Only the left part of the slide (``ANNOTATED_FRACTION`` of its width) is annotated, as a
pathologist would annotate part of a section. The model learns there and proposes the
objects of the rest. On a fully annotated slide a segmentation run would drop every
prediction as overlapping reviewed work. The sample slide draws one kind of tubule, so its tubules are annotated
as "proximal tubule". Discs on interstitium and glass, clear of every object, are
annotated as "background", so that grid prompts that hit no object are dropped when
segmenting.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
from shapely.geometry import Point
from shapely.strtree import STRtree

from apps.annotations.importing import import_annotations
from apps.annotations.models import Instance

from . import services, snapshots
from .models import ModelVersion

logger = logging.getLogger(__name__)

DEMO_MODEL_NAME = "demo-model"
SAMPLE_CLASS_MAP = {
    "tubule": "proximal tubule",
    "atrophic tubule": "atrophic tubule",
    "glomerulus": "glomerulus",
    "sclerotic glomerulus": "sclerotic glomerulus",
}
BACKGROUND_CLASS = "background"
ANNOTATED_FRACTION = 0.5
# Few, large discs: many small ones (6 per crop of radius 10 µm) kept the decoder from
# learning any mask in the measurements behind ml/demo_model.py.
BACKGROUND_DISC_COUNT = 40
BACKGROUND_DISC_RADIUS_UM = 20.0
BACKGROUND_CLEARANCE_UM = 16.0
# A failed or cancelled demo version is replaced by a new one at the next start.
RETRIED_STATES = (ModelVersion.Status.FAILED, ModelVersion.Status.CANCELLED)


def sample_annotation_objects(truth, seed: int = 0):
    """Return the objects and background discs of the slide's annotated part as annotation
    objects in level-0 pixels. An object belongs to the part when its centre does."""
    from ml.annotation_files import AnnotationObject

    annotated_width = ANNOTATED_FRACTION * truth.width_px
    annotated = [obj for obj in truth.objects if obj.center_level0[0] < annotated_width]
    objects = [
        AnnotationObject(index, obj.polygon_level0, SAMPLE_CLASS_MAP[obj.label])
        for index, obj in enumerate(annotated)
    ]
    radius_level0 = BACKGROUND_DISC_RADIUS_UM / truth.mpp
    clearance_level0 = BACKGROUND_CLEARANCE_UM / truth.mpp
    outlines = [obj.polygon_level0 for obj in truth.objects]
    tree = STRtree(outlines)
    rng = np.random.default_rng(seed)
    margin = radius_level0 + 1
    placed = 0
    # Uniform positions put about half of the discs on glass and half on tissue, because
    # the tissue outline covers about half of the slide.
    for _ in range(BACKGROUND_DISC_COUNT * 20):
        if placed == BACKGROUND_DISC_COUNT:
            break
        center = Point(
            rng.uniform(margin, annotated_width - margin), rng.uniform(margin, truth.height_px - margin)
        )
        nearest = tree.nearest(center)
        if outlines[int(nearest)].distance(center) < radius_level0 + clearance_level0:
            continue
        objects.append(AnnotationObject(
            len(objects), center.buffer(radius_level0, quad_segs=8), BACKGROUND_CLASS
        ))
        placed += 1
    return objects


def sample_truth(slide_path: Path):
    """Return the truth of the sample slide at ``slide_path``, regenerated with its defaults.

    ``write_sample_slide`` is deterministic, so writing it again to a temporary file gives
    the objects of the file that the demo imported.
    """
    from ml.sample_slide import write_sample_slide

    with tempfile.TemporaryDirectory() as folder:
        truth = write_sample_slide(Path(folder) / slide_path.name)
    return truth


def ensure_sample_annotations(slide, user, truth=None) -> int:
    """Import the sample's objects and background discs as reviewed annotations, once.

    Returns the number of annotations imported, 0 when the slide has imported ones already.
    """
    from ml.annotation_files import read_annotation_file
    from ml.qupath_geojson import write_qupath_geojson

    if Instance.objects.filter(slide=slide, source=Instance.Source.IMPORTED).exists():
        return 0
    slide_path = Path(slide.file_path)
    geojson_path = slide_path.with_suffix(".geojson")
    if not geojson_path.exists():
        truth = truth or sample_truth(slide_path)
        write_qupath_geojson(sample_annotation_objects(truth), geojson_path)
    report = import_annotations(slide, read_annotation_file(geojson_path), user=user)
    logger.info("Imported the sample slide's annotations: %s", report.as_dict())
    return report.created


def ensure_demo_model(slide, user, truth=None) -> ModelVersion:
    """Return the demo model version, queuing its training on the sample slide if needed."""
    from ml.demo_model import DEMO_MPP, DEMO_TILE_PX, demo_training_config

    existing = (
        ModelVersion.objects.filter(name=DEMO_MODEL_NAME).exclude(status__in=RETRIED_STATES).first()
    )
    if existing is not None:
        return existing
    ensure_sample_annotations(slide, user, truth)
    snapshot = snapshots.build_snapshot(user, seed=0, validation_fraction=0.0, slides=[slide])
    config = demo_training_config().to_dict()
    del config["device"]  # the worker trains on CUDA when it has a GPU
    version = services.start_training(
        snapshot, user, base_checkpoint=services.EFFICIENTNET_BASE, config_overrides=config,
        name=DEMO_MODEL_NAME, mpp=DEMO_MPP, crop_px=DEMO_TILE_PX,
    )
    logger.info("Queued the demo model version %s on snapshot %s", version.pk, snapshot.pk)
    return version
