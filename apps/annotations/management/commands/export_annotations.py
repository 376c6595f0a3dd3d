"""``manage.py export_annotations SLIDE_ID -o FILE``: QuPath GeoJSON of the slide's
instances (rejected ones left out unless --include-rejected)."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.annotations.geojson import export_feature_collection
from apps.annotations.models import Instance
from apps.slides.models import Slide


class Command(BaseCommand):
    help = "Export a slide's instances as a GeoJSON FeatureCollection that QuPath imports."

    def add_arguments(self, parser):
        parser.add_argument("slide_id", type=int)
        parser.add_argument("-o", "--output", required=True, help="File to write (.geojson).")
        parser.add_argument("--include-rejected", action="store_true")

    def handle(self, *args, **options):
        try:
            slide = Slide.objects.get(pk=options["slide_id"])
        except Slide.DoesNotExist:
            raise CommandError(f"Slide {options['slide_id']} does not exist.", returncode=1) from None
        instances = Instance.objects.filter(slide=slide).order_by("id")
        if not options["include_rejected"]:
            instances = instances.exclude(review_state=Instance.ReviewState.REJECTED)
        output = Path(options["output"])
        partial = output.with_name(output.name + ".part")
        partial.write_text(export_feature_collection(instances.iterator()), encoding="utf-8")
        partial.replace(output)
        self.stdout.write(f"wrote {instances.count()} objects of slide {slide.pk} to {output}")
