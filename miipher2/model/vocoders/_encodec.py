"""A stand-in for EnCodec, so that the `vocos` package imports without it.

vocos imports EnCodec when the package is imported (vocos/feature_extractors.py, for its
EnCodec-token feature extractor). We use only Vocos' backbone, iSTFT head, discriminators and
losses, never EnCodec, and EnCodec's PyPI release (encodec 0.1.1) is licensed CC BY-NC 4.0: a
non-commercial licence has no place in an open-source image. So the lock and the image leave it
out (scripts/lock.py) and this module takes its place when it is not installed: importing vocos
works; touching `encodec.EncodecModel` raises an ImportError that says why.
"""

from __future__ import annotations

import sys
import types

MESSAGE = ("EnCodec is not installed: its PyPI release is licensed CC BY-NC 4.0 (non-commercial), so miipher2 "
           "leaves it out; miipher2 never uses it (only Vocos' backbone, head, discriminators and losses). "
           "`pip install encodec==0.1.1` if you need vocos' EnCodec features and its licence suits you.")


class _Unavailable(type):
    def __getattr__(cls, name: str):
        if name.startswith("__"):  # introspection (copy, pickle, inspect) must see an ordinary class
            raise AttributeError(name)
        raise ImportError(MESSAGE)

    def __call__(cls, *args, **kwargs):
        raise ImportError(MESSAGE)


def install_placeholder() -> bool:
    """Register the stand-in as `encodec` unless EnCodec itself imports; True when it did."""
    try:
        import encodec  # noqa: F401 — a real installation wins
        return False
    except ImportError:
        pass
    module = types.ModuleType("encodec", __doc__)
    module.EncodecModel = _Unavailable("EncodecModel", (), {"__module__": "encodec"})
    sys.modules["encodec"] = module
    return True
