"""The KI tile dataset imported as mosaic slides with accepted annotations: the rows it
creates, a second run that creates nothing, bad folders, and training snapshots."""

from __future__ import annotations

import re
import shutil
import threading
from collections import Counter

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from PIL import Image
from shapely.geometry import shape

from apps.annotations.models import Instance, InstanceEvent
from apps.annotations.tile_datasets import import_tile_dataset
from apps.slides.models import Slide
from apps.training.models import SnapshotInstance
from apps.training.snapshots import build_snapshot
from ml.tile_dataset import read_tile_dataset
from ml.tile_mosaic import compose_mosaic, group_samples

pytestmark = pytest.mark.django_db

PAS_INSTANCES = {"distal tubule": 46, "glomerulus": 7, "proximal tubule": 52, "vessel": 4}


@pytest.fixture
def ki_root(shared_data):
    return shared_data / "kidney_tiles" / "omniseg_KI"


@pytest.fixture
def pas_layouts(ki_root):
    """The mosaics the command is expected to write, composed here from ml alone."""
    dataset = read_tile_dataset(ki_root, stains=["pas"])
    return {
        group.scale_index: compose_mosaic(samples)
        for group, samples in group_samples(dataset.samples).items()
    }


def _import_pas(ki_root, output_dir, *extra):
    call_command(
        "import_tile_dataset", str(ki_root), "--stain", "pas", "--output-dir", str(output_dir),
        *extra,
    )


def test_command_creates_slides_instances_events(
    ki_root, pas_layouts, make_user, tmp_path, capsys
):
    user = make_user("admin", "importer")
    _import_pas(ki_root, tmp_path, "--patient-prefix", "KI-", "--user", "importer")

    slides = list(Slide.objects.order_by("name"))
    assert [slide.name for slide in slides] == ["omniseg_KI pas scale 0", "omniseg_KI pas scale 1"]
    glomerulus_slide, tubule_slide = slides
    assert (tubule_slide.width_px, tubule_slide.height_px) == (1104, 832)
    assert (glomerulus_slide.width_px, glomerulus_slide.height_px) == (560, 560)
    assert (tubule_slide.mpp, glomerulus_slide.mpp) == (1.0, 2.0)
    for slide in slides:
        assert slide.mpp_source == "given"
        assert slide.patient_id == "KI-omniseg_KI"
        assert slide.origin == Slide.Origin.IMPORT
        assert slide.created_by == user
        assert any("estimate" in warning for warning in slide.warnings)
        assert slide.file_path.startswith(str(tmp_path.resolve()))
        assert slide.file_path.endswith(".tiff")
        assert slide.tissue_area_um2 > 0

    rows = list(Instance.objects.order_by("id"))
    assert Counter(row.class_name for row in rows) == PAS_INSTANCES
    for row in rows:
        assert (row.source, row.review_state) == ("imported", "accepted")
        assert row.reviewed_by == user
        assert row.reviewed_at is not None
        assert row.proposal_run_id is None
        assert row.version == 1
    assert {row.class_name for row in rows if row.slide_id == glomerulus_slide.pk} == {"glomerulus"}

    # Stored outlines are the mosaic outlines: same order, same area and bounding box.
    for slide, layout in ((glomerulus_slide, pas_layouts[0]), (tubule_slide, pas_layouts[1])):
        stored = [row for row in rows if row.slide_id == slide.pk]
        assert len(stored) == len(layout.instances)
        for row, instance in zip(stored, layout.instances):
            assert row.class_name == instance.class_name
            assert shape(row.geometry).area == instance.area_px
            assert row.area_um2 == pytest.approx(instance.area_px * slide.mpp**2, rel=1e-12)
            assert (row.x_min_level0, row.y_min_level0, row.x_max_level0, row.y_max_level0) == (
                instance.polygon_level0.bounds
            )

    events = list(InstanceEvent.objects.order_by("id"))
    assert len(events) == len(rows)
    for event, row in zip(events, rows):
        assert (event.action, event.user, event.instance_id, event.instance_ref) == (
            "import", user, row.pk, row.pk
        )
        assert event.slide_id == row.slide_id
        assert event.before == {}
        assert event.after == {
            "review_state": "accepted", "class_name": row.class_name,
            "geometry": row.geometry, "version": 1,
        }

    out = capsys.readouterr().out
    assert (
        f"imported slide {tubule_slide.pk} 'omniseg_KI pas scale 1': 1104x832 px, "
        "1.0000 mpp (estimate), 12 tiles" in out
    )
    assert f"imported slide {glomerulus_slide.pk} 'omniseg_KI pas scale 0': 560x560 px" in out
    assert "  distal tubule: 46\n  proximal tubule: 52\n  vessel: 4\n" in out
    assert "  glomerulus: 7\n" in out


def test_mosaic_files_written_beside_each_other(ki_root, pas_layouts, tmp_path):
    _import_pas(ki_root, tmp_path)
    names = sorted(path.name for path in tmp_path.iterdir())
    digest_1 = pas_layouts[1].content_digest()[:12]
    digest_0 = pas_layouts[0].content_digest()[:12]
    assert names == sorted(
        f"omniseg_KI_pas_scale{scale}_{digest}{suffix}"
        for scale, digest in ((0, digest_0), (1, digest_1))
        for suffix in (".geojson", ".tiff", ".tiles.json")
    )


