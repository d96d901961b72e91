"""Local pipeline runs with every step in its own container: KFP's DockerRunner, made dependable.

KFP 2.17's DockerRunner (kfp/local/docker_task_handler.py) starts each step's container with
`auto_remove=True`, streams its logs, then asks for its exit status; a container that has ended
may be removed before either read. Seen through podman 4.3's Docker API:
  - a step that ends before `containers.run` returns is gone when the docker SDK inspects it:
    podman answers 500 "no such container" (Docker: 404), KFP does not catch it, the run crashes;
  - a step that fails after its logs were read is gone when KFP asks for its status: KFP catches
    the NotFound and reports the step as *succeeded* (on purpose, see its comments; Docker alike).
`docker_runner()` keeps each container until its logs and exit status are read, then removes it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


def run_container(client, image: str, command: list[str], volumes: dict[str, Any], **run_args) -> int:
    """KFP's `run_docker_container`, except that the container outlives the reads of its output and status."""
    from kfp.local.docker_task_handler import add_latest_tag_if_not_present

    image = add_latest_tag_if_not_present(image)
    if not any(image in (*found.tags, *found.attrs.get("RepoDigests", [])) for found in client.images.list()):
        print(f"Pulling image {image!r}")
        client.images.pull(image)
    run_args.pop("auto_remove", None)
    container = client.containers.run(image=image, command=command, volumes=volumes, detach=True, **run_args)
    try:
        for chunk in container.logs(stream=True, follow=True):
            print(chunk.decode(errors="replace"), end="")
        return container.wait()["StatusCode"]
    finally:
        container.remove(force=True)


@contextlib.contextmanager
def docker_runner(**container_run_args) -> Iterator[Any]:
    """A KFP DockerRunner whose steps keep their containers until KFP has read what they did.

    `container_run_args` go to the docker SDK's `containers.run` (e.g. network_mode="host",
    environment={...}); the engine is the one DOCKER_HOST names (podman: `podman system service`).
    """
    from kfp import local
    from kfp.local import docker_task_handler

    original = docker_task_handler.run_docker_container
    docker_task_handler.run_docker_container = run_container  # looked up by name at each step
    try:
        yield local.DockerRunner(**container_run_args)
    finally:
        docker_task_handler.run_docker_container = original
