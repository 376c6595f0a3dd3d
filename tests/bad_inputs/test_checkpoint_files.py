"""Bad model files through ``propose --checkpoint``, ``train`` (command and API) and a
segmentation run of a model version.

A checkpoint is read only when the run starts, so each case ends as a failed run whose
message names the file and the problem, with no instance created. A file that would run
code when unpickled is rejected without running it.
"""

from __future__ import annotations

import pytest
from shapely.geometry import box

from apps.annotations.models import Instance, ProposalRun
from apps.annotations.tasks import run_segmentation
from apps.training import snapshots
from apps.training.models import ModelVersion
from apps.training.tasks import run_training
from ml.checkpoints import file_sha256
from tests.bad_inputs import checkpoint_files
from tests.bad_inputs.conftest import assert_no_traceback, run_command
from tests.conftest import create_instance_record, create_slide_record
from tests.sam_factory import TINY_CLASS_NAMES

pytestmark = pytest.mark.django_db

RUNS_CODE = (
    "is not a plain state dict; refusing to unpickle it because it contains Python objects "
    "that would run code on load. Save only model.state_dict() with torch.save."
)
OTHER_CLASS_COUNT = (
    "lists 4 classes (glomerulus, vessel, background, proximal tubule), but the class head "
    "in {weights} has 3 outputs. Copy the matching pair."
)


@pytest.fixture
def slide():
    return create_slide_record("biopsy", 4000, 3000, mpp=0.5, patient_id="P1")


@pytest.fixture
def snapshot(slide):
    create_instance_record(slide, box(100, 100, 200, 200), "glomerulus")
    return snapshots.build_snapshot(None, seed=0, validation_fraction=0.0)


def _propose(slide, checkpoint, *options):
    return run_command("propose", str(slide.pk), "--checkpoint", str(checkpoint), *options)


def _assert_failed_run(result, fragments):
    run = ProposalRun.objects.get()
    assert run.status == ProposalRun.Status.FAILED
    for fragment in fragments:
        assert fragment in run.message
    assert_no_traceback(run.message)
    assert result.exit_code == 1
    assert result.stderr == f"CommandError: Proposal run {run.pk} failed: {run.message}\n"
    assert Instance.objects.count() == 0


def test_propose_wrong_architecture(slide, inputs_dir):
    path = checkpoint_files.tiny_sam_checkpoint(inputs_dir)

    result = _propose(slide, path, "--sam-type", "vit_b")

    _assert_failed_run(result, [
        f"SAM checkpoint {path} was requested as vit_b, but its tensors describe a "
        "non-official architecture (SamArchitecture(encoder_embed_dim=32, ",
        "Pass the matching sam_type or the right file.",
    ])


def test_propose_truncated_checkpoint(slide, inputs_dir):
    path = checkpoint_files.truncated_checkpoint(inputs_dir)

    result = _propose(slide, path)

    _assert_failed_run(result, [
        f"SAM checkpoint {path} cannot be read (PytorchStreamReader failed reading zip archive",
        "The file may be truncated or corrupt. Download it again.",
    ])


def test_propose_text_named_checkpoint(slide, inputs_dir):
    path = checkpoint_files.text_named_checkpoint(inputs_dir)

    result = _propose(slide, path)

    _assert_failed_run(result, [
        f"SAM checkpoint {path} is not a PyTorch checkpoint: it is neither a torch.save zip "
        "archive nor a pickle that torch.load reads.",
    ])
    assert "would run code" not in ProposalRun.objects.get().message


def test_propose_code_running_pickle(slide, inputs_dir, tmp_path):
    marker = tmp_path / "code_ran"
    path = checkpoint_files.code_running_checkpoint(inputs_dir, marker)

    result = _propose(slide, path)

    _assert_failed_run(result, [f"SAM checkpoint {path} {RUNS_CODE}"])
    assert not marker.exists()


def test_propose_missing_checkpoint(slide, inputs_dir):
    path = inputs_dir / "sam_vit_b_01ec64.pth"

    result = _propose(slide, path)

    _assert_failed_run(result, [f"SAM checkpoint {path} (from checkpoint_path) was not found"])


def test_training_api_code_running_pickle(snapshot, client_for, data_dir, inputs_dir, tmp_path):
    marker = tmp_path / "code_ran"
    path = checkpoint_files.code_running_checkpoint(inputs_dir, marker)

    response = client_for("admin").post(
        "/api/training/versions/", {"snapshot": snapshot.pk, "checkpoint": str(path)},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    run_training(response.json()["id"])

    version = ModelVersion.objects.get()
    assert version.status == ModelVersion.Status.FAILED
    assert version.message == f"SAM checkpoint {path} {RUNS_CODE}"
    assert version.weights_path == ""
    assert not marker.exists()


def test_train_command_text_checkpoint(snapshot, data_dir, inputs_dir):
    path = checkpoint_files.text_named_checkpoint(inputs_dir)

    result = run_command("train", "--snapshot", str(snapshot.pk), "--checkpoint", str(path))

    version = ModelVersion.objects.get()
    assert version.status == ModelVersion.Status.FAILED
    assert result.exit_code == 1
    assert result.stderr == f"CommandError: Model version {version.pk} failed: {version.message}\n"
    assert version.message.startswith(f"SAM checkpoint {path} is not a PyTorch checkpoint")
    assert_no_traceback(version.message)


def _version_with_weights(weights, snapshot, name="model-a"):
    return ModelVersion.objects.create(
        name=name, status=ModelVersion.Status.SUCCEEDED, snapshot=snapshot, mpp=1.0,
        crop_px=1024, class_names=list(TINY_CLASS_NAMES), weights_path=str(weights),
        weights_sha256=file_sha256(weights),
    )


def test_train_base_version_other_class_count(snapshot, data_dir, inputs_dir):
    weights = checkpoint_files.class_aware_with_other_class_count(inputs_dir)
    base = _version_with_weights(weights, snapshot)

    result = run_command("train", "--snapshot", str(snapshot.pk), "--base-version", str(base.pk))

    version = ModelVersion.objects.exclude(pk=base.pk).get()
    assert version.status == ModelVersion.Status.FAILED
    assert version.message == (
        f"Metadata file {weights.with_suffix('.json')} "
        + OTHER_CLASS_COUNT.format(weights=weights)
    )
    assert result.exit_code == 1
    assert result.stderr == f"CommandError: Model version {version.pk} failed: {version.message}\n"


def test_segmentation_other_class_count(slide, snapshot, client_for, fast_segmentation, inputs_dir):
    weights = checkpoint_files.class_aware_with_other_class_count(inputs_dir)
    version = _version_with_weights(weights, snapshot)
    instances_before = Instance.objects.count()

    response = client_for("annotator").post(
        f"/api/slides/{slide.pk}/proposal-runs/", {"model_version": version.pk},
        content_type="application/json",
    )
    assert response.status_code == 201, response.content
    run_segmentation(response.json()["id"])

    run = ProposalRun.objects.get()
    assert run.status == ProposalRun.Status.FAILED
    assert run.message == (
        f"Metadata file {weights.with_suffix('.json')} " + OTHER_CLASS_COUNT.format(weights=weights)
    )
    assert run.predictions_file == ""
    assert Instance.objects.count() == instances_before
