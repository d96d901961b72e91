"""Compile, submit, or run our pipelines locally (training and restoration alike).

    compile_pipeline(build_training_pipeline(ClusterConfig()), "training.yaml")
    submit("https://kfp.example.com", training_pipeline, {"dvc_repo": "https://github.com/org/miipher2", ...}, token=...,
           namespace="miipher2", service_account="miipher2-pipeline")
    upload("https://kfp.example.com", "training.yaml", "miipher2-training", version="<git sha>", token=...)
    result = run_local({"training_preset": "demo-cpu", ...}, "outputs/kfp", "outputs/workspace")  # the training pipeline

The local run uses KFP's SubprocessRunner with the current interpreter (`use_venv=False`): each
step is a subprocess running the same component code a cluster pod runs, with the pipeline's
Kubernetes settings ignored. Credentials and the MLflow tracking URI reach the steps through the
environment, exactly as the cluster's Secrets and ConfigMap deliver them there. With
`runner=pipelines.containers.docker_runner(...)` each step runs in the pipeline image instead.
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from miipher2.files import atomic_file
from pipelines.cluster import MIN_KFP_BACKEND, ClusterConfig
from pipelines.training import PIPELINE_NAME, build_training_pipeline

# Compiled output that changes without any change to the pipeline (normalised for the golden copy).
_VOLATILE = re.compile(r"^sdkVersion: .*$", re.MULTILINE)
# registry/name:tag or registry/name@sha256:digest (lower-case path components, as registries demand;
# no implicit `latest`).
_IMAGE_REFERENCE = re.compile(r"[a-z0-9][a-z0-9._-]*(?::[0-9]+)?(?:/[a-z0-9][a-z0-9._-]*)+"
                              r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}|@sha256:[0-9a-f]{64})")


def compile_pipeline(pipeline_func, output: str | os.PathLike, image: str | None = None) -> Path:
    """Write the spec (IR YAML) of a pipeline function, e.g. `build_training_pipeline(cluster)`, to
    `output`, atomically.

    `image` replaces the image every step runs in (components._base.IMAGE). Pinned by digest,
    `NAME@sha256:<64 hex digits>`, the compiled pipeline records exactly which image it expects:
    a tag can be moved to another image after compiling, a digest cannot."""
    from kfp import compiler

    with atomic_file(output) as tmp:
        compiler.Compiler().compile(pipeline_func, str(tmp))
        if image is not None:
            tmp.write_text(with_image(tmp.read_text(), image))
    return Path(output)


def with_image(compiled_yaml: str, image: str) -> str:
    """The compiled spec with every step's `image:` (components._base.IMAGE) replaced by `image`."""
    from components._base import IMAGE

    if not _IMAGE_REFERENCE.fullmatch(image):
        raise ValueError(f"not an image reference: {image!r} "
                         "(expected REGISTRY/NAME:TAG or, pinned, REGISTRY/NAME@sha256:<64 hex digits>)")
    replaced, count = re.subn(rf"^(\s*image: ){re.escape(IMAGE)}$", lambda m: m.group(1) + image, compiled_yaml,
                              flags=re.MULTILINE)
    if not count:
        raise ValueError(f"no step of the compiled pipeline runs {IMAGE}: nothing to replace")
    return replaced


def normalised(compiled_yaml: str) -> str:
    """The compiled text without fields that vary by KFP release alone (for drift checks)."""
    return _VOLATILE.sub("sdkVersion: <normalised>", compiled_yaml)


class BackendTooOld(RuntimeError):
    """The Kubeflow Pipelines backend is older than our pipelines need."""


def submit(host: str, pipeline_func, params: dict[str, Any], token: str | None = None,
           experiment: str | None = None, run_name: str | None = None, namespace: str | None = None,
           service_account: str | None = None) -> str:
    """Start a run of `pipeline_func` on a Kubeflow Pipelines endpoint; returns the KFP run id.

    `token` is a bearer token for the KFP API (never logged, never a pipeline parameter);
    `namespace` the (multi-user) profile namespace to run in; `service_account` the account the
    run's pods use (infra/k8s: `miipher2-pipeline`, least privilege). Refuses a backend older
    than `MIN_KFP_BACKEND` before creating anything.
    """
    import kfp

    client = kfp.Client(host=host, existing_token=token, **({"namespace": namespace} if namespace else {}))
    require_backend(client, host)
    run = client.create_run_from_pipeline_func(pipeline_func, arguments=params, run_name=run_name,
                                               experiment_name=experiment, namespace=namespace,
                                               service_account=service_account, enable_caching=False)
    return run.run_id


def backend_version(client) -> str:
    """The KFP backend's release (`tag_name` of its healthz answer, e.g. '2.15.0'; 'unknown' if none).

    The SDK's `get_kfp_healthz()` parses the answer into a model that keeps only `multi_user`
    and `pipeline_store`, so the raw answer is read through the same generated API."""
    response = client._healthz_api.healthz_service_get_healthz(_preload_content=False)
    try:
        return str(json.loads(response.data).get("tag_name") or "unknown")
    except ValueError:
        return "unknown"


def require_backend(client, host: str = "", minimum: tuple[int, ...] = MIN_KFP_BACKEND) -> str:
    """Raise `BackendTooOld` unless the backend is at least `minimum`; returns its version.

    A version that is not a release number (a development build reports 'unknown' or a commit)
    only warns: it may be newer than any release."""
    version = backend_version(client)
    match = re.match(r"^v?(\d+)\.(\d+)", version)
    needed = ".".join(map(str, minimum))
    if match is None:
        warnings.warn(f"Kubeflow Pipelines at {host or 'the endpoint'} reports version {version!r}; cannot check "
                      f"that it is >= {needed}", stacklevel=2)
    elif tuple(int(part) for part in match.groups()) < minimum:
        raise BackendTooOld(
            f"Kubeflow Pipelines at {host or 'the endpoint'} is version {version}; these pipelines need >= {needed}: "
            "older backends ignore `optional` on Secret keys mapped to environment variables, so pods fail "
            "whenever a Secret lacks an optional key (S3 endpoint, git or Hugging Face token). Upgrade Kubeflow "
            "Pipelines (https://www.kubeflow.org/docs/components/pipelines/operator-guides/installation/).")
    return version


