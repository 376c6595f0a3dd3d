"""Review transitions: one function per change, each checked, versioned and recorded.

States: pending -> accepted / edited / rejected, and back to pending by reopen.

- accept: pending -> accepted.
- relabel: sets the class. A pending instance becomes accepted (a reviewer who names
  the class has looked at it); other states keep their state. Rejected ones must be
  reopened first.
- edit: new geometry (and optionally class) -> edited.
- reject: pending, accepted or edited -> rejected.
- reopen: accepted, edited or rejected -> pending.
- draw: a new instance drawn by a reviewer, accepted with its class.
- delete: removes the instance; its last state stays in the history.
- undo: restores the state before the user's last change on a slide.

Every change names the version the reviewer saw. If the instance has changed since, the
change is rejected with VersionConflict and nothing is written: a reviewer's edit is
never silently overwritten. Each change writes one InstanceEvent and one audit row in
the same transaction and, once committed, is pushed to the slide's websocket group.
"""

import logging

import shapely
from django.db import transaction
from django.utils import timezone
from shapely.geometry import mapping, shape

from apps.accounts import audit
from apps.annotations import events
from apps.annotations.classes import class_by_name
from apps.annotations.geometry import geometry_row_fields
from apps.annotations.models import EvaluationRegion, Instance, InstanceEvent, ProposalRun
from ml.errors import NephrowebError

from .models import SlideAssignment

logger = logging.getLogger(__name__)

State = Instance.ReviewState
Action = InstanceEvent.Action


class ReviewError(NephrowebError, ValueError):
    """A change that the instance's state or the input does not allow."""


class InstanceNotFound(ReviewError):
    status_code = 404


class VersionConflict(NephrowebError):
    """The instance changed after the reviewer loaded it (HTTP 409, with its current state)."""

    status_code = 409

    def __init__(self, instance: Instance, expected_version: int):
        who = "another reviewer"
        last = instance.events.order_by("-id").select_related("user").first()
        if last is not None and last.user is not None:
            who = last.user.get_username()
        when = instance.updated_at.strftime("%Y-%m-%d %H:%M:%S UTC")
        super().__init__(
            f"Object {instance.pk} was changed by {who} at {when} (now version "
            f"{instance.version}, you saw version {expected_version}). Your change was not "
            "saved; look at the current version and apply it again if still needed."
        )
        self.instance = instance
        from apps.annotations.serializers import instance_feature

        self.extra = {"current": instance_feature(instance)}


def snapshot(instance: Instance) -> dict:
    """Return the reviewable fields of an instance, as history stores them."""
    return {
        "review_state": instance.review_state,
        "class_name": instance.class_name,
        "geometry": instance.geometry,
        "version": instance.version,
    }


def _locked(instance_id: int, expected_version: int) -> Instance:
    try:
        instance = Instance.objects.select_for_update().get(pk=instance_id)
    except Instance.DoesNotExist:
        raise InstanceNotFound(
            f"Object {instance_id} does not exist (it may have been deleted)."
        ) from None
    if expected_version is None:
        raise ReviewError("The field 'version' is required: send the version you reviewed.")
    if instance.version != int(expected_version):
        raise VersionConflict(instance, int(expected_version))
    return instance


def _require_state(instance: Instance, allowed: tuple, action: str) -> None:
    if instance.review_state not in allowed:
        names = ", ".join(allowed)
        raise ReviewError(
            f"Cannot {action} object {instance.pk}: it is {instance.review_state}; "
            f"{action} applies to {names} objects."
        )


