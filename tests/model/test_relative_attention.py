"""The gather form of Wav2Vec2-BERT's relative-key attention bias against a hand computation."""

import torch
from transformers import Wav2Vec2BertConfig
from transformers.models.wav2vec2_bert import modeling_wav2vec2_bert
from transformers.models.wav2vec2_bert.modeling_wav2vec2_bert import Wav2Vec2BertSelfAttention

from miipher2.model.relative_attention import install, relative_key_position_bias


def _attention(left: int = 5, right: int = 2) -> Wav2Vec2BertSelfAttention:
    config = Wav2Vec2BertConfig(hidden_size=16, num_attention_heads=2, position_embeddings_type="relative_key",
                                left_max_position_embeddings=left, right_max_position_embeddings=right)
    torch.manual_seed(0)
    return Wav2Vec2BertSelfAttention(config).eval()


def test_bias_matches_a_pairwise_hand_computation_including_clamped_distances():
    module = _attention(left=5, right=2)
    query, key = torch.randn(2, 2, 12, 8), torch.randn(2, 2, 12, 8)  # 12 frames: both clamps reached
    _, bias = relative_key_position_bias(module, query, key)
    table = module.distance_embedding.weight
    by_hand = torch.empty(2, 2, 12, 12)
    for q in range(12):
        for k in range(12):
            row = min(max(k - q, -5), 2) + 5  # distances beyond the window share the edge vector
            by_hand[:, :, q, k] = (query[:, :, q] * table[row]).sum(-1) * module.head_size**-0.5
    torch.testing.assert_close(bias, by_hand, rtol=1e-5, atol=1e-6)


def test_installed_attention_layer_gives_the_same_output_and_gradients():
    module = _attention(left=5, right=2)
    hidden = torch.randn(1, 20, 16, requires_grad=True)
    install()
    assert modeling_wav2vec2_bert._apply_relative_key_position_encoding is relative_key_position_bias
    out, _ = module(hidden)
    out.sum().backward()
    # The same layer by hand, its bias as a per-pair lookup of distance vectors (no gather):
    # softmax(q k^T / sqrt(d) + q . E[clamp(k - q)] / sqrt(d)) v, then the output projection.
    reference = hidden.detach().clone().requires_grad_(True)
    split = lambda x: x.view(1, 20, 2, 8).transpose(1, 2)  # noqa: E731
    q, k, v = (split(layer(reference)) for layer in (module.linear_q, module.linear_k, module.linear_v))
    distance = (torch.arange(20)[None, :] - torch.arange(20)[:, None]).clamp(-5, 2) + 5
    bias = torch.einsum("bhld,lrd->bhlr", q, module.distance_embedding.weight[distance]) * module.scaling
    weights = torch.softmax(q @ k.transpose(-1, -2) * module.scaling + bias, -1)
    expected = module.linear_out((weights @ v).transpose(1, 2).reshape(1, 20, 16))
    expected.sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hidden.grad, reference.grad, rtol=1e-5, atol=1e-6)
