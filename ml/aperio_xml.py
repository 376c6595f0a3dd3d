"""Aperio ImageScope XML annotations (``<Annotations>`` with Regions and Vertices).

An ImageScope file contains layers (``Annotation`` elements), each with regions
(``Regions/Region``) whose ``Vertices/Vertex`` give the outline in level-0 pixels. Every
region becomes one object, indexed in document order across all layers. The layer's
``Name`` is the class (unclassified when empty) and its ``LineColor`` the class colour.
"""

from __future__ import annotations

import logging
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


def read_aperio_root(root: Element, path: Path) -> AnnotationFile:
    """Import every region of a parsed ImageScope document as a polygon.

    A region is read as the polygon through its vertices whatever its ``Type``, so a
    region with fewer than 3 distinct vertices (a ruler or an arrow, for example) is
    skipped as degenerate.
    """
    collector = ObjectCollector()
    index = 0
    for layer in root.findall("Annotation"):
        layer_name = layer.get("Name") or None
        layer_color = _colorref_rgb(layer.get("LineColor"))
        for region in layer.findall("Regions/Region"):
            _read_region(index, region, layer, layer_name, layer_color, collector)
            index += 1
    return collector.finish(path, "aperio_xml")


def _read_region(
    index: int,
    region: Element,
    layer: Element,
    layer_name: str | None,
    layer_color: tuple[int, int, int] | None,
    collector: ObjectCollector,
) -> None:
    try:
        ring = _vertices(region)
    except GeometryRejected as rejected:
        collector.skip(index, rejected.reason)
        return

    # Limitation: a negative region (NegativeROA="1"), which ImageScope excludes from
    # its layer, is imported as an ordinary object and marked "negative_roa": True.
    properties = {
        "aperio_layer_id": layer.get("Id"),
        "aperio_region_id": region.get("Id"),
        "negative_roa": region.get("NegativeROA") == "1",
        "aperio_line_color": layer.get("LineColor"),
    }
    if region.get("Text"):
        properties["name"] = region.get("Text")
    collector.add(
        index,
        [[ring]],
        class_name=layer_name,
        class_color_rgb=layer_color if layer_name else None,
        properties=properties,
    )


def _vertices(region: Element) -> Ring:
    points = []
    for position, vertex in enumerate(region.findall("Vertices/Vertex")):
        where = f"Vertex {position}"
        values = []
        for axis in ("X", "Y"):
            text = vertex.get(axis)
            if text is None:
                raise GeometryRejected(f"missing {axis} attribute at {where}")
            try:
                number = float(text)
            except ValueError:
                raise GeometryRejected(f"non-numeric coordinate {text!r} at {where}") from None
            values.append(coordinate_value(number, where))
        points.append((values[0], values[1]))
    return points


def _colorref_rgb(text: str | None) -> tuple[int, int, int] | None:
    """Decode ImageScope's ``LineColor``, a Windows COLORREF integer 0x00BBGGRR.

    NOTE: the byte order follows the Windows COLORREF layout; no ImageScope document that
    states it was at hand.
    """
    try:
        packed = int(text)
    except (TypeError, ValueError):
        return None
    if not 0 <= packed <= 0xFFFFFF:
        return None
    return (packed & 0xFF, (packed >> 8) & 0xFF, (packed >> 16) & 0xFF)
