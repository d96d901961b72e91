"""Split long audio into overlapping chunks and join the restored chunks without seams.

Chunks start on feature-frame boundaries, so a chunk's output lands on exact output-sample
positions. Neighbouring outputs are cross-faded over their overlap with complementary
raised-cosine ramps (weights sum to one), which removes the discontinuity where two chunks'
slightly different contexts meet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Chunk:
    start: int  # first input sample
    stop: int  # one past the last input sample


def plan_chunks(num_samples: int, chunk_samples: int, overlap_samples: int, align: int) -> list[Chunk]:
    """Cover [0, num_samples) with chunks of at most `chunk_samples`, consecutive ones sharing
    at least `overlap_samples`, every start a multiple of `align` (the encoder's frame hop)."""
    if num_samples <= chunk_samples:
        return [Chunk(0, num_samples)]
    chunk_samples = chunk_samples // align * align
    step = (chunk_samples - overlap_samples) // align * align
    if step <= 0:
        raise ValueError(f"chunk ({chunk_samples} samples) must be longer than its overlap ({overlap_samples}) plus one frame ({align})")
    chunks, start = [], 0
    while True:
        stop = min(start + chunk_samples, num_samples)
        chunks.append(Chunk(start, stop))
        if stop == num_samples:
            return chunks
        start += step


def crossfade_join(pieces: list[np.ndarray], starts: list[int], total: int, fade: int) -> np.ndarray:
    """Overlap-add `pieces` placed at `starts` into `total` samples with `fade`-long raised-cosine
    ramps at every interior edge; positions no piece covers stay zero."""
    out = np.zeros(total, dtype=np.float64)
    weight = np.zeros(total, dtype=np.float64)
    for index, (piece, start) in enumerate(zip(pieces, starts)):
        piece = piece[: max(0, total - start)]
        w = np.ones(len(piece))
        ramp = min(fade, len(piece))
        if ramp > 0:
            rise = 0.5 - 0.5 * np.cos(np.pi * (np.arange(ramp) + 0.5) / ramp)
            if index > 0:
                w[:ramp] = rise
            if index < len(pieces) - 1:
                w[len(piece) - ramp :] *= rise[::-1]
        out[start : start + len(piece)] += w * piece
        weight[start : start + len(piece)] += w
    covered = weight > 0
    out[covered] /= weight[covered]
    return out.astype(np.float32)
