"""Training data: clean utterances from a manifest, degraded online, batched by length.

An *item* is an utterance, or one of the equal segments a long utterance is cut into (at most
`data.max_seconds`), so items are short enough to batch and their clean features can be cached
exactly as the encoder sees them. Items are named `utt_id@start-end` (16 kHz samples) in logs;
the feature cache knows them by the hash of their audio. Only the samples a sample needs are
decoded (an item's span, or a training window plus its context), never the whole file.

A clean item is a target: of the encoder's features (stage 1) or of the vocoder's wave (stages
2 and 3). A source recorded below the target's rate (a 16 kHz file for a 24 kHz vocoder) has an
empty top band that the model would learn to reproduce, so `load_items(min_rate=...)` leaves such
sources out, by the manifest's `sample_rate`.

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

from miipher2.audio import AudioError, read_audio_span
from miipher2.data.manifest import manifest_path, read_manifest
from miipher2.data.paths import UnsafePathError, resolve_inside
from miipher2.train.config import ENCODER_SAMPLE_RATE
from miipher2.train.feature_cache import content_key

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


def load_items(root: str | Path, split: str, max_seconds: float, min_seconds: float,
               min_rate: int | None = None) -> list[Item]:
    """Items of one split, long utterances cut into equal segments; too-short ones skipped, and
    with `min_rate`, sources recorded below that rate left out (they cannot be its targets)."""
    path = manifest_path(root, split)
    if not path.is_file():
        raise DataError(f"no manifest for split {split!r} at {path}")
    frame = read_manifest(path)
    for column in ("utt_id", "path", "duration_s") + (("sample_rate",) if min_rate else ()):
        if column not in frame.columns:
            raise DataError(f"{path}: missing column {column!r}")
    items, skipped, low_rate = [], 0, 0
    for row in frame.itertuples(index=False):
        if min_rate and int(row.sample_rate) < min_rate:
            low_rate += 1
            continue
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
    if low_rate:
        log.warning("%s: left out %d of %d utterances recorded below %d Hz: as targets they would teach an "
                    "empty top band", path, low_rate, len(frame), min_rate)
    if not items:
        reasons = [f"{skipped} items shorter than data.min_seconds={min_seconds}"] if skipped else []
        if low_rate:
            reasons.append(f"{low_rate} utterances recorded below the {min_rate} Hz the targets need "
                           "(use sources at that rate or above, or a lower vocoder.sample_rate)")
        raise DataError(f"{path}: no usable items ({'; '.join(reasons) or 'empty manifest'})")
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

    Whole items (stage 1, filling the feature cache):
        clean, clean_key:  the 16 kHz clean item and its content key (the feature cache's key)
        degraded:          16 kHz degraded item (stage 1)
        features:          cached clean features [F, D] (stage-1 targets)
    Training windows (stages 2 and 3, `window_frames` frames of `frame_hop` 16 kHz samples, placed
    in the item by the sample's RNG):
        features:          the window cut from the cached clean features (stage 2), or
        clean / degraded:  16 kHz audio of the window plus up to `context` samples either side
                           (stage 2 without the cache / stage 3: the step encodes it), and
        window_offset:     where the window starts in that audio, in frames;
        target_wave:       the window's clean audio at `target_rate` (zero-padded past the item).
    """

    def __init__(self, root: str | Path, items: Sequence[Item], *, seed: int = 0, degrade: Degrade | None = None,
                 clean: bool = False, features=None, target_rate: int | None = None,
                 window_frames: int | None = None, frame_hop: int | None = None, context: int = 0):
        if window_frames is not None and (target_rate is None or frame_hop is None):
            raise ValueError("training windows need target_rate and frame_hop")
        if context % (frame_hop or 1):
            raise ValueError(f"context ({context} samples) must be whole frames of {frame_hop} samples")
        self.root, self.items, self.seed = Path(root), list(items), seed
        self.degrade, self.clean, self.features = degrade, clean, features
        self.target_rate, self.window_frames, self.frame_hop, self.context = target_rate, window_frames, frame_hop, context

    def __len__(self) -> int:
        return len(self.items)

    def lengths(self) -> list[float]:
        return [item.seconds for item in self.items]

    def read(self, item: Item, rate: int, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Samples [start, stop) of the item at `rate`, counted from the item's first sample."""
        scale = rate / ENCODER_SAMPLE_RATE
        first, last = int(round(item.start * scale)), int(round(item.end * scale))
        stop = last - first if stop is None else min(stop, last - first)
        try:
            return read_audio_span(resolve_inside(self.root, item.path), first + start, first + stop, sample_rate=rate)
        except (AudioError, UnsafePathError, OSError) as err:
            raise DataError(f"item {item.key}: {err}") from err

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
        sample: dict[str, Any] = {"key": item.key}
        fraction = float(rng.random())  # drawn first in every stage; the degradation's draws follow
        size = item.end - item.start
        span = (0, size)
        if self.window_frames is not None:
            hop, frames = self.frame_hop, self.window_frames
            start = window_start(size // hop, fraction, frames)
            span = (max(0, start * hop - self.context), min(size, (start + frames) * hop + self.context))
            sample["window_offset"] = (start * hop - span[0]) // hop
        clean = None  # 16 kHz audio of `span`
        if self.features is not None:
            whole = self.read(item, ENCODER_SAMPLE_RATE)  # the whole item: its content is the cache key
            features = self.features.get(content_key(whole))
            if features is None:
                raise DataError(f"item {item.key}: clean features are not in the cache {self.features.directory}")
            sample["features"] = features if self.window_frames is None else _cut(features, start, frames)
            clean = whole if span == (0, size) else None
        if self.degrade is not None or self.clean:
            clean = self.read(item, ENCODER_SAMPLE_RATE, *span) if clean is None else clean
            if self.clean:
                sample["clean"] = torch.from_numpy(clean)
                if self.window_frames is None:
                    sample["clean_key"] = content_key(clean)
            if self.degrade is not None:
                degraded, _effects = self.degrade(clean, rng)
                sample["degraded"] = torch.from_numpy(np.ascontiguousarray(degraded, dtype=np.float32))
        if self.target_rate is not None:
            if self.window_frames is None:
                sample["target_wave"] = torch.from_numpy(self.read(item, self.target_rate))
            else:
                hop_out = self.frame_hop * self.target_rate // ENCODER_SAMPLE_RATE
                wave = self.read(item, self.target_rate, start * hop_out, (start + frames) * hop_out)
                sample["target_wave"] = _cut(torch.from_numpy(wave), 0, frames * hop_out)
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
    batch: dict[str, Any] = {"keys": [s["key"] for s in good]}
    if "clean_key" in good[0]:
        batch["clean_keys"] = [s["clean_key"] for s in good]
    if "window_offset" in good[0]:
        batch["window_offset"] = torch.tensor([s["window_offset"] for s in good])
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
