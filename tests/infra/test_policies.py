"""Rules the rendered manifests keep beyond their schemas: no credentials, bounded resources,
one image tag, least-privilege RBAC, and references that resolve within an environment."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess

import pytest
import yaml
from kubernetes.utils import parse_quantity

from tests.infra import manifests
from tests.infra.conftest import ENVIRONMENTS, STAGES

CREDENTIAL = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY|CREDENTIAL", re.IGNORECASE)


def all_docs(rendered):
    return [(root, doc) for root, docs in rendered.items() for doc in docs]


def environment(platform, stage_job, env):
    """Everything one environment runs: the platform plus its three training stages."""
    return platform(env), [stage_job(env, n) for n in STAGES]


# --- credentials ---------------------------------------------------------------------------------

def test_secret_templates_hold_no_credentials():
    templates = sorted((manifests.K8S / "secrets-template").glob("*.env.example"))
    assert {t.name for t in templates} == {"s3.env.example", "postgres.env.example", "mlflow.env.example",
                                           "git.env.example", "huggingface.env.example"}
    for template in templates:
        for line in template.read_text().splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                key, _, value = line.partition("=")
                assert not (CREDENTIAL.search(key) and value.strip()), f"{template.name}: {key} has a value"


def test_rendered_secrets_carry_only_the_empty_placeholders(rendered):
    secrets = [(root, doc) for root, doc in all_docs(rendered) if doc["kind"] == "Secret"]
    assert {doc["metadata"]["name"] for _, doc in secrets} == {"miipher2-s3", "miipher2-postgres", "miipher2-mlflow",
                                                               "miipher2-git", "miipher2-huggingface"}
    for root, secret in secrets:
        assert "stringData" not in secret
        for key, value in (secret.get("data") or {}).items():
            if CREDENTIAL.search(key):
                assert base64.b64decode(value) == b"", f"{root}: {secret['metadata']['name']}.{key}"


def test_no_committed_manifest_defines_a_secret():
    # Secrets come only from the generators reading git-ignored env files.
    for path in manifests.K8S.rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            assert not (isinstance(doc, dict) and doc.get("kind") == "Secret"), path


@pytest.mark.skipif(shutil.which("git") is None, reason="git not installed")
@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_filled_in_secret_files_are_git_ignored(env):
    paths = [f"infra/k8s/overlays/{env}/secrets/{name}.env" for name in ("s3", "postgres", "mlflow", "git", "huggingface")]
    result = subprocess.run(["git", "check-ignore", *paths], cwd=manifests.REPO, capture_output=True, text=True)
    if result.returncode == 128:
        pytest.skip("not a git checkout")
    assert sorted(result.stdout.split()) == sorted(paths)


def test_credentials_reach_containers_only_through_secret_references(rendered):
    for root, doc in all_docs(rendered):
        for where, container, _ in manifests.containers(doc):
            for var in container.get("env", []):
                if CREDENTIAL.search(var["name"]):
                    assert "secretKeyRef" in var.get("valueFrom", {}), f"{root}: {where}: {var['name']}"
                # A literal value may combine secret references, never spell a credential out.
                if "value" in var and "://" in var["value"] and "@" in var["value"]:
                    userinfo = var["value"].split("://", 1)[1].split("@", 1)[0]
                    assert re.fullmatch(r"(\$\([A-Z_]+\)|:)+", userinfo), f"{root}: {where}: {var['name']}"


# --- resources -----------------------------------------------------------------------------------

def test_every_container_has_bounded_cpu_and_memory(rendered):
    for root, doc in all_docs(rendered):
        for where, container, _ in manifests.containers(doc):
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                for resource in ("cpu", "memory"):
                    assert resource in resources.get(kind, {}), f"{root}: {where} lacks {kind}.{resource}"
            for resource, request in resources["requests"].items():
                assert parse_quantity(request) <= parse_quantity(resources["limits"][resource]), f"{root}: {where}"


def test_gpu_containers_have_gpu_limits_tolerations_and_shared_memory(rendered):
    gpu_pods = 0
    for root, doc in all_docs(rendered):
        for where, container, pod in manifests.containers(doc):
            resources = container.get("resources", {})
            if "nvidia.com/gpu" not in resources.get("limits", {}) | resources.get("requests", {}):
                continue
            gpu_pods += 1
            assert parse_quantity(resources["limits"]["nvidia.com/gpu"]) >= 1, f"{root}: {where}"
            assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])), f"{root}: {where}"
            assert pod.get("priorityClassName") == "miipher2-preemptible-gpu", f"{root}: {where}"
            shm = {m["name"] for m in container["volumeMounts"] if m["mountPath"] == "/dev/shm"}
            volumes = {v["name"]: v for v in pod["volumes"]}
            assert len(shm) == 1, f"{root}: {where} has no /dev/shm mount"
            empty_dir = volumes[shm.pop()].get("emptyDir", {})
            assert empty_dir.get("medium") == "Memory" and "sizeLimit" in empty_dir, f"{root}: {where}"
            # Memory-backed /dev/shm counts against the container's memory limit.
            assert parse_quantity(empty_dir["sizeLimit"]) < parse_quantity(resources["limits"]["memory"])
    assert gpu_pods >= 2 * len(ENVIRONMENTS) * len(STAGES)


def test_dev_is_smaller_than_prod(platform, stage_job):
    def gpus(job):
        return sum(spec.get("replicas", 1) * int(parse_quantity(
            spec["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]))
            for spec in job["spec"]["pytorchReplicaSpecs"].values())

    def workspace(env):
        pvc = manifests.by_kind(platform(env), "PersistentVolumeClaim")["miipher2-workspace"]
        return parse_quantity(pvc["spec"]["resources"]["requests"]["storage"])

    assert gpus(stage_job("dev", 1)) < gpus(stage_job("prod", 1))
    assert workspace("dev") < workspace("prod")


def _image_user() -> int:
    """The uid the image runs as (its Dockerfile's last USER)."""
    users = re.findall(r"^USER\s+(\d+)", (manifests.REPO / "infra" / "image" / "Dockerfile").read_text(), re.MULTILINE)
    return int(users[-1])


def test_pods_on_the_workspace_volume_write_it_as_the_images_user(rendered):
    user, checked = _image_user(), 0
    for root, doc in all_docs(rendered):
        for where, pod in manifests.pod_templates(doc):
            claims = {v["persistentVolumeClaim"]["claimName"] for v in pod.get("volumes", []) if "persistentVolumeClaim" in v}
            if "miipher2-workspace" not in claims:
                continue
            checked += 1
            context = pod.get("securityContext", {})
            assert (context.get("runAsUser"), context.get("fsGroup")) == (user, user), f"{root}: {where}"
            assert context.get("runAsNonRoot") is True, f"{root}: {where}"
    assert checked >= 1 + 2 * len(STAGES)  # workspace init + every training job's pods


# --- images --------------------------------------------------------------------------------------

def test_images_are_pinned_in_one_place(rendered):
    component = yaml.safe_load((manifests.K8S / "components" / "images" / "kustomization.yaml").read_text())
    pinned = {f"{i.get('newName', i['name'])}:{i['newTag']}" for i in component["images"]}
    used = {container["image"] for _, doc in all_docs(rendered) for _, container, _ in manifests.containers(doc)}
    # base/ and training/ are rendered too but never applied alone: they carry bare names.
    applied = {container["image"] for root, doc in all_docs(rendered)
               if root.startswith(("overlays/", "tools/")) for _, container, _ in manifests.containers(doc)}
    assert applied == pinned, f"applied images {applied} differ from components/images {pinned}"
    assert not any(image.endswith(":latest") for image in used)


# --- RBAC ----------------------------------------------------------------------------------------

def test_rbac_is_namespaced_and_least_privilege(platform):
    docs = platform("prod")
    cluster_scoped = {doc["kind"] for doc in docs if "namespace" not in doc["metadata"]}
    assert cluster_scoped == {"Namespace", "PriorityClass"}
    (role,) = manifests.by_kind(docs, "Role").values()
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], rule
        if {"secrets", "configmaps"} & set(rule["resources"]):
            assert rule.get("resourceNames") and set(rule["verbs"]) == {"get"}, rule
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
    assert not any(r for r in docs if r["kind"] in ("ClusterRole", "ClusterRoleBinding"))


