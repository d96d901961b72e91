"""Chunk planning and cross-fade joining."""

from __future__ import annotations

import numpy as np
import pytest

from miipher2.model.chunking import Chunk, crossfade_join, plan_chunks


def test_short_audio_is_one_chunk():
    assert plan_chunks(1000, 4800, 320, 320) == [Chunk(0, 1000)]


def test_chunks_cover_everything_on_frame_boundaries_with_the_overlap():
    chunks = plan_chunks(100_000, 16_000, 1_600, 320)
    assert chunks[0].start == 0 and chunks[-1].stop == 100_000
    assert all(c.start % 320 == 0 and c.stop - c.start <= 16_000 for c in chunks)
    assert all(a.stop - b.start >= 1_600 for a, b in zip(chunks, chunks[1:]))


def test_overlap_must_leave_room_for_progress():
    with pytest.raises(ValueError, match="longer than its overlap"):
        plan_chunks(100_000, 1_000, 1_000, 320)


def test_crossfade_of_agreeing_pieces_is_seamless():
    signal = np.sin(np.arange(10_000) / 30).astype(np.float32)
    starts = [0, 3_000, 6_000]
    pieces = [signal[s : s + 4_000] for s in starts]
    np.testing.assert_allclose(crossfade_join(pieces, starts, 10_000, fade=900), signal, atol=1e-6)


def test_crossfade_blends_disagreeing_pieces_smoothly():
    joined = crossfade_join([np.zeros(600), np.ones(600)], [0, 400], 1000, fade=200)
    assert joined[0] == 0 and joined[-1] == 1
    assert np.all(np.diff(joined) >= 0) and np.abs(np.diff(joined)).max() < 0.02  # a ramp, not a step
