"""Training: snapshots of reviewed annotations, crops, model versions, the API and the command.

The slide is the real cmu-1-small-region.svs (2220 x 2967 level-0 px at 0.499 um/px). The
model is the tiny random SAM of tests/sam_factory.py, so training shows that the pipeline
runs end to end, not that the model learns.
"""

import io
import json

import numpy as np
import torch
import pytest
from django.core.management import CommandError, call_command
from shapely.geometry import box

from apps.annotations.geometry import instance_row
from apps.training import services, snapshots
from apps.training.models import ModelVersion, SnapshotInstance, TrainingSnapshot
from ml.class_aware import from_sam
from ml.errors import SettingsError
from ml.model_files import ClassAwareMetadata, ClassSpec, load_class_aware, save_class_aware
from tests.conftest import create_slide_record
from tests.sam_factory import make_tiny_sam

pytestmark = pytest.mark.django_db

SLIDE_MPP = 0.499
CROP_PX = 128
WORKING_MPP = 1.0
FAST_CONFIG = {"batch_size": 4, "warmup_steps": 0, "device": "cpu"}


@pytest.fixture
def data_dir(settings, tmp_path):
    settings.DATA_DIR = tmp_path
    return tmp_path


def _slide(shared_data, name, patient_id):
    return create_slide_record(
        name=name, width_px=2220, height_px=2967, mpp=SLIDE_MPP, patient_id=patient_id,
        file_path=str(shared_data / "wsi" / "cmu-1-small-region.svs"),
    )


def _instance(slide, level0_box, class_name, review_state="accepted"):
    row = instance_row(
        box(*level0_box), slide=slide, mpp=SLIDE_MPP, source="drawn", class_name=class_name,
        review_state=review_state,
    )
    row.save()
    return row


@pytest.fixture
def annotated(shared_data):
    """Create two patients' slides with included and excluded rows and return the rows by name."""
    slide_a = _slide(shared_data, "a", "P1")
    slide_b = _slide(shared_data, "b", "P2")
    return {
        "a1": _instance(slide_a, (300, 300, 340, 340), "glomerulus"),
        # Close enough to a1 that every crop of a1 contains it.
        "a2": _instance(slide_a, (345, 300, 385, 340), "vessel", review_state="edited"),
        "pending": _instance(slide_a, (500, 500, 540, 540), "glomerulus", review_state="pending"),
        "rejected": _instance(slide_a, (600, 600, 640, 640), "vessel", review_state="rejected"),
        "unspecified": _instance(slide_a, (700, 700, 740, 740), "unspecified tubule"),
        "classless": _instance(slide_a, (800, 800, 840, 840), ""),
        "b1": _instance(slide_b, (1000, 1000, 1050, 1050), "proximal tubule"),
        "b2": _instance(slide_b, (1200, 1200, 1240, 1240), "distal tubule"),
    }


def test_snapshot_selects_reviewed_rows_of_trainable_classes(annotated, make_user):
    snapshot = snapshots.build_snapshot(make_user("admin"), seed=3, validation_fraction=0.5)

    items = {item.instance_ref: item for item in snapshot.items.all()}
    expected = {annotated[name].pk for name in ("a1", "a2", "b1", "b2")}
    assert set(items) == expected
    assert "unspecified tubule" not in snapshot.class_names
    assert snapshot.class_counts == {
        "proximal tubule": 1, "distal tubule": 1, "atrophic tubule": 0, "glomerulus": 1,
        "sclerotic glomerulus": 0, "vessel": 1, "background": 0,
    }
    assert all(items[ref].version == 1 for ref in expected)
    # One patient on each side, never both.
    assert sorted(snapshot.train_patients + snapshot.validation_patients) == [
        "patient:P1", "patient:P2"
    ]
    assert len(snapshot.validation_patients) == 1
    for item in items.values():
        side = "validation" if item.patient in snapshot.validation_patients else "train"
        assert item.split == side


def test_snapshot_split_repeats_for_the_same_seed(annotated):
    first = snapshots.build_snapshot(None, seed=7, validation_fraction=0.5)
    second = snapshots.build_snapshot(None, seed=7, validation_fraction=0.5)
    assert first.validation_patients == second.validation_patients