def test_rolebinding_binds_the_pipeline_service_account(platform):
    docs = platform("prod")
    (binding,) = manifests.by_kind(docs, "RoleBinding").values()
    assert binding["roleRef"]["name"] in manifests.by_kind(docs, "Role")
    for subject in binding["subjects"]:
        assert subject["kind"] == "ServiceAccount"
        assert subject["name"] in manifests.by_kind(docs, "ServiceAccount")
        assert subject["namespace"] == binding["metadata"]["namespace"]


def test_training_pods_get_no_api_token(platform, stage_job):
    accounts = manifests.by_kind(platform("prod"), "ServiceAccount")
    for n in STAGES:
        for where, pod in manifests.pod_templates(stage_job("prod", n)):
            assert accounts[pod["serviceAccountName"]].get("automountServiceAccountToken") is False, where


# --- references within an environment ------------------------------------------------------------

@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_references_resolve_within_the_environment(platform, stage_job, rendered, env):
    base, jobs = environment(platform, stage_job, env)
    workloads = base + jobs + rendered["tools/workspace-shell"]
    names = {kind: manifests.by_kind(base, kind) for kind in
             ("ConfigMap", "Secret", "PersistentVolumeClaim", "ServiceAccount", "PriorityClass")}
    for doc in workloads:
        namespace = doc["metadata"].get("namespace")
        assert namespace == "miipher2" or doc["kind"] in ("Namespace", "PriorityClass"), f"{doc['kind']}/{doc['metadata']['name']}: namespace {namespace}"
        for where, pod in manifests.pod_templates(doc):
            for volume in pod.get("volumes", []):
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in names["PersistentVolumeClaim"], where
            for key, kind in (("serviceAccountName", "ServiceAccount"), ("priorityClassName", "PriorityClass")):
                if key in pod:
                    assert pod[key] in names[kind], f"{where}: {key} {pod[key]}"
        for where, container, _ in manifests.containers(doc):
            for source in container.get("envFrom", []):
                for key, kind in (("configMapRef", "ConfigMap"), ("secretRef", "Secret")):
                    if key in source and not source[key].get("optional"):
                        assert source[key]["name"] in names[kind], f"{where}: {source}"
            for var in container.get("env", []):
                for key, kind in (("configMapKeyRef", "ConfigMap"), ("secretKeyRef", "Secret")):
                    ref = var.get("valueFrom", {}).get(key)
                    if ref:
                        assert ref["key"] in names[kind][ref["name"]].get("data", {}), f"{where}: {var['name']}"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_services_select_pods_that_serve_their_ports(platform, env):
    docs = platform(env)
    for service in manifests.by_kind(docs, "Service").values():
        selector = service["spec"]["selector"]
        backends = [(pod, doc) for doc in docs for _, pod in manifests.pod_templates(doc)
                    if doc["kind"] in ("Deployment", "StatefulSet")
                    and selector.items() <= doc["spec"]["template"]["metadata"]["labels"].items()]
        assert len(backends) == 1, service["metadata"]["name"]
        pod, workload = backends[0]
        ports = {p.get("name") for c in pod["containers"] for p in c.get("ports", [])}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"{service['metadata']['name']}: {port}"
        assert selector.items() <= workload["spec"]["selector"]["matchLabels"].items()
        if workload["kind"] == "StatefulSet":
            assert workload["spec"]["serviceName"] == service["metadata"]["name"]


