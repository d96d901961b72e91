"""Each degradation does what it says; the chain is seeded; the evaluation copy is deterministic."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from scipy import signal

from miipher2.data import effects, opus
from miipher2.data.degrade import (EFFECTS, DegradationConfig, DegradationConfigError, Degrader,
                                   materialize_degraded)
from miipher2.data.manifest import COLUMNS, manifest_path, read_manifest, write_manifest

RATE = 16000


def speechlike(rng: np.random.Generator, seconds: float = 1.5, rate: int = RATE) -> np.ndarray:
    """Voiced harmonics with a gliding pitch, syllable-rate envelope and pauses: aperiodic enough
    that cross-correlation has one clear peak, like speech."""
    t = np.arange(int(seconds * rate)) / rate
    f0 = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 20))
    envelope = np.clip(np.sin(2 * np.pi * 3.3 * t), 0, None) ** 0.5
    return (0.1 * voiced * envelope + 0.002 * rng.standard_normal(t.size)).astype(np.float32)


def only(effect: str, **overrides) -> DegradationConfig:
    """A config that applies exactly one effect, always."""
    values = {f"p_{name}": 0.0 for name in EFFECTS}
    values[f"p_{effect}"] = 1.0
    return DegradationConfig.from_dict({**values, **overrides})


def lag_of(degraded: np.ndarray, clean: np.ndarray) -> int:
    corr = signal.correlate(degraded, clean, mode="full", method="fft")
    return int(np.argmax(corr)) - (len(clean) - 1)


def relative_energy_above_db(wave: np.ndarray, hz: float, rate: int = RATE) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave)))) ** 2
    freqs = np.fft.rfftfreq(len(wave), 1 / rate)
    return float(10 * np.log10(spectrum[freqs > hz].sum() / spectrum.sum() + 1e-300))


# ------------------------------------------------------------------ noise


@pytest.mark.parametrize("bank", ["synthetic", "recorded"])
def test_noise_reaches_target_snr_over_active_speech(bank):
    # Half tone, half silence: the active-speech SNR counts only the tone's frames.
    clean = np.zeros(RATE, dtype=np.float32)
    clean[:8000] = 0.1 * np.sin(2 * np.pi * 440 * np.arange(8000) / RATE)
    noises = {"hum": (0.3 * np.sin(2 * np.pi * 50 * np.arange(3 * RATE) / RATE)
                      + 0.05 * np.random.default_rng(9).standard_normal(3 * RATE)).astype(np.float32)}
    degrader = Degrader(only("noise"), noises if bank == "recorded" else {}, [])
    for seed in range(8):
        noisy, chain = degrader(clean, np.random.default_rng(seed))
        (record,) = chain
        assert record["effect"] == "noise" and 5.0 <= record["snr_db"] <= 30.0
        assert record["noise"] == "hum" if bank == "recorded" else record["noise"] in ("white", "pink", "brown")
        added = noisy.astype(np.float64) - clean
        achieved = 10 * np.log10(np.mean(clean[:8000].astype(np.float64) ** 2) / np.mean(added ** 2))
        assert abs(achieved - record["snr_db"]) < 0.5


def test_looped_noise_excerpt_has_requested_length(rng):
    noise = np.arange(100, dtype=np.float32)
    excerpt = effects.noise_segment(noise, 250, rng)
    assert len(excerpt) == 250
    assert np.all(np.diff(excerpt) % 100 == 1)  # consecutive samples of the loop, no gaps


# ------------------------------------------------------------------ reverberation


def test_reverb_keeps_length_alignment_and_level(rng):
    rir = np.zeros(4000, dtype=np.float32)
    rir[300] = 1.0  # 300 samples of pre-delay before the direct path
    rir[340:] = 0.05 * rng.standard_normal(3660) * np.exp(-np.arange(3660) / 800)
    degrader = Degrader(only("reverb"), {}, {"room": rir})
    click = np.zeros(RATE, dtype=np.float32)
    click[1000] = 0.5
    wet_click, chain = degrader(click, rng)
    assert chain[0]["rir"] == "room"
    assert int(np.argmax(np.abs(wet_click))) == 1000  # the direct path stays where the sound was
    assert np.abs(wet_click[:1000]).max() < 1e-6  # nothing before it (FFT rounding aside)
    assert np.abs(wet_click[1040:]).max() > 1e-3  # and a tail after it
    clean = speechlike(rng)
    wet, _ = degrader(clean, rng)
    assert len(wet) == len(clean)
    assert np.sqrt(np.mean(wet ** 2)) == pytest.approx(np.sqrt(np.mean(clean ** 2)), rel=1e-3)
    assert not np.allclose(wet, clean, atol=1e-3)


def test_rt60_estimate_of_synthetic_room(rng):
    room = effects.prepare_rir(effects.synthetic_rir(0.6, RATE, rng), RATE)
    assert room.rt60_s == pytest.approx(0.6, rel=0.15)


# ------------------------------------------------------------------ band limiting


@pytest.mark.parametrize("cutoff", [2000.0, 3400.0, 5500.0, 7200.0])
def test_lowpass_leaves_no_energy_above_cutoff(cutoff, rng):
    white = rng.standard_normal(2 * RATE).astype(np.float32)
    out = effects.lowpass(white, RATE, cutoff)
    assert len(out) == len(white)
    assert relative_energy_above_db(out, 1.1 * cutoff) < -60  # 10 % transition band
    assert relative_energy_above_db(out, 0.9 * cutoff) > -20  # the passband survives


@pytest.mark.parametrize("low_rate", [8000, 11025, 12000])
def test_resampling_leaves_no_energy_above_the_low_rate_nyquist(low_rate, rng):
    white = rng.standard_normal(2 * RATE).astype(np.float32)
    out = effects.resample_round_trip(white, RATE, low_rate)
    assert len(out) == len(white)
    assert relative_energy_above_db(out, 0.4 * low_rate) > -20  # the passband survives
    assert np.std(out) == pytest.approx(np.std(white) * np.sqrt(0.9 * low_rate / RATE), rel=0.1)  # unity gain
    assert relative_energy_above_db(out, low_rate / 2) < -60
    tone = speechlike(rng)
    assert lag_of(effects.resample_round_trip(tone, RATE, low_rate), tone) == 0


@pytest.mark.parametrize("p_resample", [0.0, 1.0])
def test_band_limit_effect_reports_its_cutoff(p_resample, rng):
    white = (0.1 * rng.standard_normal(2 * RATE)).astype(np.float32)
    degrader = Degrader(only("band_limit", p_resample=p_resample), {}, [])
    for seed in range(3):
        out, (record,) = degrader(white, np.random.default_rng(seed))
        assert record["method"] == ("resample" if p_resample else "lowpass")
        assert 2000 <= record["cutoff_hz"] <= 7200
        assert relative_energy_above_db(out, 1.1 * record["cutoff_hz"]) < -60


# ------------------------------------------------------------------ codecs


@pytest.mark.parametrize("codec, level, mode, bitrate", [
    ("mp3", 0.6, "CONSTANT", None), ("mp3", 0.95, "CONSTANT", None),  # 0.95 CBR: LAME pads, alignment must be restored
    ("mp3", 0.9, "VARIABLE", None), ("mp3", 0.8, "AVERAGE", None),
    ("vorbis", 0.3, None, None), ("vorbis", 1.0, None, None), ("opus", 0.75, None, None), ("opus", 1.0, None, None),
    ("opus_silk", None, None, 6.0), ("opus_silk", None, None, 40.0),
    ("alaw", None, None, None), ("mulaw", None, None, None),
])
def test_codec_round_trip_keeps_length_and_alignment(codec, level, mode, bitrate, rng):
    clean = speechlike(rng)
    decoded, kbps = effects.codec_round_trip(clean, RATE, codec, level, mode, bitrate)
    assert decoded.dtype == np.float32 and len(decoded) == len(clean)
    assert abs(lag_of(decoded, clean)) <= 1
    assert kbps > 0
    assert not np.array_equal(decoded, clean)  # a real lossy round trip happened
    snr = 10 * np.log10(np.sum(clean ** 2) / np.sum((decoded - clean) ** 2))
    assert snr > 0  # still the same signal


@pytest.mark.parametrize("codec, bitrate", [("opus", None), ("opus_silk", 12.0)])
def test_codec_at_an_unsupported_rate_resamples_around_it(codec, bitrate, rng):
    clean = speechlike(rng, rate=22050)
    assert effects.codec_rate(codec, 22050) == 24000
    decoded, _ = effects.codec_round_trip(clean, 22050, codec, 0.8 if bitrate is None else None, kbps=bitrate)
    assert len(decoded) == len(clean) and abs(lag_of(decoded, clean)) <= 1


@pytest.mark.parametrize("kbps", [6.0, 24.0])
def test_opus_silk_spends_the_requested_bitrate_and_repeats_itself(kbps, rng):
    clean = speechlike(rng, seconds=3.0)
    decoded, used = effects.codec_round_trip(clean, RATE, "opus_silk", kbps=kbps)
    assert used == pytest.approx(kbps, rel=0.25)  # VBR around the target, from the packets actually sent
    again, _ = effects.codec_round_trip(clean.copy(), RATE, "opus_silk", kbps=kbps)
    assert np.array_equal(decoded, again)


def test_opus_silk_refuses_to_leave_silk_mode(monkeypatch, rng):
    # libopus must code frames shorter than 10 ms with CELT, the CPU-dependent layer: an error, not silent bytes.
    monkeypatch.setattr(opus, "FRAME_S", 0.005)
    with pytest.raises(opus.OpusError, match="left SILK mode"):
        effects.codec_round_trip(speechlike(rng), RATE, "opus_silk", kbps=12.0)


def test_opus_silk_needs_a_bitrate(rng):
    with pytest.raises(ValueError, match="kbps"):
        effects.codec_round_trip(speechlike(rng), RATE, "opus_silk")


def test_codec_effect_records_its_settings(rng):
    clean = speechlike(rng)
    degrader = Degrader(only("codec", codec_weights={**DegradationConfig().codec_weights, "opus_silk": 1.0}), {}, [])
    seen = set()
    for seed in range(16):
        out, (record,) = degrader(clean, np.random.default_rng(seed))
        seen.add(record["codec"])
        assert len(out) == len(clean) and abs(lag_of(out, clean)) <= 1
        assert record["kbps"] > 0
        if record["codec"] == "mp3":
            assert record["bitrate_mode"] in effects.MP3_BITRATE_MODES
        if record["codec"] == "opus_silk":
            assert 6.0 <= record["bitrate_kbps"] <= 40.0
    assert len(seen) >= 3 and "opus_silk" in seen


def test_reproducible_config_codes_opus_in_silk_mode_only():
    default, pinned = DegradationConfig(), DegradationConfig.reproducible()
    assert default.cpu_dependent_codecs() == ["opus"] and pinned.cpu_dependent_codecs() == []
    assert pinned.codec_weights == {("opus_silk" if c == "opus" else c): w for c, w in default.codec_weights.items()}
    assert pinned.to_dict() == {**default.to_dict(), "codec_weights": pinned.codec_weights}


# ------------------------------------------------------------------ packet loss, clipping, gain


def test_packet_loss_zeroes_whole_20ms_frames(rng):
    clean = (0.5 + 0.1 * rng.random(RATE + 100)).astype(np.float32)  # never zero by itself
    out, lost = effects.drop_packets(clean, RATE, 0.2, rng, frame_ms=20.0)
    frame = 320
    assert len(out) == len(clean) and lost
    for index in range(-(-len(clean) // frame)):
        piece, original = out[index * frame:(index + 1) * frame], clean[index * frame:(index + 1) * frame]
        if index in lost:
            assert not piece.any()
        else:
            assert np.array_equal(piece, original)


def test_packet_loss_effect_counts_lost_frames(rng):
    clean = (0.5 + 0.1 * rng.random(RATE)).astype(np.float32)
    out, (record,) = Degrader(only("packet_loss"), {}, [])(clean, rng)
    zero_frames = int(np.sum(~out.reshape(-1, 320).any(axis=1)))
    assert record["frames_lost"] == zero_frames >= 1 and record["frame_ms"] == 20.0


def test_clipping_caps_at_the_threshold(rng):
    clean = speechlike(rng)
    out, (record,) = Degrader(only("clipping", clipped_fraction=[0.02, 0.02]), {}, [])(clean, rng)
    threshold = record["threshold"]
    assert 0 < threshold < np.abs(clean).max()
    assert np.abs(out).max() <= threshold + 1e-7
    assert record["clipped_fraction"] == pytest.approx(0.02, abs=0.002)
    below = np.abs(clean) < threshold
    assert np.array_equal(out[below], clean[below])  # untouched under the rail


def test_gain_is_applied_and_output_never_exceeds_full_scale(rng):
    clean = speechlike(rng)
    out, (record,) = Degrader(only("gain", gain_db=[-6, -6]), {}, [])(clean, rng)
    assert record == {"effect": "gain", "gain_db": -6.0}
    assert np.allclose(out, clean * 10 ** (-6 / 20), atol=1e-6)
    loud, chain = Degrader(only("gain", gain_db=[30, 30]), {}, [])(clean, rng)
    assert np.abs(loud).max() <= 0.99 + 1e-6
    assert chain[-1]["effect"] == "peak_limit" and chain[-1]["gain_db"] < 0


# ------------------------------------------------------------------ the chain


def test_default_chain_contract_and_determinism(rng):
    clean = speechlike(rng, seconds=2.0)
    degrader = Degrader(DegradationConfig(), {}, [])
    outputs = {}
    for seed in range(6):
        first, chain = degrader(clean, np.random.default_rng(seed))
        again, chain_again = degrader(clean, np.random.default_rng(seed))
        assert np.array_equal(first, again) and chain == chain_again
        assert first.dtype == np.float32 and len(first) == len(clean) and np.all(np.isfinite(first))
        assert np.abs(first).max() <= 0.99 + 1e-6
        assert any(r["effect"] in EFFECTS for r in chain)  # at least one real degradation
        json.dumps(chain)  # metadata is JSON-ready
        outputs[seed] = first
    assert not np.array_equal(outputs[0], outputs[1])


def test_min_effects_forces_a_degradation(rng):
    clean = speechlike(rng, seconds=0.5)
    config = DegradationConfig.from_dict({**{f"p_{n}": 0.001 for n in EFFECTS}, "min_effects": 2})
    for seed in range(10):
        _, chain = Degrader(config, {}, [])(clean, np.random.default_rng(seed))
        assert len([r for r in chain if r["effect"] in EFFECTS]) >= 2


def test_bad_waves_are_refused(tone):
    degrader = Degrader(DegradationConfig(), {}, [])
    bad = tone.copy()
    bad[10] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        degrader(bad, np.random.default_rng(0))
    with pytest.raises(ValueError, match="mono"):
        degrader(np.stack([tone, tone], axis=1), np.random.default_rng(0))
    with pytest.raises(ValueError, match="noise 'dead'"):
        Degrader(DegradationConfig(), {"dead": np.zeros(100)}, [])


# ------------------------------------------------------------------ config


def test_config_errors_name_the_field():
    with pytest.raises(DegradationConfigError, match="p_nosie"):
        DegradationConfig.from_dict({"p_nosie": 0.5})
    with pytest.raises(DegradationConfigError, match="'snr_db'"):
        DegradationConfig.from_dict({"snr_db": [30, 5]})
    with pytest.raises(DegradationConfigError, match="'p_codec'"):
        DegradationConfig.from_dict({"p_codec": 1.5})
    with pytest.raises(DegradationConfigError, match="'codec_weights'"):
        DegradationConfig.from_dict({"codec_weights": {"amr": 1.0}})
    with pytest.raises(DegradationConfigError, match="'min_effects'"):
        DegradationConfig.from_dict({**{f"p_{n}": 0.0 for n in EFFECTS}, "min_effects": 1})


def test_config_round_trips_through_plain_values():
    config = DegradationConfig(p_noise=0.9, snr_db=(10.0, 20.0))
    plain = json.loads(json.dumps(config.to_dict()))
    assert DegradationConfig.from_dict(plain) == config


# ------------------------------------------------------------------ dataset banks and materialisation


def make_dataset(root, rng):
    """A tiny dataset root: 5 utterances over val/test, a noise and an RIR bank, and bad entries."""
    for split, ids in (("val", ["v1", "v2", "v3"]), ("test", ["t1", "t2"])):
        rows = []
        for utt_id in ids:
            relative = f"clean/en/spk_{split}/{utt_id}.wav"
            (root / relative).parent.mkdir(parents=True, exist_ok=True)
            wave = speechlike(rng, seconds=0.8)
            sf.write(root / relative, wave, RATE, subtype="PCM_16")
            rows.append({"utt_id": utt_id, "path": relative, "duration_s": 0.8, "sample_rate": RATE, "channels": 1,
                         "language": "en", "speaker": f"spk_{split}", "split": split, "transcript": "hello"})
        write_manifest(pd.DataFrame(rows, columns=list(COLUMNS)), manifest_path(root, split))
    (root / "noise").mkdir()
    sf.write(root / "noise" / "pink.wav", 0.1 * effects.colored_noise("pink", 2 * RATE, rng), RATE)
    (root / "noise" / "broken.wav").write_text("not audio")
    (root / "rir").mkdir()
    rir = effects.synthetic_rir(0.3, RATE, rng)
    sf.write(root / "rir" / "small_room.wav", rir / np.abs(rir).max(), RATE, subtype="FLOAT")


def test_from_dataset_loads_banks_and_skips_bad_files(tmp_path, rng, caplog):
    make_dataset(tmp_path, rng)
    with caplog.at_level(logging.WARNING):
        degrader = Degrader.from_dataset(tmp_path)
    assert list(degrader.noises) == ["pink"] and list(degrader.rooms) == ["small_room"]
    assert "broken.wav" in caplog.text


def test_materialize_degraded_is_deterministic_and_skips_bad_rows(tmp_path, rng, caplog):
    make_dataset(tmp_path, rng)
    val = read_manifest(manifest_path(tmp_path, "val"))
    bad = [{**val.iloc[0].to_dict(), "utt_id": "gone", "path": "clean/en/missing.wav"},
           {**val.iloc[0].to_dict(), "utt_id": "escape", "path": "../outside.wav"}]
    write_manifest(pd.concat([val, pd.DataFrame(bad)], ignore_index=True), manifest_path(tmp_path, "val"))

    with caplog.at_level(logging.WARNING):
        written = materialize_degraded(tmp_path, seed=7)
    assert "gone" in caplog.text and "escape" in caplog.text
    assert "other CPU models" not in caplog.text  # the default config is the reproducible one
    assert set(written) == {"val", "test"}
    first = {split: path.read_bytes() for split, path in written.items()}
    wavs = {p.name: p.read_bytes() for p in sorted((tmp_path / "degraded").rglob("*.wav"))}
    assert sorted(wavs) == ["t1.wav", "t2.wav", "v1.wav", "v2.wav", "v3.wav"]

    frame = read_manifest(written["val"])
    assert list(frame.columns) == list(COLUMNS) + ["clean_path", "degradation"]
    assert list(frame["utt_id"]) == ["v1", "v2", "v3"]
    for row in frame.itertuples():
        assert row.path == f"degraded/val/{row.utt_id}.wav"
        degraded, _ = sf.read(tmp_path / row.path)
        clean, _ = sf.read(tmp_path / row.clean_path)
        assert len(degraded) == len(clean)
        chain = json.loads(row.degradation)
        assert any(r["effect"] in EFFECTS for r in chain)
        assert all(r.get("noise", "pink") == "pink" and r.get("rir", "small_room") == "small_room" for r in chain)

    materialize_degraded(tmp_path, seed=7)
    assert {split: path.read_bytes() for split, path in written.items()} == first
    assert {p.name: p.read_bytes() for p in sorted((tmp_path / "degraded").rglob("*.wav"))} == wavs

    materialize_degraded(tmp_path, seed=8)
    assert {p.name: p.read_bytes() for p in sorted((tmp_path / "degraded").rglob("*.wav"))} != wavs

    caplog.clear()
    with caplog.at_level(logging.WARNING):
        materialize_degraded(tmp_path, seed=7, config=DegradationConfig())
    assert "['opus'] encode differently on other CPU models" in caplog.text

    write_manifest(val.iloc[:2], manifest_path(tmp_path, "val"))  # v3 leaves the split
    materialize_degraded(tmp_path, splits=("val",), seed=7)
    assert sorted(p.name for p in (tmp_path / "degraded" / "val").glob("*.wav")) == ["v1.wav", "v2.wav"]
