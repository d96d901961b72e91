"""The MLflow server image (infra/mlflow), built and run here: it serves, proxies artifacts, and
carries the PostgreSQL driver the manifests' backend store URI names, and nothing of the training stack."""

import contextlib
import time
import urllib.error
import urllib.request

import pytest

from tests.containers import build, run_in
from tests.servers import free_port

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mlflow_image(engine):
    return build.build_mlflow_image(engine, local_base=True)[0]


def test_image_carries_the_server_its_driver_and_no_training_stack(engine, mlflow_image):
    probe = ("import importlib.util, sqlalchemy, boto3\n"
             "print(sqlalchemy.create_engine('postgresql+psycopg2://u:p@db/mlflow').dialect.driver,"
             " [m for m in ('torch', 'transformers', 'kfp', 'miipher2') if importlib.util.find_spec(m)])")
    result = run_in(engine, mlflow_image, "python", "-c", probe)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["psycopg2", "[]"]


def test_server_serves_runs_and_proxied_artifacts(engine, mlflow_image, tmp_path):
    import mlflow

    port = free_port()
    name = f"miipher2-mlflow-test-{port}"
    started = run_in(engine, mlflow_image, "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                     "--backend-store-uri", "sqlite:////tmp/mlflow.db", "--artifacts-destination", "/tmp/artifacts",
                     network_host=True, detach_name=name)
    assert started.returncode == 0, started.stderr
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            with contextlib.suppress(urllib.error.URLError, OSError):
                with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            assert time.monotonic() < deadline, engine("logs", name, capture=True, check=False).stdout[-3000:]
            time.sleep(1)
        client = mlflow.MlflowClient(tracking_uri=url)
        run = client.create_run(client.create_experiment("image-test"))
        client.log_metric(run.info.run_id, "pesq", 3.25)
        (tmp_path / "note.txt").write_text("through the proxy\n")
        client.log_artifact(run.info.run_id, str(tmp_path / "note.txt"))
        assert client.get_run(run.info.run_id).data.metrics == {"pesq": 3.25}
        fetched = client.download_artifacts(run.info.run_id, "note.txt", str(tmp_path / "back"))
        assert open(fetched).read() == "through the proxy\n"
        # The artifact lies inside the server's container: clients never touched its store.
        stored = engine("exec", name, "sh", "-c", "find /tmp/artifacts -name note.txt", capture=True).stdout
        assert stored.strip().endswith("note.txt")
    finally:
        engine("rm", "-f", name, capture=True, check=False)
