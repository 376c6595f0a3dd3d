"""The 404 response: under /api/ a JSON body like the API's own errors, elsewhere the page.

DRF views return their own 404s as JSON. This handler returns the others: paths that
match no route (e.g. a letter where the path needs an integer id) and the Http404 of the
plain image views under /api/.
"""

from django.http import JsonResponse
from django.urls import Resolver404
from django.views import defaults


def page_not_found(request, exception):
    """Return a JSON 404 with a ``detail`` message for /api/ paths, else the HTML page."""
    if not request.path.startswith("/api/"):
        return defaults.page_not_found(request, exception)
    if isinstance(exception, Resolver404) or not exception.args:
        detail = (
            f"No API endpoint or object matches {request.path}. /api/schema/ lists the "
            "paths and the types of their parameters."
        )
    else:
        detail = str(exception)
    return JsonResponse({"detail": detail}, status=404)
