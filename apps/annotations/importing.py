"""Import annotation files (QuPath GeoJSON, ASAP XML, Aperio XML) onto a slide.

Class names from the file are matched to the configured classes ignoring case, after an
optional mapping (file name -> product class, or "" to leave those objects out). A name
that matches nothing stops the import before anything is written and is reported with
its count, so the user can add a mapping: objects are never dropped silently.

Classified objects become accepted annotations; unclassified ones become pending
proposals for a reviewer to label. Objects entirely outside the slide are skipped,
and partly outside ones are clipped to it; both are counted. The import is one
transaction with one history event per object. An import that creates no object writes
nothing, not even an audit row, and callers report it with ``nothing_imported_message``.
"""

import logging
from collections import Counter
from dataclasses import dataclass, field

import shapely
from django.db import transaction
from django.utils import timezone

from apps.accounts import audit
from ml.annotation_files import AnnotationFile
from ml.errors import NephrowebError

from .classes import configured_classes
from .geometry import geometry_row_fields
from .models import Instance, InstanceEvent

logger = logging.getLogger(__name__)


class UnknownMappingTargetError(NephrowebError, ValueError):
    """A mapping sends a file class to a class that is not configured."""


class UnknownClassesError(NephrowebError, ValueError):
    """The file uses class names that are neither configured nor mapped."""

    def __init__(self, source: str, unknown: dict[str, int]):
        listed = ", ".join(f"{name!r} ({count})" for name, count in unknown.items())
        known = ", ".join(c.name for c in configured_classes())
        super().__init__(
            f"{source}: unknown class names {listed}. Map each name to a class ({known}), "
            "or leave its objects out. Nothing was imported."
        )
        self.extra = {"unknown_classes": unknown, "known_classes": [c.name for c in configured_classes()]}


@dataclass
class ImportReport:
    """Summary of an import: objects created, objects left out, and the reasons."""

    source: str
    file_format: str
    created: int = 0
    created_per_class: dict = field(default_factory=dict)
    left_out_by_mapping: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)
    outside_slide: int = 0
    clipped: int = 0
    repaired: int = 0
    approximated_splines: int = 0

    def as_dict(self) -> dict:
        return {
            "source": self.source,
            "format": self.file_format,
            "created": self.created,
            "created_per_class": self.created_per_class,
            "left_out_by_mapping": self.left_out_by_mapping,
            "skipped": [{"index": i, "reason": r} for i, r in self.skipped],
            "outside_slide": self.outside_slide,
            "clipped": self.clipped,
            "repaired": self.repaired,
            "approximated_splines": self.approximated_splines,
        }


# Skip reasons quoted in full in the message of an import that created nothing.
MAX_REASONS_IN_MESSAGE = 3


class NothingImportedError(NephrowebError, ValueError):
    """An import that created no object. ``extra`` is the import report, added to the API body."""

    def __init__(self, report: ImportReport):
        super().__init__(nothing_imported_message(report))
        self.extra = report.as_dict()


def nothing_imported_message(report: ImportReport) -> str:
    """Build the message of an import that created nothing, naming the file and the causes."""
    reasons = []
    if report.skipped:
        quoted = "; ".join(
            f"object {index}: {reason}"
            for index, reason in report.skipped[:MAX_REASONS_IN_MESSAGE]
        )
        more = len(report.skipped) - MAX_REASONS_IN_MESSAGE
        if more > 0:
            quoted += f"; {more} more"
        reasons.append(f"{_objects(len(report.skipped))} skipped ({quoted})")
    left_out = sum(report.left_out_by_mapping.values())
    if left_out:
        reasons.append(f"{_objects(left_out)} left out by the mapping")
    if not reasons:
        reasons.append("the file contains no objects")
    return f"Nothing from {report.source} was imported: {', '.join(reasons)}."


def _objects(count: int) -> str:
    return f"{count} object" if count == 1 else f"{count} objects"


