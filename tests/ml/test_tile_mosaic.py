"""Tests for ml.tile_mosaic on the real KI PAS tiles: the written slide, its pixels, and
instance outlines that match their masks pixel for pixel."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import shapely
from shapely.geometry import shape

from ml.annotation_files import read_annotation_file
from ml.errors import SettingsError
from ml.slide import open_slide
from ml.tile_dataset import TileDatasetError, read_tile_dataset
from ml.tile_mosaic import (
    GUTTER_RGB,
    MosaicGroup,
    compose_mosaic,
    group_samples,
    write_tile_mosaic,
)

TUBULE_GROUP = MosaicGroup("pas", 1)
GLOMERULUS_GROUP = MosaicGroup("pas", 0)


@pytest.fixture(scope="module")
def pas_dataset(shared_data):
    return read_tile_dataset(shared_data / "kidney_tiles" / "omniseg_KI", stains=["pas"])


@pytest.fixture(scope="module")
def pas_groups(pas_dataset):
    return group_samples(pas_dataset.samples)


@pytest.fixture(scope="module")
def tubule_mosaic(pas_groups, tmp_path_factory):
    layout = compose_mosaic(pas_groups[TUBULE_GROUP])
    path = tmp_path_factory.mktemp("mosaic") / "ki_pas_scale1.tiff"
    return layout, write_tile_mosaic(layout, path)


def test_groups_by_stain_and_scale(pas_groups):
    assert list(pas_groups) == [GLOMERULUS_GROUP, TUBULE_GROUP]
    assert [sample.class_name for sample in pas_groups[GLOMERULUS_GROUP]] == ["glomerulus"] * 4
    classes = Counter(sample.class_name for sample in pas_groups[TUBULE_GROUP])
    assert classes == {"distal tubule": 4, "proximal tubule": 4, "vessel": 4}


def test_mosaic_opens_with_exact_size_and_mpp(tubule_mosaic):
    _, mosaic = tubule_mosaic
    # 12 tiles of 256 px in 4 columns and 3 rows, with 16 px of glass around each cell.
    assert (mosaic.width_px, mosaic.height_px) == (4 * 256 + 5 * 16, 3 * 256 + 4 * 16)
    with open_slide(mosaic.path) as slide:
        assert (slide.width_px, slide.height_px) == (1104, 832)
        assert slide.mpp == pytest.approx(1.0, rel=1e-9)
        assert slide.info.mpp_source == "slide properties"
        assert slide.info.vendor == "generic-tiff"
        assert slide.info.level_downsamples == (1.0, 2.0)
    assert mosaic.level_count == 2
    assert mosaic.mpp_is_estimate


def test_glomerulus_mosaic_has_scale_0_mpp(pas_groups, tmp_path):
    mosaic = write_tile_mosaic(compose_mosaic(pas_groups[GLOMERULUS_GROUP]), tmp_path / "g.tiff")
    with open_slide(mosaic.path) as slide:
        assert (slide.width_px, slide.height_px) == (2 * 256 + 3 * 16, 2 * 256 + 3 * 16)
        assert slide.mpp == pytest.approx(2.0, rel=1e-9)
    assert mosaic.instances_per_class() == {"glomerulus": 7}


def test_mosaic_pixels_are_tiles_and_glass(tubule_mosaic, pas_groups):
    layout, mosaic = tubule_mosaic
    with open_slide(mosaic.path) as slide:
        level0 = slide.read_region(0, 0, mosaic.width_px, mosaic.height_px, slide.mpp)
    samples = {str(sample.image_path): sample for sample in pas_groups[TUBULE_GROUP]}
    covered = np.zeros(level0.shape[:2], dtype=bool)
    for tile in mosaic.tiles:
        region = level0[
            tile.y_level0 : tile.y_level0 + tile.height_px,
            tile.x_level0 : tile.x_level0 + tile.width_px,
        ]
        assert np.array_equal(region, samples[str(tile.image_path)].image_rgb), tile.source_name
        covered[
            tile.y_level0 : tile.y_level0 + tile.height_px,
            tile.x_level0 : tile.x_level0 + tile.width_px,
        ] = True
    assert np.all(level0[~covered] == GUTTER_RGB)
    assert np.array_equal(level0, layout.image_rgb)


def test_instance_polygons_match_masks(tubule_mosaic, pas_groups):
    """Every outline covers exactly its mask's pixels, moved by its tile's offset.

    The tracer puts vertices on whole pixel corners and the offsets are whole pixels, so
    the shoelace area is an exact sum of integers in float64: the area tolerance is 0.
    """
    _, mosaic = tubule_mosaic
    samples = {str(sample.image_path): sample for sample in pas_groups[TUBULE_GROUP]}
    tile_instances = [
        (tile, tile_instance)
        for tile in mosaic.tiles
        for tile_instance in samples[str(tile.image_path)].instances
    ]
    assert len(tile_instances) == len(mosaic.instances)
    for (tile, tile_instance), instance in zip(tile_instances, mosaic.instances):
        assert instance.tile_index == tile.index
        assert instance.class_name == tile.class_name
        assert instance.polygon_level0.is_valid
        assert instance.polygon_level0.area == tile_instance.mask.sum() == instance.area_px
        # Pixel centres inside the outline are exactly the mask's pixels.
        rows, columns = np.mgrid[0 : tile.height_px, 0 : tile.width_px]
        inside = shapely.contains_xy(
            instance.polygon_level0,
            columns + tile.x_level0 + 0.5,
            rows + tile.y_level0 + 0.5,
        )
        assert np.array_equal(inside, tile_instance.mask)


def test_instance_counts_equal_tile_dataset(pas_dataset, pas_groups):
    counts: Counter[str] = Counter()
    for samples in pas_groups.values():
        layout = compose_mosaic(samples)
        counts.update(instance.class_name for instance in layout.instances)
    assert dict(counts) == pas_dataset.summary().instances_per_class
    assert dict(counts) == {
        "distal tubule": 46, "glomerulus": 7, "proximal tubule": 52, "vessel": 4
    }


def test_holes_are_kept(tubule_mosaic):
    _, mosaic = tubule_mosaic
    with_holes = [item for item in mosaic.instances if item.polygon_level0.interiors]
    # Four proximal tubules of the PAS tiles im_48_11, im_54_4 (two) and im_58_5 enclose
    # background pixels.
    assert len(with_holes) == 4
    assert sum(len(item.polygon_level0.interiors) for item in with_holes) == 5
    assert {mosaic.tiles[item.tile_index].source_id for item in with_holes} == {
        "im_48", "im_54", "im_58"
    }
    for instance in with_holes:
        assert instance.class_name == "proximal tubule"
        outer_area = shapely.Polygon(instance.polygon_level0.exterior).area
        assert instance.polygon_level0.area < outer_area


def test_tiles_keep_source_names(tubule_mosaic):
    _, mosaic = tubule_mosaic
    names = [tile.source_name for tile in mosaic.tiles]
    assert names == sorted(names)
    assert names[0] == "0_1_dt/pas/im_48_2.png"
    assert names[4] == "1_1_pt/pas/im_48_11.png"
    assert [(tile.row, tile.column) for tile in mosaic.tiles[:5]] == [
        (0, 0), (0, 1), (0, 2), (0, 3), (1, 0)
    ]
    assert mosaic.tiles[5].source_id == "im_50"
    assert (mosaic.tiles[5].x_level0, mosaic.tiles[5].y_level0) == (16 + 272, 16 + 272)

    document = json.loads(mosaic.tiles_path.read_text(encoding="utf-8"))
    assert document["slide"] == mosaic.path.name
    assert document["mpp"] == 1.0
    assert document["content_digest"] == mosaic.content_digest
    assert [entry["source_name"] for entry in document["tiles"]] == names
    assert sum(entry["instance_count"] for entry in document["tiles"]) == len(mosaic.instances)
    assert document["tiles"][4]["mask_name"] == "im_48_11_mask_proximal.png"


def test_geojson_reads_back(tubule_mosaic):
    _, mosaic = tubule_mosaic
    annotations = read_annotation_file(mosaic.geojson_path)
    assert len(annotations.objects) == len(mosaic.instances)
    for read, instance in zip(annotations.objects, mosaic.instances):
        assert read.class_name == instance.class_name
        assert read.geometry_level0.equals(instance.polygon_level0)
        assert read.properties["source_tile"] == mosaic.tiles[instance.tile_index].source_name
    features = json.loads(mosaic.geojson_path.read_text(encoding="utf-8"))["features"]
    assert shape(features[0]["geometry"]).area == mosaic.instances[0].area_px


def test_mosaic_is_deterministic(pas_groups, tmp_path):
    samples = pas_groups[TUBULE_GROUP]
    first = write_tile_mosaic(compose_mosaic(samples), tmp_path / "a.tiff")
    again = write_tile_mosaic(compose_mosaic(tuple(reversed(samples))), tmp_path / "b.tiff")
    assert first.content_digest == again.content_digest
    assert first.geojson_path.read_bytes() == again.geojson_path.read_bytes()
    assert first.path.read_bytes() == again.path.read_bytes()
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "a.geojson", "a.tiff", "a.tiles.json", "b.geojson", "b.tiff", "b.tiles.json"
    ]


def test_gutter_zero_puts_tiles_edge_to_edge(pas_groups):
    layout = compose_mosaic(pas_groups[TUBULE_GROUP], gutter_px=0)
    assert (layout.width_px, layout.height_px) == (1024, 768)
    assert (layout.tiles[5].x_level0, layout.tiles[5].y_level0) == (256, 256)
    assert layout.content_digest() != compose_mosaic(pas_groups[TUBULE_GROUP]).content_digest()


def test_given_mpp_is_not_an_estimate(pas_groups):
    layout = compose_mosaic(pas_groups[GLOMERULUS_GROUP][:1], mpp=0.5)
    assert layout.mpp == 0.5
    assert not layout.mpp_is_estimate
    # One tile gives a 1 x 1 grid.
    assert (layout.width_px, layout.height_px) == (288, 288)


def test_mixed_scales_rejected(pas_groups):
    mixed = pas_groups[TUBULE_GROUP][:1] + pas_groups[GLOMERULUS_GROUP][:1]
    with pytest.raises(TileDatasetError, match="pas scale 0, pas scale 1"):
        compose_mosaic(mixed)
    with pytest.raises(TileDatasetError, match="at least one tile"):
        compose_mosaic(())


@pytest.mark.parametrize(("gutter_px", "mpp"), [(-1, None), (2.5, None), (16, 0.0), (16, -1.0)])
def test_bad_settings_rejected(pas_groups, gutter_px, mpp):
    with pytest.raises(SettingsError, match="gutter_px|mpp"):
        compose_mosaic(pas_groups[TUBULE_GROUP], gutter_px=gutter_px, mpp=mpp)


def test_ki_mosaic_fixture(ki_mosaic):
    assert (ki_mosaic.width_px, ki_mosaic.height_px) == (832, 560)
    assert ki_mosaic.mpp == 1.0
    assert ki_mosaic.instances_per_class() == {
        "distal tubule": 20, "proximal tubule": 33, "vessel": 2
    }
    assert [tile.source_name for tile in ki_mosaic.tiles] == [
        "0_1_dt/pas/im_48_2.png",
        "0_1_dt/pas/im_49_2.png",
        "1_1_pt/pas/im_48_11.png",
        "1_1_pt/pas/im_50_7.png",
        "4_1_vessel/pas/im_160_3.png",
        "4_1_vessel/pas/im_162_3.png",
    ]
    with open_slide(ki_mosaic.path) as slide:
        assert (slide.width_px, slide.height_px, slide.mpp) == (832, 560, 1.0)
    for instance in ki_mosaic.instances:
        assert instance.polygon_level0.area == instance.area_px
