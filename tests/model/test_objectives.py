"""Each vocoder kind's GAN recipe: loss weighting against hand-computed values, frozen discriminators."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from miipher2.model.vocoders import build_vocoder, vocoder_config
from miipher2.model.vocoders.objectives import MultiResolutionSTFTLoss, objective_for


class KnownMaps(nn.Module):
    """A stand-in discriminator with two sub-discriminators whose feature maps are known multiples
    of the wave: member 0 gives maps [w, 2w], member 1 gives [3w]; scores are the maps' last entry."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, wave):
        maps = [[self.scale * wave, 2 * self.scale * wave], [3 * self.scale * wave]]
        return {"group": ([m[-1] for m in maps], maps)}


REAL, FAKE = torch.full((1, 4096), 1.0), torch.full((1, 4096), 0.5)
# |maps(fake) - maps(real)| = 0.5, 1.0 and 1.5 everywhere.


@pytest.mark.parametrize(("kind", "expected"), [
    ("hifigan", 0.5 + 1.0 + 1.5),          # jik876 HiFi-GAN V1: summed over every map
    ("vocos", ((0.5 + 1.0) + 1.5) / 2),    # vocos: summed over a member's maps, averaged over members
    ("wavefit", (0.5 + 1.0 + 1.5) / 3),    # MelGAN / WaveFit: averaged over all maps
])
def test_feature_matching_weighting(kind, expected):
    objective = objective_for(kind, 16000)
    terms = objective.generator_loss(KnownMaps(), [FAKE], REAL)
    assert terms["feature_matching"].item() == pytest.approx(expected)
    weight = {"hifigan": 2.0, "vocos": 1.0, "wavefit": 10.0}[kind]
    recon = {"hifigan": 45.0, "vocos": 45.0, "wavefit": 2.5}[kind]
    torch.testing.assert_close(terms["loss"], terms["adversarial"] + weight * terms["feature_matching"]
                               + recon * terms["reconstruction"])


def test_adversarial_terms_by_hand():
    # scores: fake 1.0 (member 0: 2 * 0.5) and 1.5 (member 1: 3 * 0.5); real 2.0 and 3.0.
    lsgan = objective_for("hifigan", 16000)
    assert lsgan.generator_loss(KnownMaps(), [FAKE], REAL)["adversarial"].item() == pytest.approx(0.0 + 0.25)
    assert lsgan.discriminator_loss(KnownMaps(), [FAKE], REAL)["loss"].item() == pytest.approx(
        (1.0 + 1.0) + (4.0 + 2.25))  # sum over members of (1 - real)^2 + fake^2
    hinge = objective_for("vocos", 16000)  # mean over members of relu(1 - fake) / relu(1 - real) + relu(1 + fake)
    assert hinge.generator_loss(KnownMaps(), [FAKE], REAL)["adversarial"].item() == pytest.approx(0.0)
    assert hinge.discriminator_loss(KnownMaps(), [FAKE], REAL)["loss"].item() == pytest.approx((2.0 + 2.5) / 2)


@pytest.mark.parametrize("kind", ["hifigan", "vocos", "wavefit"])
def test_generator_step_computes_no_discriminator_gradients(kind):
    torch.manual_seed(0)
    objective = objective_for(kind, 16000, discriminator_size="small")
    discriminator = objective.make_discriminator()
    vocoder = build_vocoder(vocoder_config(kind, 12, 320, 16000, size="tiny")).train()
    real = 0.1 * torch.randn(2, 4 * 320)
    fakes = objective.generate(vocoder, torch.randn(2, 4, 12))
    assert len(fakes) == (2 if kind == "wavefit" else 1)  # tiny WaveFit: 2 iterates, each trained

    objective.discriminator_loss(discriminator, fakes, real)["loss"].backward()
    assert all(p.grad is None for p in vocoder.parameters())  # fakes are detached for the discriminator
    assert all(p.grad is not None for p in discriminator.parameters())

    discriminator.zero_grad(set_to_none=True)
    terms = objective.generator_loss(discriminator, fakes, real)
    terms["loss"].backward()
    assert all(p.grad is None for p in discriminator.parameters())  # frozen during the generator step
    assert all(p.requires_grad for p in discriminator.parameters())  # and trainable again afterwards
    assert all(p.grad is not None for p in vocoder.parameters())
    assert set(terms) == {"loss", "mel", "adversarial", "feature_matching", "reconstruction"}


@pytest.mark.slow  # the full-size discriminators (70 M parameters) are slow on CPU
@pytest.mark.parametrize("kind", ["hifigan", "vocos", "wavefit"])
def test_full_discriminators_judge_every_member(kind):
    objective = objective_for(kind, 16000)
    judgement = objective.judge(objective.make_discriminator(), 0.1 * torch.randn(1, 8192))
    members = {name: len(scores) for name, (scores, _) in judgement.items()}
    assert members == {"hifigan": {"mpd": 5, "msd": 3}, "vocos": {"mpd": 5, "mrd": 3}, "wavefit": {"msd": 3}}[kind]


def test_stft_and_mel_distances_are_zero_only_for_equal_waves():
    wave = 0.1 * torch.randn(2, 24000)
    stft = MultiResolutionSTFTLoss()
    assert stft(wave, wave).item() == pytest.approx(0.0, abs=1e-6)
    assert stft(0.5 * wave, wave).item() > 0.3  # log|0.5| = -0.69 in every bin, plus convergence 0.5
    mel = objective_for("vocos", 24000).mel
    assert mel(wave, wave).item() == 0.0
    assert mel(0.5 * wave, wave).item() > 0.1


def test_unknown_kind_and_size_are_named():
    with pytest.raises(ValueError, match="unknown vocoder kind 'melgan'"):
        objective_for("melgan", 16000)
    with pytest.raises(ValueError, match="unknown discriminator size 'huge'"):
        objective_for("vocos", 16000, discriminator_size="huge")
