"""REST framework hooks shared by every app."""

import logging

from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from ml.errors import NephrowebError

logger = logging.getLogger(__name__)


def exception_handler(exc, context):
    """Turn user-facing errors into responses with their message.

    The status is the error's ``status_code`` (400 unless it sets one) and the body adds
    the error's ``extra`` dict, e.g. the current state of an object after a conflict.
    """
    if isinstance(exc, NephrowebError):
        logger.info("Rejected request: %s", exc)
        body = {"detail": str(exc), **getattr(exc, "extra", {})}
        return Response(body, status=getattr(exc, "status_code", 400))
    return drf_exception_handler(exc, context)
