"""SAM's two-way transformer and mask upscaling for many prompts on one image.

``segment_anything``'s ``TwoWayTransformer`` takes one copy of the image embedding per
prompt, so every prompt pays for the same projections of 4096 image tokens. This module
computes the same outputs from a single copy:

- Before the first block updates them, the image tokens are the same for every prompt,
  so their projections in the first token-to-image and image-to-token attention are
  computed once.
- Later, the image tokens differ per prompt, but a prompt has only a few tokens (7 for
  SAM's point prompts). So the attention over image tokens is rewritten: each large
  matrix product multiplies (prompt tokens x channels) by (channels x image tokens),
  never (image tokens x channels) by (channels x channels). The forms are
  ``softmax(q Wk X^T)`` and ``(A X) Wv^T``. They are exact because ``A`` sums to 1 over
  image tokens, and because a key bias shifts each row of the logits by a constant.

Per prompt on a 64 x 64 embedding of width 256, the matrix work drops from about 1.3 to
0.4 GMAC (counted from the layer sizes), and the image embedding is never copied per prompt. ``upscale_image_tokens``
runs the decoder's upscaling on the transformer's token layout without a transposed
copy. The outputs equal Meta's to float32 rounding (tests/ml/test_two_way_transformer.py).

Callers should pass prompts in chunks of ``prompts_per_chunk``. glibc's mmap threshold
stops growing at 32 MB on 64-bit systems, so every larger block gets fresh pages from the
kernel, and on a CPU their first-touch faults cost more than the arithmetic. An add of 16 x 4096 x 256 float32 values took 34 ms in one
piece and 5 ms in chunks of 6 prompts (one thread, measured here).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from segment_anything.modeling.common import LayerNorm2d
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock, TwoWayTransformer
from torch import nn

# Largest per-prompt tensor of one chunk, below glibc's largest mmap threshold (32 MB).
CHUNK_BYTES = 24 * 2**20


def prompts_per_chunk(bytes_per_prompt: int) -> int:
    """Return how many prompts keep a tensor of ``bytes_per_prompt`` each within CHUNK_BYTES."""
    return max(1, CHUNK_BYTES // max(1, bytes_per_prompt))


def upscale_image_tokens(
    upscaling: nn.Sequential, image_tokens: torch.Tensor, grid_hw: tuple[int, int]
) -> torch.Tensor:
    """Apply SAM's ``output_upscaling`` to (B, H*W, C) transformer image tokens.

    The tokens are viewed as a channels-last (B, C, H, W) image, and ``LayerNorm2d`` runs
    as ``F.layer_norm`` over the channels of that layout, so no transposed copy is made.
    Any other layout of ``upscaling`` runs as it is.
    """
    batch, _, channels = image_tokens.shape
    height, width = grid_hw
    image = image_tokens.reshape(batch, height, width, channels).permute(0, 3, 1, 2)
    layers = list(upscaling)
    if len(layers) != 5 or not isinstance(layers[1], LayerNorm2d):
        return upscaling(image.contiguous())
    up_conv1, norm, activation1, up_conv2, activation2 = layers
    image = up_conv1(image)
    normalised = F.layer_norm(
        image.permute(0, 2, 3, 1), (image.shape[1],), norm.weight, norm.bias, norm.eps
    )
    return activation2(up_conv2(activation1(normalised.permute(0, 3, 1, 2))))


def forward_shared_image(
    transformer: TwoWayTransformer,
    image_embedding: torch.Tensor,
    image_pe: torch.Tensor,
    point_embedding: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``transformer`` for B prompts on one image, as ``transformer(image x B, pe x B, points)``.

    Args:
        image_embedding: (1, C, H, W) image embedding, dense prompt embedding included;
            the same for every prompt.
        image_pe: (1, C, H, W) positional encoding of the embedding grid.
        point_embedding: (B, N, C) output and prompt tokens of B prompts.

    Returns:
        (B, N, C) processed tokens and (B, H*W, C) processed image tokens.
    """
    if image_embedding.shape[0] != 1 or image_pe.shape[0] != 1:
        raise ValueError(
            f"image_embedding {tuple(image_embedding.shape)} and image_pe "
            f"{tuple(image_pe.shape)} must each hold one image."
        )
    image = image_embedding.flatten(2)[0].transpose(0, 1)
    pe = image_pe.flatten(2)[0].transpose(0, 1)

    queries, keys = point_embedding, image
    for block in transformer.layers:
        queries, keys = _attention_block(block, queries, keys, point_embedding, pe)

    attended = _tokens_to_image(
        transformer.final_attn_token_to_image, queries + point_embedding, keys + pe, keys
    )
    queries = transformer.norm_final_attn(queries + attended)
    if keys.dim() == 2:
        keys = keys.expand(point_embedding.shape[0], -1, -1)
    return queries, keys


