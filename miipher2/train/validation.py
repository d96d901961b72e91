"""Validation inside training: a fixed held-out subset of the val split, scored as training goes.

Every `eval_every` steps, at the first step of a fresh run (step 0: the starting point) and at
the end, each stage scores the same utterances of `manifests/<validation.split>_degraded.csv`
(the materialised degraded copies and their clean references, never seen in training) and logs
them under stable names, so runs of any preset overlay in MLflow:

    stage 1   val/loss, val/l1, val/l2, val/spectral_convergence   the training loss, on val
              val/gap_closed = 1 - d(PA(degraded), clean) / d(degraded, clean)
                  d = mean L1 over valid frames and dims at the feature layer, averaged over
                  utterances; 0 with untrained adapters (they add exactly nothing), 1 = perfect
    stages 2, 3  val/mel     L1 distance of log-mel spectrograms (80 bands, 1024-point FFT)
              val/mrstft  multi-resolution STFT distance (spectral convergence + log-magnitude
                          L1, three resolutions), vocoder output vs the clean reference: from
                          clean features (stage 2: resynthesis) or from adapter-cleaned degraded
                          features (stage 3: restoration)

The weights with the best score so far are kept in `<out>/best/` beside the checkpoints; at the
end they become the stage's published weights (what stage 3 and the export read). At the end
of stages 2 and 3, `validation/examples/` gets a few outputs (WAV) with their spectrograms (PNG);
`validation/history.jsonl` keeps every score.

Validation never changes the training trajectory: it runs without gradients, in eval mode, inside
`torch.random.fork_rng` (a stochastic vocoder draws from its own seeded stream, and the training
stream continues as if validation had not run), and the data it reads is fixed. So resuming stays
exact with validation on. Under torchrun each rank scores its share and the sums are all-reduced.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from miipher2.audio import AudioError, read_audio, write_audio
from miipher2.files import atomic_directory
from miipher2.train.checkpoint import load_weights, save_weights
from miipher2.train.config import ENCODER_SAMPLE_RATE, ValidationConfig
from miipher2.train.data import DataError
from miipher2.train.distributed import DistContext, barrier
from miipher2.train.losses import feature_cleaner_loss

BEST_DIR, BEST_RECORD = "best", "validation.json"
VALIDATION_DIR, HISTORY_FILE = "validation", "history.jsonl"
VALIDATION_SEED = 1234  # the stream a stochastic vocoder draws from while validating


@dataclass
class ValidationPair:
    utt_id: str
    degraded: np.ndarray  # 16 kHz, the encoder's input
    clean: np.ndarray     # 16 kHz
    clean_path: Path      # to read the reference again at the vocoder's rate


def load_pairs(root: str | Path, config: ValidationConfig) -> list[ValidationPair]:
    """The fixed subset: `config.utterances` pairs spread round-robin over languages, each cut to
    its first `config.max_seconds`. Paths stay inside the dataset root."""
    from miipher2.evaluate.evalset import EvaluationSetError, load_evaluation_set

    try:
        frame = load_evaluation_set(root, config.split, max_utterances=config.utterances)
    except EvaluationSetError as err:
        raise DataError(f"validation: {err} (or set validation.utterances=0 to train without validation)") from err
    limit = int(config.max_seconds * ENCODER_SAMPLE_RATE)
    pairs = []
    for row in frame.itertuples(index=False):
        try:
            degraded, _ = read_audio(row.degraded_file, sample_rate=ENCODER_SAMPLE_RATE)
            clean, _ = read_audio(row.clean_file, sample_rate=ENCODER_SAMPLE_RATE)
        except AudioError as err:
            raise DataError(f"validation utterance {row.utt_id}: {err}") from err
        n = min(len(degraded), len(clean), limit)
        pairs.append(ValidationPair(str(row.utt_id), degraded[:n], clean[:n], Path(row.clean_file)))
    return pairs


# --------------------------------------------------------------------------- what is scored

class FeatureScorer:
    """Stage 1: the adapters' output on degraded val audio vs the clean features.

    The frozen encoder's clean features and its (adapter-free) degraded features never change,
    so they are computed once; each validation runs the cleaner with adapters only.
    """

    metric, higher_is_better = "loss", False

    def __init__(self, cleaner: nn.Module, pairs: list[ValidationPair], device: torch.device, autocast):
        self.cleaner, self.device, self.autocast = cleaner, device, autocast
        self.inputs, self.targets, self.untouched = [], [], []
        with torch.no_grad(), _eval(cleaner):
            for pair in pairs:
                degraded = torch.from_numpy(pair.degraded)[None].to(device)
                target = self._features(torch.from_numpy(pair.clean)[None].to(device), use_adapters=False)
                self.inputs.append(degraded)
                self.targets.append(target)
                self.untouched.append(self._l1(self._features(degraded, use_adapters=False), target))

    def _features(self, wave: torch.Tensor, use_adapters: bool) -> tuple[torch.Tensor, torch.Tensor]:
        with self.autocast:
            features, frames = self.cleaner(wave, use_adapters=use_adapters)
        return features.float(), frames

    @staticmethod
    def _l1(predicted, target) -> float:
        (features, frames), (target_features, target_frames) = predicted, target
        return feature_cleaner_loss(features, target_features, torch.minimum(frames, target_frames)).l1.item()

    def sums(self) -> dict[str, float]:
        totals = dict.fromkeys(("loss", "l1", "l2", "spectral_convergence", "untouched_l1"), 0.0)
        with torch.no_grad(), _eval(self.cleaner):
            for degraded, (target, target_frames), untouched in zip(self.inputs, self.targets, self.untouched):
                features, frames = self._features(degraded, use_adapters=True)
                loss = feature_cleaner_loss(features, target, torch.minimum(frames, target_frames))
                for name, value in (("loss", loss.total), ("l1", loss.l1), ("l2", loss.l2),
                                    ("spectral_convergence", loss.spectral_convergence)):
                    totals[name] += value.item()
                totals["untouched_l1"] += untouched
        return totals

    @staticmethod
    def metrics(sums: dict[str, float], count: int) -> dict[str, float]:
        means = {k: v / max(count, 1) for k, v in sums.items() if k != "untouched_l1"}
        means["gap_closed"] = gap_closed(sums["l1"], sums["untouched_l1"])
        return means

    def examples(self, pairs: list[ValidationPair], out_dir: Path) -> list[Path]:
        return []  # features have no audio to listen to


def gap_closed(cleaned_distance: float, untouched_distance: float) -> float:
    """1 - d(PA(degraded), clean) / d(degraded, clean): the share of the distance the adapters remove."""
    if untouched_distance <= 0:
        return float("nan")  # degraded already equals clean: there is no gap to close
    return 1.0 - cleaned_distance / untouched_distance


class VocoderScorer:
    """Stages 2 and 3: the vocoder's output vs the clean reference at the vocoder's rate.

    The (frozen) encoder's features are computed once: of the clean audio without adapters
    (stage 2, resynthesis) or of the degraded audio with the trained adapters (stage 3, restoration).
    """

    metric, higher_is_better = "mel", False

    def __init__(self, cleaner: nn.Module, vocoder: nn.Module, pairs: list[ValidationPair], device: torch.device,
                 autocast, *, sample_rate: int, restoration: bool):
        self.vocoder, self.device, self.autocast, self.sample_rate = vocoder, device, autocast, sample_rate
        self.restoration = restoration
        self.distances = SpectralDistances(sample_rate).to(device)
        self.features, self.references = [], []
        with torch.no_grad(), _eval(cleaner):
            for pair in pairs:
                wave = pair.degraded if restoration else pair.clean
                with autocast:
                    features, frames = cleaner(torch.from_numpy(wave)[None].to(device), use_adapters=restoration)
                self.features.append(features[:, : int(frames[0])].float())
                reference, _ = read_audio(pair.clean_path, sample_rate=sample_rate)
                seconds = len(pair.clean) / ENCODER_SAMPLE_RATE
                self.references.append(torch.from_numpy(reference[: int(round(seconds * sample_rate))]).to(device))

    def output(self, index: int) -> torch.Tensor:
        with torch.no_grad(), _eval(self.vocoder), self.autocast:
            wave = self.vocoder(self.features[index])
        return wave.float()[0]

    def sums(self) -> dict[str, float]:
        totals = {"mel": 0.0, "mrstft": 0.0}
        for index, reference in enumerate(self.references):
            fake = self.output(index)
            n = min(len(fake), len(reference))
            totals["mel"] += self.distances.mel(fake[:n], reference[:n]).item()
            totals["mrstft"] += self.distances.mrstft(fake[:n], reference[:n]).item()
        return totals

    @staticmethod
    def metrics(sums: dict[str, float], count: int) -> dict[str, float]:
        return {k: v / max(count, 1) for k, v in sums.items()}

    def examples(self, pairs: list[ValidationPair], out_dir: Path) -> list[Path]:
        """`<utt>.wav` (the vocoder's output) and `<utt>.png` (spectrograms) per example pair."""
        from miipher2.evaluate.report import spectrogram_png

        written = []
        name = "restored" if self.restoration else "resynthesised"
        for index, pair in enumerate(pairs):
            wave = self.output(index).cpu().numpy()
            wav, png = out_dir / f"{pair.utt_id}.wav", out_dir / f"{pair.utt_id}.png"
            write_audio(wav, np.clip(wave, -1, 1), self.sample_rate)
            panels = {"clean": pair.clean, **({"degraded": pair.degraded} if self.restoration else {}),
                      name: _resample_to_encoder_rate(wave, self.sample_rate)}
            png.write_bytes(base64.b64decode(spectrogram_png(panels, ENCODER_SAMPLE_RATE)))
            written += [wav, png]
        return written


class SpectralDistances(nn.Module):
    """Distances between a wave and its reference that do not depend on how the vocoder is trained.

    mel: mean |log(mel(x)) - log(mel(y))| of magnitude mel spectrograms (HiFi-GAN's definition:
    1024-point FFT, hop 256, 80 bands up to Nyquist, magnitudes floored at 1e-5).
    mrstft: Parallel WaveGAN's multi-resolution STFT loss: for (FFT, hop, window) = (1024, 120,
    600), (2048, 240, 1200), (512, 50, 240), spectral convergence + mean |log |X| - log |Y||,
    averaged over resolutions.
    """

    RESOLUTIONS = ((1024, 120, 600), (2048, 240, 1200), (512, 50, 240))

    def __init__(self, sample_rate: int, n_fft: int = 1024, hop: int = 256, n_mels: int = 80):
        super().__init__()
        from transformers.audio_utils import mel_filter_bank

        bank = mel_filter_bank(num_frequency_bins=n_fft // 2 + 1, num_mel_filters=n_mels, min_frequency=0.0,
                               max_frequency=sample_rate / 2, sampling_rate=sample_rate, norm="slaney",
                               mel_scale="slaney")
        self.register_buffer("mel_bank", torch.tensor(bank, dtype=torch.float32), persistent=False)
        self.n_fft, self.hop = n_fft, hop

    @staticmethod
    def _magnitude(wave: torch.Tensor, n_fft: int, hop: int, window: int) -> torch.Tensor:
        spec = torch.stft(wave.float(), n_fft, hop, window, torch.hann_window(window, device=wave.device),
                          return_complex=True)
        return spec.abs().clamp_min(1e-7)  # [freq, frames]

    def mel(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        log_mels = [(self.mel_bank.T @ self._magnitude(w, self.n_fft, self.hop, self.n_fft)).clamp_min(1e-5).log()
                    for w in (fake, real)]
        return (log_mels[0] - log_mels[1]).abs().mean()

    def mrstft(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        total = fake.new_zeros(())
        for n_fft, hop, window in self.RESOLUTIONS:
            x, y = self._magnitude(fake, n_fft, hop, window), self._magnitude(real, n_fft, hop, window)
            convergence = torch.linalg.norm(y - x) / torch.linalg.norm(y)
            total = total + convergence + (y.log() - x.log()).abs().mean()
        return total / len(self.RESOLUTIONS)


# --------------------------------------------------------------------------- building, per stage

def feature_validation(config, data_root: Path, out_dir: Path, ctx: DistContext, tracker, *, cleaner: nn.Module,
                       weights: dict[str, nn.Module], autocast) -> Validation | None:
    """Stage 1's validation, or None when `validation.utterances` is 0."""
    pairs = _pairs_of_this_rank(config.validation, data_root, ctx)
    if pairs is None:
        return None
    scorer = FeatureScorer(cleaner, pairs, ctx.device, autocast)
    return Validation(scorer, pairs, every=config.stage1.eval_every, examples=0, ctx=ctx, tracker=tracker,
                      out_dir=out_dir, weights=weights)


def vocoder_validation(config, stage: str, data_root: Path, out_dir: Path, ctx: DistContext, tracker, *,
                       cleaner: nn.Module, vocoder: nn.Module, weights: dict[str, nn.Module],
                       autocast) -> Validation | None:
    """Stage 2's (resynthesis) or stage 3's (restoration) validation, or None when disabled."""
    pairs = _pairs_of_this_rank(config.validation, data_root, ctx)
    if pairs is None:
        return None
    scorer = VocoderScorer(cleaner, vocoder, pairs, ctx.device, autocast, sample_rate=config.vocoder.sample_rate,
                           restoration=stage == "stage3")
    return Validation(scorer, pairs, every=getattr(config, stage).eval_every, examples=config.validation.examples,
                      ctx=ctx, tracker=tracker, out_dir=out_dir, weights=weights)


def _pairs_of_this_rank(config: ValidationConfig, data_root: Path, ctx: DistContext) -> list[ValidationPair] | None:
    if config.utterances == 0:
        return None
    return load_pairs(data_root, config)[ctx.rank:: ctx.world_size]


# --------------------------------------------------------------------------- the loop's hook

class Validation:
    """What `run_loop` calls: `start(step, total)` once, `due(step, total)` / `__call__(step)`
    after steps; the stage calls `finish()` before publishing its weights.

    `weights` maps the stage's weight file names to the modules trained (as its final weights):
    they are saved to `<out>/best/` whenever the score improves, and loaded back by `finish()`.
    Every score is also appended to `<out>/validation/history.jsonl` (one JSON object per
    validation: step and `val/...` metrics), the curve without MLflow.
    """

    def __init__(self, scorer, pairs: list[ValidationPair], *, every: int, examples: int, ctx: DistContext,
                 tracker, out_dir: Path, weights: dict[str, nn.Module]):
        self.scorer, self.pairs, self.every, self.n_examples = scorer, pairs, every, examples
        self.ctx, self.tracker, self.out_dir, self.weights = ctx, tracker, Path(out_dir), weights
        self.best: dict[str, Any] | None = None
        self.last: dict[str, float] = {}

    @property
    def best_dir(self) -> Path:
        return self.out_dir / BEST_DIR

    @property
    def history_file(self) -> Path:
        return self.out_dir / VALIDATION_DIR / HISTORY_FILE

    def start(self, step: int, total: int) -> None:
        """Fresh run (step 0): forget a stale best and history, and score the starting weights.
        Resumed run: continue from the best recorded so far, and score the resumed step if it is
        due (a run stopped by SIGTERM checkpoints without validating; scoring twice gives the
        same numbers)."""
        if step == 0:
            if self.ctx.is_main:
                shutil.rmtree(self.best_dir, ignore_errors=True)
                self.history_file.unlink(missing_ok=True)
            barrier(self.ctx)
            self(0)
            return
        record = self.best_dir / BEST_RECORD
        if record.is_file():
            self.best = json.loads(record.read_text())
        if self.due(step, total):
            self(step)

    def due(self, step: int, total: int) -> bool:
        return step % self.every == 0 or step == total

    def __call__(self, step: int) -> dict[str, float]:
        started = time.perf_counter()
        with torch.random.fork_rng(devices=_rng_devices(self.ctx.device)):
            torch.manual_seed(VALIDATION_SEED)
            sums = self.scorer.sums()
        keys = sorted(sums)
        totals = torch.tensor([sums[k] for k in keys] + [float(len(self.pairs))], dtype=torch.float64,
                              device=self.ctx.device)
        if self.ctx.distributed:
            torch.distributed.all_reduce(totals)
        sums, count = dict(zip(keys, totals[:-1].tolist())), int(totals[-1].item())
        self.last = {f"val/{k}": v for k, v in self.scorer.metrics(sums, count).items()}
        if self.ctx.is_main:
            self.tracker.log_metrics({**self.last, "val/seconds": time.perf_counter() - started}, step=step)
            self.history_file.parent.mkdir(parents=True, exist_ok=True)
            with self.history_file.open("a") as handle:
                handle.write(json.dumps({"step": step, **self.last}) + "\n")
            if self._improves(self.last[self.metric]):
                self._save_best(step)
        barrier(self.ctx)
        return self.last

    @property
    def metric(self) -> str:
        return f"val/{self.scorer.metric}"

    def _improves(self, value: float) -> bool:
        if not np.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best["value"] if self.scorer.higher_is_better else value < self.best["value"]

    def _save_best(self, step: int) -> None:
        """Weights and record swapped in as one directory: never half a best."""
        self.best = {"step": step, "metric": self.metric, "value": self.last[self.metric], "metrics": self.last}
        with atomic_directory(self.best_dir) as tmp:
            for name, module in self.weights.items():
                save_weights(module, tmp / name)
            (tmp / BEST_RECORD).write_text(json.dumps(self.best, indent=2))

    def finish(self) -> dict[str, Any]:
        """Load the best weights into the trained modules (they become the published weights),
        write and log the audio examples; returns the summary that goes into result.json:
        the first, best and last scores (`read_history` has them all)."""
        barrier(self.ctx)
        if self.best is not None:
            for name, module in self.weights.items():
                load_weights(module, self.best_dir / name)
        if self.ctx.is_main:
            examples_dir = self.out_dir / VALIDATION_DIR / "examples"
            shutil.rmtree(examples_dir, ignore_errors=True)
            examples_dir.mkdir(parents=True)
            with torch.random.fork_rng(devices=_rng_devices(self.ctx.device)):
                torch.manual_seed(VALIDATION_SEED)
                written = self.scorer.examples(self.pairs[: self.n_examples], examples_dir)
            if written:
                self.tracker.log_artifact(examples_dir, f"{VALIDATION_DIR}/examples")
            self.tracker.log_artifact(self.history_file, VALIDATION_DIR)
        history = read_history(self.out_dir)
        return {"metric": self.metric, "first": history[0] if history else None, "best": self.best, "last": history[-1] if history else None}


def read_history(stage_dir: str | Path) -> list[dict[str, float]]:
    """Every validation of a stage, in step order (a step scored twice, around a resume, once)."""
    path = Path(stage_dir) / VALIDATION_DIR / HISTORY_FILE
    if not path.is_file():
        return []
    by_step = {}
    for line in path.read_text().splitlines():
        record = json.loads(line)
        by_step[record["step"]] = record
    return [by_step[step] for step in sorted(by_step)]


def summary_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """A stage's validation summary as flat numbers (pipeline metrics): `val_first/<name>`,
    `val_best/<name>`, `val_best_step`."""
    if not summary or summary.get("best") is None:
        return {}
    numbers = {"val_best_step": float(summary["best"]["step"])}
    for which, record in (("val_first", summary["first"]), ("val_best", summary["best"]["metrics"])):
        numbers.update({f"{which}/{k.removeprefix('val/')}": v for k, v in (record or {}).items() if k != "step"})
    return numbers


def _rng_devices(device: torch.device) -> list:
    return [device] if device.type == "cuda" else []


@contextlib.contextmanager
def _eval(module: nn.Module):
    """Eval mode for the duration (no dropout), then the module's previous mode."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


def _resample_to_encoder_rate(wave: np.ndarray, rate: int) -> np.ndarray:
    from miipher2.audio import resample

    return wave if rate == ENCODER_SAMPLE_RATE else resample(wave, rate, ENCODER_SAMPLE_RATE)
