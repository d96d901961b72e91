"""Typed training configuration: dataclasses, YAML presets, `--set key=value` overrides.

One `TrainConfig` describes all three stages, so stage 3 can check that it loads adapters and a
vocoder trained for the same encoder. Every value is checked when the config is built: an unknown
key, a wrong type or an out-of-range number raises `ConfigError` naming the dotted field
(`stage1.steps: must be >= 1, got -5`), before any model is loaded.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

PRESET_DIR = Path(__file__).parent / "presets"
# Encoder rate is fixed by every supported backbone; the vocoder may output 16 or 24 kHz.
ENCODER_SAMPLE_RATE = 16000
# Data and optimisation settings a reviewer compares runs by (with every encoder and vocoder
# setting); the rest is in the logged config.yaml.
_TRACKED_DATA_KEYS = ("split", "min_seconds", "max_seconds", "degradation")
_TRACKED_STAGE_KEYS = ("steps", "batch_size", "lr", "schedule", "segment_frames", "adversarial_start")
_TRACKED_VALIDATION_KEYS = ("split", "utterances", "max_seconds")  # val/* scores compare on the same subset


class ConfigError(ValueError):
    """A configuration value is unknown, mistyped or out of range; the message names the field."""


# --------------------------------------------------------------------------- sections

@dataclass
class EncoderConfig:
    """The frozen SSL encoder and its parallel adapters.

    `source` is a hub id or a local directory. `random:<size>` asks for a randomly initialised
    backbone of the preset's architecture (see `miipher2.train.backbone`): meaningless features,
    but the whole machinery runs offline in minutes.
    """

    preset: str = "w2v-bert-2.0"
    source: str = "facebook/w2v-bert-2.0"
    feature_layer: int | None = None  # None: the preset's documented default layer
    adapter_dim: int = 1024

    def check(self, at: str) -> None:
        _require(bool(self.preset), f"{at}.preset", "must not be empty", self.preset)
        _require(bool(self.source), f"{at}.source", "must not be empty", self.source)
        if self.feature_layer is not None:
            _require(self.feature_layer >= 1, f"{at}.feature_layer", "must be >= 1", self.feature_layer)
        _require(self.adapter_dim >= 1, f"{at}.adapter_dim", "must be >= 1", self.adapter_dim)


@dataclass
class VocoderConfig:
    """The vocoder (`miipher2.model.vocoders`) and the discriminators of its GAN stages."""

    kind: Literal["hifigan", "vocos", "wavefit"] = "vocos"  # docs/model.md: why each preset uses its kind
    sample_rate: int = 24000
    size: Literal["paper", "tiny"] = "paper"  # paper: the kind's published widths; tiny: tests and CPU demos
    upsample_initial_channel: int | None = None  # hifigan: None keeps the size's width
    iterations: int | None = None  # wavefit: fixed-point iterations T; None keeps the size's (paper: 5)
    frame_upsample: int = 1  # vocos: backbone frames per feature frame (iSTFT hop = frame hop / this)
    discriminator: Literal["full", "small"] = "full"  # small: a cheap set for CPU demos and tests
    discriminator_precision: Literal["fp32", "bf16"] = "fp32"  # bf16 autocast for the discriminators, CUDA only

    def check(self, at: str) -> None:
        _require(self.sample_rate in (16000, 24000), f"{at}.sample_rate", "must be 16000 or 24000", self.sample_rate)
        if self.upsample_initial_channel is not None:
            _require(self.upsample_initial_channel >= 1, f"{at}.upsample_initial_channel", "must be >= 1",
                     self.upsample_initial_channel)
            _require(self.kind == "hifigan", f"{at}.upsample_initial_channel", "applies to kind hifigan only",
                     self.upsample_initial_channel)
        if self.iterations is not None:
            _require(self.iterations >= 1, f"{at}.iterations", "must be >= 1", self.iterations)
            _require(self.kind == "wavefit", f"{at}.iterations", "applies to kind wavefit only", self.iterations)
        _require(self.frame_upsample >= 1, f"{at}.frame_upsample", "must be >= 1", self.frame_upsample)
        _require(self.kind == "vocos" or self.frame_upsample == 1, f"{at}.frame_upsample", "applies to kind vocos only",
                 self.frame_upsample)


@dataclass
class DataConfig:
    """Which utterances, how they are cut into items, and how they are loaded."""

    split: str = "train"
    max_seconds: float = 10.0   # longer utterances are cut into equal segments no longer than this
    min_seconds: float = 1.0    # shorter items are skipped (counted and reported)
    num_workers: int = 4        # DataLoader worker processes per training process
    bucket_window: int = 32     # batches per length-sorting window (1 = no bucketing)
    degradation: str | None = None  # degradation config YAML; None = the degrader's defaults

    def check(self, at: str) -> None:
        _require(self.max_seconds > 0, f"{at}.max_seconds", "must be > 0", self.max_seconds)
        _require(0 <= self.min_seconds <= self.max_seconds, f"{at}.min_seconds",
                 "must be between 0 and max_seconds", self.min_seconds)
        _require(self.num_workers >= 0, f"{at}.num_workers", "must be >= 0", self.num_workers)
        _require(self.bucket_window >= 1, f"{at}.bucket_window", "must be >= 1", self.bucket_window)


@dataclass
class CacheConfig:
    """The clean-feature cache (`miipher2.train.feature_cache`)."""

    enabled: bool = True
    dir: str | None = None  # None: <out_dir>/../cache, shared by stages started side by side

    def check(self, at: str) -> None:
        pass


@dataclass
class ValidationConfig:
    """The held-out pairs every stage scores while it trains (`miipher2.train.validation`)."""

    split: str = "val"          # scores manifests/<split>_degraded.csv: degraded copies + clean references
    utterances: int = 32        # a fixed subset, round-robin over languages; 0 = no validation
    max_seconds: float = 6.0    # each utterance is scored on its first max_seconds
    examples: int = 3           # outputs (WAV + spectrogram PNG) logged at the end of stages 2 and 3

    def check(self, at: str) -> None:
        _require(bool(self.split), f"{at}.split", "must not be empty", self.split)
        _require(self.utterances >= 0, f"{at}.utterances", "must be >= 0", self.utterances)
        _require(self.max_seconds > 0, f"{at}.max_seconds", "must be > 0", self.max_seconds)
        _require(0 <= self.examples <= max(self.utterances, 0), f"{at}.examples",
                 "must be between 0 and validation.utterances", self.examples)


@dataclass
class RuntimeConfig:
    device: str = "auto"                      # auto = cuda:<local rank> when available, else cpu
    precision: Literal["bf16", "fp32"] = "bf16"  # bf16 autocast applies on CUDA only
    tf32: bool = True
    seed: int = 0
    progress: bool = True                     # tqdm bar on the main process
    # CPU threads per process; None keeps torch's default. On shared or oversubscribed CPUs one
    # thread is far faster: OpenMP threads spin-wait for each other (50x slower steps measured).
    threads: int | None = None

    def check(self, at: str) -> None:
        _require(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda"), f"{at}.device",
                 "must be auto, cpu, cuda or cuda:N", self.device)
        _require(self.seed >= 0, f"{at}.seed", "must be >= 0", self.seed)
        if self.threads is not None:
            _require(self.threads >= 1, f"{at}.threads", "must be >= 1", self.threads)


@dataclass
class StageConfig:
    """Optimisation and bookkeeping of one stage. `batch_size` is global (all processes)."""

    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.98)
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: Literal["constant", "cosine", "exponential"] = "cosine"
    lr_decay: float = 0.999  # per-step factor for the exponential schedule
    grad_clip: float = 1.0   # 0 = no clipping
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 50
    eval_every: int = 1000   # validation every N steps (and at the start and the end)

    def check(self, at: str) -> None:
        _require(self.steps >= 1, f"{at}.steps", "must be >= 1", self.steps)
        _require(self.batch_size >= 1, f"{at}.batch_size", "must be >= 1", self.batch_size)
        _require(self.lr > 0, f"{at}.lr", "must be > 0", self.lr)
        _require(all(0 <= b < 1 for b in self.betas), f"{at}.betas", "must be two numbers in [0, 1)", self.betas)
        _require(self.weight_decay >= 0, f"{at}.weight_decay", "must be >= 0", self.weight_decay)
        _require(self.warmup_steps >= 0, f"{at}.warmup_steps", "must be >= 0", self.warmup_steps)
        _require(0 < self.lr_decay <= 1, f"{at}.lr_decay", "must be in (0, 1]", self.lr_decay)
        _require(self.grad_clip >= 0, f"{at}.grad_clip", "must be >= 0", self.grad_clip)
        _require(self.checkpoint_every >= 1, f"{at}.checkpoint_every", "must be >= 1", self.checkpoint_every)
        _require(self.keep_checkpoints >= 1, f"{at}.keep_checkpoints", "must be >= 1", self.keep_checkpoints)
        _require(self.log_every >= 1, f"{at}.log_every", "must be >= 1", self.log_every)
        _require(self.eval_every >= 1, f"{at}.eval_every", "must be >= 1", self.eval_every)


@dataclass
class VocoderStageConfig(StageConfig):
    """A GAN stage: generator and discriminators trained on short random feature windows."""

    segment_frames: int = 32        # feature frames per training window (HiFi-GAN: ~0.64 s)
    discriminator_lr: float = 2e-4
    # None: the vocoder kind's published weights (miipher2.model.vocoders.objectives): reconstruction
    # is the mel loss (hifigan, vocos: 45) or the multi-resolution STFT loss (wavefit: 2.5)
    reconstruction_weight: float | None = None
    feature_matching_weight: float | None = None
    # Steps on the reconstruction loss alone before the discriminators join (Parallel WaveGAN's
    # discriminator_train_start_steps). A GAN step costs ~20x a generator-only one on CPU.
    adversarial_start: int = 0

    def check(self, at: str) -> None:
        super().check(at)
        _require(self.segment_frames >= 1, f"{at}.segment_frames", "must be >= 1", self.segment_frames)
        _require(self.adversarial_start >= 0, f"{at}.adversarial_start", "must be >= 0", self.adversarial_start)
        _require(self.discriminator_lr > 0, f"{at}.discriminator_lr", "must be > 0", self.discriminator_lr)
        for name in ("reconstruction_weight", "feature_matching_weight"):
            value = getattr(self, name)
            _require(value is None or value >= 0, f"{at}.{name}", "must be >= 0", value)


@dataclass
class TrainConfig:
    name: str = "custom"
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    vocoder: VocoderConfig = field(default_factory=VocoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: VocoderStageConfig = field(default_factory=VocoderStageConfig)
    stage3: VocoderStageConfig = field(default_factory=VocoderStageConfig)

    def check(self, at: str = "") -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if dataclasses.is_dataclass(value):
                value.check(f.name)

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def tracked_params(self, stage: str | None = None, also: Iterable[str] = ()) -> dict[str, Any]:
        """What a run compares by: the preset, model and data choices, one stage's optimisation
        settings (every stage's with `stage=None`), and the settings named in `also` (dotted keys,
        e.g. those a user overrode). The whole config travels as `config.yaml`."""
        data = self.to_dict()
        stages = [stage] if stage else [name for name in data if name.startswith("stage")]
        params = {"preset": self.name, **({"stage": stage} if stage else {})}
        for section in ("encoder", "vocoder"):
            params.update({f"{section}.{k}": v for k, v in data[section].items() if v is not None})
        params.update({f"data.{k}": data["data"][k] for k in _TRACKED_DATA_KEYS if data["data"].get(k) is not None})
        params.update({f"validation.{k}": data["validation"][k] for k in _TRACKED_VALIDATION_KEYS})
        for name in stages:
            params.update({f"{name}.{k}": data[name][k] for k in _TRACKED_STAGE_KEYS if k in data[name]})
        for key in also:
            node: Any = data
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if node is not None and not isinstance(node, dict):
                params[key] = node
        return params

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        config = _build(cls, data, "")
        config.check()
        return config


# --------------------------------------------------------------------------- loading

def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(preset_or_path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> TrainConfig:
    """A preset name (`demo-cpu`, `paper`) or a YAML file, then `key=value` overrides.

    A YAML file may start from a preset with `base: <preset>` and change only what differs.
    """
    data = _read_yaml(preset_or_path)
    for item in overrides:
        apply_override(data, item)
    return TrainConfig.from_dict(data)


def apply_override(data: dict[str, Any], item: str) -> None:
    """`stage1.steps=100`: the value is parsed as YAML (numbers, booleans, lists, null)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value, e.g. stage1.steps=100")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r}: empty field name")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {key}: cannot parse value {raw!r} ({err})") from err
    node = data
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {key}: {'.'.join(parts[:depth + 1])} is not a section")
        node = child
    node[parts[-1]] = value


