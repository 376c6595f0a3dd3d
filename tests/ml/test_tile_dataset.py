"""KI tile reading, touching-object splitting and the source-grouped split."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from shapely.geometry import Polygon

from ml.errors import NephrowebError, SettingsError
from ml.tile_dataset import (
    TileDataset,
    TileDatasetError,
    TileSample,
    read_binary_mask,
    read_image_rgb,
    read_tile_dataset,
    split_by_source,
    split_instances,
)

KI_CLASSES = ("distal tubule", "proximal tubule", "glomerulus", "vessel")


def disc_mask(shape: tuple[int, int], centres_xy: list[tuple[int, int]], radius: int) -> np.ndarray:
    """Return an (H, W) bool mask with filled discs drawn by OpenCV."""
    mask = np.zeros(shape, dtype=np.uint8)
    for centre in centres_xy:
        cv2.circle(mask, centre, radius, 1, thickness=-1)
    return mask.astype(bool)


def write_rgba(path: Path, rgba: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgba.astype(np.uint8), mode="RGBA").save(path)


def write_mask(path: Path, mask_values: np.ndarray) -> None:
    """Write a KI-style RGBA mask: grey values in R, G and B, opaque alpha."""
    rgba = np.dstack([mask_values] * 3 + [np.full(mask_values.shape, 255)])
    write_rgba(path, rgba)


def write_tile(folder: Path, stem: str, mask_values: np.ndarray, label: str = "proximal") -> None:
    image = np.full((*mask_values.shape, 4), 200, dtype=np.uint8)
    image[..., 3] = 255
    write_rgba(folder / f"{stem}.png", image)
    write_mask(folder / f"{stem}_mask_{label}.png", mask_values)


def two_disc_values() -> np.ndarray:
    return disc_mask((64, 64), [(20, 32), (44, 32)], 12).astype(np.uint8) * 255


def make_sample(source_id: str, name: str) -> TileSample:
    return TileSample(
        image_path=Path(f"{name}.png"),
        mask_path=Path(f"{name}_mask_distal.png"),
        stain="pas",
        class_name="distal tubule",
        source_id=source_id,
        scale_index=1,
        image_rgb=np.zeros((2, 2, 3), dtype=np.uint8),
        instances=(),
        component_count=0,
        dropped_count=0,
    )


@pytest.fixture(scope="module")
def ki_root(shared_data: Path) -> Path:
    return shared_data / "kidney_tiles" / "omniseg_KI"


@pytest.fixture(scope="module")
def ki_dataset(ki_root: Path) -> TileDataset:
    return read_tile_dataset(ki_root, min_instance_area_px=30, min_peak_height_px=2.0)


# Splitting touching objects


def test_touching_discs_become_two() -> None:
    disc_area = int(disc_mask((120, 160), [(50, 60)], 25).sum())
    mask = disc_mask((120, 160), [(50, 60), (98, 60)], 25)

    split = split_instances(mask)

    assert split.component_count == 1
    assert len(split.instances) == 2
    for instance in split.instances:
        assert instance.area_px == pytest.approx(disc_area, rel=0.02)
    assert sum(instance.area_px for instance in split.instances) == int(mask.sum())


def test_overlapping_unequal_discs_areas() -> None:
    mask = disc_mask((120, 160), [(50, 60)], 30) | disc_mask((120, 160), [(100, 60)], 20)

    split = split_instances(mask)

    areas = [instance.area_px for instance in split.instances]
    assert len(areas) == 2
    assert areas[0] == pytest.approx(np.pi * 30**2, rel=0.03)
    assert areas[1] == pytest.approx(np.pi * 20**2, rel=0.03)


def test_split_instances_are_disjoint() -> None:
    mask = disc_mask((120, 200), [(40, 60), (85, 60), (130, 60)], 24)

    split = split_instances(mask)

    assert len(split.instances) == 3
    stacked = np.sum([instance.mask for instance in split.instances], axis=0)
    assert stacked.max() == 1
    assert np.array_equal(stacked.astype(bool), mask)


def test_ring_stays_one_with_hole() -> None:
    mask = disc_mask((100, 100), [(50, 50)], 30) & ~disc_mask((100, 100), [(50, 50)], 15)

    split = split_instances(mask)

    assert len(split.instances) == 1
    ring = split.instances[0]
    assert len(ring.polygon_px.interiors) == 1
    assert ring.area_px == int(mask.sum())
    assert ring.polygon_px.area == ring.area_px
    assert Polygon(ring.polygon_px.interiors[0]).area == int(
        disc_mask((100, 100), [(50, 50)], 15).sum()
    )


def test_elongated_bar_not_oversplit() -> None:
    mask = np.zeros((60, 200), dtype=bool)
    mask[20:40, 10:190] = True

    split = split_instances(mask)

    assert len(split.instances) == 1
    assert split.instances[0].area_px == 20 * 180


def test_tiny_speck_dropped_and_counted() -> None:
    mask = disc_mask((80, 80), [(40, 40)], 15)
    mask[2:5, 2:5] = True  # 9 px

    split = split_instances(mask, min_area_px=30)

    assert split.component_count == 2
    assert split.dropped_count == 1
    assert len(split.instances) == 1
    assert not split.instances[0].mask[2:5, 2:5].any()


def test_polygon_in_tile_pixels() -> None:
    mask = np.zeros((50, 60), dtype=bool)
    mask[10:20, 30:45] = True

    (instance,) = split_instances(mask).instances

    assert instance.polygon_px.bounds == (30.0, 10.0, 45.0, 20.0)
    assert instance.polygon_px.area == 150
    assert instance.mask.shape == (50, 60)
    assert instance.mask.dtype == bool


def test_touches_border_flag() -> None:
    mask = np.zeros((50, 50), dtype=bool)
    mask[0:10, 20:30] = True
    mask[30:40, 30:40] = True

    instances = split_instances(mask).instances

    flags = {instance.polygon_px.bounds[1]: instance.touches_border for instance in instances}
    assert flags == {0.0: True, 30.0: False}


def test_higher_peak_height_splits_less() -> None:
    # Discs of radius 20 whose centres are 36 px apart meet in a neck of half-width
    # sqrt(20**2 - 18**2), about 8.7 px, so their peaks rise about 11 px above the saddle.
    mask = disc_mask((80, 120), [(40, 40), (76, 40)], 20)

    assert len(split_instances(mask, min_peak_height_px=2.0).instances) == 2
    assert len(split_instances(mask, min_peak_height_px=15.0).instances) == 1


def test_long_shared_edge_not_split() -> None:
    # Limitation: two squares side by side have no neck, so they stay one instance.
    mask = np.zeros((60, 100), dtype=bool)
    mask[10:50, 10:50] = True
    mask[10:50, 50:90] = True

    assert len(split_instances(mask).instances) == 1


def test_split_settings_rejected() -> None:
    mask = np.ones((5, 5), dtype=bool)

    with pytest.raises(SettingsError, match="min_area_px"):
        split_instances(mask, min_area_px=0)
    with pytest.raises(SettingsError, match="min_peak_height_px"):
        split_instances(mask, min_peak_height_px=0.0)


# Reading files


def test_alpha_composited_on_white(tmp_path: Path) -> None:
    rgba = np.zeros((1, 3, 4), dtype=np.uint8)
    rgba[0, 0] = (0, 0, 0, 0)
    rgba[0, 1] = (0, 0, 0, 255)
    rgba[0, 2] = (100, 0, 0, 128)
    path = tmp_path / "im_1_0.png"
    write_rgba(path, rgba)

    rgb = read_image_rgb(path)

    assert rgb.shape == (1, 3, 3)
    assert rgb.dtype == np.uint8
    assert rgb[0, 0].tolist() == [255, 255, 255]
    assert rgb[0, 1].tolist() == [0, 0, 0]
    # 100 * 128/255 + 255 * 127/255 and 255 * 127/255, rounded.
    assert rgb[0, 2].tolist() == [177, 127, 127]


def test_mask_value_128_rejected(tmp_path: Path) -> None:
    values = two_disc_values()
    values[0, 0] = 128
    write_tile(tmp_path / "0_1_dt" / "pas", "im_5_1", values, label="distal")

    with pytest.raises(TileDatasetError, match="im_5_1_mask_distal.png") as error:
        read_tile_dataset(tmp_path)

    assert "0 and 255" in str(error.value)
    assert "[128]" in str(error.value)
    assert isinstance(error.value, NephrowebError)


def test_mask_colour_channels_differ(tmp_path: Path) -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[2:4, 2:4, 0] = 255
    path = tmp_path / "im_1_0_mask_distal.png"
    write_rgba(path, rgba)

    with pytest.raises(TileDatasetError, match="red, green and blue"):
        read_binary_mask(path)


def test_grey_mask_read(tmp_path: Path) -> None:
    values = np.zeros((4, 4), dtype=np.uint8)
    values[1, 2] = 255
    path = tmp_path / "grey.png"
    Image.fromarray(values, mode="L").save(path)

    mask = read_binary_mask(path)

    assert mask.dtype == bool
    assert np.argwhere(mask).tolist() == [[1, 2]]


def test_unpaired_files_reported(tmp_path: Path) -> None:
    folder = tmp_path / "1_1_pt" / "pas"
    write_tile(folder, "im_7_1", two_disc_values())
    write_rgba(folder / "im_7_2.png", np.full((64, 64, 4), 255, dtype=np.uint8))
    write_mask(folder / "im_8_0_mask_proximal.png", two_disc_values())
    (folder / "notes.txt").write_text("scanned 2021")

    dataset = read_tile_dataset(tmp_path)

    assert [sample.image_path.name for sample in dataset.samples] == ["im_7_1.png"]
    assert [path.name for path in dataset.unpaired_files] == [
        "im_7_2.png",
        "im_8_0_mask_proximal.png",
        "notes.txt",
    ]
    summary = dataset.summary()
    assert summary.unpaired_files == dataset.unpaired_files
    assert "im_7_2.png" in summary.format()


def test_two_masks_for_one_image(tmp_path: Path) -> None:
    folder = tmp_path / "1_1_pt" / "pas"
    write_tile(folder, "im_7_1", two_disc_values())
    write_mask(folder / "im_7_1_mask_other.png", two_disc_values())

    with pytest.raises(TileDatasetError, match="im_7_1.png has 2 masks"):
        read_tile_dataset(tmp_path)


def test_mask_size_mismatch(tmp_path: Path) -> None:
    folder = tmp_path / "1_1_pt" / "pas"
    write_rgba(folder / "im_7_1.png", np.full((32, 32, 4), 255, dtype=np.uint8))
    write_mask(folder / "im_7_1_mask_proximal.png", two_disc_values())

    with pytest.raises(TileDatasetError, match="64 x 64 px but its image im_7_1.png is 32 x 32"):
        read_tile_dataset(tmp_path)


def test_synthetic_tile_instances(tmp_path: Path) -> None:
    write_tile(tmp_path / "1_1_pt" / "he", "im_3_4", two_disc_values())

    (sample,) = read_tile_dataset(tmp_path).samples

    assert sample.class_name == "proximal tubule"
    assert sample.stain == "he"
    assert sample.source_id == "im_3"
    assert sample.scale_index == 1
    assert sample.mpp_estimate == 1.0
    assert sample.image_rgb.shape == (64, 64, 3)
    assert sample.component_count == 1
    assert len(sample.instances) == 2


def test_unmapped_folders_skipped(tmp_path: Path) -> None:
    write_tile(tmp_path / "1_1_pt" / "pas", "im_7_1", two_disc_values())
    write_tile(tmp_path / "9_2_nerve" / "pas", "im_9_1", two_disc_values(), label="nerve")
    (tmp_path / "notes").mkdir()

    dataset = read_tile_dataset(tmp_path)

    assert len(dataset.samples) == 1
    reasons = {folder.path.name: folder.reason for folder in dataset.skipped_folders}
    assert reasons == {
        "9_2_nerve": "'nerve' is not in the class map",
        "notes": "name is not <class index>_<scale index>_<name>",
    }


def test_custom_class_map(tmp_path: Path) -> None:
    write_tile(tmp_path / "3_0_tuft" / "pas", "im_2_0", two_disc_values(), label="tuft")

    dataset = read_tile_dataset(tmp_path, class_map={"tuft": "glomerular tuft"})

    assert [sample.class_name for sample in dataset.samples] == ["glomerular tuft"]
    assert dataset.samples[0].mpp_estimate == 2.0


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(TileDatasetError, match="does not exist"):
        read_tile_dataset(tmp_path / "absent")


def test_root_without_class_folders(tmp_path: Path) -> None:
    (tmp_path / "notes").mkdir()

    with pytest.raises(TileDatasetError, match="contains no class folder"):
        read_tile_dataset(tmp_path)


def test_unknown_stain_rejected(ki_root: Path) -> None:
    with pytest.raises(TileDatasetError, match=r"\['pam'\] were not found") as error:
        read_tile_dataset(ki_root, stains=["pas", "pam"])

    assert "['he', 'pas', 'sil', 'tri']" in str(error.value)


def test_bad_settings_rejected_before_reading(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="min_area_px"):
        read_tile_dataset(tmp_path / "absent", min_instance_area_px=0)


# Real KI tiles


def test_ki_pairs_per_class_and_stain(ki_dataset: TileDataset) -> None:
    summary = ki_dataset.summary()

    expected = {
        (class_name, stain): 4
        for class_name in KI_CLASSES
        for stain in ("he", "pas", "sil", "tri")
        if (class_name, stain) != ("vessel", "sil")
    }
    assert summary.pairs_per_class_stain == expected
    assert summary.pairs_per_class == {
        "distal tubule": 16,
        "proximal tubule": 16,
        "glomerulus": 16,
        "vessel": 12,
    }
    assert summary.unpaired_files == ()


def test_ki_default_skips_tuft_and_ptc(ki_dataset: TileDataset) -> None:
    reasons = {folder.path.name: folder.reason for folder in ki_dataset.skipped_folders}

    assert set(reasons) == {"3_0_tuft", "5_3_ptc"}
    assert "tuft" in reasons["3_0_tuft"]
    assert "peritubular capillary" in reasons["5_3_ptc"]
    text = ki_dataset.summary().format()
    assert "3_0_tuft" in text
    assert "5_3_ptc" in text


def test_ki_instance_counts(ki_dataset: TileDataset) -> None:
    summary = ki_dataset.summary()

    assert summary.components_per_class == {
        "distal tubule": 144,
        "proximal tubule": 155,
        "glomerulus": 28,
        "vessel": 15,
    }
    assert summary.instances_per_class == {
        "distal tubule": 155,
        "proximal tubule": 208,
        "glomerulus": 28,
        "vessel": 15,
    }
    assert summary.dropped_per_class == {
        "distal tubule": 21,
        "proximal tubule": 40,
        "glomerulus": 0,
        "vessel": 0,
    }
    assert summary.dropped_total == 61


def test_ki_pas_tubule_splitting(ki_dataset: TileDataset) -> None:
    counts = {
        sample.image_path.name: (sample.component_count, len(sample.instances))
        for sample in ki_dataset.samples
        if sample.stain == "pas" and sample.class_name == "proximal tubule"
    }

    assert counts == {
        "im_48_11.png": (7, 20),
        "im_50_7.png": (7, 13),
        "im_54_4.png": (2, 11),
        "im_58_5.png": (5, 8),
    }


def test_ki_instances_cover_mask(ki_dataset: TileDataset) -> None:
    for sample in ki_dataset.samples:
        mask = read_binary_mask(sample.mask_path)
        covered = np.zeros(mask.shape, dtype=np.int32)
        for instance in sample.instances:
            covered += instance.mask
            assert instance.polygon_px.is_valid
            assert instance.polygon_px.area == instance.area_px
            assert instance.area_px >= 30
        assert covered.max() <= 1, sample.mask_path
        assert not (covered.astype(bool) & ~mask).any(), sample.mask_path
        assert sample.image_rgb.shape == (256, 256, 3)
        assert sample.image_rgb.dtype == np.uint8


def test_ki_mpp_estimates(ki_dataset: TileDataset) -> None:
    summary = ki_dataset.summary()

    assert summary.mpp_estimate_by_scale_index == {0: 2.0, 1: 1.0}
    assert "do not record pixel size" in summary.mpp_note
    scale_by_class = {sample.class_name: sample.scale_index for sample in ki_dataset.samples}
    assert scale_by_class == {
        "distal tubule": 1,
        "proximal tubule": 1,
        "glomerulus": 0,
        "vessel": 1,
    }


def test_ki_stain_filter(ki_root: Path) -> None:
    dataset = read_tile_dataset(ki_root, stains=["pas"])

    assert {sample.stain for sample in dataset.samples} == {"pas"}
    assert len(dataset.samples) == 16


# Split by source


def test_split_deterministic(ki_dataset: TileDataset) -> None:
    first = split_by_source(ki_dataset.samples, held_out_fraction=0.25, seed=7)
    second = split_by_source(ki_dataset.samples, held_out_fraction=0.25, seed=7)

    assert [sample.image_path for sample in first[1]] == [
        sample.image_path for sample in second[1]
    ]
    assert [sample.image_path for sample in first[0]] == [
        sample.image_path for sample in second[0]
    ]


def test_split_keeps_sources_apart(ki_dataset: TileDataset) -> None:
    for seed in range(5):
        train, held_out = split_by_source(ki_dataset.samples, held_out_fraction=0.25, seed=seed)

        train_sources = {sample.source_id for sample in train}
        held_out_sources = {sample.source_id for sample in held_out}
        assert not train_sources & held_out_sources
        assert len(train) + len(held_out) == len(ki_dataset.samples)
        # The largest KI source has 4 tiles, so the held-out side is within 4 of 15.
        assert abs(len(held_out) - 15) <= 4


def test_split_overlapping_tiles_together(ki_dataset: TileDataset) -> None:
    # The distal and proximal silver tiles named im_68_1 share a tissue region pixel for pixel.
    train, held_out = split_by_source(ki_dataset.samples, held_out_fraction=0.5, seed=3)

    for side in (train, held_out):
        names = {(sample.class_name, sample.stain, sample.image_path.name) for sample in side}
        has_distal = ("distal tubule", "sil", "im_68_1.png") in names
        has_proximal = ("proximal tubule", "sil", "im_68_1.png") in names
        assert has_distal == has_proximal


def test_ki_source_is_image_not_patient(ki_dataset: TileDataset) -> None:
    # Limitation: a source is one source image, because the KI names carry no patient id.
    sources = {sample.source_id for sample in ki_dataset.samples}

    assert len(sources) == 45
    assert all(source_id.startswith("im_") for source_id in sources)
    tiles_68 = [
        (sample.class_name, sample.stain)
        for sample in ki_dataset.samples
        if sample.source_id == "im_68"
    ]
    assert sorted(tiles_68) == [
        ("distal tubule", "sil"),
        ("distal tubule", "tri"),
        ("proximal tubule", "sil"),
        ("proximal tubule", "tri"),
    ]


def test_split_seed_changes_result(ki_dataset: TileDataset) -> None:
    held_out_by_seed = {
        seed: {
            sample.image_path
            for sample in split_by_source(ki_dataset.samples, held_out_fraction=0.25, seed=seed)[1]
        }
        for seed in (0, 1)
    }

    assert held_out_by_seed[0] != held_out_by_seed[1]


def test_split_by_source_synthetic() -> None:
    samples = [make_sample(f"im_{index // 2}", f"im_{index // 2}_{index}") for index in range(10)]

    train, held_out = split_by_source(samples, held_out_fraction=0.4, seed=0)

    assert len(held_out) == 4
    assert len(train) == 6
    assert not {sample.source_id for sample in train} & {sample.source_id for sample in held_out}
    held_out_sources = {sample.source_id for sample in held_out}
    assert [sample.image_path for sample in train] == [
        sample.image_path for sample in samples if sample.source_id not in held_out_sources
    ]


def test_split_large_sources_both_sides() -> None:
    samples = [make_sample("im_1", f"im_1_{index}") for index in range(5)]
    samples += [make_sample("im_2", f"im_2_{index}") for index in range(3)]

    train, held_out = split_by_source(samples, held_out_fraction=0.1, seed=0)

    assert len(train) > 0
    assert len(held_out) > 0
    assert {sample.source_id for sample in held_out} in ({"im_1"}, {"im_2"})


def test_split_needs_two_sources() -> None:
    samples = [make_sample("im_1", "im_1_0"), make_sample("im_1", "im_1_1")]

    with pytest.raises(TileDatasetError, match="1 source"):
        split_by_source(samples, held_out_fraction=0.5, seed=0)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_fraction_range(fraction: float) -> None:
    samples = [make_sample("im_1", "im_1_0"), make_sample("im_2", "im_2_0")]

    with pytest.raises(SettingsError, match="held_out_fraction"):
        split_by_source(samples, held_out_fraction=fraction, seed=0)


def test_source_fallback_for_other_names(tmp_path: Path) -> None:
    write_tile(tmp_path / "1_1_pt" / "pas", "tile-a", two_disc_values())
    write_tile(tmp_path / "1_1_pt" / "pas", "tile-b", two_disc_values())

    samples = read_tile_dataset(tmp_path).samples

    assert [sample.source_id for sample in samples] == ["tile-a", "tile-b"]
