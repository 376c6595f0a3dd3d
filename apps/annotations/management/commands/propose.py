"""``manage.py propose SLIDE_ID [--checkpoint PATH] [--sam-type vit_b]``

Runs SAM proposals on one slide in this process (no web server or worker needed) with
the same code as the background task, then prints the per-stage counts. Exit status 1
when the run fails; the reason is printed on stderr.
"""

import json
import os

from django.core.management.base import BaseCommand, CommandError

from apps.annotations import services
from apps.annotations.models import ProposalRun
from apps.slides.models import Slide
from ml.errors import NephrowebError


class Command(BaseCommand):
    help = "Compute SAM proposals for one slide and store them."

    def add_arguments(self, parser):
        parser.add_argument("slide_id", type=int)
        parser.add_argument("--checkpoint", default="", help="Path of a SAM checkpoint (.pth).")
        parser.add_argument("--sam-type", choices=["vit_b", "vit_l", "vit_h"], default=None)
        parser.add_argument("--points-per-side", type=int, help="Prompt grid per tile side.")
        parser.add_argument("--settings-json", default="{}", help="Other proposal settings as JSON.")

    def handle(self, *args, **options):
        try:
            slide = Slide.objects.get(pk=options["slide_id"])
        except Slide.DoesNotExist:
            raise CommandError(f"Slide {options['slide_id']} does not exist.") from None
        try:
            overrides = json.loads(options["settings_json"])
        except json.JSONDecodeError as exc:
            raise CommandError(f"--settings-json is not valid JSON: {exc}") from None
        if not isinstance(overrides, dict):
            raise CommandError(
                f"--settings-json is {overrides!r}, expected a JSON object of proposal settings."
            )
        if options["points_per_side"] is not None:
            overrides["points_per_side"] = options["points_per_side"]
        try:
            run = services.start_proposal_run(
                slide, sam_type=options["sam_type"], overrides=overrides, enqueue=False
            )
        except NephrowebError as exc:
            raise CommandError(str(exc)) from None
        run = services.execute_proposal_run(
            run.pk, owner=f"manage.py propose:{os.getpid()}", checkpoint_path=options["checkpoint"]
        )
        if run.status != ProposalRun.Status.SUCCEEDED:
            # A run cancelled through the API while this command ran ends here too.
            raise CommandError(f"Proposal run {run.pk} {run.status}: {run.message}", returncode=1)
        self.stdout.write(f"proposal run {run.pk} on slide {slide.pk}: {run.tiles_total} tiles")
        for key, value in run.counts.items():
            self.stdout.write(f"  {key}: {value}")