def _save(instance: Instance, user, action: str, before: dict) -> Instance:
    instance.version += 1
    instance.reviewed_by = user
    instance.reviewed_at = timezone.now()
    instance.save()
    InstanceEvent.objects.create(
        slide_id=instance.slide_id, instance=instance, instance_ref=instance.pk, user=user,
        action=action, before=before, after=snapshot(instance),
    )
    _record_instance(audit.Action.CHANGE, instance.pk, instance.slide_id, user, {
        "change": action, "version": instance.version, "review_state": instance.review_state,
        "class_name": instance.class_name,
    })
    _publish_after_commit(instance, action, user)
    logger.info("%s: object %s on slide %s by %s", action, instance.pk, instance.slide_id, user)
    return instance


def _record_instance(action: str, instance_id: int, slide_id: int, user, detail: dict) -> None:
    audit.record(
        action, user=user, target_type=audit.Target.INSTANCE, target_id=instance_id,
        slide_id=slide_id, detail=detail,
    )


def _publish_after_commit(instance: Instance, action: str, user) -> None:
    payload = events.instance_payload(instance, action, user)
    transaction.on_commit(lambda: events.publish_instance(instance.slide_id, payload))


@transaction.atomic
def accept(instance_id: int, *, user, version: int) -> Instance:
    instance = _locked(instance_id, version)
    _require_state(instance, (State.PENDING,), "accept")
    before = snapshot(instance)
    instance.review_state = State.ACCEPTED
    return _save(instance, user, Action.ACCEPT, before)


@transaction.atomic
def reject(instance_id: int, *, user, version: int) -> Instance:
    instance = _locked(instance_id, version)
    _require_state(instance, (State.PENDING, State.ACCEPTED, State.EDITED), "reject")
    before = snapshot(instance)
    instance.review_state = State.REJECTED
    return _save(instance, user, Action.REJECT, before)


@transaction.atomic
def reopen(instance_id: int, *, user, version: int) -> Instance:
    instance = _locked(instance_id, version)
    _require_state(instance, (State.ACCEPTED, State.EDITED, State.REJECTED), "reopen")
    before = snapshot(instance)
    instance.review_state = State.PENDING
    return _save(instance, user, Action.REOPEN, before)


@transaction.atomic
def relabel(instance_id: int, *, user, version: int, class_name: str) -> Instance:
    instance = _locked(instance_id, version)
    _require_state(instance, (State.PENDING, State.ACCEPTED, State.EDITED), "relabel")
    class_by_name(class_name)
    before = snapshot(instance)
    instance.class_name = class_name
    if instance.review_state == State.PENDING:
        instance.review_state = State.ACCEPTED
    return _save(instance, user, Action.RELABEL, before)


def validated_geometry(geojson) -> shapely.Geometry:
    """Parse a GeoJSON Polygon/MultiPolygon in level-0 pixels; raise ReviewError if unusable."""
    if not isinstance(geojson, dict) or geojson.get("type") not in ("Polygon", "MultiPolygon"):
        raise ReviewError("geometry must be a GeoJSON Polygon or MultiPolygon in level-0 pixels.")
    try:
        geometry = shape(geojson)
    except (ValueError, TypeError, AttributeError, IndexError) as exc:
        raise ReviewError(f"geometry is not valid GeoJSON: {exc}.") from None
    if not geometry.is_valid:
        repaired = shapely.make_valid(geometry)
        parts = [g for g in getattr(repaired, "geoms", [repaired]) if g.geom_type == "Polygon"]
        if not parts:
            raise ReviewError("geometry has no area; draw at least three distinct points.")
        geometry = parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)
    if geometry.is_empty or geometry.area <= 0:
        raise ReviewError("geometry has no area; draw at least three distinct points.")
    return geometry


def _check_inside_slide(geometry, slide) -> None:
    x_min, y_min, x_max, y_max = geometry.bounds
    if x_min < 0 or y_min < 0 or x_max > slide.width_px or y_max > slide.height_px:
        raise ReviewError(
            f"geometry reaches ({x_min:.0f}, {y_min:.0f})-({x_max:.0f}, {y_max:.0f}), outside "
            f"the slide's {slide.width_px} x {slide.height_px} level-0 pixels."
        )


