"""Training data: clean utterances from a manifest, degraded online, batched by length.

An *item* is an utterance, or one of the equal segments a long utterance is cut into (at most
`data.max_seconds`), so items are short enough to batch and their clean features can be cached
exactly as the encoder sees them. Items are keyed `utt_id@start-end` (16 kHz samples).

Randomness that shapes a sample (the degradation, the training window) comes from a generator
seeded by (seed, epoch, item index): a sample is the same whichever worker or process builds it
and however often training was interrupted, which is what makes resume exact without saving
worker RNG states.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from miipher2.audio import AudioError, read_audio
from miipher2.data.manifest import manifest_path, read_manifest
from miipher2.data.paths import UnsafePathError, resolve_inside
from miipher2.train.config import ENCODER_SAMPLE_RATE

log = logging.getLogger(__name__)

# (wave, rng) -> (degraded wave of the same length, applied effects)
Degrade = Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, Any]]


class DataError(ValueError):
    """The training data cannot be used; the message names the manifest or file."""


@dataclass(frozen=True)
class Item:
    utt_id: str
    path: str    # relative to the dataset root, as in the manifest
    start: int   # first sample at 16 kHz
    end: int     # one past the last sample at 16 kHz

    @property
    def key(self) -> str:
        return f"{self.utt_id}@{self.start}-{self.end}"

    @property
    def seconds(self) -> float:
        return (self.end - self.start) / ENCODER_SAMPLE_RATE


def load_items(root: str | Path, split: str, max_seconds: float, min_seconds: float) -> list[Item]:
    """Items of one split, long utterances cut into equal segments; too-short ones skipped."""
    path = manifest_path(root, split)
    if not path.is_file():
        raise DataError(f"no manifest for split {split!r} at {path}")
    frame = read_manifest(path)
    for column in ("utt_id", "path", "duration_s"):
        if column not in frame.columns:
            raise DataError(f"{path}: missing column {column!r}")
    items, skipped = [], 0
    for row in frame.itertuples(index=False):
        total = int(round(float(row.duration_s) * ENCODER_SAMPLE_RATE))
        pieces = max(1, math.ceil(total / (max_seconds * ENCODER_SAMPLE_RATE)))
        bounds = np.linspace(0, total, pieces + 1).round().astype(int)
        for start, end in zip(bounds[:-1], bounds[1:]):
            if (end - start) / ENCODER_SAMPLE_RATE < min_seconds:
                skipped += 1
                continue
            items.append(Item(str(row.utt_id), str(row.path), int(start), int(end)))
    if skipped:
        log.info("%s: skipped %d items shorter than %.2f s", path, skipped, min_seconds)
    if not items:
        raise DataError(f"{path}: no usable items (all {skipped} shorter than data.min_seconds={min_seconds})")
    return items


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, epoch, index])


def window_start(frames: int, fraction: float, window: int) -> int:
    """First frame of a training window; `fraction` in [0, 1) comes from the sample's RNG."""
    return int(fraction * max(frames - window + 1, 1))


# --------------------------------------------------------------------------- sampler

