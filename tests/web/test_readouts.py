"""Clinical read-outs per slide on hand-built geometry with exactly known areas and counts.

The slide has 0.5 µm per level-0 pixel, so one px² is 0.25 µm². The cortex is an
accepted 1000 x 1000 px "cortex" outline: 250 000 µm² = 0.25 mm². Three 20 x 20 px
atrophic tubules lie in a row 10 px (5 µm) apart. With the convex hull their one
cluster's hull is the 80 x 20 px box around them: 1600 px² = 400 µm².
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connections
from django.urls import reverse
from django.utils import timezone
from shapely.geometry import box, mapping, shape

from apps.analysis.models import SlideReadout
from apps.analysis.predictions import Prediction, write_run_predictions
from apps.analysis.readouts import ReadoutUnavailable, current_readout, slide_readouts
from apps.annotations.models import Instance, ProposalRun
from apps.review import services as review
from apps.training.models import ModelVersion, TrainingSnapshot
from ml.clinical import BANFF_PROXY_NOTE
from tests.conftest import create_instance_record as add
from tests.conftest import create_slide_record
from tests.web.conftest import CONVEX_IFTA

pytestmark = pytest.mark.django_db

MPP = 0.5
PX2_UM2 = MPP * MPP
CORTEX_UM2 = 1000 * 1000 * PX2_UM2
HULL_UM2 = 80 * 20 * PX2_UM2
TUBULES = [box(100, 100, 120, 120), box(130, 100, 150, 120), box(160, 100, 180, 120)]
GLOMERULI = [box(500 + 60 * i, 500, 540 + 60 * i, 540) for i in range(3)]
SCLEROTIC = box(700, 500, 740, 540)
CONVEX = CONVEX_IFTA
ZERO_COUNTS = {
    "proximal tubule": 0, "distal tubule": 0, "atrophic tubule": 0, "glomerulus": 0,
    "sclerotic glomerulus": 0, "vessel": 0, "unspecified tubule": 0,
}
CLASS_NAMES = ["proximal tubule", "atrophic tubule", "glomerulus", "sclerotic glomerulus",
               "background"]


@pytest.fixture
def slide(convex):
    """The slide of the module docstring, with 3 glomeruli and 1 sclerotic glomerulus."""
    slide = create_slide_record(name="readout-slide", mpp=MPP)
    add(slide, box(0, 0, 1000, 1000), "cortex")
    for tubule in TUBULES:
        add(slide, tubule, "atrophic tubule")
    for glomerulus in GLOMERULI:
        add(slide, glomerulus, "glomerulus")
    add(slide, SCLEROTIC, "sclerotic glomerulus")
    return slide


def make_model_version(name="demo-model") -> ModelVersion:
    snapshot = TrainingSnapshot.objects.create(validation_fraction=0.2, class_names=CLASS_NAMES)
    return ModelVersion.objects.create(
        name=name, status=ModelVersion.Status.SUCCEEDED, snapshot=snapshot, mpp=1.0,
        crop_px=1024, class_names=CLASS_NAMES, weights_path="/nonexistent/model.safetensors",
        weights_sha256="0" * 64,
    )


def finished_run(slide, version, predictions) -> ProposalRun:
    run = ProposalRun.objects.create(
        slide=slide, model_version=version, status=ProposalRun.Status.SUCCEEDED,
        sam_type="class-aware", finished_at=timezone.now(),
    )
    write_run_predictions(run, predictions)
    return run


def prediction(geometry, class_name) -> Prediction:
    return Prediction(geometry_level0=geometry, class_name=class_name,
                      class_probability=0.9, predicted_iou=0.8)


@pytest.fixture
def model_slide(slide, settings, tmp_path):
    """The slide plus a rejected glomerulus and a model run with two glomerulus predictions.

    One prediction overlaps the rejected instance by 35 / 40 of its area, the other lies
    where no instance is.
    """
    settings.MEDIA_ROOT = str(tmp_path)
    add(slide, box(600, 700, 640, 740), "glomerulus", state=Instance.ReviewState.REJECTED)
    version = make_model_version()
    run = finished_run(slide, version, [
        prediction(box(605, 700, 645, 740), "glomerulus"),
        prediction(box(800, 800, 840, 840), "glomerulus"),
    ])
    return slide, version, run


def test_ifta_is_the_convex_hull_over_cortex(slide):
    readout = current_readout(slide, "reviewed")

    assert readout.cortex_source == "cortex annotation"
    assert readout.cortex_area_um2 == CORTEX_UM2
    assert readout.ifta_area_um2 == HULL_UM2 == 400.0
    assert readout.ifta_pct == HULL_UM2 / CORTEX_UM2 * 100.0
    assert round(readout.ifta_pct, 12) == 0.16
    assert readout.ifta_clusters == [{"n_tubules": 3, "area_um2": 400.0}]
    assert shape(readout.ifta_regions).equals(box(100, 100, 180, 120))
    assert readout.settings == CONVEX
    assert readout.banff_ci == 0
    assert readout.banff_ct == 0
    assert readout.message == ""


def test_counts_densities_and_glomerulosclerosis(slide):
    readout = current_readout(slide, "reviewed")

    assert readout.counts == {**ZERO_COUNTS, "atrophic tubule": 3, "glomerulus": 3,
                              "sclerotic glomerulus": 1}
    # 0.25 mm² of cortex: a density is four times the count.
    assert readout.densities_per_mm2 == {**{name: 0.0 for name in ZERO_COUNTS},
                                         "atrophic tubule": 12.0, "glomerulus": 12.0,
                                         "sclerotic glomerulus": 4.0}
    assert readout.glomeruli_count == 4
    assert readout.sclerotic_count == 1
    assert readout.glomerulosclerosis_pct == 25.0


def test_too_few_tubules_for_a_cluster_give_zero(slide, settings):
    settings.NEPHROWEB_IFTA = {**CONVEX, "min_tubules": 4}

    readout = current_readout(slide, "reviewed")

    assert readout.ifta_pct == 0.0
    assert readout.ifta_area_um2 == 0.0
    assert readout.ifta_clusters == []
    assert readout.settings["min_tubules"] == 4


def test_invalid_ifta_setting_is_explained(slide, settings):
    settings.NEPHROWEB_IFTA = {**CONVEX, "hull": "round"}

    readout = current_readout(slide, "reviewed")

    assert readout.ifta_pct is None
    assert readout.banff_ci is None
    assert readout.message == (
        "IFTA % could not be measured: hull must be 'concave' or 'convex', got 'round'."
    )
    assert readout.cortex_area_um2 == CORTEX_UM2
    assert readout.densities_per_mm2["glomerulus"] == 12.0
    assert readout.glomerulosclerosis_pct == 25.0


def test_tissue_mask_is_the_cortex_without_annotation(convex):
    slide = create_slide_record(name="tissue-only", mpp=MPP,
                                tissue_geojson=mapping(box(0, 0, 2000, 1000)))
    for tubule in TUBULES:
        add(slide, tubule, "atrophic tubule")

    readout = current_readout(slide, "reviewed")

    tissue_um2 = 2000 * 1000 * PX2_UM2
    assert readout.cortex_source == "tissue mask"
    assert readout.cortex_area_um2 == tissue_um2 == 500_000.0
    assert readout.ifta_pct == HULL_UM2 / tissue_um2 * 100.0
    assert readout.densities_per_mm2["atrophic tubule"] == 6.0


def test_no_cortex_and_no_tissue_explains_why(convex):
    slide = create_slide_record(name="bare", mpp=MPP)
    add(slide, TUBULES[0], "atrophic tubule")

    readout = current_readout(slide, "reviewed")

    assert readout.ifta_pct is None
    assert readout.banff_ci is None
    assert readout.cortex_source == ""
    assert readout.densities_per_mm2 == {}
    assert readout.counts["atrophic tubule"] == 1
    assert readout.glomerulosclerosis_pct is None
    assert "no accepted \"cortex\" annotation and no tissue mask" in readout.message
    assert "Draw the cortex with the class \"cortex\"" in readout.message
    assert "No glomeruli in the section: glomerulosclerosis % is undefined." in readout.message


@pytest.mark.parametrize(("width_px", "height_px", "pct", "grade"), [
    (200, 250, 5.0, 0),
    (220, 250, 5.5, 1),
    (500, 500, 25.0, 1),
    (510, 500, 25.5, 2),
    (1000, 500, 50.0, 2),
    (1000, 505, 50.5, 3),
])
def test_banff_grades_at_and_around_thresholds(settings, width_px, height_px, pct, grade):
    settings.NEPHROWEB_IFTA = {**CONVEX, "min_tubules": 1}
    slide = create_slide_record(name="banff", mpp=MPP)
    add(slide, box(0, 0, 1000, 1000), "cortex")
    add(slide, box(0, 0, width_px, height_px), "atrophic tubule")

    readout = current_readout(slide, "reviewed")

    assert readout.ifta_pct == pytest.approx(pct, abs=1e-9)
    assert readout.banff_ci == grade
    assert readout.banff_ct == grade


def test_accept_changes_key_and_numbers(slide, make_user):
    before = current_readout(slide, "reviewed")
    pending = add(slide, box(190, 100, 210, 120), "atrophic tubule",
                  state=Instance.ReviewState.PENDING, source=Instance.Source.MODEL)
    unchanged = current_readout(slide, "reviewed")
    assert unchanged.inputs_key == before.inputs_key
    assert unchanged.computed_at == before.computed_at

    review.accept(pending.pk, user=make_user("annotator"), version=pending.version)
    after = current_readout(slide, "reviewed")

    assert after.pk == before.pk
    assert after.inputs_key != before.inputs_key
    assert after.computed_at > before.computed_at
    assert after.counts["atrophic tubule"] == 4
    # The hull now spans x 100 to 210: 110 x 20 px.
    assert after.ifta_area_um2 == 110 * 20 * PX2_UM2 == 550.0
    assert after.ifta_pct == 550.0 / CORTEX_UM2 * 100.0
    assert SlideReadout.objects.filter(slide=slide).count() == 1


def test_reject_and_delete_change_the_key(slide, make_user):
    user = make_user("annotator")
    keys = [current_readout(slide, "reviewed").inputs_key]
    tubule = Instance.objects.get(slide=slide, class_name="atrophic tubule",
                                  x_min_level0=160)

    rejected = review.reject(tubule.pk, user=user, version=tubule.version)
    readout = current_readout(slide, "reviewed")
    keys.append(readout.inputs_key)
    assert readout.ifta_pct == 0.0

    review.delete(rejected.pk, user=user, version=rejected.version)
    keys.append(current_readout(slide, "reviewed").inputs_key)

    assert len(set(keys)) == 3


@pytest.mark.django_db(transaction=True)
def test_concurrent_reads_store_one_row(slide):
    start = threading.Barrier(2)

    def read():
        try:
            start.wait()
            return current_readout(slide, "reviewed").pk
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=2) as pool:
        ids = list(pool.map(lambda _: read(), range(2)))

    assert ids[0] == ids[1]
    assert SlideReadout.objects.filter(slide=slide).count() == 1
    assert SlideReadout.objects.get(slide=slide).ifta_area_um2 == HULL_UM2


def test_model_source_reads_predictions_file(model_slide):
    slide, version, run = model_slide

    readout = current_readout(slide, "model", version)

    assert readout.proposal_run_id == run.pk
    assert readout.model_version_id == version.pk
    assert readout.counts == {**ZERO_COUNTS, "glomerulus": 2}
    assert readout.cortex_source == "cortex annotation"
    assert readout.ifta_pct == 0.0
    assert readout.glomerulosclerosis_pct == 0.0
    assert readout.densities_per_mm2["glomerulus"] == 8.0


def test_combined_drops_prediction_over_rejected(model_slide):
    slide, version, _ = model_slide

    readout = current_readout(slide, "combined", version)

    # 3 reviewed glomeruli plus the prediction at (800, 800); the one over the rejected
    # glomerulus is dropped.
    assert readout.counts["glomerulus"] == 4
    assert readout.counts["sclerotic glomerulus"] == 1
    assert readout.counts["atrophic tubule"] == 3
    assert readout.glomerulosclerosis_pct == 20.0
    assert readout.ifta_area_um2 == HULL_UM2


def test_slide_readouts_lists_every_source(model_slide):
    slide, version, _ = model_slide

    readouts = slide_readouts(slide)

    assert [(r.source, r.model_version_id) for r in readouts] == [
        ("reviewed", None), ("model", version.pk), ("combined", version.pk)
    ]


def test_version_without_run_is_unavailable(slide):
    version = make_model_version(name="unused-model")

    with pytest.raises(ReadoutUnavailable) as error:
        current_readout(slide, "model", version)

    assert "'unused-model'" in str(error.value)
    assert f"(#{version.pk})" in str(error.value)
    assert "'readout-slide'" in str(error.value)


def test_missing_predictions_file_is_unavailable(model_slide):
    slide, version, run = model_slide
    ProposalRun.objects.filter(pk=run.pk).update(predictions_file="/nonexistent/run.geojson")

    with pytest.raises(ReadoutUnavailable, match="predictions file of run .* is missing"):
        current_readout(slide, "model", version)


def test_api_lists_readouts_without_geometry(model_slide, client_for):
    slide, version, run = model_slide

    response = client_for("annotator").get(reverse("api-slide-readouts", args=[slide.pk]))

    assert response.status_code == 200
    rows = response.json()
    assert [row["label"] for row in rows] == [
        "Reviewed annotations", "Model demo-model", "Reviewed + model demo-model"
    ]
    reviewed = rows[0]
    computed_at = reviewed.pop("computed_at")
    assert computed_at.startswith(str(timezone.now().year))
    assert reviewed == {
        "source": "reviewed",
        "label": "Reviewed annotations",
        "model_version": None,
        "model_version_name": None,
        "proposal_run": None,
        "counts": {**ZERO_COUNTS, "atrophic tubule": 3, "glomerulus": 3,
                   "sclerotic glomerulus": 1},
        "densities_per_mm2": {**{name: 0.0 for name in ZERO_COUNTS}, "atrophic tubule": 12.0,
                              "glomerulus": 12.0, "sclerotic glomerulus": 4.0},
        "cortex_source": "cortex annotation",
        "cortex_area_um2": 250000.0,
        "ifta_pct": 400.0 / 250000.0 * 100.0,
        "ifta_area_um2": 400.0,
        "ifta_clusters": [{"n_tubules": 3, "area_um2": 400.0}],
        "settings": CONVEX,
        "glomeruli_count": 4,
        "sclerotic_count": 1,
        "glomerulosclerosis_pct": 25.0,
        "glomerulosclerosis_reason": "",
        "banff_ci": 0,
        "banff_ct": 0,
        "banff_note": BANFF_PROXY_NOTE,
        "message": "",
    }
    model = rows[1]
    assert model["model_version"] == version.pk
    assert model["model_version_name"] == "demo-model"
    assert model["proposal_run"] == run.pk
    assert model["counts"]["glomerulus"] == 2
    assert model["glomerulosclerosis_pct"] == 0.0
    assert rows[2]["counts"]["glomerulus"] == 4
    assert rows[2]["glomerulosclerosis_pct"] == 20.0


def test_api_ifta_regions_are_geojson(slide, client_for):
    url = reverse("api-slide-ifta-regions", args=[slide.pk])

    response = client_for("pathologist").get(url, {"source": "reviewed"})

    assert response.status_code == 200
    collection = response.json()
    assert collection["type"] == "FeatureCollection"
    assert collection["label"] == "Reviewed annotations"
    assert collection["ifta_pct"] == 400.0 / 250000.0 * 100.0
    assert len(collection["features"]) == 1
    feature = collection["features"][0]
    assert shape(feature["geometry"]).equals(box(100, 100, 180, 120))
    assert feature["properties"] == {"area_um2": 400.0}


def test_api_ifta_regions_of_model_source(model_slide, client_for):
    slide, version, _ = model_slide
    url = reverse("api-slide-ifta-regions", args=[slide.pk])

    response = client_for("annotator").get(url, {"source": "combined", "model_version": version.pk})

    assert response.status_code == 200
    assert response.json()["label"] == "Reviewed + model demo-model"
    assert len(response.json()["features"]) == 1


def test_api_rejects_bad_query(slide, client_for):
    client = client_for("annotator")
    url = reverse("api-slide-ifta-regions", args=[slide.pk])
    unused = make_model_version(name="unused-model")

    bad_source = client.get(url, {"source": "everything"})
    no_version = client.get(url, {"source": "model"})
    unknown_version = client.get(url, {"source": "model", "model_version": 999999})
    no_run = client.get(url, {"source": "model", "model_version": unused.pk})

    assert bad_source.status_code == 400
    assert list(bad_source.json()) == ["source"]
    assert no_version.status_code == 400
    assert no_version.json()["detail"] == "The model source needs a model_version."
    assert unknown_version.status_code == 400
    assert list(unknown_version.json()) == ["model_version"]
    assert no_run.status_code == 400
    assert "has no succeeded segmentation run" in no_run.json()["detail"]


def test_api_unknown_slide_is_404(client_for):
    client = client_for("annotator")

    assert client.get(reverse("api-slide-readouts", args=[999999])).status_code == 404
    assert client.get(reverse("api-slide-ifta-regions", args=[999999])).status_code == 404
