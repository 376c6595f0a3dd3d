"""URL map: pages, the REST API under /api/ and the admin."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from drf_spectacular.views import SpectacularJSONAPIView

from apps.accounts.permissions import has_perm
from apps.accounts.signin import SignInView

handler404 = "nephroweb.error_pages.page_not_found"

urlpatterns = [
    # The OpenAPI schema of /api/ as JSON, for the same users as the slide list.
    path(
        "api/schema/",
        SpectacularJSONAPIView.as_view(permission_classes=[has_perm("slides.view_slide")]),
        name="api-schema",
    ),
    path("login/", SignInView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("", include("apps.slides.urls")),
    path("", include("apps.annotations.urls")),
    path("", include("apps.review.urls")),
    path("", include("apps.training.urls")),
    path("", include("apps.analysis.urls")),
    path("", include("apps.accounts.urls")),
]
