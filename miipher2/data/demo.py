"""The deterministic multilingual demo corpus (`miipher2 data build-demo`).

Clean speech: espeak-ng voices in ten languages (a speaker is language + voice variant) and the
five real LibriVox recordings shipped in Debian's `pocketsphinx-testdata` (test split only).
Around the speech: a seeded noise bank, simulated rooms, speaker-disjoint manifests, and the
fixed degraded copies of val/test. Same seed, same bytes, so `data.dvc` can pin the result.

The build happens in a sibling temp directory that replaces the target only when complete:
a killed build never leaves a half corpus under the real name.
"""

from __future__ import annotations

import os
import re
import shutil
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from miipher2.audio import read_audio, write_audio
from miipher2.data import synth
from miipher2.data.demo_sentences import SENTENCES
from miipher2.data.manifest import COLUMNS, SPLITS, manifest_path, read_manifest, write_manifest

LIBRIVOX_DIR = Path("/usr/share/pocketsphinx/test/data/librivox")
# Half male, half female variants; robots and whispers would not be "clean speech".
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5")
NOISE_NAMES = ("white", "pink", "brown", "hum_50hz", "hum_60hz", "babble", "tonal")
BABBLE_TALKERS = 6
RT60_RANGE_S = (0.2, 1.0)


class DemoBuildError(RuntimeError):
    """The corpus cannot be built as configured; the message says what is missing."""


@dataclass(frozen=True)
class DemoConfig:
    """How big the corpus is. The defaults give ~30 minutes of speech; tests use `tiny()`."""

    languages: tuple[str, ...] = tuple(SENTENCES)
    voices_per_language: int = 5      # per language: 1 test, 1 val, the rest train
    sentences_per_voice: int = 8
    noise_seconds: float = 12.0
    rooms: int = 12
    librivox_dir: Path | None = LIBRIVOX_DIR  # None leaves the real recordings out
    seed: int = 0
    workers: int = 2                  # concurrent espeak-ng processes

    @classmethod
    def tiny(cls, **overrides) -> "DemoConfig":
        """A few seconds to build: two languages, three voices, one sentence, small banks."""
        values = dict(languages=("en", "de"), voices_per_language=3, sentences_per_voice=1,
                      noise_seconds=2.0, rooms=2)
        values.update(overrides)
        return cls(**values)

    def validate(self) -> None:
        unknown = sorted(set(self.languages) - set(SENTENCES))
        if unknown:
            raise DemoBuildError(f"no demo sentences for languages {unknown}; known: {sorted(SENTENCES)}")
        if not 3 <= self.voices_per_language <= len(MALE_VARIANTS) + len(FEMALE_VARIANTS):
            raise DemoBuildError(f"voices_per_language must be 3..12 (one test, one val, >= 1 train), got {self.voices_per_language}")
        longest = min(len(SENTENCES[language]) for language in self.languages)
        if not 1 <= self.sentences_per_voice <= longest:
            raise DemoBuildError(f"sentences_per_voice must be 1..{longest}, got {self.sentences_per_voice}")
        if self.rooms < 1 or self.noise_seconds <= 0:
            raise DemoBuildError("rooms must be >= 1 and noise_seconds > 0")


@dataclass
class DemoSummary:
    root: Path
    manifests: dict[str, pd.DataFrame] = field(default_factory=dict)
    noises: list[str] = field(default_factory=list)
    rooms: int = 0
    degraded: bool = False

    def minutes(self, split: str) -> float:
        return float(self.manifests[split]["duration_s"].sum()) / 60

    def __str__(self) -> str:
        lines = [f"demo corpus at {self.root}"]
        for split in SPLITS:
            frame = self.manifests[split]
            per_language = ", ".join(f"{lang} {n}" for lang, n in frame["language"].value_counts().sort_index().items())
            lines.append(f"  {split:5s}: {len(frame):4d} utterances, {frame['speaker'].nunique():3d} speakers, "
                         f"{self.minutes(split):5.1f} min  ({per_language})")
        total = sum(self.minutes(split) for split in SPLITS)
        lines.append(f"  speech: {total:.1f} min in clean/, manifests in manifests/")
        lines.append(f"  noise/: {len(self.noises)} recordings ({', '.join(sorted(self.noises))}); rir/: {self.rooms} rooms (rirs.csv)")
        lines.append("  degraded/: val and test" if self.degraded else "  degraded/: not materialised")
        return "\n".join(lines)


