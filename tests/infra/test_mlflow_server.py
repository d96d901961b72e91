"""The MLflow server Deployment starts the pinned `mlflow server` with a PostgreSQL backend
store and proxied S3 artifacts, and answers the host names its clients use.

The container's command line and environment are resolved the way the kubelet does (envFrom,
env, $(VAR) expansion) from the rendered ConfigMap and Secrets, then parsed by mlflow's own CLI.
"""

from __future__ import annotations

import base64
import copy
from urllib.parse import urlsplit

import pytest

from tests.infra import manifests
from tests.infra.conftest import ENVIRONMENTS

PASSWORD = "0123456789abcdef"  # stands in for the operator's `openssl rand -hex 24`


def mlflow_container(docs):
    deployment = manifests.by_kind(docs, "Deployment")["miipher2-mlflow"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


def with_password(docs):
    """The platform as if the operator had filled in the database password."""
    docs = copy.deepcopy(docs)
    secret = manifests.by_kind(docs, "Secret")["miipher2-postgres"]
    secret["data"]["POSTGRES_PASSWORD"] = base64.b64encode(PASSWORD.encode()).decode()
    return docs


def server_context(docs, monkeypatch):
    """mlflow's click context for the container's `mlflow server ...` with the pod's environment."""
    from mlflow.cli import server

    container = mlflow_container(docs)
    assert container["command"] == ["mlflow", "server"]
    env = manifests.container_environment(container, docs)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    args = [manifests.expand(arg, env) for arg in container["args"]]
    return server.make_context("server", args), env


@pytest.mark.parametrize("env_name", ENVIRONMENTS)
def test_server_uses_postgres_backend_and_proxies_s3_artifacts(platform, monkeypatch, env_name):
    ctx, env = server_context(with_password(platform(env_name)), monkeypatch)
    params = ctx.params
    backend = urlsplit(params["backend_store_uri"])
    assert backend.scheme == "postgresql+psycopg2"
    assert (backend.username, backend.password) == ("mlflow", PASSWORD)
    assert (backend.hostname, backend.port) == ("miipher2-postgres", 5432)
    assert backend.path == "/mlflow"
    assert params["artifacts_destination"] == f"s3://miipher2-{env_name}/mlflow-artifacts"
    assert params["serve_artifacts"] is True and params["artifacts_only"] is False
    assert params["host"] == "0.0.0.0" and params["port"] == 5000
    assert "AWS_ACCESS_KEY_ID" in env and "AWS_SECRET_ACCESS_KEY" in env


def test_database_password_stays_out_of_the_command_line(platform, monkeypatch):
    container = mlflow_container(platform("prod"))
    assert not any("POSTGRES" in arg or "postgresql" in arg for arg in container["args"])


def test_backend_store_uri_loads_the_postgres_driver(platform, monkeypatch):
    # The server image (infra/mlflow) must carry a PostgreSQL driver (the upstream mlflow image
    # does not), and SQLAlchemy must pick it for this URI.
    import sqlalchemy
    from mlflow.utils.uri import extract_db_type_from_uri

    lock = (manifests.REPO / "infra" / "mlflow" / "requirements.txt").read_text().lower().splitlines()
    assert any(line.startswith("psycopg2-binary==") for line in lock)
    ctx, _ = server_context(with_password(platform("prod")), monkeypatch)
    assert extract_db_type_from_uri(ctx.params["backend_store_uri"]) == "postgresql"
    engine = sqlalchemy.create_engine(ctx.params["backend_store_uri"])  # no connection is made
    assert engine.dialect.driver == "psycopg2"
    engine.dispose()


def test_clients_in_the_cluster_and_through_port_forward_are_allowed(platform, monkeypatch):
    from mlflow.server.security_utils import is_allowed_host_header

    docs = platform("prod")
    ctx, _ = server_context(with_password(docs), monkeypatch)
    allowed = [host.strip() for host in ctx.params["allowed_hosts"].split(",")]
    settings = manifests.by_kind(docs, "ConfigMap")["miipher2-settings"]["data"]
    service = manifests.by_kind(docs, "Service")["miipher2-mlflow"]
    namespace = service["metadata"]["namespace"]
    tracking = urlsplit(settings["MLFLOW_TRACKING_URI"])
    assert (tracking.hostname, tracking.port) == (service["metadata"]["name"], service["spec"]["ports"][0]["port"])
    for host in (tracking.netloc, f"{tracking.hostname}.{namespace}.svc:{tracking.port}",
                 f"{tracking.hostname}.{namespace}.svc.cluster.local:{tracking.port}",
                 "localhost:5000", "localhost:15000", "127.0.0.1:5000"):
        assert is_allowed_host_header(allowed, host), host
    # Any namespace's service name (standalone KFP puts everything in `kubeflow`).
    assert is_allowed_host_header(allowed, f"{tracking.hostname}.kubeflow.svc.cluster.local:{tracking.port}")
    for host in ("evil.example:5000", "miipher2-mlflow.evil.example:5000", "miipher2-mlflow:5000.evil.example"):
        assert not is_allowed_host_header(allowed, host), host
