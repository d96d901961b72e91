"""HiFi-GAN adversarial training pieces, all from speechbrain: multi-period + multi-scale
discriminators, least-squares GAN losses, discriminator feature matching and the L1 log-mel loss.

Loss weights are HiFi-GAN V1's (jik876/hifi-gan): mel x45, feature matching x2, adversarial x1.
"""

from __future__ import annotations

import torch
from torch import nn

MEL_WEIGHT = 45.0
FEATURE_MATCHING_WEIGHT = 2.0


def build_discriminator() -> nn.Module:
    """MPD (periods 2, 3, 5, 7, 11) + MSD (3 scales); forward(wave [B, 1, T]) -> (scores, features)."""
    from speechbrain.lobes.models.HifiGAN import HifiganDiscriminator

    return HifiganDiscriminator()


class MelLoss(nn.Module):
    """L1 distance between log-mel spectrograms (speechbrain's L1SpecLoss: torch.stft based,
    unlike its STFTLoss, which fails on torch 2.13). 1024-point FFT, 80 bands up to Nyquist."""

    def __init__(self, sample_rate: int, n_fft: int = 1024, hop_length: int = 256, n_mels: int = 80):
        super().__init__()
        from speechbrain.lobes.models.HifiGAN import L1SpecLoss

        self.loss = L1SpecLoss(
            sample_rate=sample_rate, hop_length=hop_length, win_length=n_fft, n_mel_channels=n_mels,
            n_fft=n_fft, mel_fmin=0.0, mel_fmax=sample_rate / 2,
        )

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return self.loss(_as_batch_channel_time(fake).float(), _as_batch_channel_time(real).float())


class GanLosses(nn.Module):
    """Generator and discriminator objectives for one vocoder output rate.

    generator_loss(discriminator, fake, real) -> {"loss", "mel", "adversarial", "feature_matching"}
    discriminator_loss(discriminator, fake, real) -> {"loss", "real", "fake"}
    Waves are [B, T] or [B, 1, T]; fake and real must have the same length.
    """

    def __init__(self, sample_rate: int, mel_weight: float = MEL_WEIGHT, feature_matching_weight: float = FEATURE_MATCHING_WEIGHT):
        super().__init__()
        from speechbrain.lobes.models.HifiGAN import DiscriminatorLoss, GeneratorLoss, MelganFeatureLoss, MSEDLoss, MSEGLoss

        self.mel = MelLoss(sample_rate)
        self.mel_weight = mel_weight
        self.generator = GeneratorLoss(
            mseg_loss=MSEGLoss(), mseg_loss_weight=1.0,
            feat_match_loss=MelganFeatureLoss(), feat_match_loss_weight=feature_matching_weight,
        )
        self.discriminator = DiscriminatorLoss(msed_loss=MSEDLoss())

    def generator_loss(self, discriminator: nn.Module, fake: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
        fake, real = _as_batch_channel_time(fake), _as_batch_channel_time(real)
        scores_fake, feats_fake = discriminator(fake)
        with torch.no_grad():
            _, feats_real = discriminator(real)
        terms = self.generator(None, scores_fake=scores_fake, feats_fake=feats_fake, feats_real=feats_real)
        mel = self.mel(fake, real)
        return {
            "loss": terms["G_adv_loss"] + self.mel_weight * mel,
            "mel": mel,
            "adversarial": terms["G_mse_fake_loss"],
            "feature_matching": terms["G_feat_match_loss"],
        }

    def discriminator_loss(self, discriminator: nn.Module, fake: torch.Tensor, real: torch.Tensor) -> dict[str, torch.Tensor]:
        scores_fake, _ = discriminator(_as_batch_channel_time(fake).detach())
        scores_real, _ = discriminator(_as_batch_channel_time(real))
        terms = self.discriminator(scores_fake, scores_real)
        return {"loss": terms["D_loss"], "real": terms["D_mse_gan_real_loss"], "fake": terms["D_mse_gan_fake_loss"]}


def _as_batch_channel_time(wave: torch.Tensor) -> torch.Tensor:
    return wave.unsqueeze(1) if wave.ndim == 2 else wave
