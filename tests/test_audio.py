import numpy as np
import pytest
import soundfile as sf

from miipher2.audio import AudioError, read_audio, resample, write_audio


def test_write_then_read_roundtrip(tmp_path, tone):
    write_audio(tmp_path / "a.wav", tone, 16000)
    wave, rate = read_audio(tmp_path / "a.wav")
    assert rate == 16000
    np.testing.assert_allclose(wave, tone, atol=1 / 2**15)
    assert not list(tmp_path.glob(".*tmp")), "temporary file left behind"


def test_read_downmixes_and_resamples(tmp_path, tone):
    stereo = np.stack([tone, -tone * 0.5], axis=1)
    sf.write(tmp_path / "s.wav", stereo, 16000)
    wave, rate = read_audio(tmp_path / "s.wav", sample_rate=24000)
    assert rate == 24000 and wave.ndim == 1
    assert abs(wave.size - 24000) <= 1
    assert np.abs(wave).max() == pytest.approx(0.25 * np.abs(tone).max(), rel=0.05)  # (x - x/2) / 2


def test_resample_preserves_a_tone():
    t = np.arange(48000) / 48000
    wave = np.sin(2 * np.pi * 1000 * t).astype(np.float32)
    down = resample(wave, 48000, 16000)
    spectrum = np.abs(np.fft.rfft(down))
    assert np.argmax(spectrum) == pytest.approx(1000, abs=1)  # 1 Hz bins for 1 s


def test_unreadable_file_names_the_file(tmp_path):
    bad = tmp_path / "text.wav"
    bad.write_text("not audio")
    with pytest.raises(AudioError, match="text.wav"):
        read_audio(bad)