class LengthBucketBatchSampler(Sampler[list[tuple[int, int]]]):
    """Shuffled, length-bucketed batches, sharded across processes; resumable mid-epoch.

    Each epoch: shuffle all items (seeded by seed + epoch), cut the order into windows of
    `bucket_window` global batches, sort each window by length (little padding), cut it into
    global batches and shuffle the batch order. Process r takes elements r, r + N, ... of every
    global batch, so N processes with B/N items each see exactly the single-process batch of B,
    as torch's DistributedSampler does for plain shuffling. Yields lists of (item index, epoch).
    Items that do not fill a last global batch are dropped for that epoch (a different set
    every epoch).
    """

    def __init__(self, lengths: Sequence[float], global_batch: int, *, rank: int = 0, world_size: int = 1,
                 seed: int = 0, bucket_window: int = 32):
        if global_batch % world_size:
            raise ValueError(f"global batch {global_batch} is not divisible by {world_size} processes")
        if len(lengths) < global_batch:
            raise DataError(f"{len(lengths)} items cannot fill one batch of {global_batch}: "
                            "lower the stage's batch_size or add data")
        self.lengths = np.asarray(lengths, dtype=np.float64)
        self.global_batch, self.rank, self.world_size = global_batch, rank, world_size
        self.seed, self.bucket_window = seed, bucket_window
        self.epoch, self.start_batch = 0, 0

    def set_position(self, epoch: int, batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, batch

    def __len__(self) -> int:
        return len(self.lengths) // self.global_batch

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths))[: len(self) * self.global_batch]
        span = self.global_batch * self.bucket_window
        batches = []
        for begin in range(0, len(order), span):
            window = order[begin: begin + span]
            window = window[np.argsort(self.lengths[window], kind="stable")]
            batches.extend(np.split(window, len(window) // self.global_batch))
        return [batches[i] for i in rng.permutation(len(batches))]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for batch in self.global_batches(self.epoch)[self.start_batch:]:
            yield [(int(i), self.epoch) for i in batch[self.rank:: self.world_size]]


# --------------------------------------------------------------------------- dataset

class TrainingDataset(Dataset):
    """Builds samples of items; which fields a sample carries depends on the stage.

    degraded:     16 kHz degraded wave (stages 1 and 3)
    clean:        16 kHz clean wave (encoder input when targets are not cached)
    features:     cached clean features [F, D] (stage-1 targets, stage-2 inputs)
    target_wave:  clean wave at the vocoder's rate (stages 2 and 3)
    window:       with `window_frames`, features and target_wave are cut to one training window;
                  without, a fraction in [0, 1) lets the step cut it after running the encoder.
    """

    def __init__(self, root: str | Path, items: Sequence[Item], *, seed: int = 0, degrade: Degrade | None = None,
                 clean: bool = False, features=None, target_rate: int | None = None,
                 window_frames: int | None = None, frame_hop: int | None = None):
        if window_frames is not None and (features is None or target_rate is None or frame_hop is None):
            raise ValueError("cutting windows in the dataset needs cached features, target_rate and frame_hop")
        self.root, self.items, self.seed = Path(root), list(items), seed
        self.degrade, self.clean, self.features = degrade, clean, features
        self.target_rate, self.window_frames, self.frame_hop = target_rate, window_frames, frame_hop

    def __len__(self) -> int:
        return len(self.items)

    def lengths(self) -> list[float]:
        return [item.seconds for item in self.items]

    def read(self, item: Item, rate: int) -> np.ndarray:
        try:
            wave, _ = read_audio(resolve_inside(self.root, item.path), sample_rate=rate)
        except (AudioError, UnsafePathError, OSError) as err:
            raise DataError(f"item {item.key}: {err}") from err
        scale = rate / ENCODER_SAMPLE_RATE
        return wave[int(round(item.start * scale)): int(round(item.end * scale))]

    def __getitem__(self, index_epoch: tuple[int, int]) -> dict[str, Any] | None:
        index, epoch = index_epoch
        item = self.items[index]
        rng = sample_rng(self.seed, epoch, index)
        try:
            return self._sample(item, rng)
        except DataError as err:  # one broken file must not end a run: skip it, say which
            log.warning("skipping %s", err)
            return None

    def _sample(self, item: Item, rng: np.random.Generator) -> dict[str, Any]:
        sample: dict[str, Any] = {"key": item.key, "window": float(rng.random())}
        if self.degrade is not None or self.clean:
            clean = self.read(item, ENCODER_SAMPLE_RATE)
            if self.clean:
                sample["clean"] = torch.from_numpy(clean)
            if self.degrade is not None:
                degraded, _effects = self.degrade(clean, rng)
                sample["degraded"] = torch.from_numpy(np.ascontiguousarray(degraded, dtype=np.float32))
        if self.features is not None:
            features = self.features.get(item.key)
            if features is None:
                raise DataError(f"item {item.key}: clean features are not in the cache {self.features.directory}")
            sample["features"] = features
        if self.target_rate is not None:
            sample["target_wave"] = torch.from_numpy(self.read(item, self.target_rate))
        if self.window_frames is not None:
            start = window_start(sample["features"].shape[0], sample["window"], self.window_frames)
            sample["features"] = _cut(sample["features"], start, self.window_frames)
            hop = self.frame_hop * self.target_rate // ENCODER_SAMPLE_RATE
            sample["target_wave"] = _cut(sample["target_wave"], start * hop, self.window_frames * hop)
        return sample


def _cut(tensor: torch.Tensor, start: int, size: int) -> torch.Tensor:
    """tensor[start:start + size] along dim 0, zero-padded when the item is shorter."""
    piece = tensor[start: start + size]
    if piece.shape[0] < size:
        piece = torch.nn.functional.pad(piece, [0, 0] * (piece.dim() - 1) + [0, size - piece.shape[0]])
    return piece


def collate(samples: list[dict[str, Any] | None]) -> dict[str, Any]:
    """Pad every tensor field to the longest in the batch; `<field>_lengths` keeps true lengths."""
    good = [s for s in samples if s is not None]
    if not good:
        raise DataError(f"every item of a batch of {len(samples)} failed to load (see the warnings above)")
    batch: dict[str, Any] = {"keys": [s["key"] for s in good],
                             "window": torch.tensor([s["window"] for s in good], dtype=torch.float64)}
    for name in ("degraded", "clean", "features", "target_wave"):
        if name in good[0]:
            tensors = [s[name] for s in good]
            batch[name] = torch.nn.utils.rnn.pad_sequence(tensors, batch_first=True)
            batch[f"{name}_lengths"] = torch.tensor([t.shape[0] for t in tensors])
    return batch


def make_degrader(root: str | Path, config_path: str | None = None) -> Degrade:
    """The project's degradation simulator with the dataset's noise and room banks."""
    from miipher2.data.degrade import Degrader

    return Degrader.from_dataset(root, config=config_path, sample_rate=ENCODER_SAMPLE_RATE)
