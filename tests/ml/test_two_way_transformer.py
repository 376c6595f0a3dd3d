"""The shared-image transformer gives Meta's outputs for many prompts on one image."""

import pytest
import torch
from segment_anything.modeling import TwoWayTransformer

from ml.two_way_transformer import forward_shared_image


def _inputs(width: int, grid: int, prompts: int, tokens: int, seed: int):
    generator = torch.Generator().manual_seed(seed)
    image = torch.randn(1, width, grid, grid, generator=generator)
    pe = torch.randn(1, width, grid, grid, generator=generator)
    points = torch.randn(prompts, tokens, width, generator=generator)
    return image, pe, points


def _randomised(transformer: TwoWayTransformer, seed: int) -> TwoWayTransformer:
    """Give every parameter, biases and norms included, a random value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in transformer.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.2)
    return transformer.eval()


@pytest.mark.parametrize(
    ("width", "heads", "mlp", "depth", "grid", "prompts", "tokens"),
    [
        (256, 8, 2048, 2, 64, 5, 7),  # SAM's decoder at the official 64 x 64 grid
        (32, 2, 64, 2, 16, 9, 5),  # the tiny test model; 5 tokens as in the class-aware decoder
        (32, 4, 64, 3, 8, 3, 6),  # a third block: shared keys only in the first
        (32, 4, 64, 0, 8, 3, 6),  # no block: the image stays shared to the end
    ],
)
def test_outputs_equal_the_repeated_image(width, heads, mlp, depth, grid, prompts, tokens):
    torch.manual_seed(0)
    transformer = _randomised(
        TwoWayTransformer(depth=depth, embedding_dim=width, num_heads=heads, mlp_dim=mlp), 1
    )
    image, pe, points = _inputs(width, grid, prompts, tokens, seed=2)

    with torch.no_grad():
        expected_tokens, expected_image = transformer(
            image.expand(prompts, -1, -1, -1), pe.expand(prompts, -1, -1, -1), points
        )
        got_tokens, got_image = forward_shared_image(transformer, image, pe, points)

    assert got_tokens.shape == expected_tokens.shape == (prompts, tokens, width)
    assert got_image.shape == expected_image.shape == (prompts, grid * grid, width)
    # Layer norms bring both outputs to unit scale, so an absolute bound is meaningful.
    assert torch.allclose(got_tokens, expected_tokens, atol=2e-4, rtol=0)
    assert torch.allclose(got_image, expected_image, atol=2e-4, rtol=0)
    # Not trivially equal: prompts change the image tokens by far more than the tolerance.
    if depth:
        assert (got_image[0] - got_image[1]).abs().max() > 0.01


def test_more_than_one_image_is_refused():
    transformer = TwoWayTransformer(depth=1, embedding_dim=32, num_heads=2, mlp_dim=64)
    image, pe, points = _inputs(32, 4, 2, 3, seed=0)
    with pytest.raises(ValueError, match="must each hold one image"):
        forward_shared_image(transformer, image.expand(2, -1, -1, -1), pe, points)