def _read_yaml(preset_or_path: str | Path, seen: tuple[str, ...] = ()) -> dict[str, Any]:
    name = str(preset_or_path)
    path = PRESET_DIR / f"{name}.yaml" if name in available_presets() else Path(name)
    if not path.is_file():
        raise ConfigError(f"config {name!r}: neither a preset ({', '.join(available_presets())}) nor a YAML file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path}: invalid YAML ({err})") from err
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: expected a mapping at the top level, got {type(data).__name__}")
    base = data.pop("base", None)
    if base is None:
        return data
    if str(base) in seen:
        raise ConfigError(f"config {path}: `base` chain loops through {base!r}")
    return _deep_merge(_read_yaml(base, seen + (name,)), data)


def _deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


# --------------------------------------------------------------------------- typed building

def _build(cls: type, data: Any, at: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{at or 'config'}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{at}." if at else ""
        raise ConfigError(f"unknown field {where}{unknown[0]} (known: {', '.join(sorted(names))})")
    values = {name: _coerce(hints[name], value, f"{at}.{name}" if at else name) for name, value in data.items()}
    return cls(**values)


def _coerce(hint: Any, value: Any, at: str) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, at)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, at)
    if origin is Literal:
        choices = [str(a) for a in args]
        if str(value) not in choices or isinstance(value, bool):
            raise ConfigError(f"{at}: must be one of {', '.join(choices)}, got {value!r}")
        return type(args[0])(value)
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{at}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_coerce(a, v, f"{at}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{at}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{at}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads `1e-4` (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{at}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{at}: expected a string, got {value!r}")
        return value
    raise TypeError(f"{at}: unsupported config type {hint!r}")  # a bug in this module, not in the YAML


def _require(ok: bool, at: str, what: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{at}: {what}, got {value!r}")


def _plain(value: Any) -> Any:
    """Tuples become lists so the YAML dump stays plain `safe_load`-able YAML."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
