"""EfficientNet-Lite0 encoder option: published weights, output shape, frozen batch norm."""

from __future__ import annotations

import pytest
import torch

from ml.class_aware import build_class_aware_sam
from ml.efficientnet_lite import (
    OUTPUT_CHANNELS,
    EfficientNetLite0Encoder,
    efficientnet_architecture,
    load_imagenet_state_dict,
    use_efficientnet_encoder,
)
from ml.errors import SettingsError
from ml.sam import TINY_TEST


@pytest.fixture(scope="module")
def imagenet_state():
    return load_imagenet_state_dict()


def test_published_weights_load_strictly(imagenet_state):
    encoder = EfficientNetLite0Encoder()
    encoder.load_state_dict(imagenet_state, strict=True)
    stem = imagenet_state["stem.0.weight"]
    assert tuple(stem.shape) == (32, 3, 3, 3)
    assert not torch.equal(encoder.stem[0].weight, torch.zeros_like(stem))


def test_embedding_fits_decoder_grid(imagenet_state):
    model = build_class_aware_sam(efficientnet_architecture(256), ["a", "b"])
    use_efficientnet_encoder(model, imagenet_state)
    images = torch.full((2, 3, 256, 256), 128.0)
    with torch.no_grad():
        embeddings = model.embed_images(images)
    assert tuple(embeddings.shape) == (2, OUTPUT_CHANNELS, 16, 16)
    # Layer-normalised over channels at every position.
    assert embeddings.mean(dim=1).abs().max() < 1e-4


def test_batch_norm_stays_in_eval_mode(imagenet_state):
    encoder = EfficientNetLite0Encoder()
    encoder.load_state_dict(imagenet_state)
    encoder.train()
    running_mean = encoder.stem[1].running_mean.clone()
    encoder(torch.randn(2, 3, 64, 64))
    assert torch.equal(encoder.stem[1].running_mean, running_mean)
    assert encoder.training


def test_vit_architecture_is_rejected(imagenet_state):
    model = build_class_aware_sam(TINY_TEST, ["a"])
    with pytest.raises(SettingsError, match="efficientnet_architecture"):
        use_efficientnet_encoder(model, imagenet_state)
