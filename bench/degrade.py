"""Throughput of the degradation simulator on ONE core, as multiples of real time.

    .venv/bin/python -m bench.degrade          # LibriVox speech from pocketsphinx-testdata, synthetic banks
    .venv/bin/python -m bench.degrade data     # the noise/ and rir/ banks of a dataset root

Reports the default chain (random effects as training draws them) and each effect alone, forced
on, so the cost of each is visible; "share" is its expected share of the default chain's time
(probability x cost / chain cost; forced runs include the per-call overhead, so shares sum past 100 %).
"""

from __future__ import annotations

import os

# One core: pin thread pools before numpy/scipy load them, and the process to a single CPU.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"
if hasattr(os, "sched_setaffinity"):
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from miipher2.audio import read_audio  # noqa: E402
from miipher2.data import effects  # noqa: E402
from miipher2.data.degrade import EFFECTS, DegradationConfig, Degrader  # noqa: E402

RATE = 16000
LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


def speech_corpus() -> list[np.ndarray]:
    """Real read speech if pocketsphinx-testdata is installed, else harmonic stand-ins of 3-8 s."""
    files = sorted(LIBRIVOX.glob("*.wav"))
    if files:
        return [read_audio(f, sample_rate=RATE)[0] for f in files]
    rng = np.random.default_rng(0)
    waves = []
    for seconds in (3.0, 4.5, 6.0, 7.5, 8.0):
        t = np.arange(int(seconds * RATE)) / RATE
        phase = 2 * np.pi * np.cumsum(120 + 40 * np.sin(2 * np.pi * 0.7 * t)) / RATE
        voiced = sum(np.sin(k * phase) / k for k in range(1, 20)) * np.clip(np.sin(2 * np.pi * 3.3 * t), 0, None)
        waves.append((0.1 * voiced + 0.002 * rng.standard_normal(t.size)).astype(np.float32))
    return waves


def banks(root: str | None) -> tuple[dict, dict]:
    if root:
        degrader = Degrader.from_dataset(root)
        return degrader.noises, {name: room.taps for name, room in degrader.rooms.items()}
    rng = np.random.default_rng(1)
    noises = {color: 0.1 * effects.colored_noise(color, 20 * RATE, rng) for color in ("white", "pink", "brown")}
    rirs = {f"room_{rt60}": effects.synthetic_rir(rt60, RATE, rng) for rt60 in (0.2, 0.4, 0.6, 0.8, 1.0)}
    return noises, rirs


def real_time_factor(degrader: Degrader, corpus: list[np.ndarray], calls: int, repeats: int) -> tuple[float, float]:
    """(CPU-time, wall-time) multiples of real time, best of `repeats`; seeds differ per call.

    CPU time is the primary number: the two cores here are shared, and other processes' load
    stretches wall time without changing what degrading costs.
    """
    audio_s = sum(len(corpus[i % len(corpus)]) for i in range(calls)) / RATE
    cpu, wall = [], []
    for _ in range(repeats):
        cpu_start, wall_start = time.process_time(), time.perf_counter()
        for i in range(calls):
            degrader(corpus[i % len(corpus)], np.random.default_rng(i))
        cpu.append(time.process_time() - cpu_start)
        wall.append(time.perf_counter() - wall_start)
    return audio_s / min(cpu), audio_s / min(wall)


def forced(effect: str, **overrides) -> DegradationConfig:
    values = {f"p_{name}": 0.0 for name in EFFECTS}
    values[f"p_{effect}"] = 1.0
    return DegradationConfig.from_dict({**values, **overrides})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", help="dataset root with noise/ and rir/ banks (default: synthetic banks)")
    parser.add_argument("--calls", type=int, default=200, help="utterances per timing (default 200)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    corpus = speech_corpus()
    noises, rirs = banks(args.root)
    default = DegradationConfig()
    make = lambda config: Degrader(config, noises, rirs, RATE)  # noqa: E731
    make(default)(corpus[0], np.random.default_rng(0))  # warm caches (filter designs, codec libraries)

    print(f"speech: {len(corpus)} utterances, {sum(map(len, corpus)) / RATE:.1f} s; "
          f"banks: {len(noises)} noises, {len(rirs)} RIRs; {args.calls} calls x {args.repeats} repeats, 1 core")
    chain, chain_wall = real_time_factor(make(default), corpus, args.calls, args.repeats)
    print(f"\ndefault chain: {chain:.0f}x real time in CPU time ({1000 / chain:.2f} ms per second of audio), "
          f"{chain_wall:.0f}x in wall time\n")

    weights = default.codec_weights
    rows = [(name, forced(name), default.probability(name)) for name in EFFECTS if name not in ("band_limit", "codec")]
    rows += [(f"band_limit ({method})", forced("band_limit", p_resample=float(method == "resample")),
              default.p_band_limit * (default.p_resample if method == "resample" else 1 - default.p_resample))
             for method in ("lowpass", "resample")]
    rows += [(f"codec ({codec})", forced("codec", codec_weights={codec: 1.0}),
              default.p_codec * weight / sum(weights.values())) for codec, weight in weights.items()]
    print("| effect (forced on) | x real time | ms per audio second | default probability | expected share |")
    print("|---|---:|---:|---:|---:|")
    for label, config, probability in rows:
        speed, _ = real_time_factor(make(config), corpus, max(20, args.calls // 4), args.repeats)
        share = probability * (1000 / speed) / (1000 / chain)
        print(f"| {label} | {speed:.0f}x | {1000 / speed:.2f} | {probability:.3f} | {share:.0%} |")


if __name__ == "__main__":
    main()
