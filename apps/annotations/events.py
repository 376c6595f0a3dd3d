"""Push run progress to the slide's websocket group (best effort: the API is the truth)."""

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from apps.slides.consumers import slide_group

logger = logging.getLogger(__name__)


def run_payload(run) -> dict:
    return {
        "id": run.pk,
        "slide": run.slide_id,
        "status": run.status,
        "tiles_done": run.tiles_done,
        "tiles_total": run.tiles_total,
        "counts": run.counts,
        "message": run.message,
    }


def publish_run(run) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(
            slide_group(run.slide_id), {"type": "run.progress", "run": run_payload(run)}
        )
    except Exception:  # noqa: BLE001  a lost event is recovered by the browser's resync
        logger.warning("Could not publish progress of proposal run %s", run.pk, exc_info=True)
