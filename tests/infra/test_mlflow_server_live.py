"""The rendered MLflow Deployment, run for real on this machine.

The container's exact `mlflow server` command line and environment (resolved as the kubelet
would) start against a real PostgreSQL and an S3 server (moto). Only what cannot exist outside
a cluster is swapped: the database and S3 addresses, the bind address (loopback instead of
0.0.0.0), the port, and one worker instead of four. A client without S3 credentials then logs
a run, an artifact and a registered model through it.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import glob
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.infra import manifests
from tests.infra.test_mlflow_server import mlflow_container
from tests.servers import free_port, moto_s3_endpoint, wait_healthy

PASSWORD = "0123456789abcdef"
BUCKET = "miipher2-prod"  # the prod overlay's MLFLOW_ARTIFACTS_DESTINATION bucket


def _postgres_bin() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    found = candidates[-1] if candidates else shutil.which("initdb")
    return Path(found).parent if found else None


@contextlib.contextmanager
def postgres_server(user: str, password: str, database: str):
    """A throwaway PostgreSQL on 127.0.0.1 with password authentication; yields its port."""
    import psycopg2

    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed")
    root = Path(tempfile.mkdtemp(prefix="miipher2-pg-"))
    as_owner: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        import pwd

        owner = pwd.getpwnam("postgres")
        os.chown(root, owner.pw_uid, owner.pw_gid)
        as_owner = ["runuser", "-u", "postgres", "--"]
    pwfile = root / "password"
    pwfile.write_text(password)
    if as_owner:
        os.chown(pwfile, owner.pw_uid, owner.pw_gid)
    port = free_port()
    data = root / "data"
    try:
        subprocess.run([*as_owner, bin_dir / "initdb", "-D", data, "-U", user, f"--pwfile={pwfile}",
                        "--auth-local=trust", "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8"],
                       check=True, capture_output=True)
        subprocess.run([*as_owner, bin_dir / "pg_ctl", "-D", data, "-w", "-l", root / "log", "-o",
                        f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                       check=True, capture_output=True)
        connection = psycopg2.connect(host="127.0.0.1", port=port, user=user, password=password, dbname="postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{database}"')
        connection.close()
        yield port
    finally:
        subprocess.run([*as_owner, bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def s3_server():
    import boto3

    with moto_s3_endpoint() as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing-secret", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        yield endpoint, s3


def _status(url: str, host_header: str) -> int:
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/experiments/search?max_results=1",
                                     headers={"Host": host_header})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def _deployment_as_run_here(docs, pg_port: int, s3_endpoint: str, port: int):
    """The container's argv and environment, with this machine's addresses for the cluster's."""
    docs = copy.deepcopy(docs)
    secrets = manifests.by_kind(docs, "Secret")
    encode = lambda text: base64.b64encode(text.encode()).decode()  # noqa: E731
    secrets["miipher2-postgres"]["data"]["POSTGRES_PASSWORD"] = encode(PASSWORD)
    secrets["miipher2-s3"]["data"].update(AWS_ACCESS_KEY_ID=encode("testing"),
                                          AWS_SECRET_ACCESS_KEY=encode("testing-secret"),
                                          AWS_DEFAULT_REGION=encode("us-east-1"),
                                          MLFLOW_S3_ENDPOINT_URL=encode(s3_endpoint))
    settings = manifests.by_kind(docs, "ConfigMap")["miipher2-settings"]["data"]
    settings.update(POSTGRES_HOST="127.0.0.1", POSTGRES_PORT=str(pg_port))

    container = mlflow_container(docs)
    env = manifests.container_environment(container, docs)
    swaps = {"--host=0.0.0.0": "--host=127.0.0.1", "--port=5000": f"--port={port}"}
    args = [swaps.get(arg, manifests.expand(arg, env)) for arg in container["args"]]
    assert set(swaps) <= set(container["args"]), "the Deployment's bind address or port changed"
    command = [str(Path(sys.executable).with_name(container["command"][0])), *container["command"][1:]]
    return [*command, *args, "--workers=1"], env


@pytest.mark.slow
def test_rendered_mlflow_server_tracks_to_postgres_and_proxies_artifacts_to_s3(platform, tmp_path, monkeypatch):
    import psycopg2
    from mlflow import MlflowClient

    docs = platform("prod")
    with postgres_server("mlflow", PASSWORD, "mlflow") as pg_port, s3_server() as (s3_endpoint, s3):
        port = free_port()
        argv, env = _deployment_as_run_here(docs, pg_port, s3_endpoint, port)
        # The server's environment is the pod's, not this test process's.
        base_env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "AWS_"))}
        log = tmp_path / "mlflow-server.log"
        with open(log, "wb") as out:
            server = subprocess.Popen(argv, env={**base_env, **env}, stdout=out, stderr=subprocess.STDOUT,
                                      cwd=tmp_path, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_healthy(url, server, log)

            # Clients in the cluster reach it by service name; others are refused.
            assert _status(url, "miipher2-mlflow:5000") == 200
            assert _status(url, "miipher2-mlflow.miipher2.svc.cluster.local:5000") == 200
            assert _status(url, "evil.example") == 403

            # A client with the tracking URI only: no S3 credentials, no endpoint.
            for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                         "MLFLOW_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "MLFLOW_TRACKING_URI"):
                monkeypatch.delenv(name, raising=False)
            client = MlflowClient(tracking_uri=url, registry_uri=url)
            experiment = client.create_experiment("infra-live")
            run = client.create_run(experiment)
            client.log_metric(run.info.run_id, "loss", 0.25)
            client.log_text(run.info.run_id, "restored", "notes/hello.txt")
            client.set_terminated(run.info.run_id)
            client.create_registered_model("miipher2-infra-live")

            keys = [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="mlflow-artifacts/").get("Contents", [])]
            assert any(key.endswith(f"{run.info.run_id}/artifacts/notes/hello.txt") for key in keys), keys
            local = client.download_artifacts(run.info.run_id, "notes/hello.txt", str(tmp_path))
            assert Path(local).read_text() == "restored"

            with psycopg2.connect(host="127.0.0.1", port=pg_port, user="mlflow", password=PASSWORD,
                                  dbname="mlflow") as connection, connection.cursor() as cursor:
                cursor.execute("SELECT run_uuid FROM runs")
                assert cursor.fetchall() == [(run.info.run_id,)]
                cursor.execute("SELECT name FROM registered_models")
                assert cursor.fetchall() == [("miipher2-infra-live",)]
        finally:
            os.killpg(server.pid, 15)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, 9)
                server.wait()
