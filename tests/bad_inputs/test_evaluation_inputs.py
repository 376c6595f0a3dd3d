"""Bad model versions and damaged predictions files through ``evaluate``.

A model version argument that names no evaluable version exits with status 2 before any
evaluation row is written. A damaged predictions file is found while scoring, so the
command exits with status 1 and the one evaluation row it created keeps the reason as
FAILED, as the Models page shows it. Either way stdout stays empty and the message is one
line on stderr.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from shapely.geometry import box

from apps.analysis.models import ModelEvaluation
from apps.analysis.predictions import Prediction, write_run_predictions
from apps.annotations.models import EvaluationRegion, ProposalRun
from apps.training.models import ModelVersion, TrainingSnapshot
from tests.bad_inputs.conftest import assert_no_traceback, run_command
from tests.conftest import create_instance_record, create_slide_record
from tests.processes import REPO, child_environment

pytestmark = pytest.mark.django_db

PROCESS_TIMEOUT_S = 120
CLASS_NAMES = ["glomerulus", "vessel"]
REGION = box(0, 0, 2000, 2000)
GLOMERULUS = box(100, 100, 300, 300)


def make_version(name="model-a", status=ModelVersion.Status.SUCCEEDED) -> ModelVersion:
    snapshot = TrainingSnapshot.objects.create(validation_fraction=0.2, class_names=CLASS_NAMES)
    return ModelVersion.objects.create(
        name=name, status=status, snapshot=snapshot, mpp=1.0, crop_px=1024,
        class_names=CLASS_NAMES,
    )


@pytest.fixture
def version(media_root):
    return make_version()


@pytest.fixture
def scored_run(version):
    """A slide with an evaluation region, one reviewed glomerulus and a run that found it."""
    slide = create_slide_record("biopsy-1")
    EvaluationRegion.objects.create(slide=slide, geometry=REGION.__geo_interface__)
    create_instance_record(slide, GLOMERULUS, "glomerulus")
    run = ProposalRun.objects.create(
        slide=slide, model_version=version, sam_type="class-aware",
        status=ProposalRun.Status.SUCCEEDED,
    )
    write_run_predictions(run, [Prediction(GLOMERULUS, "glomerulus", 0.9, 1.0)])
    return run


def _one_line_exit(result, exit_code: int, message: str) -> None:
    assert result.exit_code == exit_code
    assert result.stdout == ""
    assert result.stderr == f"CommandError: {message}\n"
    assert_no_traceback(result.stderr)


def _does_not_exist(value: str) -> str:
    return (
        f"Model version {value!r} does not exist. Pass the id or name of a version listed on "
        "the training page."
    )


@pytest.mark.parametrize("value", [
    "no-such-model", "²", "0", "99999999999999999999999", "", " model-a", "model-a; DROP TABLE",
])
def test_unknown_version_exits_2(value, version):
    result = run_command("evaluate", value)

    _one_line_exit(result, 2, _does_not_exist(value))
    assert ModelEvaluation.objects.count() == 0


def test_undamaged_scene_succeeds(scored_run, version):
    result = run_command("evaluate", str(version.pk))

    assert result.exit_code == 0
    assert ModelEvaluation.objects.get().status == ModelEvaluation.Status.SUCCEEDED


def test_ambiguous_name_exits_2(version):
    make_version("model-a")

    result = run_command("evaluate", "model-a")

    _one_line_exit(
        result, 2, "More than one model version is named 'model-a'. Pass its id instead."
    )
    assert ModelEvaluation.objects.count() == 0


@pytest.mark.parametrize("status", [ModelVersion.Status.RUNNING, ModelVersion.Status.FAILED])
def test_version_not_succeeded_exits_2(status, media_root):
    unfinished = make_version("unfinished", status)

    result = run_command("evaluate", "unfinished")

    _one_line_exit(result, 2, (
        f"Model version {unfinished.pk} (unfinished) has status {str(status)!r}. Only a "
        "version whose training succeeded can be evaluated."
    ))
    assert ModelEvaluation.objects.count() == 0


def test_no_regions_exits_2(version):
    result = run_command("evaluate", "model-a")

    assert result.exit_code == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert "Mark evaluation regions" in result.stderr
    assert ModelEvaluation.objects.count() == 0


def _truncate(path: Path) -> None:
    path.write_text(path.read_text()[:20])


def _null_geometry(path: Path) -> None:
    path.write_text(
        '{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": null, '
        '"properties": {"class_name": "glomerulus", "class_probability": 0.9, '
        '"predicted_iou": 1.0}}]}'
    )


# (damage, the message after "Evaluation N of model version M failed: ").
DAMAGED_PREDICTIONS = [
    ("deleted", "The predictions file of run {run} is missing: {path}. Segment the slide again."),
    ("truncated",
     "The predictions file of run {run} cannot be read ({path}): Unterminated string starting "
     "at: line 1 column 10 (char 9). Segment the slide again."),
    ("null_geometry",
     "The predictions file of run {run} cannot be read ({path}): 'NoneType' object has no "
     "attribute 'get'. Segment the slide again."),
]


@pytest.mark.parametrize(("damage", "reason"), DAMAGED_PREDICTIONS)
def test_damaged_predictions_exit_1(damage, reason, scored_run, version):
    path = Path(scored_run.predictions_file)
    if damage == "deleted":
        path.unlink()
    elif damage == "truncated":
        _truncate(path)
    else:
        _null_geometry(path)

    result = run_command("evaluate", "model-a")

    evaluation = ModelEvaluation.objects.get()
    assert evaluation.status == ModelEvaluation.Status.FAILED
    assert evaluation.message == reason.format(run=scored_run.pk, path=path)
    _one_line_exit(
        result, 1,
        f"Evaluation {evaluation.pk} of model version {version.pk} failed: {evaluation.message}",
    )


def test_evaluate_process_exit_2(tmp_path):
    completed = subprocess.run(
        [sys.executable, "manage.py", "evaluate", "²"], cwd=REPO,
        env=child_environment(tmp_path / "data"), capture_output=True, text=True,
        timeout=PROCESS_TIMEOUT_S,
    )

    assert completed.returncode == 2
    assert completed.stdout == ""
    assert completed.stderr.splitlines()[-1] == f"CommandError: {_does_not_exist('²')}"
    assert_no_traceback(completed.stderr)
