"""Vocoders: SSL features [B, F, D] -> wave [B, F * hop_length] at the output rate. Three kinds,
chosen by `vocoder.kind` in a training config and recorded in a model directory:

    hifigan   HiFi-GAN V1 (speechbrain's generator): transposed convolutions up to the audio rate
    vocos     Vocos (the `vocos` package): ConvNeXt at the frame rate + inverse STFT
    wavefit   WaveFit, the paper's: a WaveGrad-like generator applied T times (fixed-point iteration)

    config = vocoder_config("vocos", feature_dim, input_hop=320, sample_rate=24000, size="paper")
    vocoder = build_vocoder(config)                       # BaseVocoder; vocoder.kind == "vocos"
    vocoder_to_dict(vocoder) / vocoder_from_dict(values)  # the model directory's `vocoder:` section

Training objectives (discriminators and losses) per kind: `miipher2.model.vocoders.objectives`.
"""

from __future__ import annotations

from miipher2.model.vocoders._encodec import install_placeholder

install_placeholder()  # before anything imports vocos: see _encodec.py

from miipher2.model.vocoders.base import BaseVocoder  # noqa: E402
from miipher2.model.vocoders.hifigan import HifiganConfig, HifiganVocoder  # noqa: E402
from miipher2.model.vocoders.vocos import VocosConfig, VocosVocoder  # noqa: E402
from miipher2.model.vocoders.wavefit import WaveFitConfig, WaveFitVocoder  # noqa: E402

KINDS = {"hifigan": (HifiganConfig, HifiganVocoder), "vocos": (VocosConfig, VocosVocoder),
         "wavefit": (WaveFitConfig, WaveFitVocoder)}
DEFAULT_KIND = "hifigan"  # what a model directory written before kinds existed holds


def _kind(kind: str) -> tuple[type, type]:
    if kind not in KINDS:
        raise ValueError(f"unknown vocoder kind {kind!r}; choose one of {', '.join(KINDS)}")
    return KINDS[kind]


def vocoder_config(kind: str, feature_dim: int, input_hop: int, sample_rate: int = 24000, input_rate: int = 16000,
                   size: str = "paper"):
    """The `size` ("paper" or "tiny") config of `kind` for frames `input_hop` samples apart at `input_rate`."""
    return _kind(kind)[0].for_features(feature_dim, input_hop, sample_rate, input_rate, size)


def build_vocoder(config) -> BaseVocoder:
    vocoder_class = next((v for c, v in KINDS.values() if isinstance(config, c)), None)
    if vocoder_class is None:
        raise TypeError(f"not a vocoder config: {config!r}")
    return vocoder_class(config)


def vocoder_to_dict(vocoder: BaseVocoder) -> dict:
    return {"kind": vocoder.kind, **vocoder.config.to_dict()}


def vocoder_from_dict(values: dict) -> BaseVocoder:
    values = dict(values)
    config_class, vocoder_class = _kind(values.pop("kind", DEFAULT_KIND))
    return vocoder_class(config_class.from_dict(values))


__all__ = ["KINDS", "BaseVocoder", "build_vocoder", "vocoder_config", "vocoder_from_dict", "vocoder_to_dict"]