def build_demo(root: str | Path = "data", config: DemoConfig | None = None) -> DemoSummary:
    """Build the corpus into `root` (replacing it whole at the end) and return a summary."""
    config = config or DemoConfig()
    config.validate()
    root = Path(root).absolute()
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_builds(root)
    staging = root.parent / f".{root.name}.building-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        summary = _build_into(staging, config)
        _swap_in(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    summary.root = root
    return summary


def _build_into(root: Path, config: DemoConfig) -> DemoSummary:
    rows = _synthesize_speech(root, config)
    if config.librivox_dir is not None:
        rows += _import_librivox(root, Path(config.librivox_dir))
    frame = pd.DataFrame(rows, columns=list(COLUMNS)).sort_values("utt_id", kind="stable").reset_index(drop=True)
    summary = DemoSummary(root)
    for split in SPLITS:
        part = frame[frame["split"] == split].reset_index(drop=True)
        write_manifest(part, manifest_path(root, split))
        summary.manifests[split] = part
    summary.noises = _write_noise_bank(root, summary.manifests["train"], config)
    summary.rooms = _write_rir_bank(root, config)
    summary.degraded = _materialize_degraded(root, config.seed)
    return summary


# --------------------------------------------------------------------------- speech

def demo_voices(config: DemoConfig) -> dict[str, list[tuple[synth.Voice, str]]]:
    """Voices per language with their split: shuffled by seed, first test, second val, rest train."""
    voices = {}
    for language in sorted(config.languages):
        rng = _rng(config.seed, "voices", language)
        n_female = config.voices_per_language // 2
        variants = list(rng.choice(MALE_VARIANTS, config.voices_per_language - n_female, replace=False))
        variants += list(rng.choice(FEMALE_VARIANTS, n_female, replace=False))
        chosen = [synth.Voice(language, str(variant), int(rng.integers(140, 186)), int(rng.integers(30, 71)))
                  for variant in sorted(variants)]
        order = rng.permutation(len(chosen))
        splits = ["test", "val"] + ["train"] * (len(chosen) - 2)
        voices[language] = sorted(((chosen[i], split) for i, split in zip(order, splits)), key=lambda vs: vs[0].variant)
    return voices


def _synthesize_speech(root: Path, config: DemoConfig) -> list[dict]:
    jobs = []
    for language, voices in demo_voices(config).items():
        for voice, split in voices:
            for index, text in enumerate(SENTENCES[language][: config.sentences_per_voice]):
                jobs.append((voice, split, f"{voice.speaker}-{index:03d}", text))
    # Each job is one espeak-ng process; threads just keep `workers` of them busy.
    with ThreadPoolExecutor(max_workers=config.workers) as pool:
        return list(pool.map(lambda job: _speak_one(root, config.seed, *job), jobs))


def _speak_one(root: Path, seed: int, voice: synth.Voice, split: str, utt_id: str, text: str) -> dict:
    wave = synth.synthesize(text, voice)
    # Recording levels differ between utterances; the restorer must not rely on one loudness.
    wave = synth.peak_normalize(wave, float(_rng(seed, "level", utt_id).uniform(-9.0, -1.0)))
    relative = f"clean/{voice.language}/{voice.speaker}/{utt_id}.wav"
    write_audio(root / relative, wave, synth.SAMPLE_RATE)
    return _row(utt_id, relative, wave.size, voice.language, voice.speaker, split, text)


def _import_librivox(root: Path, source: Path) -> list[dict]:
    """Each LibriVox file is one read sentence with its transcript in `transcription`."""
    transcripts_file = source / "transcription"
    if not transcripts_file.is_file():
        raise DemoBuildError(f"{transcripts_file} not found: install the Debian package `pocketsphinx-testdata` "
                             "(make setup does) or build with librivox_dir=None")
    rows = []
    for line_number, line in enumerate(transcripts_file.read_text(encoding="utf-8").splitlines(), start=1):
        match = re.fullmatch(r"\s*<s>\s*(.*?)\s*</s>\s*\((\S+)\)\s*", line)
        if not line.strip():
            continue
        if match is None:
            raise DemoBuildError(f"{transcripts_file}:{line_number}: expected '<s> text </s> (file id)', got {line!r}")
        text, file_id = match.groups()
        wave, _ = read_audio(source / f"{file_id}.wav", sample_rate=synth.SAMPLE_RATE)
        utt_id = f"en-librivox-{file_id.rsplit('-', 1)[-1]}"
        relative = f"clean/en/en-librivox/{utt_id}.wav"
        write_audio(root / relative, wave, synth.SAMPLE_RATE)
        rows.append(_row(utt_id, relative, wave.size, "en", "en-librivox", "test", text))
    return rows


def _row(utt_id: str, path: str, samples: int, language: str, speaker: str, split: str, transcript: str) -> dict:
    return dict(utt_id=utt_id, path=path, duration_s=round(samples / synth.SAMPLE_RATE, 4),
                sample_rate=synth.SAMPLE_RATE, channels=1, language=language, speaker=speaker, split=split,
                transcript=transcript)


# --------------------------------------------------------------------------- noise and rooms

def _write_noise_bank(root: Path, train: pd.DataFrame, config: DemoConfig) -> list[str]:
    samples = int(round(config.noise_seconds * synth.SAMPLE_RATE))
    makers = {
        "white": lambda rng: synth.colored_noise(rng, samples, 0.0),
        "pink": lambda rng: synth.colored_noise(rng, samples, 1.0),
        "brown": lambda rng: synth.colored_noise(rng, samples, 2.0),
        "hum_50hz": lambda rng: synth.mains_hum(rng, samples, 50.0),
        "hum_60hz": lambda rng: synth.mains_hum(rng, samples, 60.0),
        "babble": lambda rng: synth.babble(rng, samples, _babble_talkers(root, train, rng)),
        "tonal": lambda rng: synth.tonal_noise(rng, samples),
    }
    for name in NOISE_NAMES:
        write_audio(root / "noise" / f"{name}.wav", makers[name](_rng(config.seed, "noise", name)), synth.SAMPLE_RATE)
    return list(NOISE_NAMES)


def _babble_talkers(root: Path, train: pd.DataFrame, rng: np.random.Generator) -> list[np.ndarray]:
    """One utterance from each of up to six train speakers: babble never contains a val/test voice."""
    speakers = sorted(train["speaker"].unique())
    chosen = rng.choice(speakers, min(BABBLE_TALKERS, len(speakers)), replace=False)
    waves = []
    for speaker in sorted(chosen):
        rows = train[train["speaker"] == speaker].sort_values("utt_id")
        waves.append(read_audio(root / rows.iloc[int(rng.integers(len(rows)))]["path"])[0])
    return waves


def _write_rir_bank(root: Path, config: DemoConfig) -> int:
    rng = _rng(config.seed, "rooms")
    # Stratified targets cover 0.2-1.0 s even with few rooms; the ends are kept 5% inside so
    # the measured RT60 (within 5% of target) stays in range.
    low, high = RT60_RANGE_S[0] * 1.1, RT60_RANGE_S[1] * 0.95
    targets = low + (high - low) * (np.arange(config.rooms) + rng.uniform(0, 1, config.rooms)) / config.rooms
    records = []
    for index, target in enumerate(targets):
        room = synth.simulate_room(rng, round(float(target), 3))
        name = f"room_{index:02d}"
        write_audio(root / "rir" / f"{name}.wav", room.rir, synth.SAMPLE_RATE)
        records.append(dict(name=name, path=f"rir/{name}.wav", rt60_s=round(room.rt60_s, 3),
                            target_rt60_s=room.target_rt60_s,
                            **{f"room_{axis}_m": v for axis, v in zip("xyz", room.room_m)},
                            **{f"source_{axis}_m": v for axis, v in zip("xyz", room.source_m)},
                            **{f"mic_{axis}_m": v for axis, v in zip("xyz", room.mic_m)}))
    write_manifest(pd.DataFrame(records), root / "rir" / "rirs.csv")
    return len(records)


def _materialize_degraded(root: Path, seed: int) -> bool:
    from miipher2.data.degrade import materialize_degraded

    materialize_degraded(root, splits=("val", "test"), seed=seed)
    return True


# --------------------------------------------------------------------------- helpers

def _rng(seed: int, *purpose: str) -> np.random.Generator:
    """An independent stream per purpose, so adding a language never reshuffles the rooms."""
    return np.random.default_rng([seed, *(zlib.crc32(part.encode()) for part in purpose)])


def _swap_in(staging: Path, root: Path) -> None:
    """Replace `root` by the finished build. Between the two renames `root` is briefly absent,
    never half-written; the old corpus is deleted only after the new one is in place."""
    retired = root.parent / f".{root.name}.old-{os.getpid()}"
    if root.exists():
        os.replace(root, retired)
    os.replace(staging, root)
    shutil.rmtree(retired, ignore_errors=True)


def _remove_abandoned_builds(root: Path) -> None:
    """Leftovers of killed builds (their process is gone) would otherwise pile up beside `root`."""
    for leftover in root.parent.glob(f".{root.name}.*-*"):
        kind, _, pid = leftover.name.rpartition("-")
        if kind.endswith((".building", ".old")) and pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def toolchain() -> dict[str, str]:
    """The machine architecture and the versions of everything whose output lands in the corpus's
    bytes. data.dvc records them (`meta: built_with`), so a rebuild that misses the pinned hash can
    say what differs."""
    import platform

    import pyroomacoustics
    import scipy
    import soundfile

    from miipher2.data import opus

    return {"machine": platform.machine(), "espeak-ng": synth.espeak_version(), "libopus": opus.version(),
            "soundfile": f"{soundfile.__version__} (libsndfile {soundfile.__libsndfile_version__})",
            "numpy": np.__version__, "scipy": scipy.__version__, "pandas": pd.__version__,
            "pyroomacoustics": pyroomacoustics.__version__}


def load_summary(root: str | Path) -> DemoSummary:
    """Summary of an existing corpus (what `build_demo` would have printed)."""
    root = Path(root)
    summary = DemoSummary(root, {split: read_manifest(manifest_path(root, split)) for split in SPLITS})
    summary.noises = sorted(p.stem for p in (root / "noise").glob("*.wav"))
    summary.rooms = len(list((root / "rir").glob("*.wav")))
    summary.degraded = (root / "degraded").is_dir()
    return summary
