"""Routes of the evaluation pages and API."""

urlpatterns: list = []
