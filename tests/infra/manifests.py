"""Rendering and reading the cluster manifests of infra/k8s, for the infra tests.

Rendering uses the real kustomize: a standalone `kustomize` binary if one is on PATH, otherwise
the copy built into `kubectl` (`kubectl kustomize`, kustomize v5 since kubectl 1.27).
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import kubernetes_validate
import yaml
from referencing import Registry, Resource

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "infra" / "k8s"
PYTORCHJOB_SCHEMA = Path(__file__).with_name("schemas") / "pytorchjob-v1.yaml"

# Oldest Kubernetes we claim to support, and the newest kubernetes-validate knows.
K8S_VERSIONS = ("1.29", ".".join(kubernetes_validate.latest_version().split(".")[:2]))


class KustomizeMissing(RuntimeError):
    pass


@functools.cache
def kustomize_command() -> tuple[str, ...]:
    if shutil.which("kustomize"):
        return ("kustomize", "build")
    if shutil.which("kubectl"):
        return ("kubectl", "kustomize")
    raise KustomizeMissing("neither `kustomize` nor `kubectl` is on PATH; install kubectl >= 1.27 "
                           "(it bundles kustomize v5) or a kustomize v5 binary")


def render(root: Path) -> list[dict]:
    """`kustomize build root`, parsed. Raises with kustomize's own message on failure."""
    result = subprocess.run([*kustomize_command(), str(root)], capture_output=True, text=True,
                            timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"kustomize build {root} failed:\n{result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def kustomization_roots(tree: Path) -> list[Path]:
    """Every directory under `tree` whose kustomization is a Kustomization (not a Component)."""
    roots = []
    for file in sorted(tree.rglob("kustomization.yaml")):
        if yaml.safe_load(file.read_text()).get("kind", "Kustomization") == "Kustomization":
            roots.append(file.parent)
    return roots


# --- schema validation -------------------------------------------------------------------------

def _definitions(version: str) -> dict:
    """The core Kubernetes type definitions that kubernetes-validate ships for `version`."""
    folder = f"v{version}.0-local-strict"
    path = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema" / folder
    return json.loads((path / "_definitions.json").read_text())


@functools.cache
def pytorchjob_validator(version: str) -> jsonschema.Draft202012Validator:
    schema = yaml.safe_load(PYTORCHJOB_SCHEMA.read_text())
    registry = Registry().with_resources([
        (schema["$id"], Resource.from_contents(schema)),
        ("https://kubernetes.io/api/_definitions.json", Resource.from_contents(_definitions(version))),
    ])
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(doc: dict, version: str) -> None:
    """Validate one manifest against its schema for Kubernetes `version`; raise on any error."""
    if (doc.get("apiVersion"), doc.get("kind")) == ("kubeflow.org/v1", "PyTorchJob"):
        pytorchjob_validator(version).validate(doc)
    else:
        kubernetes_validate.validate(doc, version, strict=True)


# --- reading manifests ---------------------------------------------------------------------------

def pod_templates(doc: dict) -> Iterator[tuple[str, dict]]:
    """(where, pod spec) for every pod a manifest creates."""
    kind, spec = doc["kind"], doc.get("spec", {})
    if kind == "Pod":
        yield doc["metadata"]["name"], spec
    elif kind in ("Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"):
        yield doc["metadata"]["name"], spec["template"]["spec"]
    elif kind == "PyTorchJob":
        for replica, replica_spec in spec["pytorchReplicaSpecs"].items():
            yield f"{doc['metadata']['name']}/{replica}", replica_spec["template"]["spec"]


def containers(doc: dict) -> Iterator[tuple[str, dict, dict]]:
    """(where, container, pod spec) for every container and init container of a manifest."""
    for where, pod in pod_templates(doc):
        for container in pod.get("initContainers", []) + pod.get("containers", []):
            yield f"{where}/{container['name']}", container, pod


def by_kind(docs: list[dict], kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in docs if doc["kind"] == kind}


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion in env values, command and args: `$$` escapes, unknown
    variables stay as written."""
    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))
    return _VAR.sub(substitute, value)


def container_environment(container: dict, docs: list[dict]) -> dict[str, str]:
    """The environment the kubelet would give `container`, resolved from the ConfigMaps and
    Secrets (base64 `data` decoded) among `docs`, in the kubelet's order: envFrom, then env."""
    import base64

    def source(kind: str, name: str) -> dict[str, str]:
        obj = by_kind(docs, kind)[name]
        if kind == "Secret":
            return {k: base64.b64decode(v).decode() for k, v in (obj.get("data") or {}).items()}
        return dict(obj.get("data") or {})

    env: dict[str, str] = {}
    for entry in container.get("envFrom", []):
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in entry:
                env.update(source(kind, entry[key]["name"]))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(var["value"], env)
        elif "secretKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = source("Secret", ref["name"])[ref["key"]]
        elif "configMapKeyRef" in var.get("valueFrom", {}):
            ref = var["valueFrom"]["configMapKeyRef"]
            env[var["name"]] = source("ConfigMap", ref["name"])[ref["key"]]
    return env
