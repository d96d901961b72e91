# Stand-ins for the public base images, for machines that cannot pull them (this project's test
# machines reach only Debian's and PyPI's package servers) and have no GPU. infra/image/build.py
# makes them from a Debian root file system (mmdebstrap --variant=minbase, then `podman import`):
#
#   --target python   Debian's Python in a virtual environment on PATH (`python`, `python3`, `pip`),
#                     like python:3.11-slim: the base of the MLflow server image (infra/mlflow);
#   (last stage)      that plus the CPU torch wheel, like the PyTorch image's conda Python: the
#                     base of the pipeline image. The wheel's folder is the build context `wheels`.
#
#   podman build -f infra/image/local-base.Dockerfile --build-context wheels=/opt/wheels \
#     --build-arg TORCH_VERSION=2.13.0+cpu -t localhost/miipher2-base:torch-2.13.0-cpu infra/image
ARG DEBIAN_IMAGE=localhost/miipher2-debian:bookworm

FROM ${DEBIAN_IMAGE} AS python
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3=3.11.* python3-venv=3.11.* \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/python
ENV PATH=/opt/python/bin:$PATH

FROM python AS torch
# torch alone, offline: the images built on this base install every other package at its locked version.
ARG TORCH_VERSION
RUN --mount=type=bind,from=wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index --no-deps --find-links /wheels "torch==${TORCH_VERSION}"