def test_snapshot_keeps_the_version_it_saw(annotated):
    snapshot = snapshots.build_snapshot(None, seed=0, validation_fraction=0.0)
    a2 = annotated["a2"]
    a2.geometry = box(345, 300, 395, 350).__geo_interface__
    a2.version = 2
    a2.save()

    item = snapshot.items.get(instance_ref=a2.pk)
    assert item.version == 1
    assert item.x_max_level0 == 385
    assert snapshot.train_patients == ["patient:P1", "patient:P2"]
    assert snapshot.validation_patients == []


def test_crops_contain_object_and_neighbours(annotated, data_dir):
    snapshot = snapshots.build_snapshot(None, seed=0, validation_fraction=0.0)

    first = snapshots.training_samples(snapshot, WORKING_MPP, CROP_PX)

    # a2 gets no crop of its own when the random offset of a1's crop contains it whole.
    assert first.crops_read + first.instances_in_earlier_crops == 4
    assert first.crops_cached == 0
    assert len(first.train) == first.crops_read
    assert first.validation == []
    a1_sample = first.train[0]
    assert a1_sample.image_rgb.shape == (CROP_PX, CROP_PX, 3)
    # Targets of a1's crop: a1 itself and its neighbour a2, nothing unreviewed.
    names = snapshot.class_names
    assert a1_sample.class_indices.tolist() == [names.index("glomerulus"), names.index("vessel")]
    own = a1_sample.instance_masks[0]
    rows, cols = np.nonzero(own)
    # The crop contains the whole object, which may touch its edge: 40 level-0 px at
    # 0.499 um/px cover 20 or 21 pixels at 1 um/px, as the random offset aligns them.
    assert rows.max() - rows.min() + 1 in (20, 21)
    assert cols.max() - cols.min() + 1 in (20, 21)
    assert 350 <= own.sum() <= 450  # 40 level-0 px at 0.499 um/px is about 20 x 20 px
    assert len(list((data_dir / "training" / "crops").glob("*.npz"))) == first.crops_read

    second = snapshots.training_samples(snapshot, WORKING_MPP, CROP_PX)
    assert (second.crops_read, second.crops_cached) == (0, first.crops_read)
    assert np.array_equal(second.train[0].image_rgb, a1_sample.image_rgb)
    assert np.array_equal(second.train[0].instance_masks, a1_sample.instance_masks)

    # A child snapshot cuts only the new annotation's crop; 1800 is beyond every crop
    # that contains b1 or b2 (256 level-0 px wide).
    _instance(annotated["b1"].slide, (1800, 1800, 1840, 1840), "glomerulus")
    child = snapshots.build_snapshot(None, seed=0, validation_fraction=0.0, parent=snapshot)
    third = snapshots.training_samples(child, WORKING_MPP, CROP_PX)
    assert (third.crops_read, third.crops_cached) == (1, first.crops_read)


def test_instance_inside_earlier_crop_gets_no_crop(shared_data, data_dir):
    slide = _slide(shared_data, "c", "P3")
    # Any 256 level-0 px crop that contains the 240 px wide c1 contains c2 whole.
    _instance(slide, (500, 500, 740, 740), "glomerulus")
    _instance(slide, (600, 600, 620, 620), "vessel")
    snapshot = snapshots.build_snapshot(None, seed=0, validation_fraction=0.0)

    samples = snapshots.training_samples(snapshot, WORKING_MPP, CROP_PX)

    assert (samples.crops_read, samples.instances_in_earlier_crops) == (1, 1)
    names = snapshot.class_names
    assert samples.train[0].class_indices.tolist() == [names.index("glomerulus"), names.index("vessel")]
    vessel_mask = samples.train[0].instance_masks[1]
    # 20 level-0 px at 0.499 um/px is 9.98 px, which covers 10 or 11 pixel centres a side.
    assert 100 <= vessel_mask.sum() <= 121


