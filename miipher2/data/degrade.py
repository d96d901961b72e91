"""The degradation simulator: a seeded random chain of effects, and a materialised degraded copy.

Miipher-2 learns to undo what real recordings suffer. `Degrader` draws, per utterance, which
effects apply and with what strength, applies them in a physically sensible order and returns the
applied chain as JSON-ready metadata, so an evaluation can group results by degradation:

    room (reverb) -> background noise -> level (gain) -> overdriven input (clipping)
    -> narrow-band capture (band_limit) -> transmission (codec) -> lost packets (packet_loss)

SNR is the ratio of the ACTIVE speech power of the signal at the point the noise is added (after
any reverberation; frames within 40 dB of the loudest 20 ms frame, a simplified ITU-T P.56 level)
to the mean power of the added noise. Randomness comes only from the `np.random.Generator` passed
in, so the same seed gives the same output, bit for bit.
"""

from __future__ import annotations

import json
import logging
import re
import zlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from miipher2.audio import AudioError, read_audio, write_audio
from miipher2.data import effects
from miipher2.data.manifest import manifest_path, read_manifest, write_manifest
from miipher2.data.paths import UnsafePathError, resolve_inside

log = logging.getLogger(__name__)

EFFECTS = ("reverb", "noise", "gain", "clipping", "band_limit", "codec", "packet_loss")
OUTPUT_PEAK = 0.99  # headroom below full scale: PCM writers and codecs wrap around beyond 1.0


class DegradationConfigError(ValueError):
    """A degradation config value that cannot work; the message names the field."""


