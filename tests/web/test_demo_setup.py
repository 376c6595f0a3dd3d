"""``manage.py setup_demo`` on the generated sample slide: user, slide, reviewed
annotations, the queued demo model and the synthetic cohort, and nothing twice on a
second start."""

import io
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from django.core.management import call_command
from shapely.geometry import shape

from apps.analysis import demo_cohort
from apps.analysis.models import PatientReport
from apps.annotations.models import EvaluationRegion, Instance, InstanceEvent
from apps.slides.models import Slide
from apps.training import demo_model, services
from apps.training.models import ModelVersion, TrainingSnapshot
from ml.sample_slide import write_sample_slide

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo_dirs(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    settings.MEDIA_ROOT = tmp_path / "media"
    return tmp_path


def test_first_start_imports_annotations_and_queues_model(demo_dirs):
    out = io.StringIO()
    call_command("setup_demo", "--no-cohort", stdout=out)

    slide = Slide.objects.get()
    assert slide.origin == Slide.Origin.SAMPLE
    truth = demo_model.sample_truth(Path(slide.file_path))
    left = Counter(
        obj.label for obj in truth.objects if obj.center_level0[0] < truth.width_px / 2
    )
    assert 0 < left["tubule"] < 260
    assert 0 < left["glomerulus"] < 6
    counts = Counter(Instance.objects.filter(slide=slide).values_list("class_name", flat=True))
    assert counts == {
        "proximal tubule": left["tubule"], "glomerulus": left["glomerulus"],
        "background": demo_model.BACKGROUND_DISC_COUNT,
    }
    for geometry in Instance.objects.values_list("geometry", flat=True):
        assert shape(geometry).centroid.x < truth.width_px / 2
    assert set(Instance.objects.values_list("review_state", flat=True)) == {"accepted"}
    assert InstanceEvent.objects.filter(action="import").count() == sum(counts.values())

    version = ModelVersion.objects.get()
    assert (version.name, version.status) == (demo_model.DEMO_MODEL_NAME, "queued")
    assert version.base_checkpoint == services.EFFICIENTNET_BASE
    assert (version.mpp, version.crop_px) == (2.0, 256)
    assert version.device_auto
    assert version.snapshot.items.count() == sum(counts.values())
    assert f"demo model: version {version.pk} (demo-model) is queued" in out.getvalue()


def test_background_discs_keep_clear_of_objects(demo_dirs):
    call_command("setup_demo", "--no-cohort", stdout=io.StringIO())
    slide = Slide.objects.get()
    objects = [shape(g) for g in Instance.objects.exclude(class_name="background").values_list("geometry", flat=True)]
    discs = [shape(g) for g in Instance.objects.filter(class_name="background").values_list("geometry", flat=True)]
    clearance_level0 = demo_model.BACKGROUND_CLEARANCE_UM / slide.mpp
    for disc in discs:
        assert min(disc.distance(outline) for outline in objects) >= clearance_level0 - 1e-6
        assert abs(disc.area - 3.14159 * (demo_model.BACKGROUND_DISC_RADIUS_UM / slide.mpp) ** 2) < 0.05 * disc.area


def test_second_start_changes_nothing(demo_dirs):
    call_command("setup_demo", "--no-cohort", stdout=io.StringIO())
    before = (Instance.objects.count(), ModelVersion.objects.count(), TrainingSnapshot.objects.count())
    call_command("setup_demo", "--no-cohort", stdout=io.StringIO())
    after = (Instance.objects.count(), ModelVersion.objects.count(), TrainingSnapshot.objects.count())
    assert after == before


def test_failed_demo_model_is_queued_again(demo_dirs):
    call_command("setup_demo", "--no-cohort", stdout=io.StringIO())
    ModelVersion.objects.update(status=ModelVersion.Status.FAILED)
    call_command("setup_demo", "--no-cohort", stdout=io.StringIO())
    assert list(ModelVersion.objects.order_by("id").values_list("status", flat=True)) == ["failed", "queued"]
    # The annotations are imported once; the new version trains on a new snapshot of them.
    assert InstanceEvent.objects.filter(action="import").count() == Instance.objects.count()
    assert TrainingSnapshot.objects.count() == 2


def test_no_model_option_and_given_slide_queue_nothing(demo_dirs, shared_data):
    call_command("setup_demo", "--no-model", "--no-cohort", stdout=io.StringIO())
    call_command("setup_demo", "--no-cohort", "--slide",
                 str(shared_data / "wsi" / "cmu-1-small-region.svs"), stdout=io.StringIO())
    assert not ModelVersion.objects.exists()
    assert not Instance.objects.exists()


def test_cohort_reviewed_reported_untrained(demo_dirs):
    out = io.StringIO()
    call_command("setup_demo", stdout=out)

    cohort = Slide.objects.filter(cohort=demo_cohort.DEMO_COHORT).order_by("patient_id", "section")
    assert [(s.patient_id, s.section) for s in cohort] == [
        (p.patient_id, n) for p in demo_cohort.DEMO_PATIENTS for n in (1, 2)
    ]
    first = cohort[0]
    truth = write_sample_slide(
        demo_dirs / "again.tiff", size_level0=demo_cohort.SECTION_SIZE_PX, seed=101,
        scar_fraction=0.02, sclerotic_glomeruli=0,
    )
    drawn = Counter(demo_model.SAMPLE_CLASS_MAP[obj.label] for obj in truth.objects)
    stored = Counter(Instance.objects.filter(slide=first).values_list("class_name", flat=True))
    assert stored == drawn
    last = cohort.last()
    last_classes = set(Instance.objects.filter(slide=last).values_list("class_name", flat=True))
    assert {"atrophic tubule", "sclerotic glomerulus"} <= last_classes
    assert EvaluationRegion.objects.filter(slide__in=cohort).count() == 10
    reports = dict(PatientReport.objects.values_list("patient_id", "report_ifta_pct"))
    assert reports == {p.patient_id: p.report_ifta_pct for p in demo_cohort.DEMO_PATIENTS}
    version = ModelVersion.objects.get()
    assert set(version.snapshot.items.values_list("slide__origin", "slide__cohort").distinct()) == {
        (Slide.Origin.SAMPLE, "")
    }
    assert "demo cohort: 10 reviewed sections" in out.getvalue()

    before = Instance.objects.count()
    call_command("setup_demo", stdout=io.StringIO())
    assert (Instance.objects.count(), Slide.objects.count(), PatientReport.objects.count()) == (before, 11, 5)


def _segmentation_settings_in_child(environment: dict) -> dict:
    code = (
        "import json, django; django.setup(); from django.conf import settings; "
        "print(json.dumps(settings.NEPHROWEB_SEGMENTATION))"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "NEPHROWEB_SEGMENTATION_JSON")}
    env.update(environment, DJANGO_SETTINGS_MODULE="nephroweb.settings")
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_demo_commands_use_the_demo_segmentation_settings(tmp_path):
    demo = _segmentation_settings_in_child({"NEPHROWEB_DATA_DIR": str(tmp_path)})
    assert demo["points_per_side"] == 16
    assert demo["max_area_fraction"] == 0.2
    deployment = _segmentation_settings_in_child(
        {"NEPHROWEB_DATA_DIR": str(tmp_path), "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/unused"}
    )
    assert deployment["points_per_side"] == 32
    assert "max_area_fraction" not in deployment
