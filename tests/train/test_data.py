from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from miipher2.data.manifest import COLUMNS, manifest_path, write_manifest
from miipher2.audio import write_audio
from miipher2.train.data import (DataError, LengthBucketBatchSampler, TrainingDataset, collate, load_items,
                                 sample_rng, window_start)
from tests.train.conftest import voiced


def test_long_utterances_are_cut_into_equal_items(corpus):
    items = load_items(corpus, "train", max_seconds=0.5, min_seconds=0.1)
    by_utt = {}
    for item in items:
        by_utt.setdefault(item.utt_id, []).append(item)
    for pieces in by_utt.values():
        assert len(pieces) >= 2 and all(p.seconds <= 0.5 for p in pieces)
        assert all(a.end == b.start for a, b in zip(pieces, pieces[1:]))  # contiguous, no gaps
    assert len({item.key for item in items}) == len(items)


def test_too_short_items_are_skipped_and_none_left_is_an_error(corpus):
    assert len(load_items(corpus, "train", max_seconds=10, min_seconds=1.2)) < 8
    with pytest.raises(DataError, match="no usable items"):
        load_items(corpus, "train", max_seconds=10, min_seconds=5)
    with pytest.raises(DataError, match="no manifest"):
        load_items(corpus, "test", max_seconds=10, min_seconds=0)


def test_ranks_split_each_global_batch_like_one_process():
    lengths = np.random.default_rng(0).uniform(1, 10, 50)
    single = LengthBucketBatchSampler(lengths, 8, seed=3, bucket_window=2)
    ranks = [LengthBucketBatchSampler(lengths, 8, rank=r, world_size=2, seed=3, bucket_window=2) for r in range(2)]
    for epoch in (0, 1):
        for sampler in (single, *ranks):
            sampler.set_position(epoch)
        for whole, part0, part1 in zip(single, *ranks):
            assert len(part0) == len(part1) == 4
            assert sorted(whole) == sorted(part0 + part1)
            assert not set(part0) & set(part1)
    assert len(single) == 50 // 8


def test_bucketing_batches_similar_lengths():
    lengths = np.random.default_rng(1).uniform(1, 10, 400)
    def mean_spread(window):
        sampler = LengthBucketBatchSampler(lengths, 8, seed=0, bucket_window=window)
        return np.mean([np.ptp(lengths[[i for i, _ in b]]) for b in sampler])
    assert mean_spread(16) < 0.25 * mean_spread(1)


def test_sampler_resumes_mid_epoch_and_reshuffles_per_epoch():
    sampler = LengthBucketBatchSampler(list(range(40)), 4, seed=0)
    full = list(sampler)
    sampler.set_position(0, 3)
    assert list(sampler) == full[3:]
    sampler.set_position(1)
    assert list(sampler) != [[(i, 1) for i, _ in b] for b in full]


def test_too_few_items_for_one_batch():
    with pytest.raises(DataError, match="cannot fill one batch"):
        LengthBucketBatchSampler([1.0, 2.0], 4)


def test_samples_are_a_function_of_seed_epoch_and_index(corpus):
    items = load_items(corpus, "train", 10, 0)
    def degrade(wave, rng):
        return wave + 0.01 * rng.standard_normal(wave.size).astype(np.float32), []
    dataset = TrainingDataset(corpus, items, seed=5, degrade=degrade, clean=True, target_rate=24000)
    a, b, c = dataset[(2, 0)], dataset[(2, 0)], dataset[(2, 1)]
    assert torch.equal(a["degraded"], b["degraded"]) and not torch.equal(a["degraded"], c["degraded"])
    assert a["clean"].shape == a["degraded"].shape
    assert abs(a["target_wave"].shape[0] - a["clean"].shape[0] * 1.5) <= 2
    batch = collate([a, None, c])  # a failed item (None) is dropped, not fatal
    assert batch["degraded"].shape[0] == 2 and batch["degraded_lengths"].tolist() == [a["degraded"].shape[0]] * 2