def test_train_command_end_to_end(annotated, data_dir, settings, tiny_checkpoint):
    settings.NEPHROWEB_SAM_CHECKPOINT = str(tiny_checkpoint)
    snapshot = snapshots.build_snapshot(None, seed=1, validation_fraction=0.5)
    out = io.StringIO()

    call_command(
        "train", "--snapshot", str(snapshot.pk), "--epochs", "2", "--crop-px", str(CROP_PX),
        "--mpp", str(WORKING_MPP), "--config-json", json.dumps(FAST_CONFIG), stdout=out,
    )

    version = ModelVersion.objects.get(snapshot=snapshot)
    assert version.status == ModelVersion.Status.SUCCEEDED, version.message
    assert [row["epoch"] for row in version.metrics] == [1, 2]
    assert all("train_loss" in row for row in version.metrics)
    assert all("val_loss" in row for row in version.metrics)
    assert all(0.0 <= row["val_map"] <= row["val_map50"] <= 1.0 for row in version.metrics)
    assert version.best_epoch in (1, 2)
    assert version.weights_path.endswith("best.safetensors")
    model, metadata = load_class_aware(version.weights_path)
    assert model.class_names == tuple(snapshot.class_names)
    assert metadata.class_names == tuple(snapshot.class_names)
    assert metadata.data_snapshot_id == f"snapshot-{snapshot.pk}"
    assert metadata.tile_px == CROP_PX
    assert metadata.mpp == WORKING_MPP
    printed = out.getvalue()
    assert "epoch 1: train_loss" in printed
    assert "epoch 2: train_loss" in printed
    assert version.weights_path in printed

    # A re-delivered task finds the version finished and changes nothing.
    before = ModelVersion.objects.filter(pk=version.pk).values().get()
    again = services.execute_training(version.pk, owner="second-delivery")
    after = ModelVersion.objects.filter(pk=version.pk).values().get()
    assert again.status == ModelVersion.Status.SUCCEEDED
    assert {k: v for k, v in after.items() if not k.startswith("lease_")} == {
        k: v for k, v in before.items() if not k.startswith("lease_")
    }


def test_train_command_fails_with_reason_on_bad_config(annotated, data_dir):
    snapshot = snapshots.build_snapshot(None, seed=0, validation_fraction=0.0)
    with pytest.raises(CommandError, match="epochs is 0"):
        call_command("train", "--snapshot", str(snapshot.pk), "--epochs", "0")
    assert not ModelVersion.objects.exists()


def test_cancel_requested_before_the_run_cancels(annotated, data_dir):
    snapshot = snapshots.build_snapshot(None, seed=0, validation_fraction=0.0)
    version = services.start_training(snapshot, None, config_overrides=FAST_CONFIG, enqueue=False)
    ModelVersion.objects.filter(pk=version.pk).update(cancel_requested=True)

    version = services.execute_training(version.pk, owner="worker")

    assert version.status == ModelVersion.Status.CANCELLED
    assert version.metrics == []
    assert version.weights_path == ""
    assert version.lease_owner == ""


