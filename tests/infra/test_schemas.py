"""Every manifest that infra/k8s renders is valid against its API schema, offline."""

from __future__ import annotations

import copy

import jsonschema
import kubernetes_validate
import pytest

from tests.infra import manifests
from tests.infra.conftest import ENVIRONMENTS, STAGES


def test_every_kustomization_renders(rendered):
    applied = {f"overlays/{env}" for env in ENVIRONMENTS}
    applied |= {f"overlays/{env}/stage{n}" for env in ENVIRONMENTS for n in STAGES}
    assert applied <= set(rendered), f"missing kustomizations: {sorted(applied - set(rendered))}"
    assert all(rendered.values()), [root for root, docs in rendered.items() if not docs]


@pytest.mark.parametrize("version", manifests.K8S_VERSIONS)
def test_every_manifest_matches_its_schema(rendered, version):
    errors = []
    for root, docs in rendered.items():
        for doc in docs:
            try:
                manifests.validate(doc, version)
            except (jsonschema.ValidationError, kubernetes_validate.SchemaNotFoundError) as error:
                where = f"{root}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
                errors.append(f"{where}: {getattr(error, 'message', error)}")
    assert not errors, "\n".join(errors)


def test_training_jobs_are_checked_against_the_pytorchjob_schema(stage_job):
    # The PyTorchJob schema is what the training operator accepts; prove it is in use.
    job = stage_job("prod", 1)
    manifests.validate(job, manifests.K8S_VERSIONS[-1])
    assert manifests.pytorchjob_validator(manifests.K8S_VERSIONS[-1]).is_valid(job)


def test_pytorchjob_schema_covers_elastic_and_scheduling_policies(stage_job):
    # The optional parts of the spec resolve against the Kubernetes definitions too.
    job = copy.deepcopy(stage_job("prod", 2))
    del job["spec"]["pytorchReplicaSpecs"]["Master"]
    job["spec"]["elasticPolicy"] = {
        "rdzvBackend": "c10d", "minReplicas": 2, "maxReplicas": 4, "maxRestarts": 10,
        "metrics": [{"type": "Resource", "resource": {
            "name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}}]}
    job["spec"]["runPolicy"]["schedulingPolicy"] = {"minAvailable": 2, "minResources": {"nvidia.com/gpu": "16"}}
    manifests.validate(job, manifests.K8S_VERSIONS[0])
    job["spec"]["elasticPolicy"]["metrics"][0]["resource"]["target"]["averageUtilization"] = "high"
    with pytest.raises(jsonschema.ValidationError):
        manifests.validate(job, manifests.K8S_VERSIONS[0])


def _broken(job: dict, breakage) -> dict:
    job = copy.deepcopy(job)
    breakage(job)
    return job


def _replicas(job):
    return job["spec"]["pytorchReplicaSpecs"]


@pytest.mark.parametrize("breakage", [
    pytest.param(lambda j: _replicas(j)["Master"].update(replicas=2), id="two-masters"),
    pytest.param(lambda j: _replicas(j).update(Chief=_replicas(j)["Worker"]), id="unknown-replica-type"),
    pytest.param(lambda j: _replicas(j)["Worker"]["template"]["spec"]["containers"][0].update(name="trainer"),
                 id="no-pytorch-container"),
    pytest.param(lambda j: _replicas(j)["Worker"].update(restartPolicy="Sometimes"), id="bad-restart-policy"),
    pytest.param(lambda j: _replicas(j)["Worker"]["template"]["spec"].update(toleration=[]), id="misspelt-pod-field"),
    pytest.param(lambda j: j["metadata"].update(name="Miipher2_Stage1"), id="bad-job-name"),
    pytest.param(lambda j: j["spec"].update(nprocPerNode=8), id="nproc-not-a-string"),
    pytest.param(lambda j: j["spec"].pop("pytorchReplicaSpecs"), id="no-replica-specs"),
])
def test_pytorchjob_schema_rejects_what_the_operator_rejects(stage_job, breakage):
    job = _broken(stage_job("dev", 1), breakage)
    with pytest.raises(jsonschema.ValidationError):
        manifests.validate(job, manifests.K8S_VERSIONS[0])


def test_kubernetes_schemas_reject_a_broken_manifest(platform):
    (deployment,) = [d for d in platform("dev") if d["kind"] == "Deployment"]
    deployment = copy.deepcopy(deployment)
    deployment["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] = "five thousand"
    with pytest.raises(jsonschema.ValidationError):
        manifests.validate(deployment, manifests.K8S_VERSIONS[0])
