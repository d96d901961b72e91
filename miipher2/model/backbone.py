"""The Miipher-2 feature cleaner: a frozen SSL speech encoder, cut at its feature layer, with a
parallel adapter beside the feed-forward block of every layer up to it.

USM (the paper's encoder) is not public, so presets name public stand-ins that transformers
loads from a hub id or a local directory. Each preset's feature layer keeps the paper's choice of
a layer ~40 % up the stack (13 of USM's 32): low enough to keep speaker, prosody and acoustic
detail the vocoder needs, high enough to be abstracted from noise and channel.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from miipher2.model import relative_attention
from miipher2.model.adapters import AdapterBank
from miipher2.model.frontends import Gemma3nLogMel, KaldiFbank, WaveNormalizer

SAMPLE_RATE = 16000
# Version of the numbers `FeatureCleaner` computes for a given encoder and wave. Bump it whenever a
# change to the frontends or to how padding is handled changes features: the feature cache keys on it.
# 2: padded batch items get exactly their solo features in every family.
FEATURES_VERSION = 2


@dataclass(frozen=True)
class BackbonePreset:
    hub_id: str
    family: str  # key of FAMILIES: how transformers builds, feeds and truncates the model
    model_class: str  # transformers class name
    num_layers: int  # encoder depth of the released checkpoint
    feature_layer: int  # default layer whose output is cleaned and vocoded (1-based)
    why: str


BACKBONE_PRESETS: dict[str, BackbonePreset] = {
    # Conformer like USM, 600M, 4.5M h in 143+ languages, MIT: the closest public analogue.
    "w2v-bert-2.0": BackbonePreset(
        "facebook/w2v-bert-2.0", "w2v-bert", "Wav2Vec2BertModel", 24, 10,
        "13/32 of the depth (paper) -> 10 of 24; w2v-BERT's top layers specialise in its MLM targets",
    ),
    # 95M HuBERT base, 147 languages. A public Miipher-2 reimplementation (Atotti/miipher-2)
    # compared layers 4, 6 and 9 of this model and kept 6 as its default.
    "mhubert-147": BackbonePreset(
        "utter-project/mHuBERT-147", "hubert", "HubertModel", 12, 6,
        "13/32 of 12 is 5; layer 6 is what the public reimplementation settled on for this model",
    ),
    "wavlm-large": BackbonePreset(
        "microsoft/wavlm-large", "wavlm", "WavLMModel", 24, 10,
        "13/32 of the depth -> 10 of 24; SUPERB layer weights put content and speaker both mid-stack",
    ),
    "hubert-large": BackbonePreset(
        "facebook/hubert-large-ll60k", "hubert", "HubertModel", 24, 10,
        "13/32 of the depth -> 10 of 24",
    ),
    # Gemma 3n's audio encoder is USM-based (gated licence). Its 12 layers are wider than USM's
    # 32; 13/32 of 12 is 4.9 -> 5.
    "usm": BackbonePreset(
        "google/gemma-3n-E2B-it", "gemma3n-audio", "Gemma3nAudioEncoder", 12, 5,
        "13/32 of the depth -> 5 of 12 (the paper's own ratio, on the USM-based encoder)",
    ),
}


class _Family:
    """How one transformers model family is fed, truncated and adapted."""

    feature_extractor_class: str

    def prepare(self, model: nn.Module) -> None:
        """Adjust the loaded encoder: independent of batch padding where it is not already, and
        cheaper where the same numbers can be had for less."""

    def layers(self, model: nn.Module) -> nn.ModuleList: ...
    def truncate(self, model: nn.Module, n: int) -> None: ...
    def feed_forward(self, layer: nn.Module) -> nn.Module: ...
    def frontend(self, feature_extractor) -> nn.Module: ...
    def hop_length(self, model: nn.Module, feature_extractor) -> int: ...
    def receptive_field(self, model: nn.Module, feature_extractor) -> int: ...
    def encode(self, model: nn.Module, inputs: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...


class _ConvFrontEndFamily(_Family):
    """HuBERT and WavLM: CNN feature encoder on raw waves, then a Transformer."""

    feature_extractor_class = "Wav2Vec2FeatureExtractor"

    def prepare(self, model):
        first = model.feature_extractor.conv_layers[0]
        if isinstance(getattr(first, "layer_norm", None), nn.GroupNorm):  # HuBERT-base style ("group")
            first.layer_norm = ValidFramesGroupNorm.replacing(first.layer_norm)

    def layers(self, model):
        return model.encoder.layers

    def truncate(self, model, n):
        model.encoder.layers = model.encoder.layers[:n]
        model.config.num_hidden_layers = n
        if model.config.do_stable_layer_norm:
            # Pre-LN encoders normalise only after the last layer; hidden_states[n] is taken before it.
            model.encoder.layer_norm = nn.Identity()

    def feed_forward(self, layer):
        return layer.feed_forward

    def frontend(self, feature_extractor):
        return WaveNormalizer(feature_extractor)

    def hop_length(self, model, feature_extractor):
        return math.prod(model.config.conv_stride)

    def receptive_field(self, model, feature_extractor):
        field, jump = 1, 1
        for kernel, stride in zip(model.config.conv_kernel, model.config.conv_stride):
            field, jump = field + (kernel - 1) * jump, jump * stride
        return field

    def encode(self, model, inputs, mask):
        lengths = mask.sum(1)
        first = model.feature_extractor.conv_layers[0]
        norm = getattr(first, "layer_norm", None)
        with ValidFramesGroupNorm.frames(norm, (lengths - first.conv.kernel_size[0]) // first.conv.stride[0] + 1):
            hidden = model(input_values=inputs, attention_mask=mask.long()).last_hidden_state
        frames = model._get_feat_extract_output_lengths(lengths)
        return hidden, torch.arange(hidden.shape[1], device=hidden.device)[None, :] < frames[:, None]


class ValidFramesGroupNorm(nn.GroupNorm):
    """GroupNorm over time whose statistics cover each item's valid frames only.

    HuBERT-base-style CNN encoders (mHuBERT-147; wav2vec 2.0 and WavLM base) normalise the first
    convolution's output per channel over the whole sequence. In a padded batch a shorter item's
    mean and variance would include its padding, and the `attention_mask` cannot help: the CNN
    never sees it. While `frames(...)` is active the statistics are the item's own, so a padded
    item gets its solo features; every later layer reads only valid frames of valid frames (no
    padding in the convolutions, and the transformer zeroes padded positions and masks attention).
    The cost is a few element-wise passes over the first layer's output, with no per-item loop.
    """

    valid_frames: torch.Tensor | None = None

    @classmethod
    def replacing(cls, norm: nn.GroupNorm) -> ValidFramesGroupNorm:
        masked = cls(norm.num_groups, norm.num_channels, norm.eps, norm.affine)
        masked.load_state_dict(norm.state_dict())  # same keys, same weights: the checkpoint is unchanged
        return masked.to(next(norm.parameters(), torch.empty(0)).device)

    @staticmethod
    @contextmanager
    def frames(norm: nn.Module | None, valid_frames: torch.Tensor) -> Iterator[None]:
        """Use `valid_frames` [B] for one forward pass (a no-op for other norms)."""
        if not isinstance(norm, ValidFramesGroupNorm):
            yield
            return
        norm.valid_frames = valid_frames
        try:
            yield
        finally:
            norm.valid_frames = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, time = x.shape
        if self.valid_frames is None or bool((self.valid_frames >= time).all()):
            return super().forward(x)  # no padding (one item, equal lengths): the fused kernel
        # Statistics over valid frames; then one multiply-add per element (x * scale + shift) in
        # place of subtract, divide, scale and shift: on a 10 s clip the first layer's output has
        # 16 M values, and each pass over it costs as much as a transformer layer's matmuls.
        groups = x.float().reshape(batch, self.num_groups, channels // self.num_groups, time)
        mask = (torch.arange(time, device=x.device)[None, :] < self.valid_frames[:, None]).float()[:, None, None, :]
        count = mask.sum(-1, keepdim=True).clamp_min(1) * groups.shape[2]
        mean = (groups * mask).sum((2, 3), keepdim=True) / count
        var = ((groups - mean).square() * mask).sum((2, 3), keepdim=True) / count
        scale = torch.rsqrt(var + self.eps).expand(-1, -1, groups.shape[2], -1).reshape(batch, channels, 1)
        shift = -mean.expand(-1, -1, groups.shape[2], -1).reshape(batch, channels, 1) * scale
        if self.affine:
            scale, shift = scale * self.weight[:, None], shift * self.weight[:, None] + self.bias[:, None]
        return torch.addcmul(shift, x.float(), scale).to(x.dtype)


class _W2vBertFamily(_Family):
    """Wav2Vec2-BERT: Kaldi fbank pairs into a macaron Conformer (FFN/2, MHSA, conv, FFN/2).

    The adapter sits beside the second feed-forward module: it runs last in the layer, after
    attention and convolution have gathered context, so the correction it learns is applied to
    what the layer outputs (USM, also a macaron Conformer, gets the same treatment).
    """

    feature_extractor_class = "SeamlessM4TFeatureExtractor"

    def prepare(self, model):
        relative_attention.install()  # same numbers, without a [T, T, 64] tensor per layer

    def layers(self, model):
        return model.encoder.layers

    def truncate(self, model, n):
        model.encoder.layers = model.encoder.layers[:n]
        model.config.num_hidden_layers = n
        model.intermediate_ffn = None  # heads applied after the last layer, not part of layer n
        model.adapter = None

    def feed_forward(self, layer):
        return layer.ffn2

    def frontend(self, feature_extractor):
        return KaldiFbank(feature_extractor)

    def hop_length(self, model, feature_extractor):
        return KaldiFbank.HOP * feature_extractor.stride

    def receptive_field(self, model, feature_extractor):
        return KaldiFbank.FRAME + (feature_extractor.stride - 1) * KaldiFbank.HOP

    def encode(self, model, inputs, mask):
        return model(input_features=inputs, attention_mask=mask.long()).last_hidden_state, mask


class _Gemma3nAudioFamily(_Family):
    """Gemma 3n's USM-based audio encoder: log-mel, 2-D conv subsampling (4x), Conformer blocks
    whose feed-forward modules include their own residual; the adapter goes beside the last one."""

    feature_extractor_class = "Gemma3nAudioFeatureExtractor"

    def layers(self, model):
        return model.conformer

    def truncate(self, model, n):
        model.conformer = model.conformer[:n]
        model.config.conf_num_hidden_layers = n
        # The 4x time reduction is applied after the last block only; layer n's output has none.
        model.config.conf_reduction_factor = 1

    def feed_forward(self, layer):
        return layer.ffw_layer_end

    def frontend(self, feature_extractor):
        return Gemma3nLogMel(feature_extractor)

    def _time_strides(self, model):
        return [stride[0] for stride in model.config.sscp_conv_stride_size]

    def hop_length(self, model, feature_extractor):
        return feature_extractor.hop_length * math.prod(self._time_strides(model))

    def receptive_field(self, model, feature_extractor):
        frames, jump = 1, 1
        for kernel, stride in zip((k[0] for k in model.config.sscp_conv_kernel_size), self._time_strides(model)):
            frames, jump = frames + (kernel - 1) * jump, jump * stride
        return feature_extractor.frame_length + (frames - 1) * feature_extractor.hop_length

    def encode(self, model, inputs, mask):
        """Gemma3nAudioEncoder.forward with padding kept out of the subsampling convolutions.

        Its convolutions look ahead (time padding (0, k - 1)) and transformers feeds them the
        batch's padding frames, where a solo run sees zeros; so the mel frames and the first
        block's output are zeroed past each item's valid frames. Each block maps n valid frames
        to ceil(n / stride). The conformer blocks mask padding themselves.
        """
        sscp = model.subsample_conv_projection
        valid = mask.sum(1)
        x = inputs.masked_fill(~mask[..., None], 0.0).unsqueeze(1)  # [B, 1, T, mel]
        for index, block in enumerate((sscp.conv_0, sscp.conv_1)):
            x = block(x)
            valid = -(-valid // block.conv.stride[0])
            if index == 0:
                x = x * (torch.arange(x.shape[2], device=x.device)[None, :] < valid[:, None])[:, None, :, None]
        batch, channels, time, freq = x.shape
        hidden = sscp.input_proj_linear(x.permute(0, 2, 3, 1).reshape(batch, time, freq * channels))
        frame_mask = torch.arange(time, device=x.device)[None, :] < valid[:, None]
        for block in model.conformer:
            hidden = block(hidden, ~frame_mask)  # the encoder's mask is True on padding
        return hidden, frame_mask


FAMILIES: dict[str, _Family] = {
    "hubert": _ConvFrontEndFamily(),
    "wavlm": _ConvFrontEndFamily(),
    "w2v-bert": _W2vBertFamily(),
    "gemma3n-audio": _Gemma3nAudioFamily(),
}


class FeatureCleaner(nn.Module):
    """Frozen SSL encoder truncated at `feature_layer`, with a parallel adapter in every layer.

    forward(wave [B, T] at 16 kHz, lengths [B]) -> (features [B, F, D], frame_lengths [B]).
    Frame f describes input samples [f * hop_length, (f + 1) * hop_length): the wave is padded
    on both sides by half the excess of the frontend's receptive field over its hop, so frames
    are centred on their hop and F is about T / hop_length.
    """

    sample_rate = SAMPLE_RATE

    def __init__(self, encoder: nn.Module, feature_extractor, preset: str, feature_layer: int, adapter_dim: int = 1024, source: str | None = None):
        super().__init__()
        self.source = source  # hub id or directory the encoder came from, recorded in model directories
        # The hub commit the weights came from (None for a local directory): recorded beside the source.
        self.revision: str | None = getattr(encoder.config, "_commit_hash", None)
        if preset not in BACKBONE_PRESETS:
            raise ValueError(f"unknown backbone preset {preset!r}; choose from {sorted(BACKBONE_PRESETS)}")
        self.preset = preset
        self.family = FAMILIES[BACKBONE_PRESETS[preset].family]
        depth = len(self.family.layers(encoder))
        if not 1 <= feature_layer <= depth:
            raise ValueError(f"feature_layer={feature_layer} is outside 1..{depth} for this {preset} encoder")
        self.feature_layer, self.adapter_dim = feature_layer, adapter_dim

        self.family.truncate(encoder, feature_layer)  # layers above the feature layer are never computed
        self.family.prepare(encoder)
        encoder.requires_grad_(False)
        self.encoder = encoder.eval()
        self.frontend = self.family.frontend(feature_extractor)
        self.hop_length = self.family.hop_length(encoder, feature_extractor)
        self.input_padding = max(0, self.family.receptive_field(encoder, feature_extractor) - self.hop_length) // 2
        self.feature_dim = int(encoder.config.hidden_size)
        hosts = [self.family.feed_forward(layer) for layer in self.family.layers(encoder)]
        self.adapters = AdapterBank(hosts, self.feature_dim, adapter_dim)

    @classmethod
    def from_pretrained(cls, source: str, preset: str = "w2v-bert-2.0", feature_layer: int | None = None, adapter_dim: int = 1024,
                        revision: str | None = None) -> FeatureCleaner:
        """Load the frozen encoder from a hub id (at `revision`, a commit or tag, when given) or a
        local directory; adapters start untrained."""
        if preset not in BACKBONE_PRESETS:
            raise ValueError(f"unknown backbone preset {preset!r}; choose from {sorted(BACKBONE_PRESETS)}")
        spec = BACKBONE_PRESETS[preset]
        family = FAMILIES[spec.family]
        hub = {"revision": revision} if revision else {}
        encoder = _load_encoder(source, spec, hub)
        feature_extractor = _load_feature_extractor(source, family, hub)
        return cls(encoder, feature_extractor, preset, feature_layer or spec.feature_layer, adapter_dim, source=str(source))

    def train(self, mode: bool = True) -> FeatureCleaner:
        super().train(mode)
        self.encoder.eval()  # frozen means frozen: no dropout, no layer drop, no masking
        return self

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor | None = None, use_adapters: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        if wave.ndim != 2:
            raise ValueError(f"wave must be [batch, samples] at 16 kHz, got shape {tuple(wave.shape)}")
        if lengths is None:
            lengths = torch.full((wave.shape[0],), wave.shape[1], device=wave.device, dtype=torch.long)
        pad = self.input_padding
        wave = nn.functional.pad(wave.float(), (pad, pad))
        inputs, mask = self.frontend(wave, lengths.to(wave.device) + 2 * pad)
        previous = self.adapters.enabled
        self.adapters.enabled = previous and use_adapters
        try:
            hidden, frame_mask = self.family.encode(self.encoder, inputs, mask)
        finally:
            self.adapters.enabled = previous
        hidden = hidden * frame_mask[..., None].to(hidden.dtype)
        return hidden, frame_mask.sum(1)

    def adapter_parameters(self) -> list[nn.Parameter]:
        return list(self.adapters.parameters())

    def encoder_fingerprint(self) -> str:
        """sha256 over names, dtypes, shapes and bytes of the frozen encoder's tensors up to the
        feature layer (the adapters live outside it): what adapters trained on it must meet again."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.encoder.state_dict().items()):
            data = tensor.detach().to("cpu").contiguous()
            digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}|".encode())
            digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
        return digest.hexdigest()

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        return self.adapters.state_dict()

    def load_adapter_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.adapters.load_state_dict(state)


