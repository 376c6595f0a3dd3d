"""``manage.py import_tile_dataset DIR [--stain S ...] [--output-dir PATH]
[--patient-prefix P] [--user NAME]``

Writes one mosaic slide per (stain, scale index) group of a KI-layout tile dataset and
imports its instances as accepted annotations. Prints one line per slide (id, size, mpp)
and its instances per class; a slide from an earlier import is reported, not duplicated.
Folders and files left out go to stderr. Exit status 0 after an import, 1 when the
folder cannot be read (the message names the folder or file) or a slide fails (slides
imported before it stay).
"""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from apps.annotations.tile_datasets import import_tile_dataset
from ml.errors import NephrowebError


class Command(BaseCommand):
    help = (
        "Import a tile dataset (image + binary mask per class, KI layout) as mosaic slides "
        "with accepted annotations."
    )

    def add_arguments(self, parser):
        parser.add_argument("dir", help="Dataset folder with <k>_<s>_<name>/<stain>/ folders.")
        parser.add_argument(
            "--stain", action="append", dest="stains", metavar="STAIN",
            help="Stain folder to import (pas, he, sil, tri in KI); repeat for more. "
            "Default: all.",
        )
        parser.add_argument(
            "--output-dir",
            help="Folder for the mosaic TIFFs. Default: NEPHROWEB_DATA_DIR/tile_datasets/<name>.",
        )
        parser.add_argument(
            "--patient-prefix", default="",
            help="Text put before the dataset folder name to form the patient id of its slides.",
        )
        parser.add_argument(
            "--user", help="Username recorded as reviewer and on the import events.",
        )

    def handle(self, *args, **options):
        user = None
        if options["user"]:
            try:
                user = get_user_model().objects.get(username=options["user"])
            except get_user_model().DoesNotExist:
                raise CommandError(
                    f"User {options['user']!r} does not exist.", returncode=1
                ) from None
        try:
            result = import_tile_dataset(
                options["dir"],
                stains=options["stains"],
                output_dir=options["output_dir"],
                patient_prefix=options["patient_prefix"],
                user=user,
            )
        except NephrowebError as exc:
            raise CommandError(str(exc), returncode=1) from None

        for skipped in result.skipped_folders:
            self.stderr.write(f"skipped folder {skipped.path}: {skipped.reason}")
        for path in result.unpaired_files:
            self.stderr.write(f"not read {path}: not a PNG, or no partner image or mask")
        for item in result.slides:
            slide = item.slide
            status = "imported" if item.created else "already imported"
            mpp_note = " (estimate)" if item.mpp_is_estimate else ""
            self.stdout.write(
                f"{status} slide {slide.pk} {slide.name!r}: {slide.width_px}x{slide.height_px} px, "
                f"{slide.mpp:.4f} mpp{mpp_note}, {item.tile_count} tiles, {slide.file_path}"
            )
            for class_name, count in item.instances_per_class.items():
                self.stdout.write(f"  {class_name}: {count}")
