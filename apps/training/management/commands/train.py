"""``manage.py train``: the main arguments (``--help`` lists all) are

- ``--snapshot ID`` or ``--new-snapshot``: the annotations to train on.
- ``--checkpoint PATH`` or ``--base-version ID``: start from a SAM checkpoint, or continue
  from a succeeded model version.
- ``--epochs N`` and ``--config-json JSON``: TrainingConfig fields.

Trains a model version in this process (no web server or worker needed) with the same
code as the background task, printing each epoch's metrics and then the weights path.
Exit status 1 when training fails, with the reason on stderr.
"""

import json
import os

from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from apps.training import services, snapshots
from apps.training.models import ModelVersion, TrainingSnapshot
from ml.errors import NephrowebError


class Command(BaseCommand):
    help = "Train a class-aware SAM model version on a training snapshot."

    def add_arguments(self, parser):
        source = parser.add_mutually_exclusive_group(required=True)
        source.add_argument("--snapshot", type=int, help="Id of an existing snapshot.")
        source.add_argument(
            "--new-snapshot", action="store_true", help="Take a snapshot of the annotations now."
        )
        parser.add_argument("--seed", type=int, default=0, help="Seed of a new snapshot's split.")
        parser.add_argument(
            "--validation-fraction", type=float, default=0.2,
            help="Fraction of patients a new snapshot sets aside for validation (0 to 0.9).",
        )
        base = parser.add_mutually_exclusive_group()
        base.add_argument(
            "--checkpoint", default="",
            help="SAM checkpoint (.pth) to start from; default: the configured one.",
        )
        base.add_argument(
            "--base-version", type=int,
            help="Id of a succeeded model version to continue from; its mpp and crop size "
            "become the defaults.",
        )
        parser.add_argument("--epochs", type=int, help="Epochs; overrides --config-json.")
        parser.add_argument("--config-json", default="{}", help="TrainingConfig fields as JSON.")
        parser.add_argument("--mpp", type=float, help="Working resolution of the crops in um/px.")
        parser.add_argument("--crop-px", type=int, help="Side of the crops in working pixels.")
        parser.add_argument("--name", default="", help="Name of the model version.")

    def handle(self, *args, **options):
        try:
            overrides = json.loads(options["config_json"])
        except json.JSONDecodeError as exc:
            raise CommandError(f"--config-json is not valid JSON: {exc}") from None
        if not isinstance(overrides, dict):
            raise CommandError(f"--config-json is {overrides!r}, expected a JSON object.")
        if options["epochs"] is not None:
            overrides["epochs"] = options["epochs"]
        try:
            # One transaction, so a setting that start_training rejects never leaves a new
            # snapshot behind. The base version is checked before the snapshot is taken.
            with transaction.atomic():
                base_version = None
                if options["base_version"] is not None:
                    base_version = self._base_version(options["base_version"])
                    services.check_base_version(base_version, options["checkpoint"])
                if options["new_snapshot"]:
                    snapshot = snapshots.build_snapshot(
                        None, seed=options["seed"],
                        validation_fraction=options["validation_fraction"],
                    )
                else:
                    snapshot = self._snapshot(options["snapshot"])
                version = services.start_training(
                    snapshot, None, base_checkpoint=options["checkpoint"],
                    config_overrides=overrides, base_version=base_version, name=options["name"],
                    mpp=options["mpp"], crop_px=options["crop_px"], enqueue=False,
                )
        except NephrowebError as exc:
            raise CommandError(str(exc)) from None
        if options["new_snapshot"]:
            self.stdout.write(
                f"snapshot {snapshot.pk}: {sum(snapshot.class_counts.values())} annotations, "
                f"{len(snapshot.train_patients)} train and "
                f"{len(snapshot.validation_patients)} validation patients"
            )

        version = services.execute_training(
            version.pk, owner=f"manage.py train:{os.getpid()}", on_epoch=self._print_epoch
        )
        if version.status != ModelVersion.Status.SUCCEEDED:
            raise CommandError(
                f"Model version {version.pk} {version.status}: {version.message}", returncode=1
            )
        self.stdout.write(
            f"model version {version.pk} succeeded: best epoch {version.best_epoch}, "
            f"weights {version.weights_path}"
        )

    def _snapshot(self, snapshot_id):
        try:
            return TrainingSnapshot.objects.get(pk=snapshot_id)
        except TrainingSnapshot.DoesNotExist:
            raise CommandError(f"Snapshot {snapshot_id} does not exist.") from None

    def _base_version(self, version_id):
        try:
            return ModelVersion.objects.get(pk=version_id)
        except ModelVersion.DoesNotExist:
            raise CommandError(
                f"--base-version {version_id}: model version does not exist."
            ) from None

    def _print_epoch(self, record):
        values = ", ".join(
            f"{key} {value:.4g}" for key, value in record.items() if key != "epoch"
        )
        self.stdout.write(f"epoch {record['epoch']}: {values}")
