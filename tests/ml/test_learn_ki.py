"""The KI learnability benchmark's data and metric path, on real KI tiles, without training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.learn_ki import (
    CLASS_NAMES,
    SECTION_TITLE,
    innermost_point_xy,
    metrics_summary,
    prior_disc_predictions,
    split_covering_classes,
    to_training_sample,
    truth_instances,
    update_docs,
)
from ml.evaluation import EvaluationInstance, evaluate_instances
from ml.tile_dataset import read_tile_dataset


@pytest.fixture(scope="module")
def pas_tiles(shared_data: Path):
    return read_tile_dataset(shared_data / "kidney_tiles" / "omniseg_KI", stains=["pas"]).samples


def test_split_holds_out_every_class(pas_tiles):
    split = split_covering_classes(pas_tiles, CLASS_NAMES, 0)
    held_classes = {tile.class_name for tile in split.held_out}
    train_sources = {tile.source_id for tile in split.train}
    held_sources = {tile.source_id for tile in split.held_out}
    assert held_classes == set(CLASS_NAMES)
    assert not train_sources & held_sources
    assert len(split.train) + len(split.held_out) == len(pas_tiles)


def test_innermost_point_of_square_is_centre():
    mask = np.zeros((20, 30), dtype=bool)
    mask[4:15, 10:21] = True
    assert innermost_point_xy(mask) == (15.5, 9.5)


def test_training_sample_keeps_instances(pas_tiles):
    tile = next(tile for tile in pas_tiles if tile.class_name == "proximal tubule")
    sample = to_training_sample(tile, CLASS_NAMES)
    assert sample.num_instances == len(tile.instances)
    assert set(sample.class_indices.tolist()) == {CLASS_NAMES.index("proximal tubule")}
    assert sample.instance_masks.sum() == sum(instance.area_px for instance in tile.instances)


def test_truth_as_predictions_scores_one(pas_tiles):
    split = split_covering_classes(pas_tiles, CLASS_NAMES, 0)
    truth = truth_instances(split.held_out)
    predictions = [
        EvaluationInstance(item.image_id, item.class_name, mask=item.mask, score=1.0)
        for item in truth
    ]
    summary = metrics_summary(evaluate_instances(truth, predictions, CLASS_NAMES))
    assert summary["map50"] == 1.0
    assert summary["map"] == 1.0


def test_prior_disc_is_below_perfect(pas_tiles):
    split = split_covering_classes(pas_tiles, CLASS_NAMES, 0)
    truth = truth_instances(split.held_out)
    predictions = prior_disc_predictions(split.train, split.held_out, CLASS_NAMES)
    summary = metrics_summary(evaluate_instances(truth, predictions, CLASS_NAMES))
    assert len(predictions) == len(truth) * len(CLASS_NAMES)
    assert 0.0 < summary["map50"] < 0.6
    assert summary["map"] < summary["map50"]


def test_docs_section_is_replaced_in_place(tmp_path):
    docs = tmp_path / "benchmarks.md"
    docs.write_text(
        f"# Benchmarks\n\n## Other\n\nkeep\n\n{SECTION_TITLE}\n\nold numbers\n\n## Later\n\nalso keep\n",
        encoding="utf-8",
    )
    update_docs(docs, f"{SECTION_TITLE}\n\nnew numbers\n")
    text = docs.read_text(encoding="utf-8")
    assert "old numbers" not in text
    assert "new numbers" in text
    assert text.index("## Other") < text.index(SECTION_TITLE) < text.index("## Later")
    assert "also keep" in text
