"""The three vocoder kinds: sizing, output length and precision, the model-directory record."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from miipher2.model.vocoders import KINDS, build_vocoder, vocoder_config, vocoder_from_dict, vocoder_to_dict
from miipher2.model.vocoders.hifigan import HifiganConfig, HifiganVocoder, upsample_factors_for, upsample_kernels
from miipher2.model.vocoders.wavefit import WaveFitConfig, WaveFitVocoder


def tiny(kind: str, input_hop: int = 320, rate: int = 24000, dim: int = 12):
    torch.manual_seed(0)
    return build_vocoder(vocoder_config(kind, dim, input_hop, rate, size="tiny")).eval()


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize(("input_hop", "rate", "hop"), [(320, 16000, 320), (320, 24000, 480), (640, 24000, 960)])
def test_output_length_is_frames_times_hop(kind, input_hop, rate, hop):
    vocoder = tiny(kind, input_hop, rate)
    assert vocoder.kind == kind and vocoder.hop_length == hop and vocoder.sample_rate == rate
    with torch.no_grad():
        wave = vocoder(torch.randn(2, 7, 12))
    assert wave.shape == (2, 7 * hop) and torch.isfinite(wave).all()


def test_hifigan_output_is_bounded():
    with torch.no_grad():
        assert tiny("hifigan")(10 * torch.randn(2, 7, 12)).abs().max() <= 1.0


@pytest.mark.parametrize("kind", list(KINDS))
def test_output_layers_run_in_fp32_under_bf16_autocast(kind):
    """A bf16 output layer gives every sample an 8-bit significand: every sample would then be
    exactly representable in bf16. The output must be fp32 and within 5 % of peak of the fp32 run
    (the rest of the network does run in bf16)."""
    vocoder = tiny(kind)
    features = torch.randn(2, 10, 12)
    with torch.no_grad():
        reference = vocoder(features)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = vocoder(features)
    assert low.dtype == torch.float32
    representable = (low.to(torch.bfloat16).float() == low).float().mean()
    assert representable < 0.1, f"{representable:.0%} of samples are bf16 values: the output layer ran in bf16"
    assert (low - reference).abs().max() < 0.05 * reference.abs().max()


@pytest.mark.parametrize("kind", list(KINDS))
def test_dict_round_trip_rebuilds_the_same_vocoder(kind):
    vocoder = tiny(kind)
    record = vocoder_to_dict(vocoder)
    assert record["kind"] == kind
    rebuilt = vocoder_from_dict(record).eval()
    rebuilt.load_state_dict(vocoder.training_state_dict())
    rebuilt.prepare_for_inference()
    features = torch.randn(1, 9, 12)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(features), vocoder(features), atol=1e-5, rtol=1e-5)


def test_records_without_a_kind_are_hifigan_and_unknown_kinds_are_named():
    record = vocoder_to_dict(tiny("hifigan"))
    del record["kind"]
    assert isinstance(vocoder_from_dict(record), HifiganVocoder)
    with pytest.raises(ValueError, match="unknown vocoder kind 'melgan'"):
        vocoder_from_dict({"kind": "melgan", "feature_dim": 8, "hop_length": 320})
    with pytest.raises(ValueError, match="unknown vocoder config field"):
        vocoder_from_dict({"kind": "vocos", "feature_dim": 8, "hop_length": 320, "channels": 3})


# --------------------------------------------------------------------------- HiFi-GAN

def test_upsample_factors_multiply_to_the_hop():
    assert upsample_factors_for(320) == [8, 8, 5]
    assert upsample_factors_for(480) == [8, 6, 5, 2]
    assert upsample_factors_for(960) == [8, 8, 5, 3]
    with pytest.raises(ValueError, match="prime factor above 8"):
        upsample_factors_for(11 * 32)


@pytest.mark.parametrize("hop", [320, 480, 960])
def test_upsampling_kernels_overlap_evenly(hop):
    """A transposed convolution whose kernel is not a multiple of its stride adds up an uneven
    number of kernel taps per output sample (2u + 1 taps: some samples get 3, others 2): a
    periodic pattern, the checkerboard. With all-ones weights the interior must be constant."""
    config = HifiganConfig(feature_dim=4, hop_length=hop)
    assert config.upsample_kernel_sizes == upsample_kernels(config.upsample_factors)
    for k, u in zip(config.upsample_kernel_sizes, config.upsample_factors):
        transposed = nn.ConvTranspose1d(1, 1, k, stride=u, padding=(k - u) // 2, bias=False)
        nn.init.ones_(transposed.weight)
        with torch.no_grad():
            out = transposed(torch.ones(1, 1, 20))[0, 0]
        assert out.shape[-1] == 20 * u  # exactly F * u samples
        interior = out[k: -k]
        assert torch.all(interior == interior[0]), f"kernel {k}, stride {u}: uneven overlap {interior[: 2 * u].tolist()}"


def test_hifigan_config_errors_name_the_field():
    with pytest.raises(ValueError, match=r"upsample_factors \[8, 5\] multiply to 40, not hop_length 320"):
        HifiganConfig(feature_dim=8, hop_length=320, upsample_factors=[8, 5])
    with pytest.raises(ValueError, match="kernel 11 for stride 5: must be a multiple of the stride"):
        HifiganConfig(feature_dim=8, hop_length=320, upsample_factors=[8, 8, 5], upsample_kernel_sizes=[16, 16, 11])
    with pytest.raises(ValueError, match="not a whole number of samples"):
        HifiganConfig.for_features(8, input_hop=100, sample_rate=22050)
    assert HifiganConfig.from_dict(HifiganConfig(8, 320).to_dict()) == HifiganConfig(8, 320)


# --------------------------------------------------------------------------- WaveFit

def test_wavefit_iterates_are_gain_normalised_to_the_predicted_power():
    vocoder = tiny("wavefit")
    features = torch.randn(3, 8, 12)
    with torch.no_grad():
        iterates = vocoder(features, all_iterations=True)
        power = vocoder.log_power(features).exp().mean(dim=(1, 2))  # independent of the loop's arithmetic
    assert len(iterates) == vocoder.config.iterations == 2
    for wave in iterates:
        torch.testing.assert_close(wave.pow(2).mean(dim=1), power, rtol=1e-4, atol=1e-9)
    assert not torch.allclose(iterates[0], iterates[1])  # each iteration changes the wave
    with torch.no_grad():
        torch.testing.assert_close(vocoder(features), iterates[-1])  # eval: the same noise every call


def test_wavefit_iterations_are_configurable():
    config = WaveFitConfig(feature_dim=12, hop_length=480, iterations=3, channels=[16] * 5, prenet_layers=0)
    assert config.upsample_factors == [5, 4, 4, 3, 2]
    vocoder = WaveFitVocoder(config).eval()
    with torch.no_grad():
        assert len(vocoder(torch.randn(1, 4, 12), all_iterations=True)) == 3
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        WaveFitConfig(feature_dim=12, hop_length=480, iterations=0)
    with pytest.raises(ValueError, match="prime factor above 5"):
        WaveFitConfig(feature_dim=12, hop_length=7 * 64)
