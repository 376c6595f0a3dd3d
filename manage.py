#!/usr/bin/env python
"""Django's command-line utility for nephroweb."""

import os
import sys


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "nephroweb.settings")
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import execute_from_command_line

    try:
        # The settings module refuses an unsafe or invalid configuration. Print its reason
        # in one line, not at the end of a traceback through Django's loader.
        settings.INSTALLED_APPS
    except ImproperlyConfigured as exc:
        sys.exit(f"nephroweb: configuration refused: {exc}")
    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
