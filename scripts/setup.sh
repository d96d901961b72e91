#!/usr/bin/env bash
# Idempotent set-up: system packages, .venv with the pinned stack, the package itself, bytecode.
# A second run with nothing changed only compares a stamp and checks dpkg (a few seconds).
set -euo pipefail
cd "$(dirname "$0")/.."

# libopus0: Opus's SILK mode for the pinned demo corpus; qemu-user: its CPU-independence test.
# podman, runc and mmdebstrap build and run the pipeline image in the container tests (no Docker engine here).
SYSTEM_PACKAGES=(espeak-ng sox pocketsphinx-testdata libsndfile1 libopus0 qemu-user chromium postgresql podman runc
                 mmdebstrap)
VENV=.venv
PY=${PYTHON:-python3}
STAMP=$VENV/.setup-stamp

missing=()
for pkg in "${SYSTEM_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "setup: installing system packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

want=$(cat requirements.lock requirements-dev.lock pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/miipher2" ]; then
  echo "setup: up to date"
  exit 0
fi

# This machine's pip config lists local package mirrors; pip warns once per package it does not
# find there, hundreds of lines that would bury a real error.
pip_install() {
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
}

[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip_install --upgrade pip 'setuptools>=68,<81' wheel
# torch is pinned to the CPU wheel on this machine's disk; a newer pin would pull a multi-GB CUDA build.
# --no-deps: the locks are the complete, tested set (as the image installs it), which leaves out
# what scripts/lock.py excludes on purpose (EnCodec, a non-commercial licence, unused).
pip_install --no-deps -r requirements.lock -r requirements-dev.lock
pip_install --no-deps --no-build-isolation -e .

# speechbrain 1.1.2 imports torchaudio; the only torchaudio installable beside torch 2.13 is a
# CUDA build whose native libraries fail to load against CPU torch. Its pure-Python parts (all
# speechbrain uses; we never use torchaudio for I/O) load once the native libraries are gone.
"$VENV/bin/python" - <<'PY'
import pathlib, importlib.util, torch
if torch.version.cuda is None:
    spec = importlib.util.find_spec("torchaudio")
    if spec is not None:
        for so in pathlib.Path(spec.origin).parent.glob("lib/*.so"):
            so.unlink()
PY

# PYTHONDONTWRITEBYTECODE is set on these machines: without precompiled bytecode every process
# (every pipeline step) spends seconds recompiling the stack.
"$VENV/bin/python" -m compileall -q -j 0 "$VENV/lib" >/dev/null 2>&1 || true
"$VENV/bin/python" -c "import speechbrain, transformers, mlflow, kfp, dvc, pandera, miipher2" 
echo "$want" > "$STAMP"
echo "setup: done"
