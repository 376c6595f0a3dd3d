"""Logging filters that keep the server log readable."""

import logging

from django.core.exceptions import PermissionDenied


class RefusalWithoutTraceback(logging.Filter):
    """Log a refused request (403 for want of a right) in one line, without its traceback.

    Django's request logger attaches the PermissionDenied traceback to every 403 page, so
    each refusal filled about 20 lines of the server log that said nothing new.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], PermissionDenied):
            record.exc_info = None
            record.exc_text = None
        return True
