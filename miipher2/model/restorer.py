"""The composed Miipher-2 restorer: degraded wave -> feature cleaner -> vocoder -> clean wave.

A model directory holds what training produced and names the frozen encoder it was trained on:

    config.yaml            format, backbone {preset, source, revision, fingerprint, bundled, feature_layer,
                           adapter_dim}, vocoder {...}
    adapters.safetensors   parallel adapter weights
    vocoder.safetensors    vocoder weights (the kind named in config.yaml: hifigan, vocos or wavefit)
    backbone/              the frozen encoder's files, when it came from a local directory

An encoder from a hub id is loaded from the hub at the recorded revision; one from a local
directory (a random demo backbone, a private checkpoint) is bundled, so the directory restores on
any machine. Either way `fingerprint` (sha256 of the encoder's tensors up to the feature layer)
must match what is loaded: adapters trained on other weights are refused.
"""

from __future__ import annotations

import os
import shutil
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import yaml
from torch import nn

from miipher2.audio import resample
from miipher2.files import atomic_directory
from miipher2.model.backbone import BACKBONE_PRESETS, FeatureCleaner
from miipher2.model.chunking import crossfade_join, plan_chunks
from miipher2.model.vocoders import BaseVocoder, build_vocoder, vocoder_config, vocoder_from_dict, vocoder_to_dict

FORMAT = "miipher2-restorer/2"
CONFIG_FILE, ADAPTERS_FILE, VOCODER_FILE = "config.yaml", "adapters.safetensors", "vocoder.safetensors"
BACKBONE_DIR = "backbone"


class BackboneMismatchError(ValueError):
    """The encoder found at load time is not the one the adapters were trained on."""


