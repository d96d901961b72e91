"""Wav2Vec2-BERT's relative-key attention bias without the [T, T, head] embedding tensor.

transformers computes the bias as `einsum("bhld,lrd->bhlr", query, distance_embedding(distance))`:
it first looks up one head-size vector per (query, key) pair, a [T, T, 64] tensor (64 MB per
layer for a 10 s clip, 0.6 GB for 30 s), then contracts it. There are only
left + right + 1 = 73 distinct distances, so the same numbers come from scoring each query
against the 73 distance vectors ([B, H, T, 73]) and gathering each pair's entry: measured on a
10 s clip (bench/restore_rtf.py) the w2v-BERT 2.0 cleaner spent ~20 % of its time in the
lookup and contraction, and training keeps that tensor for the backward pass.
"""

from __future__ import annotations

import torch


def relative_key_position_bias(module, query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop-in for transformers' `_apply_relative_key_position_encoding`: (query, bias [B, H, Tq, Tk])."""
    left, right = module.left_max_position_embeddings, module.right_max_position_embeddings
    positions_q = torch.arange(query.shape[2], device=query.device)
    positions_k = torch.arange(key.shape[2], device=query.device)
    distance_index = (positions_k[None, :] - positions_q[:, None]).clamp(-left, right) + left
    per_distance = (query * module.scaling) @ module.distance_embedding.weight.to(query.dtype).T
    bias = per_distance.gather(-1, distance_index.expand(*query.shape[:2], -1, -1))
    return query, bias


def install() -> None:
    """Route every Wav2Vec2-BERT attention layer of this process through the gather form (idempotent:
    same results to float rounding, tests/model/test_relative_attention.py)."""
    from transformers.models.wav2vec2_bert import modeling_wav2vec2_bert  # only once an encoder is built

    if hasattr(modeling_wav2vec2_bert, "_apply_relative_key_position_encoding"):
        modeling_wav2vec2_bert._apply_relative_key_position_encoding = relative_key_position_bias
