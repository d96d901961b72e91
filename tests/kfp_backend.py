"""Input artifacts shaped the way a real KFP backend hands them to a component.

KFP's local runner passes an artifact's metadata exactly as the producing step wrote it. A
backend (kubeflow/pipelines 2.x, backend/src/v2) records every output artifact in ML Metadata and
rebuilds the consumer's input from that record, which changes it:

- `RecordArtifact` (metadata/client.go) adds `display_name` (the output's name) and
  `store_session_info` (a JSON string describing the artifact store) unless already present;
- `toMLMDArtifact` / `toRuntimeArtifact` (metadata/converter.go) store numbers as doubles and
  booleans as integers, and return both as JSON numbers (floats); a nested mapping comes back
  wrapped as {"struct": ...} and a list as {"list": ...}.

Component tests build their input artifacts with `backend_artifact` so that a component that
assumes "the metadata holds only my keys" fails here rather than days into a cluster run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# What a default KFP install records for its MinIO/S3 artifact store (objectstore.SessionInfo).
STORE_SESSION_INFO = json.dumps({"Provider": "minio", "Params": {
    "accessKeyKey": "accesskey", "disableSSL": "true", "endpoint": "minio-service.kubeflow:9000",
    "fromEnv": "false", "region": "minio", "secretKeyKey": "secretkey", "secretName": "mlpipeline-minio-artifact"}})


def recorded_value(value: Any) -> Any:
    """One metadata value after its round trip through ML Metadata."""
    if isinstance(value, bool):
        return float(int(value))
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, dict):
        return {"struct": value}
    if isinstance(value, (list, tuple)):
        return {"list": list(value)}
    return value


def recorded_metadata(metadata: dict[str, Any], output_name: str) -> dict[str, Any]:
    """An output artifact's metadata as the consuming step receives it from a backend."""
    shaped = {key: recorded_value(value) for key, value in metadata.items()}
    shaped.setdefault("display_name", output_name)
    shaped.setdefault("store_session_info", STORE_SESSION_INFO)
    return shaped


def backend_artifact(kind, tmp_path: Path, name: str, metadata: dict[str, Any] | None = None):
    """An input artifact of type `kind` named `name`, its metadata shaped by a backend."""
    return kind(name=name, uri=str(tmp_path / name), metadata=recorded_metadata(dict(metadata or {}), name))