def test_api_snapshot_and_version_flow(annotated, client_for):
    client = client_for("admin")

    response = client.post(
        "/api/training/snapshots/", {"seed": 2, "validation_fraction": 0.5},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    snapshot = response.json()
    assert snapshot["instance_count"] == 4
    assert snapshot["class_counts"]["glomerulus"] == 1
    assert SnapshotInstance.objects.filter(snapshot_id=snapshot["id"]).count() == 4

    response = client.post(
        "/api/training/versions/",
        {"snapshot": snapshot["id"], "config": {"epochs": 3}, "crop_px": 256},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    version = response.json()
    assert (version["status"], version["config"]["epochs"], version["crop_px"]) == (
        "queued", 3, 256
    )
    assert version["device_auto"] is True

    detail = client.get(f"/api/training/versions/{version['id']}/").json()
    assert detail["metrics"] == []
    assert detail["class_names"] == snapshot["class_names"]
    assert [row["id"] for row in client.get("/api/training/versions/").json()] == [version["id"]]

    cancelled = client.post(f"/api/training/versions/{version['id']}/cancel/")
    assert cancelled.status_code == 200
    assert cancelled.json()["status"] == "cancelled"
    again = client.post(f"/api/training/versions/{version['id']}/cancel/")
    assert again.status_code == 409
    assert "already finished" in again.json()["detail"]


@pytest.mark.parametrize(
    ("config", "field_name"),
    [({"epochs": 0}, "epochs"), ({"learning_rate": "fast"}, "learning_rate"),
     ({"epoch": 2}, "epoch")],
)
def test_api_rejects_bad_config_naming_the_field(annotated, client_for, config, field_name):
    client = client_for("admin")
    snapshot = snapshots.build_snapshot(None, seed=0, validation_fraction=0.0)
    response = client.post(
        "/api/training/versions/", {"snapshot": snapshot.pk, "config": config},
        content_type="application/json",
    )
    assert response.status_code == 400
    assert field_name in response.json()["detail"]
    assert not ModelVersion.objects.exists()


def test_api_snapshot_without_annotations_is_rejected(client_for):
    response = client_for("admin").post(
        "/api/training/snapshots/", {"seed": 0}, content_type="application/json"
    )
    assert response.status_code == 400
    assert "no accepted or edited annotations" in response.json()["detail"]


@pytest.mark.parametrize("role", ["annotator", "pathologist"])
def test_only_admins_may_train(annotated, client_for, role):
    client = client_for(role)
    response = client.post("/api/training/snapshots/", {"seed": 0}, content_type="application/json")
    assert response.status_code == 403
    assert client.get("/api/training/versions/").status_code == 403


def test_cancel_during_training_stops_after_the_current_epoch(
    annotated, data_dir, settings, tiny_checkpoint
):
    settings.NEPHROWEB_SAM_CHECKPOINT = str(tiny_checkpoint)
    snapshot = snapshots.build_snapshot(None, seed=1, validation_fraction=0.5)
    version = services.start_training(
        snapshot, None, config_overrides={**FAST_CONFIG, "epochs": 3}, mpp=WORKING_MPP,
        crop_px=CROP_PX, enqueue=False,
    )

    def cancel_after_first_epoch(record):
        services.cancel_training(ModelVersion.objects.get(pk=version.pk))

    version = services.execute_training(
        version.pk, owner="worker", on_epoch=cancel_after_first_epoch
    )

    assert version.status == ModelVersion.Status.CANCELLED
    assert [row["epoch"] for row in version.metrics] == [1]
    assert version.weights_path == ""


def test_version_leased_by_another_worker_is_skipped(annotated, data_dir):
    snapshot = snapshots.build_snapshot(None, seed=0, validation_fraction=0.0)
    version = services.start_training(snapshot, None, enqueue=False)
    assert services._acquire_lease(version.pk, "first-worker")

    assert services.execute_training(version.pk, owner="second-worker") is None
    version.refresh_from_db()
    assert (version.status, version.lease_owner) == ("queued", "first-worker")


def test_delivery_during_a_live_lease_is_retried(annotated, data_dir, settings):
    from celery.exceptions import Retry

    from apps.training.tasks import run_training
    from nephroweb.leases import retry_countdown

    settings.NEPHROWEB_TASK_LEASE_S = 60
    snapshot = snapshots.build_snapshot(None, seed=0, validation_fraction=0.0)
    version = services.start_training(snapshot, None, enqueue=False)
    assert retry_countdown(ModelVersion, version.pk) == 1.0
    assert services._acquire_lease(version.pk, "first-worker")

    # The retry comes one second after the lease would expire.
    assert 60.0 < retry_countdown(ModelVersion, version.pk) <= 61.0
    with pytest.raises(Retry):
        run_training(version.pk)
    version.refresh_from_db()
    assert (version.status, version.lease_owner) == ("queued", "first-worker")


def test_same_seed_gives_the_same_starting_model(annotated, data_dir, settings, tiny_checkpoint):
    settings.NEPHROWEB_SAM_CHECKPOINT = str(tiny_checkpoint)
    snapshot = snapshots.build_snapshot(None, seed=0, validation_fraction=0.0)
    version = services.start_training(snapshot, None, enqueue=False)

    torch.manual_seed(1)
    first = services._model_from_sam_checkpoint(version, seed=5).state_dict()
    torch.manual_seed(2)
    second = services._model_from_sam_checkpoint(version, seed=5).state_dict()
    other = services._model_from_sam_checkpoint(version, seed=6).state_dict()

    # The global random state does not matter, the seed does (the class head is new).
    assert all(torch.equal(first[name], second[name]) for name in first)
    head = "mask_decoder.class_prediction_head.layers.0.weight"
    assert not torch.equal(first[head], other[head])


# ---------------------------------------------------------------------------- base versions

# Classes of the saved base model: two that the snapshot has, in another order, and one
# that it lacks.
BASE_CLASSES = ("vessel", "glomerulus", "old class")
BASE_MPP = 0.75
BASE_CROP_PX = 160
# So small that one epoch of a few optimizer steps moves no weight by more than 1e-9.
NEGLIGIBLE_LEARNING_RATE = 1e-12


def _save_base_model(path, seed):
    """Save a class-aware model built from the tiny SAM (class head drawn from ``seed``)."""
    torch.manual_seed(seed)
    model, _ = from_sam(make_tiny_sam(), BASE_CLASSES)
    metadata = ClassAwareMetadata(
        classes=tuple(ClassSpec(name, "#00ff00") for name in BASE_CLASSES),
        architecture=model.architecture, mpp=BASE_MPP, tile_px=BASE_CROP_PX,
    )
    return save_class_aware(model, path, metadata)


def _base_version(snapshot, folder, status=ModelVersion.Status.SUCCEEDED):
    """Record a saved model as a model version with the given status."""
    path = folder / "base" / "best.safetensors"
    sha256 = _save_base_model(path, seed=2)
    return ModelVersion.objects.create(
        name="base", status=status, snapshot=snapshot, mpp=BASE_MPP, crop_px=BASE_CROP_PX,
        class_names=list(BASE_CLASSES), metrics=[{"epoch": 1, "train_loss": 1.0}], best_epoch=1,
        weights_path=str(path), weights_sha256=sha256,
    )


def _post_version(client, body):
    return client.post("/api/training/versions/", body, content_type="application/json")


def test_api_base_version_must_exist(annotated, client_for):
    client = client_for("admin")
    snapshot = snapshots.build_snapshot(None, seed=0, validation_fraction=0.0)

    response = _post_version(client, {"snapshot": snapshot.pk, "base_version": 9999})

    assert response.status_code == 400
    assert response.json() == {"base_version": ['Invalid pk "9999" - object does not exist.']}
    assert not ModelVersion.objects.exists()


@pytest.mark.parametrize("status", ["queued", "running", "failed", "cancelled"])
def test_api_base_version_must_have_succeeded(annotated, client_for, tmp_path, status):
    client = client_for("admin")
    snapshot = snapshots.build_snapshot(None, seed=0, validation_fraction=0.0)
    base = _base_version(snapshot, tmp_path, status=status)

    response = _post_version(client, {"snapshot": snapshot.pk, "base_version": base.pk})

    assert response.status_code == 400
    assert response.json()["detail"] == (
        f"base_version {base.pk} (base) has status '{status}'. "
        "Choose a model version whose training succeeded."
    )
    assert list(ModelVersion.objects.values_list("pk", flat=True)) == [base.pk]


def test_api_base_version_without_weights_is_rejected(annotated, client_for, tmp_path):
    client = client_for("admin")
    snapshot = snapshots.build_snapshot(None, seed=0, validation_fraction=0.0)
    base = _base_version(snapshot, tmp_path)
    ModelVersion.objects.filter(pk=base.pk).update(weights_path="")

    response = _post_version(client, {"snapshot": snapshot.pk, "base_version": base.pk})

    assert response.status_code == 400
    assert response.json()["detail"].startswith(
        f"base_version {base.pk} (base) has no stored weights."
    )


def test_api_base_version_excludes_checkpoint(annotated, client_for, tmp_path):
    client = client_for("admin")
    snapshot = snapshots.build_snapshot(None, seed=0, validation_fraction=0.0)
    base = _base_version(snapshot, tmp_path)

    response = _post_version(
        client, {"snapshot": snapshot.pk, "base_version": base.pk, "checkpoint": "/models/sam.pth"}
    )

    assert response.status_code == 400
    assert response.json()["detail"].startswith(
        f"base_version {base.pk} and checkpoint '/models/sam.pth' are both given."
    )


def test_api_base_version_gives_mpp_and_crop_defaults(annotated, client_for, tmp_path):
    client = client_for("admin")
    snapshot = snapshots.build_snapshot(None, seed=0, validation_fraction=0.0)
    base = _base_version(snapshot, tmp_path)

    inherited = _post_version(client, {"snapshot": snapshot.pk, "base_version": base.pk})
    overridden = _post_version(
        client, {"snapshot": snapshot.pk, "base_version": base.pk, "crop_px": 128}
    )
    from_sam_checkpoint = _post_version(client, {"snapshot": snapshot.pk, "base_version": None})

    assert inherited.status_code == 201, inherited.content
    body = inherited.json()
    assert (body["base_version"], body["mpp"], body["crop_px"]) == (base.pk, BASE_MPP, BASE_CROP_PX)
    assert body["class_names"] == snapshot.class_names
    assert (overridden.json()["mpp"], overridden.json()["crop_px"]) == (BASE_MPP, 128)
    assert from_sam_checkpoint.json()["base_version"] is None
    assert from_sam_checkpoint.json()["crop_px"] == services.DEFAULT_CROP_PX
    assert ModelVersion.objects.get(pk=body["id"]).base_version_id == base.pk


def test_train_command_continues_from_base_version(annotated, data_dir):
    """The snapshot lacks "old class" and adds five classes that the base does not have:
    the class head keeps the rows of glomerulus and vessel and gets new rows for the rest."""
    snapshot = snapshots.build_snapshot(None, seed=1, validation_fraction=0.5)
    base = _base_version(snapshot, data_dir)
    base_model, _ = load_class_aware(base.weights_path)
    config = {**FAST_CONFIG, "learning_rate": NEGLIGIBLE_LEARNING_RATE}
    out = io.StringIO()

    call_command(
        "train", "--snapshot", str(snapshot.pk), "--base-version", str(base.pk), "--epochs", "1",
        "--config-json", json.dumps(config), stdout=out,
    )

    version = ModelVersion.objects.exclude(pk=base.pk).get()
    assert version.status == ModelVersion.Status.SUCCEEDED, version.message
    assert version.base_version_id == base.pk
    assert version.base_checkpoint == base.weights_path
    assert version.base_checkpoint_sha256 == base.weights_sha256
    assert (version.mpp, version.crop_px) == (BASE_MPP, BASE_CROP_PX)
    assert [row["epoch"] for row in version.metrics] == [1]
    assert f"model version {version.pk} succeeded" in out.getvalue()

    model, metadata = load_class_aware(version.weights_path)
    assert model.class_names == tuple(snapshot.class_names)
    assert metadata.class_names == tuple(snapshot.class_names)
    assert (metadata.mpp, metadata.tile_px) == (BASE_MPP, BASE_CROP_PX)
    old_head = base_model.mask_decoder.class_prediction_head.layers[-1]
    new_head = model.mask_decoder.class_prediction_head.layers[-1]
    assert new_head.weight.shape[0] == len(snapshot.class_names) == 7
    for name in ("glomerulus", "vessel"):
        old_row = BASE_CLASSES.index(name)
        new_row = snapshot.class_names.index(name)
        assert torch.allclose(new_head.weight[new_row], old_head.weight[old_row], atol=1e-9)
        assert torch.allclose(new_head.bias[new_row], old_head.bias[old_row], atol=1e-9)
    # The rest of the decoder starts from the base too, not from a fresh class token.
    assert torch.allclose(
        model.mask_decoder.class_token.weight, base_model.mask_decoder.class_token.weight, atol=1e-9
    )


def test_replaced_base_weights_fail_the_run(annotated, data_dir):
    snapshot = snapshots.build_snapshot(None, seed=1, validation_fraction=0.5)
    base = _base_version(snapshot, data_dir)
    # Another save to the same path: the JSON beside it matches, the database does not.
    replaced_sha256 = _save_base_model(base.weights_path, seed=3)
    assert replaced_sha256 != base.weights_sha256
    version = services.start_training(
        snapshot, None, config_overrides=FAST_CONFIG, base_version=base, enqueue=False
    )

    version = services.execute_training(version.pk, owner="worker")

    assert version.status == ModelVersion.Status.FAILED
    assert version.message == (
        f"Weights file {base.weights_path} of base version {base.pk} (base) has SHA-256 "
        f"{replaced_sha256}, but its training wrote {base.weights_sha256}. The file was "
        "replaced or damaged. Restore it or choose another base version."
    )
    assert version.metrics == []
    assert version.weights_path == ""


def test_missing_base_weights_fail_the_run(annotated, data_dir):
    snapshot = snapshots.build_snapshot(None, seed=1, validation_fraction=0.5)
    base = _base_version(snapshot, data_dir)
    version = services.start_training(
        snapshot, None, config_overrides=FAST_CONFIG, base_version=base, enqueue=False
    )
    (data_dir / "base" / "best.safetensors").unlink()

    version = services.execute_training(version.pk, owner="worker")

    assert version.status == ModelVersion.Status.FAILED
    assert version.message.startswith(
        f"Weights of base version {base.pk} (base) cannot be read at {base.weights_path}: "
        "No such file or directory."
    )


def test_train_command_rejects_bad_base_version(annotated, data_dir):
    with pytest.raises(CommandError, match="^--base-version 9999: model version does not exist"):
        call_command("train", "--new-snapshot", "--base-version", "9999")

    snapshot = snapshots.build_snapshot(None, seed=0, validation_fraction=0.0)
    queued = _base_version(snapshot, data_dir, status=ModelVersion.Status.QUEUED)
    expected = f"^base_version {queued.pk} \\(base\\) has status 'queued'"
    with pytest.raises(CommandError, match=expected):
        call_command("train", "--new-snapshot", "--base-version", str(queued.pk))

    with pytest.raises(CommandError, match="not allowed with argument --checkpoint"):
        call_command(
            "train", "--new-snapshot", "--checkpoint", "/models/sam.pth",
            "--base-version", str(queued.pk),
        )

    # No call left a snapshot or a model version behind.
    assert list(TrainingSnapshot.objects.values_list("pk", flat=True)) == [snapshot.pk]
    assert list(ModelVersion.objects.values_list("pk", flat=True)) == [queued.pk]


def test_train_command_from_efficientnet_base(annotated, data_dir):
    from ml.checkpoints import file_sha256
    from ml.efficientnet_lite import weights_path

    snapshot = snapshots.build_snapshot(None, seed=1, validation_fraction=0.5)
    call_command(
        "train", "--snapshot", str(snapshot.pk), "--epochs", "1", "--crop-px", str(CROP_PX),
        "--mpp", str(WORKING_MPP), "--checkpoint", services.EFFICIENTNET_BASE,
        "--config-json", json.dumps(FAST_CONFIG), stdout=io.StringIO(),
    )

    version = ModelVersion.objects.get(snapshot=snapshot)
    assert version.status == ModelVersion.Status.SUCCEEDED, version.message
    assert version.base_checkpoint == services.EFFICIENTNET_BASE
    assert version.base_checkpoint_sha256 == file_sha256(weights_path())
    loaded = load_class_aware(version.weights_path)
    assert loaded.metadata.architecture.image_encoder == "efficientnet_lite0"
    assert loaded.metadata.architecture.image_size == CROP_PX
    assert loaded.model.class_names == tuple(snapshot.class_names)


def test_efficientnet_base_rejects_crop_not_multiple_of_16(annotated):
    snapshot = snapshots.build_snapshot(None, seed=1, validation_fraction=0.5)
    with pytest.raises(SettingsError, match="crop_px is 120"):
        services.start_training(
            snapshot, base_checkpoint=services.EFFICIENTNET_BASE, crop_px=120, enqueue=False
        )
    assert not ModelVersion.objects.exists()


def test_api_rejects_snapshot_seed_beyond_column(annotated, client_for):
    response = client_for("admin").post(
        "/api/training/snapshots/", {"seed": 2**31}, content_type="application/json"
    )

    assert response.status_code == 400
    assert response.json() == {
        "seed": ["Ensure this value is less than or equal to 2147483647."]
    }
    assert not TrainingSnapshot.objects.exists()


def test_snapshot_seed_beyond_column_rejected(annotated):
    expected = "seed is 2147483648, expected a whole number from 0 to 2147483647"
    with pytest.raises(SettingsError, match=expected):
        snapshots.build_snapshot(None, seed=2**31, validation_fraction=0.0)
