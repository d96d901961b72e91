"""Opus in its speech mode (SILK), through libopus's public C API: the same bytes on every x86-64 CPU.

libsndfile's Opus (effects codec "opus") lets libopus choose its mode, and above ~20-50 kbit/s
it chooses CELT. CELT's encoder picks its pulses with the SSE approximate-reciprocal instructions
(`rcpps`, `rsqrtps` in `op_pvq_search_sse2`, used on every x86-64 CPU), whose results are
implementation-defined: Intel and AMD processors (and emulators) encode the same input
differently. SILK, the speech layer, quantises with integer arithmetic, and its float analysis is
plain C. So copies pinned by hash (the demo corpus's degraded val/test in data.dvc) use this
module: a voice-over-IP encoder limited to wideband, which keeps libopus in SILK mode at every
bitrate; every packet is checked, and a CELT or hybrid packet is an error, not silently
CPU-dependent output. See docs/data.md, "Determinism".

Needs the shared libopus (Debian package `libopus0`, installed by `make setup`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import lru_cache

import numpy as np

RATES = (8000, 12000, 16000, 24000, 48000)  # what libopus encodes and decodes natively
FRAME_S = 0.02  # 20 ms packets: what VoIP sends, and what keeps libopus in SILK (shorter forces CELT)
MAX_PACKET_BYTES = 1500

# opus_defines.h (public API)
_APPLICATION_VOIP = 2048
_SET_BITRATE, _SET_MAX_BANDWIDTH, _SET_SIGNAL, _GET_LOOKAHEAD = 4002, 4004, 4024, 4027
_BANDWIDTH_WIDEBAND, _SIGNAL_VOICE = 1103, 3001
_SILK_ONLY_CONFIGS = range(12)  # TOC byte >> 3: 0-11 SILK, 12-15 hybrid, 16-31 CELT (RFC 6716, 3.1)


class OpusError(RuntimeError):
    """libopus is missing, refused a setting, or left SILK mode; the message says which."""


@lru_cache(maxsize=1)
def _libopus() -> ctypes.CDLL:
    name = ctypes.util.find_library("opus")
    if name is None:
        raise OpusError("libopus not found: install the Debian package `libopus0` (make setup does)")
    lib = ctypes.CDLL(name)
    lib.opus_encoder_create.restype = lib.opus_decoder_create.restype = ctypes.c_void_p
    lib.opus_encoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    lib.opus_decoder_create.argtypes = [ctypes.c_int32, ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
    lib.opus_encoder_destroy.argtypes = lib.opus_decoder_destroy.argtypes = [ctypes.c_void_p]
    lib.opus_encode_float.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int32]
    lib.opus_decode_float.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p,
                                      ctypes.c_int, ctypes.c_int]
    lib.opus_get_version_string.restype = lib.opus_strerror.restype = ctypes.c_char_p
    return lib


def version() -> str:
    """The libopus in use, e.g. '1.3.1' (its output is part of the pinned corpus)."""
    return _libopus().opus_get_version_string().decode().removeprefix("libopus ")


def silk_round_trip(wave: np.ndarray, sample_rate: int, kbps: float) -> tuple[np.ndarray, float]:
    """Encode mono float audio as SILK-mode Opus packets at `kbps` and decode them again.

    Returns (decoded wave with the input's length, payload kbit/s actually used). The encoder's
    lookahead is taken off; narrowband packets still lead by a few samples (SILK's resampler).
    `sample_rate` must be one of RATES.
    """
    if sample_rate not in RATES:
        raise ValueError(f"Opus codes {RATES} Hz, not {sample_rate}")
    lib = _libopus()
    error = ctypes.c_int()
    encoder = lib.opus_encoder_create(sample_rate, 1, _APPLICATION_VOIP, ctypes.byref(error))
    _check(error.value, "opus_encoder_create")
    decoder = lib.opus_decoder_create(sample_rate, 1, ctypes.byref(error))
    try:
        _check(error.value, "opus_decoder_create")
        for request, value in ((_SET_BITRATE, int(round(kbps * 1000))), (_SET_SIGNAL, _SIGNAL_VOICE),
                               (_SET_MAX_BANDWIDTH, _BANDWIDTH_WIDEBAND)):
            _check(lib.opus_encoder_ctl(ctypes.c_void_p(encoder), request, ctypes.c_int(value)), f"opus_encoder_ctl({request})")
        lookahead = ctypes.c_int()
        _check(lib.opus_encoder_ctl(ctypes.c_void_p(encoder), _GET_LOOKAHEAD, ctypes.byref(lookahead)), "lookahead")
        frame = int(sample_rate * FRAME_S)
        # The decoder lags the input by the encoder's lookahead: code that much more, then drop it.
        padded = np.zeros(-(-(len(wave) + lookahead.value) // frame) * frame, dtype=np.float32)
        padded[: len(wave)] = wave
        decoded = np.empty_like(padded)
        packet = (ctypes.c_ubyte * MAX_PACKET_BYTES)()
        payload = 0
        for start in range(0, len(padded), frame):
            size = lib.opus_encode_float(encoder, padded[start:].ctypes.data, frame, packet, MAX_PACKET_BYTES)
            _check(min(size, 0), "opus_encode_float")
            if packet[0] >> 3 not in _SILK_ONLY_CONFIGS:
                raise OpusError(f"libopus left SILK mode (packet configuration {packet[0] >> 3}) at {kbps} kbit/s: "
                                "its output would depend on the CPU")
            payload += size
            got = lib.opus_decode_float(decoder, packet, size, decoded[start:].ctypes.data, frame, 0)
            _check(min(got, 0), "opus_decode_float")
    finally:
        lib.opus_encoder_destroy(encoder)
        lib.opus_decoder_destroy(decoder)
    used_kbps = payload * 8 / max(len(padded) / sample_rate, 1e-9) / 1000
    return decoded[lookahead.value: lookahead.value + len(wave)], used_kbps


def _check(code: int, call: str) -> None:
    if code < 0:
        raise OpusError(f"{call} failed: {_libopus().opus_strerror(code).decode()}")