@transaction.atomic
def edit(instance_id: int, *, user, version: int, geometry: dict, class_name: str | None = None) -> Instance:
    instance = _locked(instance_id, version)
    _require_state(instance, (State.PENDING, State.ACCEPTED, State.EDITED), "edit")
    polygon = validated_geometry(geometry)
    _check_inside_slide(polygon, instance.slide)
    if class_name:
        class_by_name(class_name)
    before = snapshot(instance)
    for field, value in geometry_row_fields(polygon, instance.slide.mpp).items():
        setattr(instance, field, value)
    if class_name:
        instance.class_name = class_name
    instance.review_state = State.EDITED
    return _save(instance, user, Action.EDIT, before)


@transaction.atomic
def draw(slide, *, user, geometry: dict, class_name: str) -> Instance:
    polygon = validated_geometry(geometry)
    _check_inside_slide(polygon, slide)
    class_by_name(class_name)
    instance = Instance(
        slide=slide, source=Instance.Source.DRAWN, review_state=State.ACCEPTED,
        class_name=class_name, reviewed_by=user, reviewed_at=timezone.now(),
        **geometry_row_fields(polygon, slide.mpp),
    )
    instance.save()
    InstanceEvent.objects.create(
        slide=slide, instance=instance, instance_ref=instance.pk, user=user,
        action=Action.DRAW, before={}, after=snapshot(instance),
    )
    _record_instance(audit.Action.CREATE, instance.pk, slide.pk, user, {
        "change": Action.DRAW, "version": instance.version, "class_name": class_name,
    })
    _publish_after_commit(instance, Action.DRAW, user)
    return instance


@transaction.atomic
def delete(instance_id: int, *, user, version: int) -> None:
    instance = _locked(instance_id, version)
    InstanceEvent.objects.create(
        slide_id=instance.slide_id, instance=None, instance_ref=instance.pk, user=user,
        action=Action.DELETE, before=snapshot(instance) | _restore_fields(instance), after={},
    )
    _record_instance(audit.Action.DELETE, instance.pk, instance.slide_id, user, {
        "change": Action.DELETE, "version": instance.version,
        "review_state": instance.review_state, "class_name": instance.class_name,
    })
    payload = events.instance_payload(instance, Action.DELETE, user, deleted=True)
    slide_id = instance.slide_id
    instance.delete()
    transaction.on_commit(lambda: events.publish_instance(slide_id, payload))


def _restore_fields(instance: Instance) -> dict:
    """Fields beyond the snapshot that undo needs to recreate a deleted instance."""
    return {
        "source": instance.source,
        "proposal_run_id": instance.proposal_run_id,
        "predicted_iou": instance.predicted_iou,
        "stability_score": instance.stability_score,
        "class_confidence": instance.class_confidence,
    }


# Undoing a drawing deletes the instance, and undoing a deletion creates it again. The
# audit row names that effect, and every other undo is a change.
_UNDO_AUDIT_ACTIONS = {Action.DRAW: audit.Action.DELETE, Action.DELETE: audit.Action.CREATE}


