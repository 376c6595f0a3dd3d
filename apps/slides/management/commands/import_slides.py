"""``manage.py import_slides PATH... [--mpp F] [--cohort NAME] [--patient ID] [--section N] [--report-ifta F]``

Prints one line per slide: its new id, or why it was rejected, and any warning found on
import. A file already imported from the same path is not imported again; its line gives
the existing id. Exit status 0 when all were imported, 1 when any was rejected (the
others are still imported).
"""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.slides.models import Slide
from apps.slides.services import import_slide
from ml.errors import NephrowebError


class Command(BaseCommand):
    help = "Import whole-slide image files by path (the files stay where they are)."

    def add_arguments(self, parser):
        parser.add_argument("paths", nargs="+", help="Slide files (any format OpenSlide opens).")
        parser.add_argument("--mpp", type=float, help="Microns per pixel, for files without one.")
        parser.add_argument("--cohort", default="", help="Study or cohort of the slides.")
        parser.add_argument("--patient", default="", help="Patient identifier.")
        parser.add_argument("--section", type=int, help="Section number within the biopsy.")
        parser.add_argument("--report-ifta", type=float, help="IFTA %% from the pathology report.")

    def handle(self, *args, **options):
        rejected = 0
        for path in options["paths"]:
            existing = Slide.objects.filter(file_path=str(Path(path).resolve())).first()
            if existing is not None:
                self.stdout.write(f"already imported {path}: slide {existing.pk}")
                continue
            try:
                slide = import_slide(
                    path,
                    mpp=options["mpp"],
                    cohort=options["cohort"],
                    patient_id=options["patient"],
                    section=options["section"],
                    report_ifta_pct=options["report_ifta"],
                )
            except NephrowebError as exc:
                rejected += 1
                reason = str(exc)
                self.stderr.write(f"rejected: {reason}" if path in reason else f"rejected {path}: {reason}")
                continue
            self.stdout.write(
                f"imported {path}: slide {slide.pk}, {slide.width_px}x{slide.height_px} px, "
                f"{slide.mpp:.4f} mpp ({slide.mpp_source})"
            )
            for warning in slide.warnings:
                self.stderr.write(f"warning {path}: {warning}")
        if rejected:
            raise CommandError(
                f"{rejected} of {len(options['paths'])} slides were rejected.", returncode=1
            )
