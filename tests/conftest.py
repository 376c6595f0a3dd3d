"""Fixtures shared by all test packages."""

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Return the read-only real test data folder, ``../shared/data`` beside the checkout."""
    return Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The test Redis database (``make test`` sets REDIS_URL), emptied once per session.

    Only that numbered database is flushed, so stale tasks from an earlier session cannot
    reach this session's worker.
    """
    import os

    import redis

    url = os.environ.get("REDIS_URL", "")
    if not url:
        pytest.skip("REDIS_URL is not set; run the tests with `make test`.")
    redis.Redis.from_url(url).flushdb()
    return url


@pytest.fixture
def make_user(db):
    """Create a user in one of the roles (annotator, pathologist, admin) or in none."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    def make(role: str | None, username: str | None = None, password: str = "pw-for-tests-1"):
        user = get_user_model().objects.create_user(
            username=username or f"{role or 'norole'}-user", password=password
        )
        if role:
            user.groups.add(Group.objects.get(name=role))
        return user

    return make


@pytest.fixture
def client_for(client, make_user):
    """A Django test client signed in as a new user of the given role."""

    def signed_in(role: str | None):
        user = make_user(role)
        client.force_login(user)
        return client

    return signed_in


def create_slide_record(name="synthetic", width_px=4000, height_px=3000, mpp=0.5, **fields):
    """Create a Slide row without a file, for tests of review, import and export rules."""
    from apps.slides.models import Slide

    fields.setdefault("file_path", f"/nonexistent/{name}.tiff")
    return Slide.objects.create(
        name=name, original_filename=f"{name}.tiff", origin=Slide.Origin.IMPORT,
        width_px=width_px, height_px=height_px, mpp=mpp, mpp_source="given",
        bounds_w_level0=width_px, bounds_h_level0=height_px, **fields,
    )
