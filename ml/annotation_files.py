"""Annotation files from other tools, read into level-0 polygons with class and colour.

``read_annotation_file`` detects the format from the content, never from the suffix, and
dispatches to one reader per format:

- GeoJSON as QuPath and Digital Slide Archive export it (``ml.qupath_geojson``), which
  also contains the writer ``write_qupath_geojson``.
- ASAP XML (``ml.asap_xml``).
- Aperio ImageScope XML (``ml.aperio_xml``).

Every reader applies the same geometry rules (``polygonal_geometry``). Coordinates are
kept exactly as written, with no rounding or shifting. A polygon needs 3 distinct points
and a non-zero area. A self-intersecting outline is repaired with ``shapely.make_valid``,
which keeps only its polygonal parts. One bad object never aborts a file: it becomes a
``SkippedObject`` with its index and the reason. A file that is not an annotation file at
all raises ``AnnotationFileError``.

Usage::

    annotations = read_annotation_file("biopsy_12.geojson")
    for skipped in annotations.skipped:
        logger.warning("Object %d skipped: %s", skipped.index, skipped.reason)
    tubules = [obj for obj in annotations.objects if obj.class_name == "Tubule"]
"""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as DefusedElementTree
import shapely
from defusedxml import DefusedXmlException
from shapely.geometry import MultiPolygon, Polygon

from ml.errors import NephrowebError
from ml.polygons import make_valid_polygons

logger = logging.getLogger(__name__)

AnnotationFormat = Literal["geojson", "asap_xml", "aperio_xml"]

SUPPORTED_FORMATS_TEXT = (
    "QuPath or other GeoJSON (FeatureCollection, array of Features, Feature, Polygon or "
    "MultiPolygon), ASAP XML or Aperio ImageScope XML"
)


class AnnotationFileError(NephrowebError, ValueError):
    """An annotation file is empty, unreadable or in a format that cannot be imported."""


@dataclass(frozen=True)
class AnnotationObject:
    """One polygonal object read from or written to an annotation file.

    Attributes:
        index: Position of the object in its source file (feature, annotation or region
            index, counted from 0 and shared with skipped objects).
        geometry_level0: Outline in level-0 pixels, a valid non-empty Polygon or
            MultiPolygon with its holes kept.
        class_name: Class (QuPath classification, ASAP group, ...), or None when the
            object is unclassified.
        class_color_rgb: Display colour of the class from the file as 8-bit (r, g, b), or
            None.
        object_type: QuPath object type: "annotation", "detection", "cell", "tile", ...
        measurements: Measurement name to finite value. Missing and non-finite values are
            not stored.
        properties: Other properties from the file, kept as read. The key "id" contains the
            feature id, which ``write_qupath_geojson`` reuses when it is a UUID.
    """

    index: int
    geometry_level0: Polygon | MultiPolygon
    class_name: str | None = None
    class_color_rgb: tuple[int, int, int] | None = None
    object_type: str = "annotation"
    measurements: Mapping[str, float] = field(default_factory=dict)
    properties: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        geometry = self.geometry_level0
        if (
            not isinstance(geometry, (Polygon, MultiPolygon))
            or geometry.is_empty
            or not geometry.is_valid
        ):
            raise ValueError(
                f"AnnotationObject {self.index} needs a valid, non-empty shapely Polygon or "
                f"MultiPolygon in level-0 pixels, got {type(geometry).__name__}. "
                "Repair it with ml.polygons.make_valid_polygons first."
            )
        color = self.class_color_rgb
        if color is not None and not is_rgb_triple(color):
            raise ValueError(
                f"AnnotationObject {self.index} has class_color_rgb {color!r}, expected a "
                "tuple of three integers from 0 to 255."
            )


@dataclass(frozen=True)
class SkippedObject:
    """An object of the file that was not imported, with its index and the reason."""

    index: int
    reason: str


@dataclass(frozen=True)
class AnnotationFile:
    """The objects read from one annotation file and what was skipped or changed.

    Attributes:
        path: The file read (for ``read_annotation_bytes``, the source name given).
        format: Detected format: "geojson", "asap_xml" or "aperio_xml".
        objects: Imported objects in file order.
        skipped: Objects not imported, in file order, each with its reason.
        class_counts: Number of imported objects per class name (None for unclassified),
            in order of first appearance.
        repaired: Number of imported objects whose invalid outline (for example a
            self-intersection) was repaired with ``shapely.make_valid``.
        approximated_splines: Number of imported ASAP splines stored as the polygon
            through their control points.
    """

    path: Path
    format: AnnotationFormat
    objects: tuple[AnnotationObject, ...]
    skipped: tuple[SkippedObject, ...]
    class_counts: dict[str | None, int]
    repaired: int = 0
    approximated_splines: int = 0


