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


def create_instance_record(slide, geometry_level0, class_name, state="accepted", source="drawn"):
    """Create an Instance row from a level-0 shapely polygon, accepted and drawn unless given."""
    from apps.annotations.geometry import instance_row

    row = instance_row(
        geometry_level0, slide=slide, mpp=slide.mpp, source=source, review_state=state,
        class_name=class_name,
    )
    row.save()
    return row


# Two tiles per class, the first by file name in each KI PAS folder of scale index 1.
KI_MOSAIC_CLASS_MAP = {"pt": "proximal tubule", "dt": "distal tubule", "vessel": "vessel"}
KI_MOSAIC_TILES_PER_CLASS = 2


@pytest.fixture(scope="session")
def ki_mosaic(shared_data, tmp_path_factory):
    """Write a small mosaic TIFF of real KI PAS tiles once per session and return it.

    Six 256 px tiles of scale index 1 (about 1 µm/px, an estimate because KI records no
    pixel size) in a 3 x 2 grid with 16 px of glass: 832 x 560 px. The two proximal
    tubule tiles contain 33 instances, the two distal tubule tiles 20 and the two vessel
    tiles 2. The returned ``ml.tile_mosaic.TileMosaic`` gives ``path``, ``mpp``,
    ``instances`` (level-0 polygons with classes) and ``tiles`` (grid position -> source
    tile), and ``geojson_path`` has the instances as QuPath GeoJSON. Other structures in
    a tile are not annotated, because each KI tile has a mask for one class only.
    """
    from collections import defaultdict

    from ml.tile_dataset import read_tile_dataset
    from ml.tile_mosaic import compose_mosaic, write_tile_mosaic

    dataset = read_tile_dataset(
        shared_data / "kidney_tiles" / "omniseg_KI", class_map=KI_MOSAIC_CLASS_MAP, stains=["pas"]
    )
    by_class = defaultdict(list)
    for sample in sorted(dataset.samples, key=lambda sample: str(sample.image_path)):
        by_class[sample.class_name].append(sample)
    chosen = [
        sample
        for samples in by_class.values()
        for sample in samples[:KI_MOSAIC_TILES_PER_CLASS]
    ]
    layout = compose_mosaic(chosen)
    path = tmp_path_factory.mktemp("ki_mosaic") / "ki_pas_mosaic.tiff"
    return write_tile_mosaic(layout, path)