def _attention_block(
    block: TwoWayAttentionBlock,
    queries: torch.Tensor,
    keys: torch.Tensor,
    query_pe: torch.Tensor,
    key_pe: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run one ``TwoWayAttentionBlock``. ``keys`` is (L, C) when shared, else (B, L, C)."""
    if block.skip_first_layer_pe:
        queries = block.self_attn(q=queries, k=queries, v=queries)
    else:
        positioned = queries + query_pe
        queries = queries + block.self_attn(q=positioned, k=positioned, v=queries)
    queries = block.norm1(queries)

    positioned_keys = keys + key_pe
    attended = _tokens_to_image(
        block.cross_attn_token_to_image, queries + query_pe, positioned_keys, keys
    )
    queries = block.norm2(queries + attended)
    queries = block.norm3(queries + block.mlp(queries))

    attended = _image_to_tokens(
        block.cross_attn_image_to_token, positioned_keys, queries + query_pe, queries
    )
    return queries, block.norm4(keys + attended)


def _tokens_to_image(
    attention: Attention, tokens: torch.Tensor, image_k: torch.Tensor, image_v: torch.Tensor
) -> torch.Tensor:
    """``attention(q=tokens, k=image_k, v=image_v)`` for (B, N, C) tokens.

    ``image_k`` and ``image_v`` are (L, C) when shared by all prompts, else (B, L, C).
    """
    batch, token_count, _ = tokens.shape
    heads = attention.num_heads
    head_dim = attention.internal_dim // heads
    # Scaling the few token queries is cheaper than scaling the logits over image tokens.
    q = attention.q_proj(tokens).reshape(batch, token_count, heads, head_dim) / math.sqrt(head_dim)

    if image_k.dim() == 2:
        k = attention.k_proj(image_k).reshape(-1, heads, head_dim).permute(1, 2, 0)
        v = attention.v_proj(image_v).reshape(-1, heads, head_dim).transpose(0, 1)
        q = q.permute(2, 0, 1, 3).reshape(heads, batch * token_count, head_dim)
        weights = torch.softmax(q @ k, dim=-1)
        out = (weights @ v).reshape(heads, batch, token_count, head_dim).permute(1, 2, 0, 3)
    else:
        # The key bias adds the same value to every logit of a row, which softmax ignores.
        k_weight = attention.k_proj.weight.reshape(heads, head_dim, -1)
        q_in_image_space = torch.einsum("bnhd,hdc->bhnc", q, k_weight).flatten(1, 2)
        logits = q_in_image_space @ image_k.transpose(1, 2)
        weights = torch.softmax(logits, dim=-1)
        # Each row of weights sums to 1, so weighting before the value projection is the same.
        weighted_image = (weights @ image_v).reshape(batch, heads, token_count, -1)
        v_weight = attention.v_proj.weight.reshape(heads, head_dim, -1)
        out = torch.einsum("bhnc,hdc->bnhd", weighted_image, v_weight)
        out = out + attention.v_proj.bias.reshape(heads, head_dim)
    return attention.out_proj(out.reshape(batch, token_count, heads * head_dim))


def _image_to_tokens(
    attention: Attention, image_q: torch.Tensor, tokens_k: torch.Tensor, tokens_v: torch.Tensor
) -> torch.Tensor:
    """``attention(q=image_q, k=tokens_k, v=tokens_v)`` as (B, L, C).

    ``image_q`` is (L, C) when shared by all prompts, else (B, L, C); the tokens are
    (B, N, C).
    """
    batch, token_count, _ = tokens_k.shape
    heads = attention.num_heads
    head_dim = attention.internal_dim // heads
    k = attention.k_proj(tokens_k).reshape(batch, token_count, heads, head_dim)
    k = k / math.sqrt(head_dim)
    v = attention.v_proj(tokens_v).reshape(batch, token_count, heads, head_dim)

    # Logits are laid out (B, heads, N, L): softmax over a middle axis of a few tokens is
    # several times faster than over a last axis of that size.
    if image_q.dim() == 2:
        q = attention.q_proj(image_q).reshape(-1, heads, head_dim).permute(1, 2, 0)
        logits = k.permute(2, 0, 1, 3).reshape(heads, batch * token_count, head_dim) @ q
        logits = logits.reshape(heads, batch, token_count, -1).transpose(0, 1)
    else:
        q_weight = attention.q_proj.weight.reshape(heads, head_dim, -1)
        keys_in_image_space = torch.einsum("hdc,bnhd->bhnc", q_weight, k).flatten(1, 2)
        bias = torch.einsum("hd,bnhd->bhn", attention.q_proj.bias.reshape(heads, head_dim), k)
        logits = torch.baddbmm(
            bias.reshape(batch, heads * token_count, 1),
            keys_in_image_space,
            image_q.transpose(1, 2),
        )
        logits = logits.reshape(batch, heads, token_count, -1)
    weights = torch.softmax(logits, dim=2).reshape(batch, heads * token_count, -1)

    # Project each head's values to the output width first: (B, heads x N, C).
    out_weight = attention.out_proj.weight.reshape(-1, heads, head_dim)
    projected_values = torch.einsum("bnhd,chd->bhnc", v, out_weight).flatten(1, 2)
    return torch.baddbmm(
        attention.out_proj.bias.expand(batch, 1, -1), weights.transpose(1, 2), projected_values
    )