class GeometryRejected(Exception):
    """Internal signal that one object's geometry cannot be imported; never leaves a reader."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class PolygonalGeometry:
    """A checked geometry and whether ``shapely.make_valid`` had to repair it."""

    geometry: Polygon | MultiPolygon
    repaired: bool


Ring = Sequence[tuple[float, float]]

# A slide 1e9 pixels wide would be 250 m long at 0.25 mpp, so larger values are corrupt.
# The bound also keeps GEOS area arithmetic far from floating-point overflow.
MAX_ABS_COORDINATE_LEVEL0 = 1e9


def is_rgb_triple(value: object) -> bool:
    """Return whether a value is three integers from 0 to 255 (booleans excluded)."""
    return (
        isinstance(value, (tuple, list))
        and len(value) == 3
        and all(
            isinstance(channel, int) and not isinstance(channel, bool) and 0 <= channel <= 255
            for channel in value
        )
    )


def coordinate_value(value: object, where: str) -> float:
    """Convert one parsed coordinate to float, rejecting non-numbers, NaN and huge values.

    Booleans are rejected although Python treats them as integers, because JSON ``true``
    in a coordinate is a corrupt file, not the number 1.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise GeometryRejected(f"non-numeric coordinate {value!r} at {where}")
    try:
        number = float(value)
    except OverflowError:
        raise GeometryRejected(f"coordinate out of floating-point range at {where}") from None
    if not math.isfinite(number):
        raise GeometryRejected(f"NaN or infinite coordinate at {where}")
    if abs(number) > MAX_ABS_COORDINATE_LEVEL0:
        raise GeometryRejected(
            f"coordinate {number!r} at {where} is outside +-{MAX_ABS_COORDINATE_LEVEL0:.0e} "
            "level-0 pixels"
        )
    return number


def polygonal_geometry(polygons: Sequence[Sequence[Ring]]) -> PolygonalGeometry:
    """Build a valid Polygon or MultiPolygon from rings of (x, y) level-0 points.

    Args:
        polygons: One entry per polygon; each is its shell ring followed by its hole
            rings. Rings may be open or closed. The coordinates are used unchanged.

    Raises:
        GeometryRejected: A ring has fewer than 3 distinct points, the area is zero, or
            nothing polygonal remains after repairing a self-intersection.
    """
    if not polygons:
        raise GeometryRejected("degenerate: the geometry has no polygons")
    shapes = []
    for polygon_index, rings in enumerate(polygons):
        if not rings:
            raise GeometryRejected(f"degenerate: polygon {polygon_index} has no rings")
        for ring_index, ring in enumerate(rings):
            if len(set(ring)) < 3:
                raise GeometryRejected(
                    f"degenerate: ring {ring_index} of polygon {polygon_index} has fewer than "
                    "3 distinct points"
                )
        shapes.append(Polygon(rings[0], rings[1:]))
    geometry: Polygon | MultiPolygon = shapes[0] if len(shapes) == 1 else MultiPolygon(shapes)

    if geometry.is_valid:
        if geometry.area <= 0:
            raise GeometryRejected("degenerate: zero area")
        return PolygonalGeometry(geometry=geometry, repaired=False)

    # make_valid can leave lines beside the polygons (for example from a spike that
    # folds back on itself). Only the parts with area are kept.
    parts = make_valid_polygons(geometry)
    if not parts:
        raise GeometryRejected(
            "degenerate: the outline is invalid and no area remains after repair"
        )
    repaired = parts[0] if len(parts) == 1 else MultiPolygon(parts)
    if not repaired.is_valid:
        # Parts that share an edge make an invalid MultiPolygon, so they are merged.
        repaired = shapely.union_all(parts)
    if not isinstance(repaired, (Polygon, MultiPolygon)) or not repaired.is_valid:
        raise GeometryRejected("the outline is invalid and could not be repaired")
    return PolygonalGeometry(geometry=repaired, repaired=True)


class ObjectCollector:
    """Accumulates a reader's imported and skipped objects and its counters."""

    def __init__(self) -> None:
        self.objects: list[AnnotationObject] = []
        self.skipped: list[SkippedObject] = []
        self.repaired = 0
        self.approximated_splines = 0

    def add(
        self,
        index: int,
        polygons: Sequence[Sequence[Ring]],
        *,
        class_name: str | None = None,
        class_color_rgb: tuple[int, int, int] | None = None,
        object_type: str = "annotation",
        measurements: Mapping[str, float] | None = None,
        properties: Mapping[str, Any] | None = None,
        is_spline: bool = False,
    ) -> None:
        """Add one object, or record it as skipped when its geometry is rejected."""
        try:
            checked = polygonal_geometry(polygons)
        except GeometryRejected as rejected:
            self.skip(index, rejected.reason)
            return
        if checked.repaired:
            self.repaired += 1
        if is_spline:
            self.approximated_splines += 1
        self.objects.append(
            AnnotationObject(
                index=index,
                geometry_level0=checked.geometry,
                class_name=class_name,
                class_color_rgb=class_color_rgb,
                object_type=object_type,
                measurements=dict(measurements or {}),
                properties=dict(properties or {}),
            )
        )

    def skip(self, index: int, reason: str) -> None:
        """Record an object that is not imported."""
        self.skipped.append(SkippedObject(index=index, reason=reason))

    def finish(self, path: Path, annotation_format: AnnotationFormat) -> AnnotationFile:
        """Return the result and log one summary line for the file."""
        class_counts = dict(Counter(obj.class_name for obj in self.objects))
        logger.info(
            "Read %d objects from %s (%s): %d skipped, %d repaired, %d splines approximated.",
            len(self.objects),
            path,
            annotation_format,
            len(self.skipped),
            self.repaired,
            self.approximated_splines,
        )
        for skipped in self.skipped:
            logger.debug("Skipped object %d of %s: %s", skipped.index, path, skipped.reason)
        return AnnotationFile(
            path=path,
            format=annotation_format,
            objects=tuple(self.objects),
            skipped=tuple(self.skipped),
            class_counts=class_counts,
            repaired=self.repaired,
            approximated_splines=self.approximated_splines,
        )


