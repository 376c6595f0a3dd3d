"""Push run progress to the slide's websocket group (best effort: the API is the truth)."""

import logging

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from apps.slides.consumers import slide_group

logger = logging.getLogger(__name__)


def run_payload(run) -> dict:
    """Return the run as the API returns it, so the page shows a pushed run like a fetched one."""
    from .serializers import ProposalRunSerializer

    return dict(ProposalRunSerializer(run).data)


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


def instance_payload(instance, action: str, user, deleted: bool = False) -> dict:
    """Build the websocket message for a changed instance (its new state, or its deletion).

    ``feature`` is the instance as the API returns it, so a browser that had not loaded
    the object can show it without another request.
    """
    from .serializers import instance_feature

    return {
        "feature": None if deleted else instance_feature(instance),
        "id": instance.pk,
        "action": action,
        "deleted": deleted,
        "version": instance.version,
        "review_state": instance.review_state,
        "class_name": instance.class_name,
        "geometry": None if deleted else instance.geometry,
        "by": user.get_username() if user is not None else "",
    }


def publish_instance(slide_id: int, payload: dict) -> None:
    layer = get_channel_layer()
    if layer is None:
        return
    try:
        async_to_sync(layer.group_send)(
            slide_group(slide_id), {"type": "instance.changed", "instance": payload}
        )
    except Exception:  # noqa: BLE001  a lost event is recovered by the browser's resync
        logger.warning("Could not publish change of object %s", payload["id"], exc_info=True)
