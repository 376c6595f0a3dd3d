"""``manage.py evaluate MODEL_VERSION [--segment]``

Scores a model version (id or name) against the reviewed annotations inside the
evaluation regions, in this process, and stores a ModelEvaluation. Prints the metrics as
JSON on stdout and a short summary on stderr. ``--segment`` first runs the version on
slides with evaluation regions that have no segmentation run of it.

Exit status: 0 when the evaluation succeeded, 1 when scoring failed, 2 when the version
is unknown, did not succeed or has no evaluable slides.
"""

import json
import os

from django.core.management.base import BaseCommand, CommandError

from apps.analysis import evaluations
from apps.analysis.models import ModelEvaluation
from apps.annotations.models import ProposalRun
from apps.annotations.segmentation import execute_segmentation_run, start_segmentation_run
from apps.slides.models import Slide
from apps.training.models import ModelVersion
from ml.errors import NephrowebError


class Command(BaseCommand):
    help = "Evaluate a model version against reviewed annotations inside evaluation regions."

    def add_arguments(self, parser):
        parser.add_argument("model_version", help="Id or name of the model version.")
        parser.add_argument(
            "--segment", action="store_true",
            help="First segment, with this version, the slides with evaluation regions that "
            "have no segmentation run of it.",
        )

    def handle(self, *args, **options):
        version = self._model_version(options["model_version"])
        if options["segment"]:
            self._segment_missing(version)
        try:
            evaluation = evaluations.run_evaluation(version)
        except NephrowebError as error:
            raise CommandError(str(error), returncode=2) from None
        if evaluation.status != ModelEvaluation.Status.SUCCEEDED:
            raise CommandError(
                f"Evaluation {evaluation.pk} of model version {version.pk} failed: "
                f"{evaluation.message}",
                returncode=1,
            )
        self.stdout.write(json.dumps(evaluation_report(evaluation), indent=2))
        self.stderr.write(summary(evaluation))

    def _model_version(self, value: str) -> ModelVersion:
        version = None
        # isdigit() alone also accepts digits such as "²" that int() rejects.
        if value.isascii() and value.isdigit():
            version = ModelVersion.objects.filter(pk=int(value)).first()
        if version is None:
            named = list(ModelVersion.objects.filter(name=value).order_by("-id")[:2])
            if len(named) > 1:
                raise CommandError(
                    f"More than one model version is named {value!r}. Pass its id instead.",
                    returncode=2,
                )
            version = named[0] if named else None
        if version is None:
            raise CommandError(
                f"Model version {value!r} does not exist. Pass the id or name of a version "
                "listed on the training page.",
                returncode=2,
            )
        if version.status != ModelVersion.Status.SUCCEEDED:
            raise CommandError(
                f"Model version {version.pk} ({version.name}) has status {str(version.status)!r}. "
                "Only a version whose training succeeded can be evaluated.",
                returncode=2,
            )
        return version

    def _segment_missing(self, version: ModelVersion) -> None:
        present = evaluations.evaluable_runs(version)
        missing = [
            slide_id for slide_id in evaluations.slides_with_regions() if slide_id not in present
        ]
        for slide in Slide.objects.filter(pk__in=missing).order_by("id"):
            self.stderr.write(f"segmenting slide {slide.pk} ({slide.name}) with {version.name}")
            try:
                run = start_segmentation_run(slide, version, enqueue=False)
            except NephrowebError as error:
                raise CommandError(str(error), returncode=2) from None
            run = execute_segmentation_run(run.pk, owner=f"manage.py evaluate:{os.getpid()}")
            if run is not None and run.status != ProposalRun.Status.SUCCEEDED:
                self.stderr.write(
                    f"segmentation run {run.pk} on slide {slide.pk} failed: {run.message}"
                )


def evaluation_report(evaluation: ModelEvaluation) -> dict:
    """Build the command's JSON: metrics, slides and leakage of a stored evaluation."""
    trained, scored = evaluations.leakage_counts(evaluation)
    return {
        "evaluation": evaluation.pk,
        "model_version": {
            "id": evaluation.model_version_id, "name": evaluation.model_version.name,
        },
        "inputs_key": evaluation.inputs_key,
        "metrics": evaluation.metrics,
        "slides": evaluation.slides,
        "leakage": {"trained_on": trained, "scored_truth": scored},
    }


def summary(evaluation: ModelEvaluation) -> str:
    """Build the summary for stderr: the mean, each class and the leakage warning."""
    metrics = evaluation.metrics
    mean = metrics["mean"]
    lines = [
        f"evaluation {evaluation.pk} of {evaluation.model_version.name}: "
        f"{_count(len(evaluation.slides), 'slide')}, mean over "
        f"{_count(mean['n_classes'], 'class')} with truth: "
        + _metrics_text(mean)
    ]
    for row in metrics["classes"]:
        lines.append(
            f"  {row['class_name']}: {row['n_truth']} truth, {row['n_pred']} predictions, "
            + _metrics_text(row)
        )
    warning = evaluations.leakage_warning(evaluation)
    if warning:
        lines.append(f"warning: {warning}")
    return "\n".join(lines)


def _count(number: int, noun: str) -> str:
    plural = "es" if noun.endswith("s") else "s"
    return f"{number} {noun}" if number == 1 else f"{number} {noun}{plural}"


def _metrics_text(row: dict) -> str:
    number = evaluations.format_metric
    return (
        f"AP {number(row['ap'])}, AP50 {number(row['ap50'])}, AP75 {number(row['ap75'])}, "
        f"Dice/F1 @ IoU 0.5 {number(row['f1'])}"
    )
