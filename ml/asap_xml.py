"""ASAP XML annotations (``<ASAP_Annotations>``), as ASAP and CAMELYON tools write them.

Each ``Annotations/Annotation`` element is one object. Its ``PartOfGroup`` is the class
("None", ASAP's word for no group, means unclassified), and the colour of that group in
``AnnotationGroups`` is the class colour. ``Coordinates/Coordinate`` elements give the
vertices in level-0 pixels, ordered by their ``Order`` attribute.
"""

from __future__ import annotations

import logging
import string
from pathlib import Path
from xml.etree.ElementTree import Element

from ml.annotation_files import (
    AnnotationFile,
    GeometryRejected,
    ObjectCollector,
    Ring,
    coordinate_value,
)

logger = logging.getLogger(__name__)

_POLYGON_TYPES = {"Polygon", "Rectangle"}
_POINT_TYPES = {"Dot", "PointSet"}


def read_asap_root(root: Element, path: Path) -> AnnotationFile:
    """Import the polygon, rectangle and spline annotations of a parsed ASAP document.

    Splines are stored as the polygon through their control points, which cuts the
    curve's bulges, and are counted in ``AnnotationFile.approximated_splines``. Dots and
    point sets are skipped because they have no area.
    """
    group_colors = {
        group.get("Name"): _hex_color(group.get("Color"))
        for group in root.findall("AnnotationGroups/Group")
    }
    collector = ObjectCollector()
    for index, annotation in enumerate(root.findall("Annotations/Annotation")):
        _read_annotation(index, annotation, group_colors, collector)
    return collector.finish(path, "asap_xml")


def _read_annotation(
    index: int,
    annotation: Element,
    group_colors: dict[str | None, tuple[int, int, int] | None],
    collector: ObjectCollector,
) -> None:
    annotation_type = annotation.get("Type")
    if annotation_type in _POINT_TYPES:
        collector.skip(index, f"ASAP {annotation_type} is a point annotation, not an area")
        return
    if annotation_type not in _POLYGON_TYPES and annotation_type != "Spline":
        collector.skip(index, f"unsupported ASAP annotation type {annotation_type!r}")
        return
    try:
        ring = _ordered_ring(annotation)
    except GeometryRejected as rejected:
        collector.skip(index, rejected.reason)
        return

    group = annotation.get("PartOfGroup")
    class_name = group if group and group != "None" else None
    class_color = group_colors.get(class_name) if class_name else None
    if class_name is not None and class_color is None:
        class_color = _hex_color(annotation.get("Color"))
    properties = {
        key: value
        for key, value in (("name", annotation.get("Name")), ("asap_color", annotation.get("Color")))
        if value
    }
    # Limitation: a spline is stored as the polygon through its control points, not the curve.
    collector.add(
        index,
        [[ring]],
        class_name=class_name,
        class_color_rgb=class_color,
        properties=properties,
        is_spline=annotation_type == "Spline",
    )


def _ordered_ring(annotation: Element) -> Ring:
    """Return the annotation's vertices sorted by their Order attribute."""
    ordered = []
    for position, coordinate in enumerate(annotation.findall("Coordinates/Coordinate")):
        where = f"Coordinate {position}"
        order_text = coordinate.get("Order", str(position))
        try:
            order = int(order_text)
        except ValueError:
            raise GeometryRejected(f"invalid Order {order_text!r} at {where}") from None
        point = (
            coordinate_value(_number(coordinate.get("X"), "X", where), where),
            coordinate_value(_number(coordinate.get("Y"), "Y", where), where),
        )
        ordered.append((order, point))
    ordered.sort(key=lambda item: item[0])
    return [point for _, point in ordered]


def _number(text: str | None, axis: str, where: str) -> float:
    """Parse the X or Y attribute as a number, naming the value when it is not one."""
    if text is None:
        raise GeometryRejected(f"missing {axis} attribute at {where}")
    try:
        return float(text)
    except ValueError:
        raise GeometryRejected(f"non-numeric coordinate {text!r} at {where}") from None


def _hex_color(text: str | None) -> tuple[int, int, int] | None:
    """Parse an ASAP colour such as "#F4FA58", or return None when it is not one."""
    if not text or len(text) != 7 or not text.startswith("#"):
        return None
    if not all(digit in string.hexdigits for digit in text[1:]):
        return None
    packed = int(text[1:], 16)
    return ((packed >> 16) & 0xFF, (packed >> 8) & 0xFF, packed & 0xFF)
