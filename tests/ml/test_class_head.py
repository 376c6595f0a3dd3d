"""Changing the classes of a class-aware SAM: rows copied by name, new rows seeded.

The model is the tiny random SAM of tests/sam_factory.py (image_size 256, decoder width
32), so the tests compare exact tensor values, never segmentation quality.
"""

from __future__ import annotations

import pytest
import torch

from ml.class_aware import from_sam, trainable_parameter_names
from ml.class_head import change_classes
from ml.errors import SettingsError
from ml.model_files import ClassAwareMetadata, ClassSpec, load_class_aware, save_class_aware
from ml.sam import TINY_TEST
from tests.sam_factory import make_tiny_sam

OLD_CLASSES = ("glomerulus", "vessel", "old class")
NEW_CLASSES = ("proximal tubule", "vessel", "glomerulus")
GRID = TINY_TEST.embedding_grid_size
EMBEDDING_SHAPE = (1, TINY_TEST.prompt_embed_dim, GRID, GRID)


def _model(class_names=OLD_CLASSES):
    torch.manual_seed(5)
    model, _ = from_sam(make_tiny_sam(), class_names)
    return model


def _class_logits(model):
    generator = torch.Generator().manual_seed(11)
    embeddings = torch.randn(EMBEDDING_SHAPE, generator=generator)
    coords = torch.tensor([[[40.0, 60.0]], [[200.0, 120.0]]])
    labels = torch.ones(2, 1)
    with torch.no_grad():
        return model(
            image_embeddings=embeddings, point_coords=coords, point_labels=labels
        ).class_logits


def _output_layer(model):
    return model.mask_decoder.class_prediction_head.layers[-1]


def test_kept_classes_keep_their_rows_and_logits():
    model = _model()
    old_layer = _output_layer(model)
    old_weight = old_layer.weight.detach().clone()
    old_bias = old_layer.bias.detach().clone()
    old_logits = _class_logits(model)

    change = change_classes(model, NEW_CLASSES, seed=0)

    assert change.kept == ("vessel", "glomerulus")
    assert change.added == ("proximal tubule",)
    assert change.dropped == ("old class",)
    assert change.changed
    assert model.class_names == NEW_CLASSES
    assert model.mask_decoder.num_classes == 3
    new_layer = _output_layer(model)
    assert new_layer.weight.shape == (3, old_layer.in_features)
    assert torch.equal(new_layer.weight[1], old_weight[1])
    assert torch.equal(new_layer.weight[2], old_weight[0])
    assert torch.equal(new_layer.bias[1], old_bias[1])
    assert torch.equal(new_layer.bias[2], old_bias[0])
    new_logits = _class_logits(model)
    assert new_logits.shape == (2, 3)
    assert torch.equal(new_logits[:, 1], old_logits[:, 1])
    assert torch.equal(new_logits[:, 2], old_logits[:, 0])


def test_new_rows_follow_the_seed():
    first = _model()
    second = _model()
    third = _model()
    torch.manual_seed(123)
    state = torch.random.get_rng_state()

    change_classes(first, NEW_CLASSES, seed=4)
    change_classes(second, NEW_CLASSES, seed=4)
    change_classes(third, NEW_CLASSES, seed=5)

    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(_output_layer(first).weight[0], _output_layer(second).weight[0])
    assert not torch.equal(_output_layer(first).weight[0], _output_layer(third).weight[0])


def test_same_classes_leave_the_model_untouched():
    model = _model()
    layer = _output_layer(model)

    change = change_classes(model, OLD_CLASSES, seed=0)

    assert _output_layer(model) is layer
    assert change.kept == OLD_CLASSES
    assert not change.changed


def test_reordering_moves_rows():
    model = _model()
    old_weight = _output_layer(model).weight.detach().clone()

    change = change_classes(model, tuple(reversed(OLD_CLASSES)), seed=0)

    assert not change.changed
    assert torch.equal(_output_layer(model).weight, old_weight.flip(0))


def test_changed_head_trains_and_saves(tmp_path):
    model = _model()
    change_classes(model, NEW_CLASSES, seed=0)

    assert "mask_decoder.class_prediction_head.layers.2.weight" in trainable_parameter_names(model)
    metadata = ClassAwareMetadata(
        classes=tuple(ClassSpec(name, "#00ff00") for name in NEW_CLASSES),
        architecture=model.architecture, mpp=1.0, tile_px=256,
    )
    path = tmp_path / "changed.safetensors"
    save_class_aware(model, path, metadata)
    loaded, loaded_metadata = load_class_aware(path)
    assert loaded.class_names == NEW_CLASSES
    assert loaded_metadata.class_names == NEW_CLASSES
    assert torch.equal(_output_layer(loaded).weight, _output_layer(model).weight)


@pytest.mark.parametrize(
    ("class_names", "message"),
    [((), "class_names is empty"), (("vessel", "vessel"), "contains duplicates")],
)
def test_bad_class_list_is_rejected(class_names, message):
    model = _model()
    with pytest.raises(SettingsError, match=message):
        change_classes(model, class_names)
    assert model.class_names == OLD_CLASSES
