"""An admin takes a snapshot of accepted annotations on the training page, trains a
2-epoch model version with the tiny SAM and watches it succeed, cancels a long second
version while its epochs arrive, and continues training from the first version. Other
roles get 403.

The slide is the real cmu-1-small-region.svs (0.499 um/px). Two slides with different
patients give the snapshot one training and one validation patient, so validation loss
and class accuracy are plotted too.
"""

import pytest
from shapely.geometry import box

from apps.annotations.geometry import instance_row
from apps.training.models import ModelVersion, TrainingSnapshot
from tests.conftest import create_slide_record

from .conftest import PASSWORD, in_thread, sign_in

pytestmark = pytest.mark.browser

SLIDE_MPP = 0.499
TRAINING_TIMEOUT_MS = 120_000


def _prepare(make_user, shared_data):
    """Create an admin, a pathologist and two patients' slides with accepted objects."""
    make_user("admin", username="ada", password=PASSWORD)
    make_user("pathologist", username="pat", password=PASSWORD)
    objects = {
        "P1": [((300, 300, 340, 340), "glomerulus"), ((345, 300, 385, 340), "vessel")],
        "P2": [((1000, 1000, 1050, 1050), "proximal tubule"), ((1200, 1200, 1240, 1240), "distal tubule")],
    }
    for patient, rows in objects.items():
        slide = create_slide_record(
            name=f"slide-{patient}", width_px=2220, height_px=2967, mpp=SLIDE_MPP, patient_id=patient,
            file_path=str(shared_data / "wsi" / "cmu-1-small-region.svs"),
        )
        for level0_box, class_name in rows:
            instance_row(
                box(*level0_box), slide=slide, mpp=SLIDE_MPP, source="drawn",
                class_name=class_name, review_state="accepted",
            ).save()


def _fill_fast_config(page):
    page.fill("#version-mpp", "1.0")
    page.fill("#version-crop-px", "96")
    page.fill("#config-epochs", "2")
    page.fill("#config-batch-size", "2")
    page.fill("#config-warmup-steps", "0")
    page.select_option("#config-device", "cpu")


def _wait_for_status(page, status, timeout=TRAINING_TIMEOUT_MS):
    page.wait_for_function(
        f"document.querySelector('#version-detail').dataset.status === '{status}'", timeout=timeout
    )


def _base_choices(page):
    """Return the values of the "Start from" options: "" is the configured SAM checkpoint."""
    return page.locator("#version-base option").evaluate_all("options => options.map(o => o.value)")


