"""Fixtures for tests of the Django apps: a tiny SAM checkpoint and fast proposal settings."""

import pytest

from tests.sam_factory import save_tiny_checkpoint

# Few prompts and no quality thresholds: the tiny random SAM then returns some masks per
# tile, enough to exercise every filter, the merge and storage in seconds.
FAST_PROPOSALS = {
    "mpp": 1.0,
    "points_per_side": 4,
    "pred_iou_thresh": 0.0,
    "stability_score_thresh": 0.0,
    "min_area_um2": 50.0,
}

# The same for segmentation runs of a tiny class-aware model (NEPHROWEB_SEGMENTATION).
FAST_SEGMENTATION = {
    "points_per_side": 4, "points_per_batch": 16, "min_predicted_iou": 0.0,
    "min_class_probability": 0.0,
}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("checkpoints") / "tiny_sam.pth")


# IFTA settings with the convex hull, whose areas tests can compute by hand.
CONVEX_IFTA = {"cluster_distance_um": 50.0, "min_tubules": 3, "hull": "convex", "concave_ratio": 0.3}


@pytest.fixture
def convex(settings):
    settings.NEPHROWEB_IFTA = dict(CONVEX_IFTA)
    return settings


@pytest.fixture
def fast_proposals(settings, tiny_checkpoint):
    settings.NEPHROWEB_PROPOSALS = dict(FAST_PROPOSALS)
    settings.NEPHROWEB_SAM_CHECKPOINT = str(tiny_checkpoint)
    return settings
