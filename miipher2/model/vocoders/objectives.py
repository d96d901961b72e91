"""Adversarial training of each vocoder kind: its discriminators and its generator/discriminator losses.

    objective = objective_for("vocos", sample_rate=24000)
    discriminator = objective.make_discriminator()
    fakes = objective.generate(vocoder, features)           # [wave]; WaveFit: every iterate
    objective.discriminator_loss(discriminator, fakes, real)["loss"]
    objective.generator_loss(discriminator, fakes, real)["loss"]   # discriminator frozen inside

Each kind keeps its own paper's recipe, built from speechbrain's and vocos' classes:

| kind    | discriminators                                  | adversarial      | feature matching               | reconstruction              |
|---------|-------------------------------------------------|------------------|--------------------------------|-----------------------------|
| hifigan | MPD (periods 2-11) + MSD (3 scales), summed     | least squares    | x2, summed over all maps       | L1 log-mel x45              |
| vocos   | MPD + MRD (FFT 2048/1024/512), MRD group x0.1,  | hinge            | x1, summed over a member's     | L1 log-mel x45 (vocos')     |
|         | each group averaged over its members            |                  | maps, averaged over members    |                             |
| wavefit | MelGAN-style MSD (3 scales), averaged           | hinge            | x10, averaged over all maps    | MR-STFT (SC + log mag) x2.5 |

WaveFit's losses are averaged over its T iterates. HiFi-GAN V1 (jik876) sums feature matching over
its 54 feature maps; speechbrain's MelganFeatureLoss averages them (MelGAN's and WaveFit's
convention), which would make HiFi-GAN's x2 effectively x2/54. `discriminator_size="small"` swaps
in a cheap discriminator for CPU demos (vocos' MPD with periods 2 and 3, and its MRD at 16 channels).
Every loss dict also reports "mel", the same L1 log-mel distance of the final output for every
kind, so runs of different kinds compare on one number.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import torch
from torch import nn

Judgement = dict[str, tuple[list[torch.Tensor], list[list[torch.Tensor]]]]  # group -> (scores, feature maps)


# --------------------------------------------------------------------------- discriminators

class WithChannel(nn.Module):
    """speechbrain's discriminators take [B, 1, T] and return lists; vocos' take [B, T]."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, wave: torch.Tensor):
        return self.module(wave.unsqueeze(1))


class Discriminators(nn.Module):
    """Groups of sub-discriminators; forward(wave [B, T]) -> {group: (scores, feature maps)},
    one score tensor and one list of feature maps per sub-discriminator."""

    def __init__(self, **groups: list[nn.Module]):
        super().__init__()
        self.groups = nn.ModuleDict({name: nn.ModuleList(members) for name, members in groups.items()})

    def forward(self, wave: torch.Tensor) -> Judgement:
        result = {}
        for name, members in self.groups.items():
            scores, maps = [], []
            for member in members:
                score, feature_maps = member(wave)
                if isinstance(score, list):  # a speechbrain multi-discriminator: several members at once
                    scores += score
                    maps += feature_maps
                else:
                    scores.append(score)
                    maps.append(feature_maps)
            result[name] = (scores, maps)
        return result


def hifigan_discriminator() -> Discriminators:
    from speechbrain.lobes.models.HifiGAN import MultiPeriodDiscriminator, MultiScaleDiscriminator

    return Discriminators(mpd=[WithChannel(MultiPeriodDiscriminator())], msd=[WithChannel(MultiScaleDiscriminator())])


def vocos_discriminator() -> Discriminators:
    from vocos.discriminators import DiscriminatorP, DiscriminatorR

    return Discriminators(mpd=[DiscriminatorP(p) for p in (2, 3, 5, 7, 11)],
                          mrd=[DiscriminatorR(n) for n in (2048, 1024, 512)])


def wavefit_discriminator() -> Discriminators:
    from speechbrain.lobes.models.HifiGAN import MultiScaleDiscriminator

    return Discriminators(msd=[WithChannel(MultiScaleDiscriminator())])


def small_discriminator() -> Discriminators:
    """~10x cheaper than any full set on CPU (measured in docs/benchmarks.md): for demos and tests."""
    from vocos.discriminators import DiscriminatorP, DiscriminatorR

    return Discriminators(mpd=[DiscriminatorP(p) for p in (2, 3)],
                          mrd=[DiscriminatorR(n, channels=16) for n in (1024, 512, 256)])


# --------------------------------------------------------------------------- losses

class MelDistance(nn.Module):
    """L1 distance between log-mel spectrograms (speechbrain's L1SpecLoss: torch.stft based,
    unlike its STFTLoss, which fails on torch 2.13). 1024-point FFT, 80 bands up to Nyquist."""

    def __init__(self, sample_rate: int, n_fft: int = 1024, hop_length: int = 256, n_mels: int = 80):
        super().__init__()
        from speechbrain.lobes.models.HifiGAN import L1SpecLoss

        self.loss = L1SpecLoss(sample_rate=sample_rate, hop_length=hop_length, win_length=n_fft,
                               n_mel_channels=n_mels, n_fft=n_fft, mel_fmin=0.0, mel_fmax=sample_rate / 2)

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return self.loss(fake.unsqueeze(1).float(), real.unsqueeze(1).float())


