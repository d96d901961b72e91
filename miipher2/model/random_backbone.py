"""Randomly initialised encoders saved like hub checkpoints, for tests, CPU demos and timing.

Model hubs are unreachable in CI, yet the loading code must be the real one. A directory
written here is what `FeatureCleaner.from_pretrained(directory, preset)` reads from a hub
download: config.json, model.safetensors, preprocessor_config.json.

size="full" uses the released checkpoints' architecture values (typed in from their
config.json) so timing and FLOP counts are those of the real models; size="tiny" keeps the
architecture family but shrinks every width (TINY_LAYERS layers; use feature_layer <= that).

size="small" (w2v-BERT 2.0 only) is the random encoder the CPU learning run trains on: its
features must keep the signal, since nothing was learnt that could replace it. w2v-BERT's input
is a filter bank (80 log-mel bands, two frames stacked: 160 numbers per 20 ms), and a random
residual stack over it keeps that linearly recoverable when it is wider than its input (256 >
160), shallow (SMALL_LAYERS = 2) and its depthwise convolutions short (kernel 5, not 31: random
kernels smear each frame over their whole width). docs/training.md has the measurements.
"""

from __future__ import annotations

from pathlib import Path

import torch

TINY_LAYERS = 4
TINY_FEATURE_LAYER = 2
SMALL_LAYERS = 2
SIZES = ("tiny", "small", "full")

_TINY_CONV = {"conv_dim": (16,) * 7, "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4}
_TINY_TRANSFORMER = {"hidden_size": 32, "num_hidden_layers": TINY_LAYERS, "num_attention_heads": 2, "intermediate_size": 64}


def architecture(preset: str, size: str = "full"):
    """(config, transformers model class, feature extractor) of a preset at `size`."""
    import transformers as tf

    tiny = size == "tiny"
    if preset == "w2v-bert-2.0":
        # facebook/w2v-bert-2.0: 24 x 1024, 16 heads, FFN 4096, depthwise kernel 31, relative_key positions
        values = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                      feature_projection_input_dim=160, hidden_act="swish", conv_depthwise_kernel_size=31,
                      position_embeddings_type="relative_key", left_max_position_embeddings=64,
                      right_max_position_embeddings=8, add_adapter=False)
        if tiny:
            values.update(_TINY_TRANSFORMER, conv_depthwise_kernel_size=5, left_max_position_embeddings=8, right_max_position_embeddings=2)
        if size == "small":
            values.update(hidden_size=256, num_hidden_layers=SMALL_LAYERS, num_attention_heads=4, intermediate_size=1024,
                          conv_depthwise_kernel_size=5)
        return tf.Wav2Vec2BertConfig(**values), tf.Wav2Vec2BertModel, tf.SeamlessM4TFeatureExtractor()
    if size == "small":
        raise ValueError(f"size 'small' exists for w2v-bert-2.0 only, not {preset!r}")
    if preset in ("mhubert-147", "hubert-large"):
        if preset == "mhubert-147":  # HuBERT base: 12 x 768, post-LN, group-norm CNN
            values = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                          feat_extract_norm="group", do_stable_layer_norm=False, conv_bias=False)
            extractor = tf.Wav2Vec2FeatureExtractor(do_normalize=False, return_attention_mask=False)
        else:  # facebook/hubert-large-ll60k: 24 x 1024, pre-LN, layer-norm CNN
            values = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                          feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
            extractor = tf.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
        if tiny:
            values.update(_TINY_TRANSFORMER, **_TINY_CONV)
        return tf.HubertConfig(**values), tf.HubertModel, extractor
    if preset == "wavlm-large":  # microsoft/wavlm-large: 24 x 1024, pre-LN, gated relative position bias
        values = dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                      feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=False)
        if tiny:
            values.update(_TINY_TRANSFORMER, **_TINY_CONV, num_buckets=32, max_bucket_distance=80)
        return tf.WavLMConfig(**values), tf.WavLMModel, tf.Wav2Vec2FeatureExtractor(do_normalize=True, return_attention_mask=True)
    if preset == "usm":  # Gemma 3n audio encoder: 12 x 1536 Conformer, 8 heads
        values = dict(hidden_size=1536, conf_num_hidden_layers=12, conf_num_attention_heads=8)
        if tiny:
            values.update(hidden_size=32, conf_num_hidden_layers=TINY_LAYERS, conf_num_attention_heads=2, sscp_conv_channel_size=(8, 4))
        return tf.Gemma3nAudioConfig(**values), tf.Gemma3nAudioEncoder, tf.Gemma3nAudioFeatureExtractor()
    raise ValueError(f"no random-backbone recipe for preset {preset!r}")


def save_random_backbone(directory: str | Path, preset: str, size: str = "tiny", seed: int = 0) -> Path:
    """Write a randomly initialised `preset` encoder to `directory`; returns the directory."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    config, model_class, extractor = architecture(preset, size)
    torch.manual_seed(seed)
    model = model_class(config).eval()
    directory = Path(directory)
    model.save_pretrained(directory)
    extractor.save_pretrained(directory)
    return directory
