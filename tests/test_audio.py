import numpy as np
import pytest
import soundfile as sf

from miipher2.audio import AudioError, read_audio, read_audio_span, resample, write_audio


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


@pytest.mark.parametrize("native", [16000, 22050, 24000, 44100, 48000, 8000])
@pytest.mark.parametrize("target", [16000, 24000])
@pytest.mark.parametrize("fmt", ["WAV", "FLAC"])
def test_a_span_equals_the_same_samples_of_the_whole_file(tmp_path, native, target, fmt):
    """Training reads only an item's window: it must get the samples a whole-file read would give."""
    rng = np.random.default_rng(native + target)
    stereo = (0.3 * rng.standard_normal((3 * native + 17, 2))).astype(np.float32)
    path = tmp_path / f"a.{fmt.lower()}"
    sf.write(path, stereo, native, format=fmt)
    whole, _ = read_audio(path, sample_rate=target)
    spans = [(0, 100), (1, 7), (target // 3, target // 3 + 5000), (whole.size - 3000, whole.size),
             (whole.size - 10, whole.size + 50), (whole.size + 5, whole.size + 9)]
    for start, stop in spans:
        span = read_audio_span(path, start, stop, sample_rate=target)
        np.testing.assert_array_equal(span, whole[start:stop], err_msg=f"{native} -> {target}, [{start}, {stop})")


def test_a_span_of_a_broken_file_names_it(tmp_path):
    (tmp_path / "bad.wav").write_bytes(b"RIFF\x10\x00\x00\x00WAVEjunk")
    with pytest.raises(AudioError, match="bad.wav: cannot decode audio"):
        read_audio_span(tmp_path / "bad.wav", 0, 10)