def test_unreadable_or_escaping_files_are_skipped_with_a_warning(corpus, tmp_path, caplog):
    root = tmp_path / "data"
    (root / "clean").mkdir(parents=True)
    (root / "clean" / "broken.wav").write_bytes(b"not audio")
    rows = [dict.fromkeys(COLUMNS, "") | {"utt_id": u, "path": p, "duration_s": 1.0}
            for u, p in (("broken", "clean/broken.wav"), ("escape", "../outside.wav"))]
    write_manifest(pd.DataFrame(rows, columns=list(COLUMNS)), manifest_path(root, "train"))
    dataset = TrainingDataset(root, load_items(root, "train", 10, 0), clean=True)
    assert dataset[(0, 0)] is None and dataset[(1, 0)] is None
    assert "broken@" in caplog.text and "escape@" in caplog.text
    with pytest.raises(DataError, match="every item"):
        collate([None, None])


def test_window_start_stays_inside_the_item():
    assert window_start(100, 0.0, 10) == 0
    assert window_start(100, 0.999, 10) == 90
    assert window_start(5, 0.7, 10) == 0  # shorter than a window: padded from the start


def _corpus_at_rates(root, rates):
    rows = []
    for i, rate in enumerate(rates):
        relative = f"clean/en/spk0/r{i}.wav"
        write_audio(root / relative, voiced(1.0, 120, np.random.default_rng(i)), 16000)
        rows.append({"utt_id": f"r{i}", "path": relative, "duration_s": 1.0, "sample_rate": rate, "channels": 1,
                     "language": "en", "speaker": "spk0", "split": "train", "transcript": ""})
    write_manifest(pd.DataFrame(rows, columns=list(COLUMNS)), manifest_path(root, "train"))
    return root


def test_sources_below_the_target_rate_are_left_out_with_a_warning(tmp_path, caplog):
    """16 kHz recordings cannot teach a 24 kHz vocoder its top band."""
    root = _corpus_at_rates(tmp_path, [16000, 24000, 48000, 8000])
    assert [i.utt_id for i in load_items(root, "train", 10, 0)] == ["r0", "r1", "r2", "r3"]
    assert [i.utt_id for i in load_items(root, "train", 10, 0, min_rate=16000)] == ["r0", "r1", "r2"]
    assert [i.utt_id for i in load_items(root, "train", 10, 0, min_rate=24000)] == ["r1", "r2"]
    assert "left out 2 of 4 utterances recorded below 24000 Hz" in caplog.text
    with pytest.raises(DataError, match=r"no usable items \(4 utterances recorded below the 96000 Hz"):
        load_items(root, "train", 10, 0, min_rate=96000)


def test_vocoder_stages_refuse_a_corpus_below_their_rate(corpus, tiny_config, tmp_path):
    """The demo corpus is 16 kHz: a 24 kHz vocoder stage says so instead of learning an empty top band."""
    from miipher2.train.stages import train_stage2

    with pytest.raises(DataError, match="8 utterances recorded below the 24000 Hz the targets need"):
        train_stage2(tiny_config("vocoder.sample_rate=24000", "stage2.steps=1"), corpus, tmp_path / "stage2")


def test_windows_read_only_the_window_and_its_context(corpus, monkeypatch):
    """Stages 2-3 decode the window plus context (and the target window), not the whole file."""
    import miipher2.train.data as data

    spans = []
    real = data.read_audio_span

    def spy(path, start, stop, *, sample_rate=None):
        spans.append((sample_rate, stop - start))
        return real(path, start, stop, sample_rate=sample_rate)

    monkeypatch.setattr(data, "read_audio_span", spy)
    items = load_items(corpus, "train", 10, 0)
    hop, window, context = 320, 8, 640
    dataset = TrainingDataset(corpus, items, seed=1, clean=True, target_rate=24000, window_frames=window, frame_hop=hop,
                              context=context)
    for index in range(len(items)):
        spans.clear()
        sample = dataset[(index, 0)]
        assert spans == [(16000, sample["clean"].shape[0]), (24000, window * hop * 3 // 2)]
        assert sample["clean"].shape[0] <= window * hop + 2 * context
        # The window sits at `window_offset` in the decoded audio, and matches the target window.
        whole = dataset.read(items[index], 16000)
        start = window_start((items[index].end - items[index].start) // hop, sample_rng(1, 0, index).random(), window)
        begin = start * hop - sample["window_offset"] * hop
        np.testing.assert_array_equal(sample["clean"].numpy(), whole[begin: begin + sample["clean"].shape[0]])
        target = dataset.read(items[index], 24000)[start * hop * 3 // 2: (start + window) * hop * 3 // 2]
        np.testing.assert_array_equal(sample["target_wave"].numpy()[: target.size], target)