def read_annotation_file(path: str | Path) -> AnnotationFile:
    """Read an annotation file, detecting its format from the content.

    Raises:
        AnnotationFileError: The file is missing, empty, not JSON or XML, or JSON or XML
            of a shape that no reader supports.
    """
    path = Path(path)
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise AnnotationFileError(
            f"Annotation file {path} cannot be read ({exc.strerror or exc}). "
            "Check that the path exists and is a readable file."
        ) from exc
    return read_annotation_bytes(content, path)


def read_annotation_bytes(content: bytes, source: str | Path) -> AnnotationFile:
    """Read annotation file content (for example an upload) whose origin is ``source``.

    ``source`` is used only in messages and as ``AnnotationFile.path``.
    """
    # The readers import this module's types, so they are imported here, not at the top.
    from ml import aperio_xml, asap_xml, qupath_geojson

    path = Path(source)
    text_start = content.lstrip(b"\xef\xbb\xbf \t\r\n")[:1]
    if not text_start:
        raise AnnotationFileError(
            f"Annotation file {path} is empty. Export the annotations again; supported "
            f"formats are {SUPPORTED_FORMATS_TEXT}."
        )
    if text_start in (b"{", b"["):
        return qupath_geojson.read_geojson_bytes(content, path)
    if text_start == b"<":
        root = xml_root(content, path)
        if root.tag == "ASAP_Annotations":
            return asap_xml.read_asap_root(root, path)
        if root.tag == "Annotations":
            return aperio_xml.read_aperio_root(root, path)
        if root.tag == "annotation" and root.find("object/bndbox") is not None:
            raise AnnotationFileError(
                f"Annotation file {path} is Pascal VOC XML with bounding boxes, which cannot "
                "be imported because its boxes are not outlines and are usually on a "
                f"downsampled image, not in level-0 pixels. Supported formats are "
                f"{SUPPORTED_FORMATS_TEXT}."
            )
        raise AnnotationFileError(
            f"Annotation file {path} is XML with root element <{root.tag}>, expected "
            "<ASAP_Annotations> (ASAP) or <Annotations> (Aperio ImageScope). Supported "
            f"formats are {SUPPORTED_FORMATS_TEXT}."
        )
    if _is_json(content):
        raise AnnotationFileError(
            f"Annotation file {path} is JSON but contains a single value, not a GeoJSON "
            f"object or array. Supported formats are {SUPPORTED_FORMATS_TEXT}."
        )
    raise AnnotationFileError(
        f"Annotation file {path} is neither JSON nor XML (it starts with "
        f"{content[:20]!r}). Supported formats are {SUPPORTED_FORMATS_TEXT}."
    )


def _is_json(content: bytes) -> bool:
    """Return whether content parses as JSON (here only a bare string, number or literal)."""
    try:
        json.loads(content.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return False
    return True


def xml_root(content: bytes, path: Path) -> Element:
    """Parse XML content and return its root element, raising AnnotationFileError if invalid.

    defusedxml rejects an entity declaration as soon as the parser reads it, so no entity
    is ever expanded (a billion-laughs file) or fetched (an external entity that names a
    local file or URL). ASAP and Aperio ImageScope never declare entities.
    """
    try:
        return DefusedElementTree.fromstring(content)
    except DefusedXmlException as exc:
        entity = getattr(exc, "name", None)
        declared = f"the XML entity {entity!r}" if entity else "an XML entity or external reference"
        raise AnnotationFileError(
            f"Annotation file {path} declares {declared}, which is rejected because entities "
            "can expand to gigabytes or read other files. ASAP and Aperio ImageScope never "
            "write entities, so export the annotations again from the annotation tool."
        ) from exc
    except DefusedElementTree.ParseError as exc:
        raise AnnotationFileError(
            f"Annotation file {path} is not well-formed XML ({exc}). The file may be "
            "truncated, so export it again."
        ) from exc
