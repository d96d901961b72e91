"""The demo corpus builder: layout, determinism, atomic replacement, and its sound sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from miipher2.cli import main as cli_main
from miipher2.data import demo, synth
from miipher2.data.demo import DemoBuildError, DemoConfig, build_demo
from miipher2.data.manifest import COLUMNS, SPLITS, manifest_path, read_manifest
from miipher2.data.paths import resolve_inside
from miipher2.data.versioning import directory_md5, file_hashes, recorded_toolchain

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny") / "data"
    summary = build_demo(root, DemoConfig.tiny())
    return root, summary


def differences(first: Path, second: Path) -> dict[str, str]:
    """Which files differ between two builds, and how: a recurrence should tell what changed."""
    hashes = file_hashes(first), file_hashes(second)
    found = {}
    for name in sorted(set(hashes[0]) | set(hashes[1])):
        if hashes[0].get(name) == hashes[1].get(name):
            continue
        if name not in hashes[0] or name not in hashes[1]:
            found[name] = "in one build only"
        elif name.endswith(".wav"):
            found[name] = wav_difference(first / name, second / name)
        else:
            found[name] = "other bytes"
    return found


def wav_difference(first: Path, second: Path) -> str:
    a, b = (sf.read(path, dtype="int16")[0].astype(int) for path in (first, second))
    n = min(a.size, b.size)
    changed = np.nonzero(a[:n] != b[:n])[0]
    where = f", first at {changed[0]}, max |diff| {np.abs(a[changed] - b[changed]).max()}" if changed.size else ""
    return f"{a.size} vs {b.size} samples, {changed.size} differ{where}"


def test_same_seed_gives_identical_bytes(tiny_corpus, tmp_path):
    root, _ = tiny_corpus
    again = build_demo(tmp_path / "again", DemoConfig.tiny()).root
    assert differences(root, again) == {}
    assert len(file_hashes(root)) > 20  # speech, noises, rooms, manifests, degraded copies


def test_other_seed_changes_voices_noise_and_rooms(tiny_corpus, tmp_path):
    root, _ = tiny_corpus
    other = build_demo(tmp_path / "other", DemoConfig.tiny(seed=1, librivox_dir=None)).root
    for name in ("noise/white.wav", "noise/babble.wav", "rir/room_00.wav", "manifests/train.csv"):
        assert (root / name).read_bytes() != (other / name).read_bytes(), name


def test_manifests_follow_the_contract(tiny_corpus):
    root, summary = tiny_corpus
    frames = {split: read_manifest(manifest_path(root, split)) for split in SPLITS}
    for split, frame in frames.items():
        assert tuple(frame.columns) == COLUMNS
        assert (frame["split"] == split).all()
        assert frame["utt_id"].is_unique and frame["transcript"].str.len().gt(0).all()
        for row in frame.itertuples():
            info = sf.info(resolve_inside(root, row.path))
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            assert row.duration_s == pytest.approx(info.frames / 16000, abs=1e-4)
            assert row.path == f"clean/{row.language}/{row.speaker}/{row.utt_id}.wav"
    speakers = {split: set(frame["speaker"]) for split, frame in frames.items()}
    assert not speakers["train"] & speakers["val"] and not speakers["train"] & speakers["test"] \
        and not speakers["val"] & speakers["test"]
    # Every language has a voice in every split; the real recordings are test-only.
    for split in SPLITS:
        assert set(frames[split]["language"]) == {"en", "de"}
    librivox = pd.concat(frames.values()).query("speaker == 'en-librivox'")
    assert len(librivox) == 5 and set(librivox["split"]) == {"test"}
    assert librivox["transcript"].str.contains("dashwood").any()
    assert summary.minutes("test") > summary.minutes("train")  # tiny: LibriVox dominates


def test_noise_and_room_banks(tiny_corpus):
    root, _ = tiny_corpus
    for name in demo.NOISE_NAMES:
        wave, rate = sf.read(root / "noise" / f"{name}.wav")
        assert rate == 16000 and wave.size == 2 * 16000
        assert 0.05 < np.sqrt(np.mean(wave**2)) < 0.15 and np.abs(wave).max() < 1.0
    rooms = pd.read_csv(root / "rir" / "rirs.csv")
    assert list(rooms.columns[:3]) == ["name", "path", "rt60_s"]
    assert rooms["rt60_s"].between(0.2, 1.0).all()
    for row in rooms.itertuples():
        rir, rate = sf.read(resolve_inside(root, row.path))
        assert rate == 16000 and np.argmax(np.abs(rir)) < 0.05 * 16000  # direct path first


def test_degraded_copies_are_materialised(tiny_corpus):
    root, summary = tiny_corpus
    assert summary.degraded
    for split in ("val", "test"):
        degraded = pd.read_csv(root / "manifests" / f"{split}_degraded.csv", keep_default_na=False)
        assert len(degraded) == len(summary.manifests[split])
        for row in degraded.itertuples():
            assert resolve_inside(root, row.path).is_file() and row.path.startswith(f"degraded/{split}/")
            assert isinstance(json.loads(row.degradation), list)


def test_rebuild_replaces_whole_and_failed_build_keeps_old_corpus(tmp_path, monkeypatch):
    root = tmp_path / "data"
    config = DemoConfig.tiny(languages=("en",), librivox_dir=None, rooms=1)
    build_demo(root, config)
    (root / "stale.txt").write_text("from an older build")
    build_demo(root, config)
    assert not (root / "stale.txt").exists()
    before = file_hashes(root)

    def crash(*args, **kwargs):
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(demo, "_write_rir_bank", crash)
    with pytest.raises(RuntimeError, match="killed mid-build"):
        build_demo(root, config)
    assert file_hashes(root) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # no staging leftovers


def test_abandoned_staging_directories_are_cleaned(tmp_path):
    abandoned = tmp_path / ".data.building-999999999"  # no such process
    abandoned.mkdir()
    build_demo(tmp_path / "data", DemoConfig.tiny(languages=("en",), librivox_dir=None, rooms=1))
    assert not abandoned.exists()


@pytest.mark.parametrize("overrides, message", [
    (dict(languages=("xx",)), "no demo sentences"),
    (dict(voices_per_language=2), "voices_per_language"),
    (dict(sentences_per_voice=0), "sentences_per_voice"),
])
def test_bad_config_is_refused_before_any_work(tmp_path, overrides, message):
    with pytest.raises(DemoBuildError, match=message):
        build_demo(tmp_path / "data", DemoConfig.tiny(**overrides))
    assert not (tmp_path / "data").exists()


def test_missing_librivox_names_the_package(tmp_path):
    with pytest.raises(DemoBuildError, match="pocketsphinx-testdata"):
        build_demo(tmp_path / "data", DemoConfig.tiny(languages=("en",), librivox_dir=tmp_path / "nowhere"))


def test_cli_builds_and_prints_a_summary(tmp_path, capsys):
    assert cli_main(["data", "build-demo", "--tiny", "--root", str(tmp_path / "data"), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "train:" in out and "rir/: 2 rooms" in out
    assert manifest_path(tmp_path / "data", "val").is_file()


# --------------------------------------------------------------------------- sound sources

def test_voices_are_split_per_language_with_both_genders():
    voices = demo.demo_voices(DemoConfig())
    assert len(voices) >= 8
    for language, entries in voices.items():
        splits = [split for _, split in entries]
        assert splits.count("test") == 1 and splits.count("val") == 1 and splits.count("train") >= 2
        variants = {voice.variant[0] for voice, _ in entries}
        assert variants == {"m", "f"}, language


def test_espeak_speaks_every_language_at_16k():
    for language in ("en", "ru"):
        wave = synth.synthesize("один два три" if language == "ru" else "one two three",
                                synth.Voice(language, "f2", 160, 50))
        assert wave.dtype == np.float32 and 0.5 < wave.size / 16000 < 3 and np.abs(wave).max() > 0.05


def test_espeak_error_names_the_voice():
    with pytest.raises(synth.SynthesisError, match="nonexistent"):
        synth.synthesize("hello", synth.Voice("nonexistent", "m1", 160, 50))


@pytest.mark.parametrize("exponent", [0.0, 1.0, 2.0])
def test_colored_noise_has_the_requested_spectral_slope(exponent):
    wave = synth.colored_noise(np.random.default_rng(0), 160000, exponent)
    spectrum = np.abs(np.fft.rfft(wave)) ** 2
    freqs = np.fft.rfftfreq(wave.size, 1 / 16000)
    band = (freqs > 50) & (freqs < 5000)
    slope = np.polyfit(np.log10(freqs[band]), np.log10(spectrum[band]), 1)[0]
    assert slope == pytest.approx(-exponent, abs=0.1)


def test_mains_hum_sits_on_the_mains_frequency():
    wave = synth.mains_hum(np.random.default_rng(0), 160000, 60.0)
    spectrum = np.abs(np.fft.rfft(wave))
    freqs = np.fft.rfftfreq(wave.size, 1 / 16000)
    assert abs(freqs[np.argmax(spectrum)] - 60.0) < 1.0


@pytest.mark.parametrize("target", [0.25, 0.9])
def test_simulated_room_reaches_target_rt60(target):
    import pyroomacoustics as pra

    room = synth.simulate_room(np.random.default_rng(7), target)
    assert room.rt60_s == pytest.approx(target, rel=0.05)
    # The stored (trimmed, normalised) response still has that decay.
    assert pra.experimental.measure_rt60(room.rir.astype(float), fs=16000) == pytest.approx(target, rel=0.1)


@pytest.mark.slow
def test_full_corpus_has_the_promised_size_and_reproduces_data_dvc(tmp_path):
    import yaml

    summary = build_demo(tmp_path / "data")
    pinned = yaml.safe_load((REPO_ROOT / "data.dvc").read_text())["outs"][0]["md5"]
    tools = {tool: (version, recorded_toolchain(REPO_ROOT).get(tool)) for tool, version in demo.toolchain().items()}
    assert directory_md5(tmp_path / "data") == pinned, (
        "the demo build no longer reproduces data.dvc: if the builder or degradation code changed on purpose, run "
        "`miipher2 data pin-demo` and commit data.dvc; else the build lost determinism. Tools (here, pinned): "
        f"{tools}")
    frames = summary.manifests
    synthetic = pd.concat(frames.values()).query("speaker != 'en-librivox'")
    assert synthetic["language"].nunique() >= 8
    assert synthetic.groupby("language")["speaker"].nunique().min() >= 2
    assert 20 <= sum(summary.minutes(split) for split in SPLITS) <= 40
    for name in demo.NOISE_NAMES:
        assert sf.info(tmp_path / "data" / "noise" / f"{name}.wav").duration >= 10


def test_load_summary_describes_an_existing_corpus(tiny_corpus):
    root, built = tiny_corpus
    loaded = demo.load_summary(root)
    assert str(loaded) == str(built)
