"""REST framework hooks shared by every app."""

import logging

from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from ml.errors import NephrowebError

logger = logging.getLogger(__name__)


def exception_handler(exc, context):
    """Turn user-facing errors from ``ml`` into 400 responses with their message."""
    if isinstance(exc, NephrowebError):
        logger.info("Rejected request: %s", exc)
        return Response({"detail": str(exc)}, status=400)
    return drf_exception_handler(exc, context)
