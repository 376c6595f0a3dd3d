"""Draw with SAM: a click or box on a slide becomes one stored, accepted instance.

The web process keeps one PromptSegmenter (and so one loaded SAM and its cache of
window embeddings): the second click in the same area skips the image encoder. Only the
prompt travels from the browser and only the polygon travels back; image embeddings
never leave the server.
"""

import logging
import threading

from django.conf import settings
from shapely.geometry import mapping

from apps.annotations.services import load_model, resolve_checkpoint_for
from ml.errors import NephrowebError
from ml.prompting import PromptSegmenter
from ml.slide import open_slide

from . import services

logger = logging.getLogger(__name__)

_segmenters: dict = {}
_segmenters_lock = threading.Lock()


class NothingFound(NephrowebError):
    """SAM returned no object at the prompt (HTTP 422)."""

    status_code = 422


def segmenter() -> PromptSegmenter:
    """Return the process's segmenter for the configured checkpoint, loading it once."""
    checkpoint = resolve_checkpoint_for(settings.NEPHROWEB_SAM_TYPE, "")
    mpp = float(settings.NEPHROWEB_PROPOSALS.get("mpp", 1.0))
    key = (str(checkpoint), mpp)
    with _segmenters_lock:
        if key not in _segmenters:
            _segmenters.clear()
            _segmenters[key] = PromptSegmenter(load_model(checkpoint, None), mpp=mpp)
        return _segmenters[key]


def draw_with_prompt(slide, *, user, class_name: str, point_level0=None, box_level0=None):
    """Segment the prompt with SAM and store the outline as an accepted drawn instance."""
    if (point_level0 is None) == (box_level0 is None):
        raise services.ReviewError("Send exactly one of point_level0 [x, y] or box_level0 [x0, y0, x1, y1].")
    given_mpp = slide.mpp if slide.mpp_source == "given" else None
    prompt_segmenter = segmenter()
    with open_slide(slide.file_path, mpp=given_mpp) as slide_file:
        if point_level0 is not None:
            result = prompt_segmenter.segment_point(slide_file, *point_level0)
        else:
            result = prompt_segmenter.segment_box(slide_file, box_level0)
    logger.info(
        "SAM prompt on slide %s by %s: cache %s, predicted IoU %.3f",
        slide.pk, user, "hit" if result.cache_hit else "miss", result.predicted_iou,
    )
    if result.polygon_level0 is None:
        raise NothingFound(f"SAM found no object at this spot ({result.reason}). Try another point or a box.")
    instance = services.draw(
        slide, user=user, geometry=mapping(result.polygon_level0), class_name=class_name
    )
    instance.predicted_iou = result.predicted_iou
    instance.save(update_fields=["predicted_iou"])
    return instance
