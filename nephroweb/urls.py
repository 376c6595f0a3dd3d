"""URL map: pages, the REST API under /api/ and the admin."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

urlpatterns = [
    path("login/", auth_views.LoginView.as_view(), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("admin/", admin.site.urls),
    path("", include("apps.slides.urls")),
    path("", include("apps.annotations.urls")),
    path("", include("apps.review.urls")),
    path("", include("apps.training.urls")),
    path("", include("apps.analysis.urls")),
    path("", include("apps.accounts.urls")),
]
