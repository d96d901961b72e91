"""Which model restores the corpus, pinned, with an identity that says whether outputs are stale.

`resolve_model` turns what the user names into a `ModelRef`:
- a model directory (Restorer.save_pretrained): identity = sha256 of its files' bytes and of
  the frozen encoder's (its files when the config names a local directory, else the hub id);
- `models:/NAME@alias` or `models:/NAME/VERSION` (the MLflow registry): the alias is resolved
  once, to a version, so every shard of a run uses the same weights even if the alias moves
  meanwhile; identity = sha256 of the version's name, number, logged-model source and run.
  Registered versions are immutable, so that names the weights without downloading them.

Restored files record the identity; a different model therefore re-restores them.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path


MODELS_SCHEME = "models:/"
_REGISTRY_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelRef:
    spec: str       # as the user gave it
    uri: str        # pinned: an absolute directory or models:/NAME/VERSION
    identity: str   # sha256 hex naming the weights

    def to_dict(self) -> dict:
        return asdict(self)


def resolve_model(spec: str) -> ModelRef:
    if spec.startswith(MODELS_SCHEME):
        return _resolve_registered(spec)
    directory = Path(spec).absolute()
    return ModelRef(spec, str(directory), directory_identity(directory))


def load_restorer(ref: ModelRef, device: str | None = None, **options):
    """The Restorer behind `ref`, on `device`; options: chunk_seconds, overlap_seconds, batch_size."""
    from miipher2.model.restorer import Restorer, resolve_device

    if ref.uri.startswith(MODELS_SCHEME):
        from miipher2.registry import load_registered_restorer

        restorer = load_registered_restorer(ref.uri)
        for name, value in options.items():  # the pyfunc loads with default inference settings
            setattr(restorer, name, value)
        return restorer.to(resolve_device(device))
    return Restorer.from_pretrained(ref.uri, device, **options)


def directory_identity(directory: Path) -> str:
    """A hash of every file of the model directory: its config.yaml records the frozen encoder's
    fingerprint (and any local encoder is bundled inside), so this names the whole model."""
    config_file = directory / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{directory}: not a Miipher-2 model directory (no config.yaml)")
    digest = hashlib.sha256(b"miipher2-model-directory\n")
    _hash_tree(digest, directory)
    return digest.hexdigest()


def _hash_tree(digest, root: Path) -> None:
    for file in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        digest.update(f"{file.relative_to(root).as_posix()}\n".encode())
        with open(file, "rb") as handle:
            while block := handle.read(_CHUNK):
                digest.update(block)


def _resolve_registered(spec: str) -> ModelRef:
    from mlflow.exceptions import MlflowException

    from miipher2.registry import RegistryError, version_by_alias
    from miipher2.registry.versions import client

    match = _REGISTRY_URI.match(spec)
    if not match:
        raise ValueError(f"{spec}: expected models:/NAME@alias or models:/NAME/VERSION")
    name, alias = match["name"], match["alias"]
    mlflow_client = client()
    if alias:
        version = version_by_alias(mlflow_client, name, alias)
        if version is None:
            raise RegistryError(f"{spec}: alias {alias!r} is not set on registered model {name!r}")
    else:
        try:
            version = mlflow_client.get_model_version(name, match["version"])
        except MlflowException as err:
            raise RegistryError(f"{spec}: no such model version ({err.message})") from err
    facts = {"name": name, "version": str(version.version), "source": version.source, "run_id": version.run_id}
    identity = hashlib.sha256(json.dumps(facts, sort_keys=True).encode()).hexdigest()
    return ModelRef(spec, f"{MODELS_SCHEME}{name}/{version.version}", identity)
