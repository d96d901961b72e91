"""What every step shares: the image it runs in, and how a step is declared.

Steps are *lightweight* components: KFP ships the function's source and runs it in `IMAGE`
(which already holds kfp, so `install_kfp_package=False`). The same function therefore runs in a
pod on the cluster and in KFP's local SubprocessRunner, which refuses container components.
KFP serialises only the function body, so every import happens inside it; and component modules
must not use `from __future__ import annotations`, because KFP reads the annotation objects.
"""

from __future__ import annotations

import os

from kfp import dsl

# The one place the pipeline's image is named (the Kubernetes manifests name the same image in
# infra/k8s/components/images). Build it from infra/image/Dockerfile (docs/pipeline.md);
# compile against another registry or tag with MIIPHER2_IMAGE=registry/name:tag.
DEFAULT_IMAGE = "ghcr.io/miipher2/miipher2:0.1.0"
IMAGE = os.environ.get("MIIPHER2_IMAGE", DEFAULT_IMAGE)


def component(func):
    """Declare `func` as a step that runs in our image."""
    return dsl.component(func, base_image=IMAGE, install_kfp_package=False)


def name_image(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """Tell the step which image it runs in (a pod cannot see its own image): MLflow lineage records it."""
    from miipher2.lineage import IMAGE_ENV

    return task.set_env_variable(IMAGE_ENV, IMAGE)
