"""The feature-cleaner loss of Miipher / Miipher-2: L1 + L2 + spectral convergence.

All three terms are computed per utterance over its valid frames and then averaged over the
batch. Averaging per utterance (not per frame of the whole batch) keeps the loss independent of
how a global batch is split across processes: DDP's gradient average over N ranks of B/N
utterances equals the single-process gradient over all B.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class FeatureLoss:
    total: torch.Tensor
    l1: torch.Tensor
    l2: torch.Tensor
    spectral_convergence: torch.Tensor

    def metrics(self) -> dict[str, float]:
        return {"loss": self.total.item(), "l1": self.l1.item(), "l2": self.l2.item(),
                "spectral_convergence": self.spectral_convergence.item()}


def frame_mask(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """[B, F] True on valid frames."""
    return torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None]


def feature_cleaner_loss(predicted: torch.Tensor, target: torch.Tensor, lengths: torch.Tensor,
                         eps: float = 1e-8) -> FeatureLoss:
    """predicted, target: [B, F, D]; lengths: [B] valid frames per utterance.

    Spectral convergence treats the feature sequence as a spectrogram: ||T - P||_F / ||T||_F.
    """
    if predicted.shape[0] != target.shape[0] or predicted.shape[-1] != target.shape[-1]:
        raise ValueError(f"feature shapes differ: predicted {tuple(predicted.shape)}, target {tuple(target.shape)}")
    frames = min(predicted.shape[1], target.shape[1])
    predicted, target = predicted[:, :frames].float(), target[:, :frames].float()
    lengths = lengths.clamp(max=frames).to(predicted.device)
    mask = frame_mask(lengths, frames)[..., None].to(predicted.dtype)
    count = (lengths.clamp_min(1) * predicted.shape[-1]).to(predicted.dtype)

    diff = (predicted - target) * mask
    l1 = diff.abs().sum((1, 2)) / count
    l2 = diff.pow(2).sum((1, 2)) / count
    sc = diff.pow(2).sum((1, 2)).sqrt() / ((target * mask).pow(2).sum((1, 2)).sqrt() + eps)
    l1, l2, sc = l1.mean(), l2.mean(), sc.mean()
    return FeatureLoss(total=l1 + l2 + sc, l1=l1, l2=l2, spectral_convergence=sc)