class Restorer(nn.Module):
    """`Restorer.from_pretrained(path).restore(wave, sample_rate) -> (clean wave, output rate)`.

    Long inputs are cut into `chunk_seconds` pieces overlapping by `overlap_seconds`, restored
    in batches of `batch_size` and cross-faded back together.
    """

    def __init__(self, cleaner: FeatureCleaner, vocoder: BaseVocoder, backbone_source: str | None = None, *,
                 chunk_seconds: float = 30.0, overlap_seconds: float = 1.0, batch_size: int = 8):
        super().__init__()
        if vocoder.config.feature_dim != cleaner.feature_dim:
            raise ValueError(f"vocoder takes {vocoder.config.feature_dim}-dim features but the cleaner makes {cleaner.feature_dim}")
        if vocoder.hop_length * cleaner.sample_rate != cleaner.hop_length * vocoder.sample_rate:
            raise ValueError(f"vocoder hop {vocoder.hop_length} at {vocoder.sample_rate} Hz does not match the cleaner's frame hop {cleaner.hop_length} at {cleaner.sample_rate} Hz")
        self.backbone_source = backbone_source or cleaner.source
        if not self.backbone_source:
            raise ValueError("the restorer needs the frozen encoder's hub id or directory (backbone_source)")
        self.backbone_revision = cleaner.revision  # hub commit of the encoder weights, when known
        self.cleaner, self.vocoder = cleaner, vocoder
        self.chunk_seconds, self.overlap_seconds, self.batch_size = chunk_seconds, overlap_seconds, batch_size

    # ---- construction and persistence -------------------------------------------------

    @classmethod
    def build(cls, source: str, preset: str = "w2v-bert-2.0", *, feature_layer: int | None = None, adapter_dim: int = 1024,
              sample_rate: int = 24000, vocoder_kind: str = "hifigan", vocoder_size: str = "paper") -> Restorer:
        """A fresh restorer: pretrained frozen encoder, untrained adapters and vocoder."""
        cleaner = FeatureCleaner.from_pretrained(source, preset, feature_layer, adapter_dim)
        config = vocoder_config(vocoder_kind, cleaner.feature_dim, cleaner.hop_length, sample_rate, cleaner.sample_rate,
                                vocoder_size)
        return cls(cleaner, build_vocoder(config), source)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, device: str | torch.device | None = None, *,
                        backbone_source: str | None = None, allow_other_backbone: bool = False, **options) -> Restorer:
        """Load a model directory.

        The frozen encoder comes from `backbone_source` when given (e.g. a local mirror of the
        recorded hub id), else from the bundled copy, else from the recorded source at the
        recorded revision. Its weights must have the recorded fingerprint, unless
        `allow_other_backbone` (then a warning says the adapters meet other weights).
        """
        from safetensors.torch import load_file

        path = Path(path)
        config = _read_config(path)
        backbone = config["backbone"]
        if backbone_source:
            source, revision = str(backbone_source), None
        elif backbone["bundled"]:
            source, revision = str(path / backbone["bundled"]), None
        else:
            source, revision = backbone["source"], backbone["revision"]
        cleaner = FeatureCleaner.from_pretrained(source, backbone["preset"], backbone["feature_layer"], backbone["adapter_dim"],
                                                 revision=revision)
        _check_fingerprint(path, source, backbone["fingerprint"], cleaner.encoder_fingerprint(), allow_other_backbone)
        try:
            vocoder = vocoder_from_dict(config["vocoder"])
        except (TypeError, ValueError) as err:  # unknown kind or field, inconsistent sizes
            raise ValueError(f"{path / CONFIG_FILE}: vocoder section: {err}") from err
        try:
            cleaner.load_adapter_state_dict(load_file(path / ADAPTERS_FILE))
            vocoder.load_state_dict(load_file(path / VOCODER_FILE))
        except (OSError, RuntimeError) as err:  # missing file, or shapes that do not match the config
            raise ValueError(f"{path}: weights do not load into the configured model ({err})") from err
        vocoder.prepare_for_inference()  # e.g. folds weight norm; save_pretrained still writes the training form
        restorer = cls(cleaner, vocoder, backbone_source or backbone["source"], **options).eval()
        restorer.backbone_revision = None if backbone_source else backbone["revision"]
        return restorer.to(resolve_device(device))

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write the model directory atomically: readers see the old one or the new one, never a mix.

        An encoder loaded from a local directory is copied in (its config, preprocessing settings
        and safetensors weights), so the directory does not depend on paths of this machine.
        """
        from safetensors.torch import save_file

        with atomic_directory(path) as tmp:
            bundled = _bundle_backbone(Path(self.cleaner.source), tmp / BACKBONE_DIR) if _is_local(self.cleaner.source) else None
            (tmp / CONFIG_FILE).write_text(yaml.safe_dump(self.config_dict(bundled=bundled), sort_keys=False))
            save_file(_contiguous(self.cleaner.adapter_state_dict()), tmp / ADAPTERS_FILE)
            save_file(_contiguous(self.vocoder.training_state_dict()), tmp / VOCODER_FILE)

    def config_dict(self, bundled: str | None = None) -> dict:
        return {
            "format": FORMAT,
            "backbone": {
                "preset": self.cleaner.preset,
                "source": self.backbone_source,  # where it came from; with `bundled`, for the record only
                "revision": self.backbone_revision,
                "fingerprint": self.cleaner.encoder_fingerprint(),
                "bundled": bundled,
                "feature_layer": self.cleaner.feature_layer,
                "adapter_dim": self.cleaner.adapter_dim,
            },
            "vocoder": vocoder_to_dict(self.vocoder),
        }

    # ---- inference -----------------------------------------------------------------------

    @property
    def sample_rate(self) -> int:
        """Output sample rate."""
        return self.vocoder.sample_rate

    @property
    def device(self) -> torch.device:
        return next(self.vocoder.parameters()).device

    def forward(self, wave: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """16 kHz waves [B, T] -> (restored waves [B, T_out] at `sample_rate`, their lengths [B]).

        Each item's output is what it would be alone, whatever it is batched with: the cleaner
        masks padding, and the vocoder (whose convolutions see across an item's end) runs on
        groups of items with the same number of frames, so it never sees padding. Chunks of long
        inputs share one length and vocode together; short files of different lengths vocode
        one by one, which costs a GPU little on seconds-long sequences.
        """
        features, frames = self.cleaner(wave, lengths)
        hop = self.vocoder.hop_length
        restored = features.new_zeros(features.shape[0], features.shape[1] * hop)
        for n in frames.unique().tolist():
            rows = (frames == n).nonzero().squeeze(1)
            restored[rows, : n * hop] = self.vocoder(features[rows, :n]).to(restored.dtype)
        return restored, frames * hop

    @torch.inference_mode()
    def restore(self, wave: np.ndarray, sample_rate: int) -> tuple[np.ndarray, int]:
        """Restore one recording: wave is (samples,) or (samples, channels) at any rate."""
        return self.restore_batch([wave], [sample_rate])[0]

    @torch.inference_mode()
    def restore_batch(self, waves: list[np.ndarray], rates: list[int]) -> list[tuple[np.ndarray, int]]:
        """Restore many recordings; their chunks are pooled and run `batch_size` at a time."""
        inputs = [_to_mono_16k(np.asarray(w), r, index) for index, (w, r) in enumerate(zip(waves, rates))]
        rate_in, hop_in = self.cleaner.sample_rate, self.cleaner.hop_length
        chunk = max(hop_in, int(self.chunk_seconds * rate_in))
        overlap = int(self.overlap_seconds * rate_in)
        jobs = [(i, c) for i, x in enumerate(inputs) for c in plan_chunks(len(x), chunk, overlap, hop_in)]
        jobs.sort(key=lambda job: job[1].stop - job[1].start)  # similar lengths batch with little padding
        outputs: dict[tuple[int, int], np.ndarray] = {}
        for first in range(0, len(jobs), self.batch_size):
            batch = jobs[first : first + self.batch_size]
            pieces = [inputs[i][c.start : c.stop] for i, c in batch]
            for (i, c), restored in zip(batch, self._run(pieces)):
                outputs[(i, c.start)] = restored

        ratio = self.sample_rate / rate_in
        fade = max(0, int((overlap - hop_in) * ratio))
        results = []
        for i, x in enumerate(inputs):
            starts = sorted(start for (j, start) in outputs if j == i)
            pieces = [outputs[(i, s)] for s in starts]
            total = int(round(len(x) * ratio))
            results.append((crossfade_join(pieces, [int(round(s * ratio)) for s in starts], total, fade), self.sample_rate))
        return results

    # Fewest frames a piece may have: the vocoder's first convolution reflect-pads 3 frames each side.
    MIN_FRAMES = 8

    def _run(self, pieces: list[np.ndarray]) -> list[np.ndarray]:
        device = self.device
        shortest = self.MIN_FRAMES * self.cleaner.hop_length  # shorter pieces get trailing silence (trimmed later)
        pieces = [np.pad(p, (0, shortest - len(p))) if len(p) < shortest else p for p in pieces]
        lengths = torch.tensor([len(p) for p in pieces], device=device)
        batch = torch.zeros(len(pieces), int(lengths.max()), device=device)
        for row, piece in enumerate(pieces):
            batch[row, : len(piece)] = torch.from_numpy(piece)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
        with autocast:
            restored, out_lengths = self(batch, lengths)
        restored = restored.float().cpu().numpy()
        return [restored[row, : int(n)] for row, n in enumerate(out_lengths.cpu())]


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _to_mono_16k(wave: np.ndarray, rate: int, index: int) -> np.ndarray:
    if wave.ndim == 2:
        wave = wave.mean(axis=1)
    if wave.ndim != 1 or wave.size == 0:
        raise ValueError(f"input {index}: expected a non-empty (samples,) or (samples, channels) wave, got shape {wave.shape}")
    if not np.isfinite(wave).all():
        raise ValueError(f"input {index}: wave contains NaN or infinite samples")
    return np.ascontiguousarray(resample(wave.astype(np.float32), int(rate), FeatureCleaner.sample_rate), dtype=np.float32)


def _read_config(path: Path) -> dict:
    file = path / CONFIG_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{path}: not a Miipher-2 model directory (no {CONFIG_FILE})")
    config = yaml.safe_load(file.read_text())
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{file}: format must be {FORMAT!r}, got {config.get('format') if isinstance(config, dict) else config!r}")
    backbone = config.get("backbone")
    if not isinstance(backbone, dict):
        raise ValueError(f"{file}: missing 'backbone' section")
    for key in ("preset", "source", "revision", "fingerprint", "bundled", "feature_layer", "adapter_dim"):
        if key not in backbone:
            raise ValueError(f"{file}: backbone.{key} is missing")
    if backbone["preset"] not in BACKBONE_PRESETS:
        raise ValueError(f"{file}: backbone.preset {backbone['preset']!r} is not one of {sorted(BACKBONE_PRESETS)}")
    if not isinstance(config.get("vocoder"), dict):
        raise ValueError(f"{file}: missing 'vocoder' section")
    return config


def _is_local(source: str | None) -> bool:
    return bool(source) and Path(source).is_dir()


def _bundle_backbone(source: Path, target: Path) -> str:
    """Copy what transformers loads an encoder from (JSON settings, safetensors weights)."""
    files = sorted(p for p in source.iterdir() if p.is_file() and p.suffix in (".json", ".safetensors"))
    if not any(p.suffix == ".safetensors" for p in files):
        raise ValueError(f"{source}: no safetensors weights to bundle with the model (only safetensors are loaded)")
    target.mkdir()
    for file in files:
        shutil.copyfile(file, target / file.name)
    return target.name


def _check_fingerprint(path: Path, source: str, recorded: str, actual: str, allow_other: bool) -> None:
    if actual == recorded:
        return
    message = (f"{path}: its adapters were trained on encoder weights with fingerprint {recorded[:16]}…, but "
               f"{source} holds weights with fingerprint {actual[:16]}… (another checkpoint, revision or feature layer)")
    if not allow_other:
        raise BackboneMismatchError(f"{message}. Load the original encoder, or pass allow_other_backbone=True "
                                    "(--allow-other-backbone) to use these weights anyway")
    warnings.warn(f"{message}; loading anyway as asked (allow_other_backbone)", stacklevel=3)


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in state.items()}