@transaction.atomic
def undo_last(slide, *, user) -> InstanceEvent:
    """Undo the user's most recent change on the slide that is not undone yet.

    Refused with VersionConflict when someone else changed the instance afterwards.
    """
    event = (
        InstanceEvent.objects.select_for_update(of=("self",))
        .filter(slide=slide, user=user, undone_by__isnull=True)
        .exclude(action__in=[Action.UNDO, Action.IMPORT])
        .order_by("-id")
        .first()
    )
    if event is None:
        raise ReviewError("There is nothing of yours to undo on this slide.")
    if event.action == Action.DELETE:
        fields = {k: v for k, v in event.before.items() if k not in ("geometry", "version")}
        if not ProposalRun.objects.filter(pk=fields.get("proposal_run_id")).exists():
            fields["proposal_run_id"] = None
        restored = Instance(
            pk=event.instance_ref, slide=slide, **fields,
            **geometry_row_fields(shape(event.before["geometry"]), slide.mpp),
            version=event.before["version"] + 1,
        )
        restored.save(force_insert=True)
        after = snapshot(restored)
        instance = restored
    elif event.action == Action.DRAW:
        instance = _locked(event.instance_ref, event.after["version"])
        payload = events.instance_payload(instance, Action.UNDO, user, deleted=True)
        instance.delete()
        transaction.on_commit(lambda: events.publish_instance(slide.pk, payload))
        instance, after = None, {}
    else:
        instance = _locked(event.instance_ref, event.after["version"])
        instance.review_state = event.before["review_state"]
        instance.class_name = event.before["class_name"]
        if event.before["geometry"] != instance.geometry:
            for field, value in geometry_row_fields(shape(event.before["geometry"]), slide.mpp).items():
                setattr(instance, field, value)
        instance.version += 1
        instance.save()
        after = snapshot(instance)
    undo = InstanceEvent.objects.create(
        slide=slide, instance=instance, instance_ref=event.instance_ref, user=user,
        action=Action.UNDO, before=event.after, after=after, undoes=event,
    )
    audit_action = _UNDO_AUDIT_ACTIONS.get(event.action, audit.Action.CHANGE)
    _record_instance(audit_action, event.instance_ref, slide.pk, user, {
        "change": Action.UNDO, "undone_change": event.action, "undone_event": event.pk,
        "version": after.get("version"),
    })
    if instance is not None:
        _publish_after_commit(instance, Action.UNDO, user)
    return undo


@transaction.atomic
def add_evaluation_region(slide, *, user, geometry: dict) -> EvaluationRegion:
    """Mark a region of the slide as fully reviewed (metrics score only inside such regions)."""
    polygon = validated_geometry(geometry)
    _check_inside_slide(polygon, slide)
    region = EvaluationRegion.objects.create(
        slide=slide, geometry=geometry_row_fields(polygon, slide.mpp)["geometry"], created_by=user
    )
    audit.record(
        audit.Action.CREATE, user=user, target_type=audit.Target.EVALUATION_REGION,
        target_id=region.pk, slide_id=slide.pk,
    )
    return region


@transaction.atomic
def remove_evaluation_region(region: EvaluationRegion, *, user) -> None:
    """Delete an evaluation region, so metrics no longer score inside it."""
    audit.record(
        audit.Action.DELETE, user=user, target_type=audit.Target.EVALUATION_REGION,
        target_id=region.pk, slide_id=region.slide_id,
    )
    region.delete()


@transaction.atomic
def assign(slide, *, reviewer, assigned_by) -> SlideAssignment:
    """Give ``slide`` to ``reviewer`` (idempotent: an existing assignment is returned)."""
    assignment, created = SlideAssignment.objects.get_or_create(
        slide=slide, reviewer=reviewer, defaults={"assigned_by": assigned_by}
    )
    if created:
        audit.record(
            audit.Action.CREATE, user=assigned_by, target_type=audit.Target.SLIDE_ASSIGNMENT,
            target_id=assignment.pk, slide_id=slide.pk,
            detail={"reviewer": reviewer.get_username()},
        )
        logger.info("Slide %s assigned to %s by %s", slide.pk, reviewer, assigned_by)
    return assignment


@transaction.atomic
def unassign(assignment: SlideAssignment, *, user) -> None:
    """Take a slide back from its reviewer."""
    audit.record(
        audit.Action.DELETE, user=user, target_type=audit.Target.SLIDE_ASSIGNMENT,
        target_id=assignment.pk, slide_id=assignment.slide_id,
        detail={"reviewer": assignment.reviewer.get_username()},
    )
    assignment.delete()
    logger.info("Slide %s taken back from %s by %s", assignment.slide_id, assignment.reviewer, user)