class VocosMelDistance(nn.Module):
    """vocos' MelSpecReconstructionLoss (100 bands, magnitude mel; torchaudio's pure-Python transforms)."""

    def __init__(self, sample_rate: int):
        super().__init__()
        from vocos.loss import MelSpecReconstructionLoss

        self.loss = MelSpecReconstructionLoss(sample_rate=sample_rate)

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        return self.loss(fake.float(), real.float())


class MultiResolutionSTFTLoss(nn.Module):
    """Spectral convergence + L1 log magnitude, averaged over three resolutions (Parallel WaveGAN's,
    used by WaveFit; the sizes of speechbrain's MultiScaleSTFTLoss, which fails on torch 2.13)."""

    def __init__(self, resolutions=((512, 50, 240), (1024, 120, 600), (2048, 240, 1200))):
        super().__init__()
        self.resolutions = resolutions
        for n_fft, _, window in resolutions:
            self.register_buffer(f"window_{n_fft}", torch.hann_window(window), persistent=False)

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        total = fake.new_zeros(())
        for n_fft, hop, window in self.resolutions:
            fake_mag, real_mag = (torch.stft(x.float(), n_fft, hop, window, getattr(self, f"window_{n_fft}"),
                                             return_complex=True).abs().clamp(min=1e-7) for x in (fake, real))
            convergence = torch.linalg.norm(real_mag - fake_mag) / torch.linalg.norm(real_mag).clamp(min=1e-7)
            total = total + convergence + nn.functional.l1_loss(fake_mag.log(), real_mag.log())
        return total / len(self.resolutions)


