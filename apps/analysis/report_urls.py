"""Routes of the report pages and API."""

urlpatterns: list = []
