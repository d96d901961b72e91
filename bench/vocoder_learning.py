"""How fast each vocoder kind learns on a short CPU run, at the demo preset's scale.

    .venv/bin/python -m bench.vocoder_learning [--steps 200] [--every 50] [--preset demo-cpu] [--kinds ...] [--set k=v]

Real read speech: the five LibriVox recordings of pocketsphinx-testdata (16 kHz, 24.7 s); the
last 20 % of each is held out. Features come from the preset's encoder (demo-cpu: a tiny random
w2v-BERT 2.0, deterministic though meaningless as speech features: a vocoder can still learn to
invert them). Every kind trains with its own GAN recipe through `stages.vocoder_step` with the
preset's vocoder size, discriminator set and stage-2 settings, on the same random windows, one
step of each kind in turn, so all see the same load. Reported: the held-out L1 log-mel distance
(the objectives' kind-independent "mel") at step 0 and every `--every` steps, and CPU s per step.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from miipher2.audio import read_audio
from miipher2.train.config import load_config
from miipher2.train.data import window_start
from miipher2.train.distributed import DistContext
from miipher2.train.stages import (build_encoder, build_objective, build_vocoder, cut_windows, optimizer_for,
                                   scheduler_for, vocoder_step)

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
CPU = DistContext(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
KINDS = ("hifigan", "vocos", "wavefit")


def features_of(cleaner, wave: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        features, frames = cleaner(torch.from_numpy(wave)[None], torch.tensor([len(wave)]), use_adapters=False)
    return features[0, : int(frames[0])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo-cpu")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--set", action="append", default=[], help="config override, e.g. vocoder.size=paper")
    args = parser.parse_args()
    config = load_config(args.preset, ["vocoder.sample_rate=16000", *args.set])  # the recordings are 16 kHz
    torch.set_num_threads(config.runtime.threads or 1)
    torch.manual_seed(0)
    cleaner = build_encoder(config, Path(tempfile.mkdtemp(prefix="bench-vocoder-learning-")), CPU.device).cleaner
    cleaner.eval().requires_grad_(False)
    hop = cleaner.hop_length

    train, held_out = [], []
    for path in sorted(LIBRIVOX.glob("*.wav")):
        wave, rate = read_audio(path)
        assert rate == 16000, path
        cut = int(0.8 * len(wave)) // hop * hop
        for part, store in ((wave[:cut], train), (wave[cut:], held_out)):
            store.append((features_of(cleaner, part), torch.from_numpy(part.astype(np.float32))))
    print(f"{len(train)} recordings; training {sum(len(w) for _, w in train) / 16000:.1f} s, "
          f"held out {sum(len(w) for _, w in held_out) / 16000:.1f} s; preset {args.preset} {' '.join(args.set)}")

    stage = config.stage2
    runs = {}
    for kind in args.kinds:
        config.vocoder.kind = kind
        torch.manual_seed(0)
        objective = build_objective(config, stage)
        vocoder, discriminator = build_vocoder(config, cleaner), objective.make_discriminator()
        opts = (optimizer_for(vocoder.parameters(), stage),
                optimizer_for(discriminator.parameters(), stage, lr=stage.discriminator_lr))
        step = vocoder_step(cleaner, vocoder, discriminator, vocoder, discriminator, objective, opts,
                            tuple(scheduler_for(o, stage) for o in opts), stage, CPU, contextlib.nullcontext(),
                            use_adapters=False)
        runs[kind] = (vocoder, objective, step, [], [])  # + held-out mel per checkpoint, CPU s per step

    def held_out_mel(vocoder, objective) -> float:
        vocoder.eval()
        with torch.no_grad():
            values = [objective.mel(vocoder(f[None]), w[None, : f.shape[0] * hop]).item() for f, w in held_out]
        vocoder.train()
        return float(np.mean(values))

    rng = np.random.default_rng(0)
    frames = stage.segment_frames
    for kind, (vocoder, objective, _, curve, _) in runs.items():
        curve.append(held_out_mel(vocoder, objective))
    for done in range(1, args.steps + 1):
        picks = rng.integers(len(train), size=stage.batch_size)
        feats = torch.nn.utils.rnn.pad_sequence([train[i][0] for i in picks], batch_first=True)
        waves = torch.nn.utils.rnn.pad_sequence([train[i][1] for i in picks], batch_first=True)
        offsets = [window_start(train[i][0].shape[0], fraction, frames)
                   for i, fraction in zip(picks, rng.random(len(picks)))]
        batch_features = cut_windows(feats, offsets, frames)
        waves = torch.nn.functional.pad(waves, (0, max(offsets) * hop + frames * hop))  # zeros past each end
        batch_waves = torch.stack([wave[o * hop: (o + frames) * hop] for wave, o in zip(waves, offsets)])
        for kind, (vocoder, objective, step, curve, cpu) in runs.items():
            started = time.process_time()
            step({"features": batch_features, "target_wave": batch_waves})
            cpu.append(time.process_time() - started)
            if done % args.every == 0:
                curve.append(held_out_mel(vocoder, objective))
    checkpoints = [0] + list(range(args.every, args.steps + 1, args.every))
    print(f"\nheld-out L1 log-mel distance after N steps (batch {stage.batch_size} x {frames} frames, "
          f"vocoder.size={config.vocoder.size}, discriminator={config.vocoder.discriminator})\n")
    print("| kind | " + " | ".join(f"step {n}" for n in checkpoints) + " | CPU s / step | CPU s to the last |")
    print("|---|" + "---:|" * (len(checkpoints) + 2))
    for kind, (_, _, _, curve, cpu) in runs.items():
        print(f"| {kind} | " + " | ".join(f"{v:.3f}" for v in curve)
              + f" | {statistics.median(cpu):.2f} | {sum(cpu):.0f} |")


if __name__ == "__main__":
    main()