def least_squares(scores_fake: list[torch.Tensor], scores_real: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Per sub-discriminator LSGAN terms (speechbrain's MSEGLoss / MSEDLoss), one per member."""
    from speechbrain.lobes.models.HifiGAN import MSEDLoss, MSEGLoss

    if scores_real is None:
        return torch.stack([MSEGLoss()(f) for f in scores_fake])
    return torch.stack([MSEDLoss()(f, r)[0] for f, r in zip(scores_fake, scores_real)])


def hinge(scores_fake: list[torch.Tensor], scores_real: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Per sub-discriminator hinge terms (vocos' GeneratorLoss / DiscriminatorLoss), one per member."""
    from vocos.loss import DiscriminatorLoss, GeneratorLoss

    if scores_real is None:
        return torch.stack(GeneratorLoss()(scores_fake)[1])
    _, real_terms, fake_terms = DiscriminatorLoss()(scores_real, scores_fake)
    return torch.stack(real_terms) + torch.stack(fake_terms)


def feature_matching_sum(maps_fake: list[list[torch.Tensor]], maps_real: list[list[torch.Tensor]]) -> torch.Tensor:
    """Per member: the sum over its feature maps of the mean absolute difference (jik876, vocos)."""
    from vocos.loss import FeatureMatchingLoss

    return torch.cat([FeatureMatchingLoss()([r], [f]) for f, r in zip(maps_fake, maps_real)])


def feature_matching_mean(maps_fake: list[list[torch.Tensor]], maps_real: list[list[torch.Tensor]]) -> torch.Tensor:
    """One term: the mean over all feature maps (speechbrain's MelganFeatureLoss; MelGAN, WaveFit)."""
    from speechbrain.lobes.models.HifiGAN import MelganFeatureLoss

    return MelganFeatureLoss()(maps_fake, maps_real).reshape(1)


# --------------------------------------------------------------------------- the objective

@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """No parameter of `module` requires grad inside: backward computes no weight gradients for it."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for parameter, flag in zip(module.parameters(), flags):
            parameter.requires_grad_(flag)


class GanObjective(nn.Module):
    """One kind's recipe (see the module docstring). Waves are [B, T]; fakes is a list of waves
    (one per WaveFit iterate, else one) of the real wave's length."""

    def __init__(self, *, make_discriminator: Callable[[], Discriminators], adversarial: Callable[..., torch.Tensor],
                 feature_matching: Callable[..., torch.Tensor], reconstruction: nn.Module, mel: nn.Module,
                 reconstruction_weight: float, feature_matching_weight: float, group_weights: dict[str, float] | None = None,
                 average_members: bool = False, all_iterations: bool = False, discriminator_bf16: bool = False):
        super().__init__()
        self.make_discriminator = make_discriminator
        self.adversarial, self.feature_matching = adversarial, feature_matching  # per-member terms
        self.reconstruction, self.mel = reconstruction, mel  # mel: the logged, kind-independent distance
        self.reconstruction_weight, self.feature_matching_weight = reconstruction_weight, feature_matching_weight
        self.group_weights = group_weights or {}
        self.average_members = average_members  # mean (vocos, WaveFit) or sum (HiFi-GAN) over a group's members
        self.all_iterations = all_iterations  # WaveFit: losses on every iterate
        self.discriminator_bf16 = discriminator_bf16  # bf16 autocast for the discriminators on CUDA

    def generate(self, generator: nn.Module, features: torch.Tensor) -> list[torch.Tensor]:
        if self.all_iterations:
            return [wave.float() for wave in generator(features, all_iterations=True)]
        return [generator(features).float()]

    def judge(self, discriminator: nn.Module, wave: torch.Tensor) -> Judgement:
        cuda_bf16 = self.discriminator_bf16 and wave.device.type == "cuda"
        with torch.autocast(wave.device.type, dtype=torch.bfloat16, enabled=cuda_bf16):
            judgement = discriminator(wave)
        return {name: ([s.float() for s in scores], [[m.float() for m in member] for member in maps])
                for name, (scores, maps) in judgement.items()}

    def _combine(self, per_group: dict[str, torch.Tensor]) -> torch.Tensor:
        reduce = torch.mean if self.average_members else torch.sum
        return sum(self.group_weights.get(name, 1.0) * reduce(terms) for name, terms in per_group.items())

    def discriminator_loss(self, discriminator: nn.Module, fakes: list[torch.Tensor], real: torch.Tensor) -> dict[str, torch.Tensor]:
        real_scores = {name: scores for name, (scores, _) in self.judge(discriminator, real).items()}
        losses = []
        for fake in fakes:
            judged = self.judge(discriminator, fake.detach())
            losses.append(self._combine({name: self.adversarial(scores, real_scores[name])
                                         for name, (scores, _) in judged.items()}))
        return {"loss": torch.stack(losses).mean()}

    def reconstruction_loss(self, fakes: list[torch.Tensor], real: torch.Tensor) -> dict[str, torch.Tensor]:
        """The weighted reconstruction term alone: the generator's objective before the discriminators join."""
        result = {"reconstruction": torch.stack([self.reconstruction(fake, real) for fake in fakes]).mean()}
        result["loss"] = self.reconstruction_weight * result["reconstruction"]
        with torch.no_grad():
            result["mel"] = self.mel(fakes[-1], real)
        return result

    def generator_loss(self, discriminator: nn.Module, fakes: list[torch.Tensor], real: torch.Tensor) -> dict[str, torch.Tensor]:
        """The discriminator is frozen meanwhile: no weight gradients are computed for it."""
        with frozen(discriminator):
            with torch.no_grad():
                real_maps = {name: maps for name, (_, maps) in self.judge(discriminator, real).items()}
            terms = {"adversarial": [], "feature_matching": [], "reconstruction": []}
            for fake in fakes:
                judged = self.judge(discriminator, fake)
                terms["adversarial"].append(self._combine({n: self.adversarial(s) for n, (s, _) in judged.items()}))
                terms["feature_matching"].append(self._combine({n: self.feature_matching(m, real_maps[n])
                                                                for n, (_, m) in judged.items()}))
                terms["reconstruction"].append(self.reconstruction(fake, real))
        result = {name: torch.stack(values).mean() for name, values in terms.items()}
        result["loss"] = (result["adversarial"] + self.feature_matching_weight * result["feature_matching"]
                          + self.reconstruction_weight * result["reconstruction"])
        with torch.no_grad():
            result["mel"] = self.mel(fakes[-1], real)
        return result


def objective_for(kind: str, sample_rate: int, *, discriminator_size: str = "full", discriminator_bf16: bool = False,
                  reconstruction_weight: float | None = None, feature_matching_weight: float | None = None) -> GanObjective:
    """The recipe of `kind`; weights default to its paper's (None)."""
    if discriminator_size not in ("full", "small"):
        raise ValueError(f"unknown discriminator size {discriminator_size!r}; choose 'full' or 'small'")
    mel = MelDistance(sample_rate)
    if kind == "hifigan":
        recipe = dict(make_discriminator=hifigan_discriminator, adversarial=least_squares,
                      feature_matching=feature_matching_sum, reconstruction=mel, mel=mel,
                      reconstruction_weight=45.0, feature_matching_weight=2.0)
    elif kind == "vocos":
        recipe = dict(make_discriminator=vocos_discriminator, adversarial=hinge, feature_matching=feature_matching_sum,
                      reconstruction=VocosMelDistance(sample_rate), mel=mel, reconstruction_weight=45.0,
                      feature_matching_weight=1.0, group_weights={"mrd": 0.1}, average_members=True)
    elif kind == "wavefit":
        recipe = dict(make_discriminator=wavefit_discriminator, adversarial=hinge,
                      feature_matching=feature_matching_mean, reconstruction=MultiResolutionSTFTLoss(), mel=mel,
                      reconstruction_weight=2.5, feature_matching_weight=10.0, average_members=True,
                      all_iterations=True)
    else:
        raise ValueError(f"unknown vocoder kind {kind!r}")
    if discriminator_size == "small":
        recipe["make_discriminator"] = small_discriminator
    if reconstruction_weight is not None:
        recipe["reconstruction_weight"] = reconstruction_weight
    if feature_matching_weight is not None:
        recipe["feature_matching_weight"] = feature_matching_weight
    return GanObjective(**recipe, discriminator_bf16=discriminator_bf16)
