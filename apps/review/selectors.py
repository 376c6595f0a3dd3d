"""Read-only queries of the review: the queue and progress counts."""

from django.conf import settings
from django.db.models import Count, F

from apps.annotations.models import Instance

# Orders that put the objects most in need of a human first. Missing scores sort last,
# because a drawn or imported object has no predicted IoU and was already looked at.
QUEUE_ORDERS = {
    "predicted_iou": [F("predicted_iou").asc(nulls_last=True), "id"],
    "class_confidence": [
        F("class_confidence").asc(nulls_last=True), F("predicted_iou").asc(nulls_last=True), "id",
    ],
    "position": ["slide_id", "y_min_level0", "x_min_level0", "id"],
}


def review_queue(*, order: str | None = None, slide=None, reviewer=None, limit: int = 200):
    """Pending instances in queue order, on one slide or on the slides assigned to ``reviewer``."""
    order = order or settings.NEPHROWEB_QUEUE_ORDER
    queryset = Instance.objects.select_related("proposal_run__model_version").filter(
        review_state=Instance.ReviewState.PENDING
    )
    if slide is not None:
        queryset = queryset.filter(slide=slide)
    if reviewer is not None:
        queryset = queryset.filter(slide__assignments__reviewer=reviewer)
    return queryset.order_by(*QUEUE_ORDERS[order])[:limit]


def slide_progress(slide) -> dict:
    """Counts per review state, per class of reviewed objects, and per reviewer."""
    instances = Instance.objects.filter(slide=slide)
    by_state = dict(instances.values_list("review_state").annotate(n=Count("id")))
    by_state = {state: by_state.get(state, 0) for state in Instance.ReviewState.values}
    reviewed = instances.exclude(review_state=Instance.ReviewState.PENDING)
    by_class = dict(
        reviewed.exclude(review_state=Instance.ReviewState.REJECTED)
        .values_list("class_name").annotate(n=Count("id"))
    )
    by_reviewer = dict(
        reviewed.exclude(reviewed_by=None)
        .values_list("reviewed_by__username").annotate(n=Count("id"))
    )
    total = sum(by_state.values())
    return {
        "slide": slide.pk,
        "total": total,
        "by_state": by_state,
        "by_class": {name or "(no class)": n for name, n in by_class.items()},
        "by_reviewer": by_reviewer,
        "reviewed_fraction": (total - by_state["pending"]) / total if total else None,
    }
