from __future__ import annotations

import torch

from miipher2.train.losses import feature_cleaner_loss


def test_identical_features_cost_nothing():
    x = torch.randn(2, 10, 8)
    loss = feature_cleaner_loss(x, x.clone(), torch.tensor([10, 7]))
    assert loss.total.item() == 0.0


def test_terms_match_their_definitions_on_one_utterance():
    target = torch.randn(1, 6, 4)
    predicted = target + 0.5
    loss = feature_cleaner_loss(predicted, target, torch.tensor([6]))
    assert torch.isclose(loss.l1, torch.tensor(0.5))
    assert torch.isclose(loss.l2, torch.tensor(0.25))
    expected_sc = (predicted - target).norm() / target.norm()
    assert torch.isclose(loss.spectral_convergence, expected_sc)
    assert torch.isclose(loss.total, loss.l1 + loss.l2 + loss.spectral_convergence)


def test_padding_frames_are_ignored():
    target = torch.randn(2, 8, 4)
    predicted = target.clone()
    predicted[1, 5:] += 100.0  # garbage beyond utterance 1's length
    loss = feature_cleaner_loss(predicted, target, torch.tensor([8, 5]))
    assert loss.total.item() == 0.0


def test_batch_loss_is_the_mean_of_its_halves():
    """What lets DDP (mean of per-rank losses) equal one process with the whole batch."""
    target, predicted = torch.randn(4, 9, 3), torch.randn(4, 9, 3)
    lengths = torch.tensor([9, 4, 7, 2])
    whole = feature_cleaner_loss(predicted, target, lengths).total
    halves = [feature_cleaner_loss(predicted[s], target[s], lengths[s]).total for s in (slice(0, 2), slice(2, 4))]
    assert torch.isclose(whole, sum(halves) / 2)


def test_gradients_flow_to_the_prediction():
    target = torch.randn(2, 5, 3)
    predicted = torch.zeros(2, 5, 3, requires_grad=True)
    feature_cleaner_loss(predicted, target, torch.tensor([5, 3])).total.backward()
    assert predicted.grad[0].abs().sum() > 0 and predicted.grad[1, 3:].abs().sum() == 0
