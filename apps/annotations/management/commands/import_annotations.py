"""``manage.py import_annotations SLIDE_ID FILE [--map NAME=CLASS ...]``

Prints what was imported per class, and what was left out and why. Exit status 0 after
an import, 1 when nothing was imported (unreadable file, unmapped class names, or every
object left out or outside the slide).
"""

from django.core.management.base import BaseCommand, CommandError

from apps.annotations.importing import (
    UnknownClassesError,
    import_annotations,
    nothing_imported_message,
)
from apps.slides.models import Slide
from ml.annotation_files import read_annotation_file
from ml.errors import NephrowebError


def parse_mapping(pairs: list[str]) -> dict[str, str]:
    mapping = {}
    for pair in pairs:
        if "=" not in pair:
            raise CommandError(f"--map {pair!r} must look like 'NAME=CLASS' (or 'NAME=' to leave out).")
        name, target = pair.split("=", 1)
        mapping[name] = target.strip()
    return mapping


class Command(BaseCommand):
    help = "Import a QuPath GeoJSON, ASAP XML or Aperio XML annotation file onto a slide."

    def add_arguments(self, parser):
        parser.add_argument("slide_id", type=int)
        parser.add_argument("file")
        parser.add_argument(
            "--map", action="append", default=[], metavar="NAME=CLASS",
            help="Map a class name of the file to a configured class; 'NAME=' leaves it out.",
        )

    def handle(self, *args, **options):
        try:
            slide = Slide.objects.get(pk=options["slide_id"])
        except Slide.DoesNotExist:
            raise CommandError(f"Slide {options['slide_id']} does not exist.", returncode=1) from None
        mapping = parse_mapping(options["map"])
        try:
            annotations = read_annotation_file(options["file"])
            report = import_annotations(slide, annotations, user=None, mapping=mapping)
        except UnknownClassesError as exc:
            hint = " Use --map 'NAME=CLASS' for each, or --map 'NAME=' to leave them out."
            raise CommandError(str(exc) + hint, returncode=1) from None
        except NephrowebError as exc:
            raise CommandError(str(exc), returncode=1) from None
        self.stdout.write(
            f"imported {report.created} objects from {report.source} ({report.file_format}) "
            f"onto slide {slide.pk}"
        )
        for class_name, count in report.created_per_class.items():
            self.stdout.write(f"  {class_name}: {count}")
        for class_name, count in report.left_out_by_mapping.items():
            self.stdout.write(f"  left out by mapping: {class_name}: {count}")
        if report.clipped:
            self.stdout.write(f"  clipped to the slide: {report.clipped}")
        if report.repaired:
            self.stdout.write(f"  repaired (self-intersecting): {report.repaired}")
        if report.approximated_splines:
            self.stdout.write(f"  splines stored as polygons: {report.approximated_splines}")
        for index, reason in report.skipped:
            self.stderr.write(f"  not imported: object {index}: {reason}")
        if report.created == 0:
            raise CommandError(nothing_imported_message(report), returncode=1)