def test_second_run_changes_nothing(ki_root, tmp_path, capsys):
    _import_pas(ki_root, tmp_path)
    first_out = capsys.readouterr().out
    files = {path: path.stat().st_mtime_ns for path in tmp_path.iterdir()}
    counts = (Slide.objects.count(), Instance.objects.count(), InstanceEvent.objects.count())
    assert counts == (2, 109, 109)

    _import_pas(ki_root, tmp_path)
    second_out = capsys.readouterr().out
    again = (Slide.objects.count(), Instance.objects.count(), InstanceEvent.objects.count())
    assert again == counts
    assert {path: path.stat().st_mtime_ns for path in tmp_path.iterdir()} == files
    assert second_out.count("already imported slide") == 2
    assert second_out.replace("already imported", "imported") == first_out


def test_default_output_dir_is_data_dir(ki_root, settings, tmp_path):
    settings.DATA_DIR = tmp_path / "data"
    result = import_tile_dataset(ki_root, stains=["pas"])
    folder = (tmp_path / "data" / "tile_datasets" / "omniseg_KI").resolve()
    assert [item.slide.file_path.rsplit("/", 1)[0] for item in result.slides] == [str(folder)] * 2
    assert [item.created for item in result.slides] == [True, True]
    assert result.slides[0].instances_per_class == {"glomerulus": 7}


def test_missing_folder_fails_naming_it(tmp_path):
    missing = tmp_path / "no_such_dataset"
    with pytest.raises(CommandError, match=re.escape(f"{missing} does not exist")) as raised:
        call_command("import_tile_dataset", str(missing), "--output-dir", str(tmp_path))
    assert raised.value.returncode == 1
    assert Slide.objects.count() == 0


def test_folder_without_class_folders_fails(tmp_path):
    (tmp_path / "dataset" / "images").mkdir(parents=True)
    expected = re.escape(f"{tmp_path / 'dataset'} contains no class folder")
    with pytest.raises(CommandError, match=expected):
        call_command("import_tile_dataset", str(tmp_path / "dataset"))


def test_bad_mask_fails_naming_file(ki_root, tmp_path):
    stain_folder = tmp_path / "dataset" / "1_1_pt" / "pas"
    shutil.copytree(ki_root / "1_1_pt" / "pas", stain_folder)
    mask_path = stain_folder / "im_50_7_mask_proximal.png"
    grey = np.asarray(Image.open(mask_path).convert("L")).copy()
    grey[grey == 255] = 128
    Image.fromarray(grey).save(mask_path)
    with pytest.raises(CommandError) as raised:
        call_command(
            "import_tile_dataset", str(tmp_path / "dataset"), "--output-dir", str(tmp_path / "out")
        )
    assert str(mask_path) in str(raised.value)
    assert "values other than 0 and 255" in str(raised.value)
    assert raised.value.returncode == 1
    assert Slide.objects.count() == 0
    assert not (tmp_path / "out").exists()


def test_missing_stain_fails(ki_root, tmp_path):
    with pytest.raises(CommandError, match=r"Stain folders \['ihc'\] were not found"):
        call_command("import_tile_dataset", str(ki_root), "--stain", "ihc",
                     "--output-dir", str(tmp_path))


def test_unconfigured_class_fails_before_writing(ki_root, settings, tmp_path):
    settings.NEPHROWEB_CLASSES = [
        spec for spec in settings.NEPHROWEB_CLASSES if spec["name"] != "vessel"
    ]
    with pytest.raises(CommandError, match=r"'vessel' \(folder 4_1_vessel\)"):
        _import_pas(ki_root, tmp_path / "out")
    assert Slide.objects.count() == 0
    assert not (tmp_path / "out").exists()


def test_unknown_user_fails(ki_root, tmp_path):
    with pytest.raises(CommandError, match="User 'nobody' does not exist"):
        _import_pas(ki_root, tmp_path, "--user", "nobody")


def test_snapshot_includes_imported_instances(ki_root, make_user, tmp_path):
    user = make_user("admin")
    import_tile_dataset(ki_root, stains=["pas"], output_dir=tmp_path, user=user)
    snapshot = build_snapshot(user, seed=0, validation_fraction=0.2)
    assert snapshot.class_counts == {
        "proximal tubule": 52, "distal tubule": 46, "atrophic tubule": 0, "glomerulus": 7,
        "sclerotic glomerulus": 0, "vessel": 4, "background": 0,
    }
    rows = SnapshotInstance.objects.filter(snapshot=snapshot)
    assert rows.count() == 109
    assert set(rows.values_list("instance_id", flat=True)) == set(
        Instance.objects.values_list("id", flat=True)
    )
    # Both mosaics share one patient, and training keeps at least one patient.
    assert snapshot.train_patients == ["patient:omniseg_KI"]
    assert snapshot.validation_patients == []
    assert set(rows.values_list("split", flat=True)) == {SnapshotInstance.Split.TRAIN}


@pytest.mark.django_db(transaction=True)
def test_concurrent_imports_create_one_slide_each(ki_root, tmp_path):
    barrier = threading.Barrier(2)
    results, errors = [], []

    def run_import():
        try:
            barrier.wait(timeout=30)
            results.append(import_tile_dataset(ki_root, stains=["pas"], output_dir=tmp_path))
        except Exception as exc:  # noqa: BLE001  reported by the assert below
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run_import) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert Slide.objects.count() == 2
    assert Instance.objects.count() == 109
    created = sorted(item.created for result in results for item in result.slides)
    assert created == [False, False, True, True]