def upload(host: str, package: str | os.PathLike, pipeline_name: str, version: str, token: str | None = None,
           description: str | None = None) -> tuple[str, str]:
    """Upload a compiled pipeline as version `version` of `pipeline_name` (created on first use).

    CI uploads each commit's compile (its image named by digest) this way; returns the KFP
    pipeline id and version id.
    """
    import kfp

    client = kfp.Client(host=host, existing_token=token)
    pipeline_id = client.get_pipeline_id(pipeline_name)
    if pipeline_id is None:
        pipeline_id = client.upload_pipeline(str(package), pipeline_name=pipeline_name,
                                             description=description).pipeline_id
    uploaded = client.upload_pipeline_version(str(package), pipeline_version_name=version, pipeline_id=pipeline_id,
                                              description=description)
    return pipeline_id, uploaded.pipeline_version_id


@dataclass
class LocalRun:
    ok: bool                      # the whole chain ran (False: stopped at validation or a step failed)
    valid: bool | None            # the dataset passed validation (None: validation itself failed)
    run_dir: Path                 # this run's folder under the pipeline root
    wall_s: float
    step_seconds: dict[str, float] = field(default_factory=dict)  # time inside each step's library call
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)  # task -> executor output

    @property
    def kfp_overhead_s(self) -> float:
        """Wall time not spent inside the steps' library calls: process start, imports, KFP bookkeeping."""
        return self.wall_s - sum(self.step_seconds.values())

    def artifact(self, task: str, name: str) -> Path | None:
        """Local path of output artifact `name` of `task` (None: the task did not run or has no such output)."""
        entries = self.outputs.get(task, {}).get("artifacts", {}).get(name, {}).get("artifacts", [])
        return Path(entries[0]["uri"]) if entries else None


def run_local(params: dict[str, Any], pipeline_root: str | os.PathLike, workspace: str | os.PathLike,
              cluster: ClusterConfig | None = None, runner=None) -> LocalRun:
    """Run the training pipeline here with KFP's local runner; never raises for a failed step.

    The pipeline is the cluster's (`cluster`, default `ClusterConfig()`) with its workspace at
    `workspace`: Kubernetes settings are ignored locally, but how many processes train each
    stage (`gpus_per_step`, torchrun with gloo on CPU) is honoured. `runner`: KFP's
    SubprocessRunner in this environment by default; `pipelines.containers.docker_runner()` runs
    every step in the pipeline image instead (`workspace` then lies under `pipeline_root`, which
    the runner mounts at the same path)."""
    cluster = dataclasses.replace(cluster or ClusterConfig(), workspace_mount=str(Path(workspace).absolute()))
    # GPU requests and resource limits are cluster settings; locally they are meant to be ignored.
    run_dir, wall = run_pipeline_locally(build_training_pipeline(cluster), params, pipeline_root, PIPELINE_NAME,
                                         runner=runner,
                                         ignore=(r"Task '.*': settings .* have no effect in the current local runner",))
    return _collect(run_dir, wall)


def run_pipeline_locally(pipeline_func, params: dict[str, Any], pipeline_root: str | os.PathLike, pipeline_name: str,
                         ignore: tuple[str, ...] = (), runner=None) -> tuple[Path, float]:
    """Run any of our pipelines with a KFP local runner; returns (its run folder, wall seconds)."""
    from kfp import local

    pipeline_root = Path(pipeline_root).absolute()
    pipeline_root.mkdir(parents=True, exist_ok=True)
    before = set(pipeline_root.iterdir())
    local.init(runner=runner or local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root),
               raise_on_error=False)
    started = time.perf_counter()
    original_print = builtins.print
    try:
        with warnings.catch_warnings():
            # The local runner warns about image names without "python" in them; our image has Python.
            warnings.filterwarnings("ignore", message="You may be attemping to run a task", category=RuntimeWarning)
            for message in ignore:
                warnings.filterwarnings("ignore", message=message)
            pipeline_func(**params)
    finally:
        # KFP swaps builtins.print for an indenting one around each task; with a ParallelFor the
        # swaps interleave and the indenting print outlives the run, shifting every later line.
        builtins.print = original_print
    wall = time.perf_counter() - started
    new = sorted(p for p in set(pipeline_root.iterdir()) - before if p.name.startswith(pipeline_name))
    if not new:
        raise RuntimeError(f"the local run left no run folder under {pipeline_root}")
    return new[-1], wall


def _collect(run_dir: Path, wall: float) -> LocalRun:
    outputs: dict[str, dict[str, Any]] = {}
    for path in sorted(run_dir.glob("*/executor_output.json")):
        outputs[path.parent.name] = json.loads(path.read_text())
    steps = {}
    for task, out in outputs.items():
        for entry in out.get("artifacts", {}).get("metrics", {}).get("artifacts", []):
            if "step_seconds" in entry.get("metadata", {}):
                steps[task] = float(entry["metadata"]["step_seconds"])
    valid = outputs.get("validate-data", {}).get("parameterValues", {}).get("Output")
    return LocalRun(ok=valid is True and "register" in outputs, valid=valid, run_dir=run_dir, wall_s=wall,
                    step_seconds=steps, outputs=outputs)
