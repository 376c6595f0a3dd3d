"""``manage.py import_reports FILE``: set report IFTA % of slides and patients from a CSV.

Columns: patient, report_ifta_pct (0-100), and optionally section and cohort (see
docs/dashboard.md). All rows are imported or none. Exit status 0 on success, 2 on bad
input with the reasons on stderr.
"""

from django.core.management.base import BaseCommand, CommandError

from apps.analysis.reports import ReportError, import_reports


class Command(BaseCommand):
    help = "Import pathology report IFTA % per section or patient from a CSV file."

    def add_arguments(self, parser):
        parser.add_argument(
            "file",
            help="CSV with the columns patient, report_ifta_pct (0-100) and optionally "
            "section and cohort.",
        )

    def handle(self, *args, **options):
        try:
            result = import_reports(options["file"])
        except ReportError as exc:
            raise CommandError(str(exc), returncode=2) from exc
        self.stdout.write(
            f"imported {result.file_name}: {result.slide_reports} section reports, "
            f"{result.patient_reports} patient reports"
        )