class FeatureExtractorError(ValueError):
    """The checkpoint's preprocessing settings cannot be loaded; the message says where and why."""


def _load_feature_extractor(source: str, family: _Family, hub: dict):
    """The checkpoint's own preprocessing settings (`preprocessor_config.json`), or a clear error.

    Never a default: the defaults differ from what some checkpoints were trained with (e.g. a
    default Wav2Vec2FeatureExtractor normalises every utterance; mHuBERT-147 does not), and
    features from the wrong preprocessing look plausible while being wrong.
    """
    import transformers

    expected = family.feature_extractor_class
    try:
        extractor = transformers.AutoFeatureExtractor.from_pretrained(source, **hub)
    except (OSError, ValueError, KeyError) as err:
        raise FeatureExtractorError(
            f"{source}: cannot load the encoder's preprocessing settings (preprocessor_config.json for a "
            f"{expected}): {err}. Use a checkpoint that ships them, or save the right settings beside "
            f"the weights with transformers.{expected}(...).save_pretrained(<directory>)") from err
    if type(extractor).__name__ != expected:
        raise FeatureExtractorError(f"{source}: preprocessor_config.json describes a {type(extractor).__name__}, "
                                    f"but this backbone family is fed by a {expected}")
    return extractor


def _load_encoder(source: str, spec: BackbonePreset, hub: dict) -> nn.Module:
    import transformers

    model_class = getattr(transformers, spec.model_class)
    if spec.family == "gemma3n-audio":
        config = transformers.AutoConfig.from_pretrained(source, **hub)
        if config.model_type == "gemma3n":  # a full Gemma 3n checkpoint: take only its audio tower
            tower = _load_gemma3n_audio_tower(source, config.audio_config, hub)
            tower.config._commit_hash = getattr(config, "_commit_hash", None)  # the revision it came from
            return tower
    return model_class.from_pretrained(source, dtype=torch.float32, **hub)