def test_admin_trains_cancels_and_continues_on_page(
    live_product, browser_page, make_user, shared_data, tmp_path
):
    in_thread(_prepare, make_user, shared_data)
    page = browser_page
    sign_in(page, live_product, "ada")
    page.click("header a:text('Training')")
    page.wait_for_url(f"{live_product}/training/")

    page.fill("#snapshot-seed", "3")
    page.fill("#snapshot-validation-fraction", "0.5")
    page.click("#snapshot-form button[type=submit]")
    page.wait_for_selector("#snapshot-rows tr[data-snapshot-id]")
    snapshot = in_thread(lambda: TrainingSnapshot.objects.get())
    row = page.locator(f"#snapshot-rows tr[data-snapshot-id='{snapshot.pk}']")
    assert "glomerulus: 1" in row.inner_text()
    assert "vessel: 1" in row.inner_text()
    assert sorted(snapshot.train_patients + snapshot.validation_patients) == ["patient:P1", "patient:P2"]
    assert len(snapshot.validation_patients) == 1
    cells = row.locator("td")
    assert cells.nth(6).inner_text() == snapshot.train_patients[0]
    assert cells.nth(7).inner_text() == snapshot.validation_patients[0]

    # An invalid config is rejected by the server, and its message is shown as it is.
    _fill_fast_config(page)
    page.fill("#config-learning-rate", "0")
    page.click("#version-form button[type=submit]")
    page.wait_for_function("document.querySelector('#version-error').textContent !== ''")
    assert page.inner_text("#version-error") == "learning_rate is 0, so nothing would train. Give a value > 0."
    assert in_thread(ModelVersion.objects.count) == 0

    # 1. A 2-epoch version from the configured SAM checkpoint succeeds.
    assert _base_choices(page) == ["", "efficientnet-lite0"]
    page.fill("#config-learning-rate", "0.0001")
    page.click("#version-form button[type=submit]")
    page.wait_for_selector("#version-detail[data-status]")
    _wait_for_status(page, "succeeded")

    detail = page.locator("#version-detail")
    assert detail.get_attribute("data-epochs-done") == "2"
    assert page.get_attribute("#loss-chart", "data-points") == "2"
    assert page.get_attribute("#accuracy-chart", "data-points") == "2"
    assert page.locator("#loss-chart polyline[data-series='train_loss']").count() == 1
    assert page.locator("#loss-chart polyline[data-series='val_loss']").count() == 1
    assert page.locator("#version-epoch-rows tr").evaluate_all(
        "rows => rows.map(r => r.dataset.epoch)"
    ) == ["1", "2"]
    assert page.locator("#version-cancel").is_hidden()

    first = in_thread(lambda: ModelVersion.objects.get())
    assert first.status == "succeeded"
    assert [row["epoch"] for row in first.metrics] == [1, 2]
    assert first.config["epochs"] == 2
    assert first.config["device"] == "cpu"
    assert first.crop_px == 96
    assert first.snapshot_id == snapshot.pk
    assert first.base_version_id is None
    assert detail.get_attribute("data-best-epoch") == str(first.best_epoch)
    assert page.locator(f"#loss-chart [data-best-epoch-marker='{first.best_epoch}']").count() == 1

    # 2. A long version shows its epochs while it runs, and the admin cancels it.
    page.fill("#config-epochs", "200")
    page.click("#version-form button[type=submit]")
    page.wait_for_function(
        "(() => { const d = document.querySelector('#version-detail');"
        f" return d.dataset.versionId !== '{first.pk}' && d.dataset.status === 'running'"
        " && Number(d.dataset.epochsDone) >= 2; })()",
        timeout=TRAINING_TIMEOUT_MS,
    )
    # Two epochs seen while running: the rows and curve points arrive live, not at the end.
    assert page.locator("#version-epoch-rows tr").count() >= 2
    assert int(page.get_attribute("#loss-chart", "data-points")) >= 2
    page.click("#version-cancel")
    _wait_for_status(page, "cancelled")
    page.screenshot(path=str(tmp_path / "cancelled.png"), full_page=True)

    second = in_thread(lambda: ModelVersion.objects.exclude(pk=first.pk).get())
    assert second.status == "cancelled"
    assert second.cancel_requested is True
    assert second.message == "Cancelled during training."
    assert second.weights_path == ""
    assert 2 <= len(second.metrics) < 200
    assert [row["epoch"] for row in second.metrics] == list(range(1, len(second.metrics) + 1))
    assert detail.get_attribute("data-epochs-done") == str(len(second.metrics))
    assert page.locator("#version-epoch-rows tr").count() == len(second.metrics)
    assert page.inner_text("#version-detail-message") == "Cancelled during training."
    assert page.locator("#version-cancel").is_hidden()

    # 3. A version that continues from the first one: only succeeded versions are offered,
    # and choosing one fills in its crop side.
    assert _base_choices(page) == ["", "efficientnet-lite0", str(first.pk)]
    page.fill("#config-epochs", "2")
    page.fill("#version-crop-px", "128")
    page.select_option("#version-base", str(first.pk))
    assert page.input_value("#version-crop-px") == "96"
    assert page.input_value("#version-mpp") == "1"
    assert page.is_disabled("#version-checkpoint")
    page.click("#version-form button[type=submit]")
    page.wait_for_function(
        "(() => { const d = document.querySelector('#version-detail');"
        f" return !['{first.pk}', '{second.pk}'].includes(d.dataset.versionId)"
        " && d.dataset.status === 'succeeded'; })()",
        timeout=TRAINING_TIMEOUT_MS,
    )
    page.screenshot(path=str(tmp_path / "continued.png"), full_page=True)

    third = in_thread(lambda: ModelVersion.objects.exclude(pk__in=[first.pk, second.pk]).get())
    assert third.status == "succeeded"
    assert third.base_version_id == first.pk
    assert third.base_checkpoint == first.weights_path
    assert third.base_checkpoint_sha256 == first.weights_sha256
    assert [row["epoch"] for row in third.metrics] == [1, 2]
    assert (third.mpp, third.crop_px) == (1.0, 96)
    assert third.weights_path.endswith("best.safetensors")
    assert detail.get_attribute("data-base-version") == str(first.pk)
    assert f"from version {first.pk}" in page.inner_text("#version-detail-title")
    version_row = page.locator(f"#version-rows tr[data-version-id='{third.pk}']")
    assert version_row.locator("td").nth(3).inner_text() == f"version {first.pk}"

    # A new snapshot becomes the start form's choice.
    page.click("#snapshot-form button[type=submit]")
    page.wait_for_function("document.querySelectorAll('#snapshot-rows tr[data-snapshot-id]').length === 2")
    newest = in_thread(lambda: TrainingSnapshot.objects.order_by("-id").first())
    assert newest.pk != snapshot.pk
    page.wait_for_function(
        f"document.querySelector('#version-snapshot').value === '{newest.pk}'"
    )


def test_training_page_forbidden_to_pathologist(live_product, browser_page, make_user, shared_data):
    in_thread(_prepare, make_user, shared_data)
    page = browser_page
    sign_in(page, live_product, "pat")
    assert page.locator("header a:text('Training')").count() == 0
    response = page.goto(f"{live_product}/training/")
    assert response.status == 403