def _resolve_classes(annotations: AnnotationFile, mapping: dict[str, str]) -> dict:
    """Return file class name -> product class name ("" to leave out); raise on unknown."""
    by_lower = {c.name.lower(): c.name for c in configured_classes()}
    mapping_lower = {k.lower(): v for k, v in mapping.items()}
    resolved, unknown = {}, {}
    for name, count in annotations.class_counts.items():
        if name is None:
            continue
        target = mapping.get(name, mapping_lower.get(name.lower()))
        if target is None:
            target = by_lower.get(name.lower())
        elif target and target.lower() in by_lower:
            target = by_lower[target.lower()]
        elif target:
            known = ", ".join(c.name for c in configured_classes())
            raise UnknownMappingTargetError(
                f"The mapping sends {name!r} to {target!r}, which is not a configured class "
                f"({known}). Nothing was imported."
            )
        if target is None:
            unknown[name] = count
        resolved[name] = target
    if unknown:
        raise UnknownClassesError(annotations.path.name, unknown)
    return resolved


def import_annotations(slide, annotations: AnnotationFile, *, user, mapping=None) -> ImportReport:
    """Store the objects of a read annotation file on ``slide``; see the module docstring."""
    classes = _resolve_classes(annotations, mapping or {})
    report = ImportReport(
        source=annotations.path.name, file_format=annotations.format,
        skipped=[(s.index, s.reason) for s in annotations.skipped],
        repaired=annotations.repaired, approximated_splines=annotations.approximated_splines,
    )
    slide_box = shapely.box(0, 0, slide.width_px, slide.height_px)
    rows, created, left_out = [], Counter(), Counter()
    now = timezone.now()
    for obj in annotations.objects:
        class_name = classes.get(obj.class_name, "") if obj.class_name is not None else ""
        if obj.class_name is not None and not class_name:
            left_out[obj.class_name] += 1
            continue
        geometry = obj.geometry_level0
        if not geometry.intersects(slide_box) or geometry.intersection(slide_box).area == 0:
            report.outside_slide += 1
            report.skipped.append((obj.index, "outside the slide"))
            continue
        if not slide_box.contains(geometry):
            clipped = geometry.intersection(slide_box)
            parts = [g for g in getattr(clipped, "geoms", [clipped]) if g.geom_type == "Polygon"]
            geometry = parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)
            report.clipped += 1
        state = Instance.ReviewState.ACCEPTED if class_name else Instance.ReviewState.PENDING
        rows.append(Instance(
            slide=slide, source=Instance.Source.IMPORTED, review_state=state,
            class_name=class_name, reviewed_by=user if class_name else None,
            reviewed_at=now if class_name else None,
            **geometry_row_fields(geometry, slide.mpp),
        ))
        created[class_name or "(no class)"] += 1
    report.created_per_class = dict(sorted(created.items()))
    report.left_out_by_mapping = dict(sorted(left_out.items()))
    report.skipped.sort()
    if not rows:
        logger.info("Imported no objects from %s onto slide %s", report.source, slide.pk)
        return report
    with transaction.atomic():
        Instance.objects.bulk_create(rows, batch_size=2000)
        InstanceEvent.objects.bulk_create([
            InstanceEvent(
                slide=slide, instance=row, instance_ref=row.pk, user=user,
                action=InstanceEvent.Action.IMPORT, before={},
                after={"review_state": row.review_state, "class_name": row.class_name,
                       "geometry": row.geometry, "version": row.version},
            )
            for row in rows
        ], batch_size=2000)
        audit.record(
            audit.Action.IMPORT, user=user, target_type=audit.Target.SLIDE, target_id=slide.pk,
            slide_id=slide.pk,
            detail={"source": report.source, "format": report.file_format, "created": len(rows)},
        )
    report.created = len(rows)
    logger.info("Imported %d objects from %s onto slide %s", report.created, report.source, slide.pk)
    return report
