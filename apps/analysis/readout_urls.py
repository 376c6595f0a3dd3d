"""Routes of the readout pages and API."""

urlpatterns: list = []