GEMMA3N_AUDIO_PREFIX = "model.audio_tower."


def _load_gemma3n_audio_tower(source: str, audio_config, hub: dict) -> nn.Module:
    """Read just the audio tower's tensors from a full Gemma 3n checkpoint (saves ~10 GB)."""
    import json

    from safetensors import safe_open
    from transformers import Gemma3nAudioEncoder
    from transformers.utils import cached_file

    index = cached_file(source, "model.safetensors.index.json", _raise_exceptions_for_missing_entries=False, **hub)
    if index:
        weight_map = json.loads(Path(index).read_text())["weight_map"]
        shards = sorted({shard for key, shard in weight_map.items() if key.startswith(GEMMA3N_AUDIO_PREFIX)})
    else:
        shards = ["model.safetensors"]
    state = {}
    for shard in shards:
        with safe_open(cached_file(source, shard, **hub), framework="pt") as f:
            for key in f.keys():
                if key.startswith(GEMMA3N_AUDIO_PREFIX):
                    state[key[len(GEMMA3N_AUDIO_PREFIX) :]] = f.get_tensor(key).float()
    if not state:
        raise ValueError(f"{source}: no tensors named {GEMMA3N_AUDIO_PREFIX}* in this Gemma 3n checkpoint")
    encoder = Gemma3nAudioEncoder(audio_config)
    encoder.load_state_dict(state, strict=True)
    return encoder.eval()
