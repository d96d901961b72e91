"""HiFi-GAN vocoder sizing and the speechbrain GAN objectives."""

from __future__ import annotations

import pytest
import torch

from miipher2.model.gan import GanLosses, MelLoss, build_discriminator
from miipher2.model.vocoder import Vocoder, VocoderConfig, upsample_factors_for


@pytest.mark.parametrize(("input_hop", "rate", "hop"), [(320, 16000, 320), (320, 24000, 480), (640, 24000, 960)])
def test_output_length_is_frames_times_hop(input_hop, rate, hop):
    config = VocoderConfig.for_features(feature_dim=12, input_hop=input_hop, sample_rate=rate, size="tiny")
    assert config.hop_length == hop and config.sample_rate == rate
    vocoder = Vocoder(config)
    wave = vocoder(torch.randn(2, 7, 12))
    assert wave.shape == (2, 7 * hop)
    assert wave.abs().max() <= 1.0


def test_upsample_factors_multiply_to_the_hop():
    assert upsample_factors_for(320) == [8, 8, 5]
    assert upsample_factors_for(480) == [8, 6, 5, 2]
    with pytest.raises(ValueError, match="prime factor above 8"):
        upsample_factors_for(11 * 32)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"upsample_factors \[8, 5\] multiply to 40, not hop_length 320"):
        VocoderConfig(feature_dim=8, hop_length=320, upsample_factors=[8, 5])
    with pytest.raises(ValueError, match="unknown vocoder config field"):
        VocoderConfig.from_dict({"feature_dim": 8, "hop_length": 320, "channels": 3})
    with pytest.raises(ValueError, match="not a whole number of samples"):
        VocoderConfig.for_features(8, input_hop=100, sample_rate=22050)
    assert VocoderConfig.from_dict(VocoderConfig(8, 320).to_dict()) == VocoderConfig(8, 320)


@pytest.mark.slow  # a full-size MPD + MSD (70M parameters) is slow on CPU
def test_gan_losses_train_each_side_only():
    torch.manual_seed(0)
    vocoder = Vocoder(VocoderConfig.for_features(12, 320, 16000, size="tiny"))
    discriminator = build_discriminator()
    losses = GanLosses(sample_rate=16000)
    real = 0.1 * torch.randn(1, 8 * 320)
    fake = vocoder(torch.randn(1, 8, 12))

    d = losses.discriminator_loss(discriminator, fake, real)
    d["loss"].backward()
    assert all(p.grad is None for p in vocoder.parameters())  # fake is detached for the discriminator
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in discriminator.parameters())

    discriminator.zero_grad()
    g = losses.generator_loss(discriminator, fake, real)
    assert set(g) == {"loss", "mel", "adversarial", "feature_matching"}
    assert all(torch.isfinite(v) for v in g.values())
    torch.testing.assert_close(g["loss"], g["adversarial"] + 2.0 * g["feature_matching"] + 45.0 * g["mel"])
    g["loss"].backward()
    assert all(p.grad is not None for p in vocoder.parameters() if p.requires_grad)


def test_mel_loss_is_zero_only_for_equal_waves():
    mel = MelLoss(24000)
    wave = 0.1 * torch.randn(1, 24000)
    assert mel(wave, wave).item() == 0.0
    assert mel(wave, 0.5 * wave).item() > 0.1
