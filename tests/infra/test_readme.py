"""infra/README.md's commands name kustomizations and objects that exist."""

from __future__ import annotations

import re

from tests.infra import manifests

README = (manifests.REPO / "infra" / "README.md").read_text()
KINDS = {"deployment": "Deployment", "statefulset": "StatefulSet", "svc": "Service", "pod": "Pod",
         "pytorchjob": "PyTorchJob"}


def test_every_kustomization_the_readme_applies_renders(rendered):
    roots = set(re.findall(r"-k (infra/k8s/[^\s`]+)", README))
    assert roots, "the README applies no kustomization"
    for root in roots:
        relative = root.removeprefix("infra/k8s/")
        expanded = [relative.replace("$ENV", env) for env in ("dev", "prod")] if "$ENV" in relative else [relative]
        for path in expanded:
            assert path in rendered, f"README: kubectl -k {root}: no such kustomization"


def test_every_object_the_readme_names_is_rendered(rendered):
    objects = {(doc["kind"], doc["metadata"]["name"]) for docs in rendered.values() for doc in docs}
    named = re.findall(r"\b(deployment|statefulset|svc|pod|pytorchjob)/(miipher2[a-z0-9-]*)", README)
    assert named
    for kind, name in named:
        assert (KINDS[kind], name) in objects, f"README names {kind}/{name}, which no manifest defines"