@dataclass
class DegradationConfig:
    """Probabilities (p_*) of each effect and the ranges its strength is drawn from (uniformly)."""

    p_reverb: float = 0.5
    rt60_s: tuple[float, float] = (0.2, 1.0)  # synthetic rooms, used only without an RIR bank
    p_noise: float = 0.8
    snr_db: tuple[float, float] = (5.0, 30.0)
    synthetic_noises: tuple[str, ...] = ("white", "pink", "brown")  # used only without a noise bank
    p_gain: float = 0.3
    gain_db: tuple[float, float] = (-12.0, 6.0)
    p_clipping: float = 0.1
    clipped_fraction: tuple[float, float] = (0.001, 0.05)  # share of samples at the rail
    p_band_limit: float = 0.3
    lowpass_hz: tuple[float, float] = (2000.0, 8000.0)  # capped at 0.45 x the audio rate
    p_resample: float = 0.5  # share of band limits done by resampling down and up instead of a low-pass
    resample_rates: tuple[int, ...] = (8000, 11025, 12000)
    p_codec: float = 0.5
    codec_weights: dict[str, float] = field(
        default_factory=lambda: {"mp3": 1.0, "vorbis": 1.0, "opus": 1.0, "alaw": 0.5, "mulaw": 0.5})
    # libsndfile compression_level: 0 = best quality, 1 = smallest. At 16 kHz these span
    # MP3 ~8-65 kbit/s, Vorbis ~28-48 kbit/s, Opus ~6-70 kbit/s. (MP3 refuses exactly 1.0.)
    mp3_compression: tuple[float, float] = (0.6, 0.99)
    mp3_bitrate_modes: tuple[str, ...] = effects.MP3_BITRATE_MODES
    vorbis_compression: tuple[float, float] = (0.3, 1.0)
    opus_compression: tuple[float, float] = (0.75, 1.0)
    opus_silk_kbps: tuple[float, float] = (6.0, 40.0)  # SILK's range: narrowband at 6, wideband from ~9
    p_packet_loss: float = 0.1
    packet_loss_rate: tuple[float, float] = (0.02, 0.15)
    packet_ms: float = 20.0
    min_effects: int = 1  # effects forced in when the random draw picked fewer

    def __post_init__(self) -> None:
        for name in EFFECTS:
            _check_probability(f"p_{name}", getattr(self, f"p_{name}"))
        _check_probability("p_resample", self.p_resample)
        for name, low, high in (("rt60_s", 0.01, 10.0), ("snr_db", -20.0, 100.0), ("gain_db", -60.0, 40.0),
                                ("clipped_fraction", 0.0, 0.5), ("lowpass_hz", 1.0, 1e6),
                                ("mp3_compression", 0.0, 0.999), ("vorbis_compression", 0.0, 1.0),
                                ("opus_compression", 0.0, 1.0), ("opus_silk_kbps", 6.0, 40.0),
                                ("packet_loss_rate", 0.0, 1.0)):
            setattr(self, name, _check(name, getattr(self, name), low, high))
        self.synthetic_noises = _check_choices("synthetic_noises", self.synthetic_noises, ("white", "pink", "brown"))
        self.mp3_bitrate_modes = _check_choices("mp3_bitrate_modes", self.mp3_bitrate_modes, effects.MP3_BITRATE_MODES)
        self.resample_rates = _check_rates("resample_rates", self.resample_rates)
        self.codec_weights = _check_weights("codec_weights", self.codec_weights, tuple(effects.CODECS))
        if not isinstance(self.packet_ms, (int, float)) or isinstance(self.packet_ms, bool) or self.packet_ms <= 0:
            raise DegradationConfigError(f"degradation config field 'packet_ms': expected a positive number, "
                                         f"got {self.packet_ms!r}")
        if not isinstance(self.min_effects, int) or isinstance(self.min_effects, bool) or self.min_effects < 0:
            raise DegradationConfigError(f"degradation config field 'min_effects': expected an integer >= 0, "
                                         f"got {self.min_effects!r}")
        possible = sum(self.probability(name) > 0 for name in EFFECTS)
        if self.min_effects > possible:
            raise DegradationConfigError(f"degradation config field 'min_effects': {self.min_effects} effects are "
                                         f"required but only {possible} have a probability above 0")

    def probability(self, effect: str) -> float:
        return float(getattr(self, f"p_{effect}"))

    @classmethod
    def reproducible(cls) -> "DegradationConfig":
        """The default chain with CPU-independent codecs only, for copies pinned by hash (data.dvc):
        Opus in its SILK speech mode (`opus_silk`) instead of libsndfile's `opus`, whose CELT mode
        encodes differently on Intel and AMD processors (see miipher2.data.opus)."""
        weights = {("opus_silk" if codec == "opus" else codec): w for codec, w in cls().codec_weights.items()}
        return cls(codec_weights=weights)

    def cpu_dependent_codecs(self) -> list[str]:
        """Codecs this config may apply whose output differs between CPU models."""
        return [c for c, w in self.codec_weights.items() if w > 0 and not effects.CODECS[c].reproducible]

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> "DegradationConfig":
        """Build from plain values (YAML/JSON); unknown fields and bad values raise, naming the field."""
        if not isinstance(values, Mapping):
            raise DegradationConfigError(f"degradation config must be a mapping, got {type(values).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise DegradationConfigError(f"unknown degradation config field(s) {unknown}; "
                                         f"known fields: {sorted(known)}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable values; from_dict(to_dict()) round-trips."""
        return json.loads(json.dumps(asdict(self)))


def _check_probability(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise DegradationConfigError(f"degradation config field {name!r}: expected a probability in [0, 1], "
                                     f"got {value!r}")


def _check(name: str, value: Any, low: float, high: float) -> tuple[float, float]:
    ok = (isinstance(value, (list, tuple)) and len(value) == 2
          and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))
    if not ok or not low <= value[0] <= value[1] <= high:
        raise DegradationConfigError(f"degradation config field {name!r}: expected [low, high] with "
                                     f"{low} <= low <= high <= {high}, got {value!r}")
    return float(value[0]), float(value[1])


def _check_choices(name: str, value: Any, allowed: tuple[str, ...]) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value \
            or any(v not in allowed for v in value):
        raise DegradationConfigError(f"degradation config field {name!r}: expected a non-empty list drawn "
                                     f"from {list(allowed)}, got {value!r}")
    return tuple(value)


def _check_rates(name: str, value: Any) -> tuple[int, ...]:
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not value \
            or any(isinstance(v, bool) or not isinstance(v, int) or v <= 0 for v in value):
        raise DegradationConfigError(f"degradation config field {name!r}: expected a non-empty list of positive "
                                     f"integer sample rates, got {value!r}")
    return tuple(value)


def _check_weights(name: str, value: Any, allowed: tuple[str, ...]) -> dict[str, float]:
    ok = isinstance(value, Mapping) and value and all(
        k in allowed and isinstance(w, (int, float)) and not isinstance(w, bool) and w >= 0 for k, w in value.items())
    if not ok or sum(value.values()) <= 0:
        raise DegradationConfigError(f"degradation config field {name!r}: expected a mapping from codecs "
                                     f"{list(allowed)} to non-negative weights, not all 0, got {value!r}")
    return {k: float(w) for k, w in value.items()}


class Degrader:
    """Draws and applies a random degradation chain: `degraded, chain = degrader(wave, rng)`.

    `noises` and `rirs` are banks (name -> mono array at `sample_rate`, or a plain list, named by
    index). An empty noise bank falls back to synthetic white/pink/brown noise, an empty RIR bank
    to synthetic exponentially decaying rooms; the metadata says which was used.
    """

    def __init__(self, config: DegradationConfig | None, noises: Mapping[str, np.ndarray] | list,
                 rirs: Mapping[str, np.ndarray] | list, sample_rate: int = 16000):
        self.config = config if config is not None else DegradationConfig()
        self.sample_rate = int(sample_rate)
        self.noises = {name: _check_noise(name, wave) for name, wave in _named(noises, "noise").items()}
        self.rooms = {}
        for name, rir in _named(rirs, "rir").items():
            try:
                self.rooms[name] = effects.prepare_rir(rir, self.sample_rate)
            except ValueError as err:
                raise ValueError(f"RIR {name!r}: {err}") from err
        self._codecs = [c for c, w in self.config.codec_weights.items() if w > 0]
        weights = np.array([self.config.codec_weights[c] for c in self._codecs])
        self._codec_p = weights / weights.sum()
        self._resample_rates = [r for r in self.config.resample_rates if r < self.sample_rate]
        self._lowpass_top = min(self.config.lowpass_hz[1], 0.45 * self.sample_rate)
        if self.config.p_band_limit > 0 and self.config.lowpass_hz[0] >= self._lowpass_top:
            raise ValueError(f"lowpass_hz {self.config.lowpass_hz} leaves no cutoff below 0.45 x the "
                             f"sample rate ({self._lowpass_top:g} Hz)")

    @classmethod
    def from_dataset(cls, root: str | Path, config: DegradationConfig | None = None,
                     sample_rate: int = 16000) -> "Degrader":
        """Load the banks root/noise/*.wav and root/rir/*.wav; unreadable files are reported and skipped."""
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"dataset root {root} does not exist")
        noises = _load_bank(root / "noise", sample_rate, _check_noise)
        rirs = _load_bank(root / "rir", sample_rate, lambda name, wave: effects.prepare_rir(wave, sample_rate))
        return cls(config, noises, rirs, sample_rate)

    def __call__(self, wave: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[dict]]:
        wave = _check_wave(wave)
        chosen = [name for name, draw in zip(EFFECTS, rng.random(len(EFFECTS))) if draw < self.config.probability(name)]
        missing = self.config.min_effects - len(chosen)
        if missing > 0:
            # Force the shortfall from the remaining effects, weighted by their own probabilities.
            rest = [name for name in EFFECTS if name not in chosen and self.config.probability(name) > 0]
            weights = np.array([self.config.probability(name) for name in rest])
            chosen += [str(n) for n in rng.choice(rest, size=missing, replace=False, p=weights / weights.sum())]
        chain = []
        for name in EFFECTS:
            if name in chosen:
                wave, record = self.apply_effect(name, wave, rng)
                chain.append(record)
        wave, limit_db = effects.limit_peak(wave, OUTPUT_PEAK)
        if limit_db:
            chain.append({"effect": "peak_limit", "gain_db": round(limit_db, 3)})
        if not np.all(np.isfinite(wave)):
            raise RuntimeError(f"degradation chain {chain} produced NaN/Inf samples")
        return wave.astype(np.float32, copy=False), chain

    def apply_effect(self, effect: str, wave: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
        """Draw one effect's parameters and apply it; returns (wave, metadata record)."""
        if effect not in EFFECTS:
            raise ValueError(f"unknown effect {effect!r}; expected one of {list(EFFECTS)}")
        return getattr(self, f"_{effect}")(_check_wave(wave), rng)

    # Each effect below draws its parameters from rng (rounded first, so the record is exact).

    def _reverb(self, wave, rng):
        if self.rooms:
            name = list(self.rooms)[int(rng.integers(len(self.rooms)))]
            room = self.rooms[name]
            rt60_s = None if room.rt60_s is None else round(room.rt60_s, 3)  # estimated from the decay
        else:
            name = "synthetic"
            rt60_s = round(float(rng.uniform(*self.config.rt60_s)), 3)
            room = effects.prepare_rir(effects.synthetic_rir(rt60_s, self.sample_rate, rng), self.sample_rate)
        return effects.reverberate(wave, room), {"effect": "reverb", "rir": name, "rt60_s": rt60_s}

    def _noise(self, wave, rng):
        snr_db = round(float(rng.uniform(*self.config.snr_db)), 2)
        if self.noises:
            name = list(self.noises)[int(rng.integers(len(self.noises)))]
            noise = effects.noise_segment(self.noises[name], len(wave), rng)
        else:
            name = str(rng.choice(self.config.synthetic_noises))
            noise = effects.colored_noise(name, len(wave), rng)
        out = effects.add_noise(wave, noise, snr_db, self.sample_rate)
        return out, {"effect": "noise", "snr_db": snr_db, "noise": name}

    def _gain(self, wave, rng):
        gain_db = round(float(rng.uniform(*self.config.gain_db)), 2)
        return effects.apply_gain(wave, gain_db), {"effect": "gain", "gain_db": gain_db}

    def _clipping(self, wave, rng):
        fraction = float(rng.uniform(*self.config.clipped_fraction))
        threshold = round(effects.clip_threshold(wave, fraction), 6)
        clipped = round(float(np.mean(np.abs(wave) >= threshold)), 4) if threshold > 0 else 0.0
        record = {"effect": "clipping", "threshold": threshold, "clipped_fraction": clipped}
        return effects.clip(wave, threshold), record

    def _band_limit(self, wave, rng):
        if self._resample_rates and rng.random() < self.config.p_resample:
            rate = int(self._resample_rates[int(rng.integers(len(self._resample_rates)))])
            out = effects.resample_round_trip(wave, self.sample_rate, rate)
            # the resampling filter's cutoff sits at 0.9 x the low rate's Nyquist frequency
            return out, {"effect": "band_limit", "method": "resample", "rate": rate, "cutoff_hz": 0.45 * rate}
        cutoff = round(float(rng.uniform(self.config.lowpass_hz[0], self._lowpass_top)), 1)
        return effects.lowpass(wave, self.sample_rate, cutoff), {"effect": "band_limit", "method": "lowpass",
                                                                  "cutoff_hz": cutoff}

    def _codec(self, wave, rng):
        codec = str(rng.choice(self._codecs, p=self._codec_p))
        record: dict[str, Any] = {"effect": "codec", "codec": codec}
        level = mode = bitrate = None
        if effects.CODECS[codec].compressible:
            level = round(float(rng.uniform(*getattr(self.config, f"{codec}_compression"))), 3)
            record["compression_level"] = level
        if codec == "mp3":
            mode = str(rng.choice(self.config.mp3_bitrate_modes))
            record["bitrate_mode"] = mode
        if codec == "opus_silk":
            bitrate = round(float(rng.uniform(*self.config.opus_silk_kbps)), 1)
            record["bitrate_kbps"] = bitrate
        # Encode within full scale (codecs clip/wrap beyond it), then restore the level.
        safe, limit_db = effects.limit_peak(wave, OUTPUT_PEAK)
        out, kbps = effects.codec_round_trip(safe, self.sample_rate, codec, level, mode, bitrate)
        if limit_db:
            out = effects.apply_gain(out, -limit_db)
        record["kbps"] = round(kbps, 1)
        return out, record

    def _packet_loss(self, wave, rng):
        loss_rate = round(float(rng.uniform(*self.config.packet_loss_rate)), 3)
        out, lost = effects.drop_packets(wave, self.sample_rate, loss_rate, rng, self.config.packet_ms)
        return out, {"effect": "packet_loss", "loss_rate": loss_rate, "frame_ms": self.config.packet_ms,
                     "frames_lost": len(lost)}


def _named(bank: Mapping[str, np.ndarray] | list | None, prefix: str) -> dict[str, np.ndarray]:
    if bank is None:
        return {}
    if isinstance(bank, Mapping):
        return {str(k): v for k, v in bank.items()}
    return {f"{prefix}{i}": v for i, v in enumerate(bank)}


def _check_wave(wave: np.ndarray) -> np.ndarray:
    wave = np.asarray(wave)
    if wave.ndim != 1:
        raise ValueError(f"expected a mono 1-D wave, got shape {wave.shape}")
    if len(wave) == 0:
        raise ValueError("cannot degrade an empty wave")
    if not np.issubdtype(wave.dtype, np.floating):
        raise ValueError(f"expected float samples in [-1, 1], got dtype {wave.dtype}")
    if not np.all(np.isfinite(wave)):
        raise ValueError("wave contains NaN or Inf samples")
    return wave.astype(np.float32, copy=False)


def _check_noise(name: str, wave: np.ndarray) -> np.ndarray:
    wave = np.asarray(wave, dtype=np.float32)
    if wave.ndim != 1 or len(wave) == 0:
        raise ValueError(f"noise {name!r}: expected a non-empty mono 1-D array, got shape {wave.shape}")
    if not np.all(np.isfinite(wave)):
        raise ValueError(f"noise {name!r}: contains NaN or Inf samples")
    if not np.any(wave):
        raise ValueError(f"noise {name!r}: is all zeros")
    return wave


def _load_bank(folder: Path, sample_rate: int, check: Callable[[str, np.ndarray], object]) -> dict[str, np.ndarray]:
    """Every readable *.wav in folder by stem, sorted; `check` raises ValueError on unusable ones."""
    if not folder.is_dir():
        log.warning("no %s bank at %s: falling back to synthetic %s", folder.name, folder, folder.name)
        return {}
    bank = {}
    for path in sorted(folder.glob("*.wav")):
        try:
            wave, _ = read_audio(path, sample_rate=sample_rate)
            check(path.stem, wave)
        except (AudioError, ValueError) as err:
            log.warning("skipping %s file %s: %s", folder.name, path, err)
            continue
        bank[path.stem] = wave
    if not bank:
        log.warning("no usable %s files in %s: falling back to synthetic %s", folder.name, folder, folder.name)
    return bank


# ---------------------------------------------------------------- the fixed evaluation copy

_SAFE_ID = re.compile(r"^[\w-][\w.-]*$")


def utterance_rng(seed: int, utt_id: str) -> np.random.Generator:
    """A generator that depends only on (seed, utt_id): stable across runs, processes and orderings."""
    return np.random.default_rng([int(seed), zlib.crc32(utt_id.encode("utf-8"))])


def materialize_degraded(root: str | Path, splits=("val", "test"), seed: int = 0,
                         config: DegradationConfig | None = None) -> dict[str, Path]:
    """Write degraded/{split}/<utt_id>.wav and manifests/{split}_degraded.csv for each split.

    The degraded manifest keeps the manifest's columns (path now the degraded copy) and adds
    clean_path and degradation (the applied chain as JSON). Every utterance gets at least one
    effect. Unusable rows are logged and skipped; the rest continue. Returns {split: manifest}.
    The default config is `DegradationConfig.reproducible()`: the same bytes on any CPU.
    """
    root = Path(root)
    config = config if config is not None else DegradationConfig.reproducible()
    cpu_dependent = config.cpu_dependent_codecs()
    if cpu_dependent:
        log.warning("codecs %s encode differently on other CPU models: this degraded copy will not rebuild "
                    "byte for byte elsewhere (DegradationConfig.reproducible() avoids them)", cpu_dependent)
    if config.min_effects < 1:
        config = DegradationConfig.from_dict({**config.to_dict(), "min_effects": 1})
    degrader = Degrader.from_dataset(root, config)
    written = {}
    for split in splits:
        frame = read_manifest(manifest_path(root, split))
        rows, kept = [], set()
        for row in frame.to_dict("records"):
            try:
                rows.append(_degrade_row(root, split, row, degrader, seed))
                kept.add(Path(rows[-1]["path"]).name)
            except (AudioError, UnsafePathError, ValueError, OSError) as err:
                log.warning("%s: skipping utterance %r (%s): %s", split, row.get("utt_id"), row.get("path"), err)
        _remove_stale(root / "degraded" / split, kept)
        columns = [c for c in frame.columns if c not in ("clean_path", "degradation")] + ["clean_path", "degradation"]
        target = manifest_path(root, f"{split}_degraded")
        write_manifest(pd.DataFrame(rows, columns=columns), target)
        log.info("%s: %d of %d utterances degraded -> %s", split, len(rows), len(frame), target)
        written[split] = target
    return written


def _degrade_row(root: Path, split: str, row: dict, degrader: Degrader, seed: int) -> dict:
    utt_id = str(row.get("utt_id", ""))
    if not _SAFE_ID.match(utt_id):
        raise ValueError(f"utt_id {utt_id!r} cannot name a file (letters, digits, '_', '-', '.' only)")
    clean = resolve_inside(root, str(row.get("path", "")))
    wave, _ = read_audio(clean, sample_rate=degrader.sample_rate)
    degraded, chain = degrader(wave, utterance_rng(seed, utt_id))
    relative = f"degraded/{split}/{utt_id}.wav"
    write_audio(resolve_inside(root, relative), degraded, degrader.sample_rate)
    return {**row, "path": relative, "duration_s": round(len(degraded) / degrader.sample_rate, 4),
            "sample_rate": degrader.sample_rate, "channels": 1, "clean_path": row["path"],
            "degradation": json.dumps(chain)}


def _remove_stale(folder: Path, kept: set[str]) -> None:
    """Drop degraded copies of utterances no longer in the manifest, so the folder matches it exactly."""
    for path in folder.glob("*.wav") if folder.is_dir() else ():
        if path.name not in kept:
            path.unlink()
