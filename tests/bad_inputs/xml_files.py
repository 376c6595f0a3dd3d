"""Bad ASAP and Aperio ImageScope XML annotation files, written at test time into a folder.

Documents are built from the real exports ``REAL_ASAP_EXPORT`` and ``REAL_APERIO_EXPORT``.
Every annotation (ASAP) or layer and region (ImageScope) copies the attributes of the
first one in the real file. Only the vertices, the group or layer name and the number of
objects change. Coordinates are level-0 pixels on a slide of
``annotation_files.SLIDE_SIZE_PX``. A vertex is ``(x, y)``, where a value may be a number,
a string written verbatim (``"abc"``, ``"NaN"``) or None for a missing attribute.

``kind`` is "asap" or "aperio" throughout.
"""

from __future__ import annotations

import xml.etree.ElementTree as ElementTree
from pathlib import Path

REAL_ASAP_EXPORT = Path("annotations") / "asap_xml" / "pathmltut_camelyon16_normal_004_tissue.xml"
REAL_APERIO_EXPORT = Path("annotations") / "aperio_xml" / "histoqc_TCGA-EJ-5518-01Z-00-DX1.xml"
REAL_VOC_BOXES = (
    Path("annotations") / "voc_xml_kidney_glomeruli" / "jinseikenai_OPT_PAS_H11-084481_pw40_ds8.xml"
)
REAL_KI_TILE = Path("kidney_tiles") / "omniseg_KI" / "1_1_pt" / "pas" / "im_50_7.png"

KINDS = ("asap", "aperio")
# The element whose position the skip reasons name, e.g. "at Coordinate 1".
VERTEX_ELEMENT = {"asap": "Coordinate", "aperio": "Vertex"}
# The format the import report and the command's summary name.
FORMAT_NAME = {"asap": "asap_xml", "aperio": "aperio_xml"}


def _real_root(shared_data: Path, relative: Path) -> ElementTree.Element:
    # The real exports are trusted test data, so the standard library parses them.
    return ElementTree.parse(shared_data / relative).getroot()


def _vertex_attributes(x, y) -> dict[str, str]:
    attributes = {}
    if x is not None:
        attributes["X"] = str(x)
    if y is not None:
        attributes["Y"] = str(y)
    return attributes


def asap_document(shared_data: Path, objects: list[tuple[list, str | None]],
                  annotation_type: str = "Polygon") -> bytes:
    """Return an ASAP document with one annotation per (ring, group) pair (None: no group)."""
    real = _real_root(shared_data, REAL_ASAP_EXPORT)
    template = real.find("Annotations/Annotation")
    group_template = real.find("AnnotationGroups/Group")

    root = ElementTree.Element(real.tag)
    annotations = ElementTree.SubElement(root, "Annotations")
    for index, (ring, group) in enumerate(objects):
        annotation = ElementTree.SubElement(annotations, "Annotation", dict(template.attrib))
        annotation.set("Name", f"Annotation {index}")
        annotation.set("Type", annotation_type)
        annotation.set("PartOfGroup", group or "None")
        coordinates = ElementTree.SubElement(annotation, "Coordinates")
        for order, (x, y) in enumerate(ring):
            ElementTree.SubElement(
                coordinates, "Coordinate", {"Order": str(order), **_vertex_attributes(x, y)}
            )
    groups = ElementTree.SubElement(root, "AnnotationGroups")
    for name in dict.fromkeys(group for _, group in objects if group):
        group_element = ElementTree.SubElement(groups, "Group", dict(group_template.attrib))
        group_element.set("Name", name)
        ElementTree.SubElement(group_element, "Attributes")
    return ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)


def aperio_document(shared_data: Path, objects: list[tuple[list, str | None]]) -> bytes:
    """Return an ImageScope document with one region per (ring, layer name) pair.

    Consecutive objects of one name share a layer, so a region's index in the file equals
    its position in ``objects``. None is a layer without a name (unclassified).
    """
    real = _real_root(shared_data, REAL_APERIO_EXPORT)
    layer_template = real.find("Annotation")
    region_template = layer_template.find("Regions/Region")

    root = ElementTree.Element(real.tag, dict(real.attrib))
    layer = None
    layer_name: str | None = None
    for index, (ring, name) in enumerate(objects):
        if layer is None or name != layer_name:
            layer_name = name
            layer = ElementTree.SubElement(root, "Annotation", dict(layer_template.attrib))
            layer.set("Id", str(len(root.findall("Annotation"))))
            layer.set("Name", name or "")
            regions = ElementTree.SubElement(layer, "Regions")
        region = ElementTree.SubElement(regions, "Region", dict(region_template.attrib))
        region.set("Id", str(index + 1))
        vertices = ElementTree.SubElement(region, "Vertices")
        for x, y in ring:
            ElementTree.SubElement(vertices, "Vertex", _vertex_attributes(x, y))
    return ElementTree.tostring(root, encoding="utf-8", xml_declaration=True)


