"""Print, as JSON, the md5 of what each numeric step of the demo corpus build makes of fixed input.

tests/data/test_cpu_independence.py runs this natively and under `qemu-x86_64 -cpu MODEL`: the
steps the corpus is built from must give the same bytes on every CPU model. Codecs that are
known to differ (effects.CODECS[...].reproducible is False) are reported apart, as the control
that shows the emulated CPU really computes differently.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np


def md5(wave: np.ndarray) -> str:
    return hashlib.md5(np.ascontiguousarray(wave).tobytes()).hexdigest()


def speechlike(seconds: float = 1.0, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    phase = 2 * np.pi * np.cumsum(120 + 40 * np.sin(2 * np.pi * 0.7 * t)) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 20))
    noise = np.random.default_rng(0).standard_normal(t.size)
    return (0.1 * voiced * np.clip(np.sin(2 * np.pi * 3.3 * t), 0, None) ** 0.5 + 0.002 * noise).astype(np.float32)


def main() -> None:
    from miipher2.audio import resample
    from miipher2.data import effects, synth

    rng = lambda: np.random.default_rng(7)  # noqa: E731
    wave = speechlike()
    settings = {"mp3": dict(compression_level=0.9, bitrate_mode="CONSTANT"), "vorbis": dict(compression_level=0.5),
                "opus": dict(compression_level=0.8), "opus_silk": dict(kbps=24.0)}
    reproducible, cpu_dependent = {}, {}
    for codec, spec in effects.CODECS.items():
        decoded, _ = effects.codec_round_trip(wave, 16000, codec, **settings.get(codec, {}))
        (reproducible if spec.reproducible else cpu_dependent)[f"codec {codec}"] = md5(decoded)
    room = effects.prepare_rir(effects.synthetic_rir(0.4, 16000, rng()), 16000)
    reproducible.update({
        "speech resample 22050->16000": md5(resample(speechlike(rate=22050), 22050, 16000)),
        "peak_normalize": md5(synth.peak_normalize(wave, -3.7)),
        "resample_round_trip 11025": md5(effects.resample_round_trip(wave, 16000, 11025)),
        "lowpass 3 kHz": md5(effects.lowpass(wave, 16000, 3000.0)),
        "reverberate": md5(effects.reverberate(wave, room)),
        "add_noise pink": md5(effects.add_noise(wave, effects.colored_noise("pink", len(wave), rng()), 12.3, 16000)),
        "clip": md5(effects.clip(wave, effects.clip_threshold(wave, 0.02))),
        "noise bank": md5(np.concatenate([synth.colored_noise(rng(), 16000, 1.0), synth.mains_hum(rng(), 16000, 50.0),
                                          synth.tonal_noise(rng(), 16000), synth.babble(rng(), 16000, [wave, wave[::2]])])),
        "simulated room": md5(synth.simulate_room(rng(), 0.3).rir),
    })
    print(json.dumps({"reproducible": reproducible, "cpu_dependent": cpu_dependent}, indent=1, sort_keys=True))


if __name__ == "__main__":
    main()
