"""Run settings and training configs of the wrong type, through the APIs and the commands.

Each rejected request names the field and leaves no ProposalRun, ModelVersion or
snapshot row behind.
"""

from __future__ import annotations

import json

import pytest
from shapely.geometry import box

from apps.annotations.models import ProposalRun
from apps.training import snapshots
from apps.training.models import ModelVersion, TrainingSnapshot
from tests.bad_inputs.conftest import assert_no_traceback, run_command
from tests.conftest import create_instance_record, create_slide_record

pytestmark = pytest.mark.django_db


@pytest.fixture
def slide():
    return create_slide_record("biopsy", 4000, 3000, mpp=0.5, patient_id="P1")


@pytest.fixture
def snapshot(slide):
    create_instance_record(slide, box(100, 100, 200, 200), "glomerulus")
    return snapshots.build_snapshot(None, seed=0, validation_fraction=0.0)


# (settings, fragment of the message that names the field and the problem).
BAD_PROPOSAL_SETTINGS = [
    ({"points_per_side": "32"}, "points_per_side must be a whole number in [1, "),
    ({"points_per_side": -3}, "points_per_side must be a whole number in [1, "),
    ({"mpp": "1.0"}, "Proposal setting mpp must be a finite number in "),
    ({"pred_iou_thresh": 1.5}, "pred_iou_thresh must be a finite number in [0.0, 1.0], got 1.5"),
    ({"point_per_side": 16}, "Unknown proposal settings ['point_per_side']. Allowed keys: "),
]


@pytest.mark.parametrize(("run_settings", "fragment"), BAD_PROPOSAL_SETTINGS)
def test_api_rejects_bad_proposal_settings(run_settings, fragment, slide, client_for):
    response = client_for("annotator").post(
        f"/api/slides/{slide.pk}/proposal-runs/", {"settings": run_settings},
        content_type="application/json",
    )

    assert response.status_code == 400
    assert fragment in response.json()["detail"]
    assert ProposalRun.objects.count() == 0


def test_api_rejects_settings_not_object(slide, client_for):
    response = client_for("annotator").post(
        f"/api/slides/{slide.pk}/proposal-runs/", {"settings": [4]},
        content_type="application/json",
    )

    assert response.status_code == 400
    assert response.json() == {"settings": ['Expected a dictionary of items but got type "list".']}
    assert ProposalRun.objects.count() == 0


@pytest.mark.parametrize(("run_settings", "fragment"), BAD_PROPOSAL_SETTINGS)
def test_propose_rejects_bad_settings_json(run_settings, fragment, slide):
    result = run_command("propose", str(slide.pk), "--settings-json", json.dumps(run_settings))

    assert result.exit_code == 1
    assert result.stderr.startswith("CommandError: ")
    assert fragment in result.stderr
    assert_no_traceback(result.stderr)
    assert ProposalRun.objects.count() == 0


@pytest.mark.parametrize(("text", "message"), [
    ("{points_per_side: 4}", "--settings-json is not valid JSON: Expecting property name"),
    ("[4]", "--settings-json is [4], expected a JSON object of proposal settings."),
    ('"fast"', "--settings-json is 'fast', expected a JSON object of proposal settings."),
])
def test_propose_rejects_settings_json_not_object(text, message, slide):
    result = run_command("propose", str(slide.pk), "--settings-json", text)

    assert result.exit_code == 1
    assert result.stderr.startswith(f"CommandError: {message}")
    assert ProposalRun.objects.count() == 0


@pytest.mark.parametrize(("value", "message"), [
    ("0", "Proposal setting points_per_side must be a whole number in [1, "),
    ("-3", "Proposal setting points_per_side must be a whole number in [1, "),
    ("four", "argument --points-per-side: invalid int value: 'four'"),
])
def test_propose_rejects_bad_points_per_side(value, message, slide):
    result = run_command("propose", str(slide.pk), "--points-per-side", value)

    assert result.exit_code == 1
    assert message in result.stderr
    assert ProposalRun.objects.count() == 0


# (config, message that names the field and the problem).
BAD_TRAINING_CONFIGS = [
    ({"batch_size": "8"}, "batch_size is '8', expected a whole number of at least 1."),
    ({"epochs": -2}, "epochs is -2, expected a whole number of at least 1."),
    ({"epochs": True}, "epochs is True, expected a whole number of at least 1."),
    ({"weight_decay": -0.1}, "weight_decay is -0.1, expected a finite number >= 0.0."),
    ({"loss_weights": {"dice": "1"}}, "loss_weights.dice is '1', expected a finite number >= 0.0."),
    ({"augment": {"flip": True}}, "augment contains unknown keys ['flip']."),
    ({"lr": 0.001}, "Training config contains unknown keys ['lr']."),
]


@pytest.mark.parametrize(("config", "message"), BAD_TRAINING_CONFIGS)
def test_api_rejects_bad_training_config(config, message, snapshot, client_for):
    response = client_for("admin").post(
        "/api/training/versions/", {"snapshot": snapshot.pk, "config": config},
        content_type="application/json",
    )

    assert response.status_code == 400
    assert response.json()["detail"].startswith(message)
    assert ModelVersion.objects.count() == 0


@pytest.mark.parametrize(("field", "value", "message"), [
    ("mpp", "fine", "A valid number is required."),
    ("crop_px", -256, "Ensure this value is greater than or equal to 16."),
    ("config", "epochs=3", 'Expected a dictionary of items but got type "str".'),
])
def test_api_rejects_bad_training_field(field, value, message, snapshot, client_for):
    response = client_for("admin").post(
        "/api/training/versions/", {"snapshot": snapshot.pk, field: value},
        content_type="application/json",
    )

    assert response.status_code == 400
    assert response.json() == {field: [message]}
    assert ModelVersion.objects.count() == 0


@pytest.mark.parametrize(("config", "message"), BAD_TRAINING_CONFIGS)
def test_train_rejects_bad_config_json(config, message, snapshot, data_dir):
    result = run_command(
        "train", "--snapshot", str(snapshot.pk), "--config-json", json.dumps(config)
    )

    assert result.exit_code == 1
    assert result.stderr.startswith(f"CommandError: {message}")
    assert ModelVersion.objects.count() == 0


@pytest.mark.parametrize(("options", "message"), [
    (["--config-json", '{"epochs": "ten"}'],
     "epochs is 'ten', expected a whole number of at least 1."),
    (["--crop-px", "8"], "crop_px is 8, expected a whole number from 16 to 4096."),
    (["--mpp", "-1"], "mpp is -1.0, expected microns per pixel from 0.05 to 50."),
])
def test_train_new_snapshot_rejected_leaves_nothing(options, message, slide, data_dir):
    create_instance_record(slide, box(100, 100, 200, 200), "glomerulus")

    result = run_command("train", "--new-snapshot", *options)

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == f"CommandError: {message}\n"
    assert ModelVersion.objects.count() == 0
    assert TrainingSnapshot.objects.count() == 0