# --- training jobs -------------------------------------------------------------------------------

@pytest.mark.parametrize("env", ENVIRONMENTS)
@pytest.mark.parametrize("stage", STAGES)
def test_stage_job_runs_its_stage_under_torchrun_on_several_nodes(stage_job, env, stage):
    job = stage_job(env, stage)
    assert job["metadata"]["name"] == f"miipher2-train-stage{stage}"
    specs = job["spec"]["pytorchReplicaSpecs"]
    assert specs["Master"]["replicas"] == 1 and specs["Worker"]["replicas"] >= 1, "multi-node: Master + Workers"
    for replica, spec in specs.items():
        assert spec["restartPolicy"] in ("OnFailure", "ExitCode"), replica
        (container,) = spec["template"]["spec"]["containers"]
        assert container["command"] == ["torchrun", "--no-python", "miipher2"]
        assert container["args"][:2] == ["train", f"stage{stage}"]  # the rest: tests/infra/test_training_commands.py
        assert {m["mountPath"] for m in container["volumeMounts"]} >= {"/workspace", "/dev/shm"}
        assert {"miipher2-s3", "miipher2-settings"} <= {
            next(iter(source.values()))["name"] for source in container["envFrom"]}


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_torchrun_reads_the_operators_rendezvous_for_every_pod(stage_job, monkeypatch, env):
    # The training operator gives each pod PET_NNODES (all replicas), PET_NPROC_PER_NODE
    # (spec.nprocPerNode), PET_NODE_RANK and the Master's address; torchrun takes its defaults
    # from them. Parse each pod's command line with torchrun's own parser under that environment.
    from torch.distributed import run as torchrun

    job = stage_job(env, 1)
    specs = job["spec"]["pytorchReplicaSpecs"]
    nodes = sum(spec["replicas"] for spec in specs.values())
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # torchrun sets it when unset; keep the test clean
    monkeypatch.setenv("PET_NNODES", str(nodes))
    monkeypatch.setenv("PET_NPROC_PER_NODE", job["spec"]["nprocPerNode"])
    monkeypatch.setenv("PET_MASTER_ADDR", f"{job['metadata']['name']}-master-0")
    monkeypatch.setenv("PET_MASTER_PORT", "23456")
    for rank, (replica, spec) in enumerate(specs.items()):
        monkeypatch.setenv("PET_NODE_RANK", str(rank))
        (container,) = spec["template"]["spec"]["containers"]
        assert container["command"][0] == "torchrun", replica
        config, command, command_args = torchrun.config_from_args(
            torchrun.parse_args(container["command"][1:] + container["args"]))
        assert (config.min_nodes, config.max_nodes) == (nodes, nodes), replica
        assert config.rdzv_endpoint == f"{job['metadata']['name']}-master-0:23456", replica
        command = [command] if isinstance(command, str) else command  # a string under --no-python
        assert [*command, *command_args] == container["command"][2:] + container["args"], replica
