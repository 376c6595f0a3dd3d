"""``manage.py setup_demo [--slide PATH] [--mpp F] [--no-model] [--no-cohort]``: a demo
user, a slide to look at, a model to segment it with and a cohort for the dashboard.

Creates the user ``demo`` in the admin role (or resets its password), writes the
password to the data folder and prints it. Imports ``--slide``, or a generated sample
slide without it. With the sample slide, its known objects become reviewed annotations
and a model version is queued for training on them (apps/training/demo_model.py), unless
``--no-model`` is given. Unless ``--no-cohort`` is given, it also adds the synthetic
cohort of apps/analysis/demo_cohort.py (ten small sections of five patients, reviewed,
with report values). Running it again does not import the same file twice nor queue a
second model.
"""

import secrets
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand, CommandError

from apps.accounts.roles import ADMIN
from apps.slides.models import Slide
from apps.slides.services import import_slide
from ml.errors import NephrowebError

DEMO_USERNAME = "demo"


class Command(BaseCommand):
    help = "Create the demo user and import a slide for the one-command demo."

    def add_arguments(self, parser):
        parser.add_argument("--slide", default="", help="A slide to import instead of the sample.")
        parser.add_argument("--mpp", type=float, help="Microns per pixel, for files without one.")
        parser.add_argument(
            "--no-model", action="store_true",
            help="Do not queue the demo model's training on the sample slide.",
        )
        parser.add_argument(
            "--no-cohort", action="store_true",
            help="Do not add the synthetic demo cohort (ten reviewed sections, report values).",
        )

    def handle(self, *args, **options):
        password = self._ensure_user()
        slide, truth = self._ensure_slide(options["slide"], options["mpp"])
        self.stdout.write(f"demo user: {DEMO_USERNAME}  password: {password}")
        self.stdout.write(f"slide {slide.pk}: {slide.name} ({slide.width_px}x{slide.height_px} px)")
        if slide.origin == Slide.Origin.SAMPLE and not options["no_model"]:
            self._ensure_model(slide, truth)
        if not options["no_cohort"]:
            self._ensure_cohort()

    def _ensure_cohort(self) -> None:
        from apps.analysis.demo_cohort import DEMO_COHORT, ensure_demo_cohort

        user = get_user_model().objects.get(username=DEMO_USERNAME)
        try:
            slides = ensure_demo_cohort(user)
        except NephrowebError as exc:
            raise CommandError(f"Could not add the demo cohort: {exc}") from None
        self.stdout.write(
            f"demo cohort: {len(slides)} reviewed sections in cohort {DEMO_COHORT!r} (Dashboard)"
        )

    def _ensure_model(self, slide, truth) -> None:
        from apps.training.demo_model import ensure_demo_model

        user = get_user_model().objects.get(username=DEMO_USERNAME)
        try:
            version = ensure_demo_model(slide, user, truth)
        except NephrowebError as exc:
            raise CommandError(f"Could not queue the demo model: {exc}") from None
        if version.status == version.Status.SUCCEEDED:
            self.stdout.write(f"demo model: version {version.pk} ({version.name}) is trained")
        else:
            self.stdout.write(
                f"demo model: version {version.pk} ({version.name}) is {version.status}; the "
                "worker trains it on the sample slide in a few minutes (Training page)"
            )

    def _ensure_user(self) -> str:
        password_file = Path(settings.DATA_DIR) / "demo-password"
        if password_file.exists():
            password = password_file.read_text().strip()
        else:
            password = secrets.token_urlsafe(9)
            password_file.parent.mkdir(parents=True, exist_ok=True)
            password_file.write_text(password)
            password_file.chmod(0o600)
        user, _ = get_user_model().objects.get_or_create(username=DEMO_USERNAME)
        user.set_password(password)
        user.is_staff = True  # the admin role uses the admin site to give users roles
        user.save()
        user.groups.add(Group.objects.get(name=ADMIN))
        return password

    def _ensure_slide(self, slide_path: str, mpp):
        """Return the slide, and the sample's truth when this call wrote the sample (else None)."""
        truth = None
        if slide_path:
            path = Path(slide_path).resolve()
            origin = Slide.Origin.IMPORT
        else:
            from ml.sample_slide import write_sample_slide

            path = Path(settings.MEDIA_ROOT) / "samples" / "sample-kidney-section.tiff"
            origin = Slide.Origin.SAMPLE
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                truth = write_sample_slide(path)
        existing = Slide.objects.filter(file_path=str(path)).first()
        if existing is not None:
            return existing, truth
        try:
            return import_slide(path, mpp=mpp, origin=origin, patient_id="demo"), truth
        except NephrowebError as exc:
            raise CommandError(str(exc)) from None