def write_objects(kind: str, shared_data: Path, folder: Path, name: str,
                  objects: list[tuple[list, str | None]]) -> Path:
    """Write ``objects`` as an ASAP or ImageScope file named ``name`` in ``folder``."""
    if kind == "asap":
        content = asap_document(shared_data, objects)
    else:
        content = aperio_document(shared_data, objects)
    path = folder / name
    path.write_bytes(content)
    return path


def truncated_export(kind: str, shared_data: Path, folder: Path) -> Path:
    """Write the first half of the real export, as an interrupted download leaves it."""
    source = REAL_ASAP_EXPORT if kind == "asap" else REAL_APERIO_EXPORT
    content = (shared_data / source).read_bytes()
    path = folder / f"truncated_{kind}.xml"
    path.write_bytes(content[: len(content) // 2])
    return path


def renamed_root(shared_data: Path, folder: Path) -> Path:
    """Write the real ASAP export with its root element renamed to <ASAPAnnotations>."""
    root = _real_root(shared_data, REAL_ASAP_EXPORT)
    root.tag = "ASAPAnnotations"
    path = folder / "renamed_root.xml"
    path.write_bytes(ElementTree.tostring(root, encoding="utf-8", xml_declaration=True))
    return path


def voc_boxes(shared_data: Path, folder: Path) -> Path:
    """Write a copy of the real Pascal VOC glomerulus boxes: XML, but boxes, not outlines."""
    path = folder / "glomeruli_boxes.xml"
    path.write_bytes((shared_data / REAL_VOC_BOXES).read_bytes())
    return path


def png_named_xml(shared_data: Path, folder: Path) -> Path:
    """Write a real KI tile image (PNG bytes) under an XML name."""
    path = folder / "tile.xml"
    path.write_bytes((shared_data / REAL_KI_TILE).read_bytes())
    return path


def empty_file(folder: Path) -> Path:
    """Write a file of 0 bytes under an XML name."""
    path = folder / "empty.xml"
    path.write_bytes(b"")
    return path


def declaration_only(folder: Path) -> Path:
    """Write only the XML declaration, as a tool that crashed after its first line leaves it."""
    path = folder / "declaration_only.xml"
    path.write_bytes(b'<?xml version="1.0"?>\n')
    return path


def external_entity(folder: Path, secret: Path) -> Path:
    """Write an ASAP file whose DTD declares an external entity that reads ``secret``.

    The entity is referenced inside <Annotations>, so a parser that resolved it would put
    the file's text into the document.
    """
    path = folder / "external_entity.xml"
    path.write_text(
        '<?xml version="1.0"?>\n'
        f'<!DOCTYPE ASAP_Annotations [<!ENTITY secret SYSTEM "{secret.as_uri()}">]>\n'
        "<ASAP_Annotations><Annotations>&secret;</Annotations></ASAP_Annotations>\n",
        encoding="utf-8",
    )
    return path


# Levels of the billion-laughs file: each entity repeats the previous one 10 times, so
# the last one expands to 10**9 copies of "lol" (3 GB).
LAUGH_LEVELS = 9


def billion_laughs(folder: Path) -> Path:
    """Write an ASAP file whose nested entities expand to 3 GB when referenced once."""
    declarations = ['<!ENTITY lol0 "lol">']
    for level in range(1, LAUGH_LEVELS + 1):
        declarations.append(f'<!ENTITY lol{level} "{f"&lol{level - 1};" * 10}">')
    path = folder / "billion_laughs.xml"
    path.write_text(
        '<?xml version="1.0"?>\n'
        f"<!DOCTYPE ASAP_Annotations [{''.join(declarations)}]>\n"
        f"<ASAP_Annotations><Annotations>&lol{LAUGH_LEVELS};</Annotations></ASAP_Annotations>\n",
        encoding="utf-8",
    )
    return path


def point_annotation(shared_data: Path, folder: Path) -> Path:
    """Write an ASAP file with one Dot annotation: a point, which has no area."""
    path = folder / "dot.xml"
    path.write_bytes(asap_document(shared_data, [([(150, 150)], "Glomerulus")], "Dot"))
    return path
