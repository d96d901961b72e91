"""The promotion gate against a real `mlflow server`: racing gates, and the order of alias and record.

Versions are registered without weights (the evaluation is the synthetic tables of
test_gate.py): what is under test is how the gate reads and writes the registry over HTTP.
"""

from __future__ import annotations

import mlflow
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

import miipher2.registry.promotion as promotion
from miipher2.registry import CHALLENGER, CHAMPION, promote
from miipher2.registry.promotion import DECISION_TAG, PromotionRecordError
from tests.registry.test_gate import RULES, tables
from tests.servers import MlflowServer

pytestmark = pytest.mark.slow  # a server start costs seconds to a minute on a loaded machine


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with MlflowServer(tmp_path_factory.mktemp("mlflow-server")) as running:
        yield running


def registry(server, name: str, versions: int, champion: str | None, challenger: str):
    client = mlflow.MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    client.create_registered_model(name)
    for _ in range(versions):
        client.create_model_version(name, source="s3://nowhere/model")  # never loaded
    if champion:
        client.set_registered_model_alias(name, CHAMPION, champion)
    client.set_registered_model_alias(name, CHALLENGER, challenger)
    return client


def better(systems):
    challenger, champion = tables(ovrl_gain=0.3, wer_gain=0.05)
    return pd.concat([challenger.assign(system=CHALLENGER), champion.assign(system=CHAMPION)])


def test_the_later_of_two_racing_gates_refuses_instead_of_overwriting(server, tmp_path):
    client = registry(server, "raced", versions=3, champion="1", challenger="3")

    def evaluate_while_another_gate_promotes_version_2(systems):
        assert systems == {CHALLENGER: "models:/raced/3", CHAMPION: "models:/raced/1"}
        client.set_registered_model_alias("raced", CHAMPION, "2")
        return better(systems)

    decision = promote("raced", "unused", rules=RULES, out_dir=tmp_path, tracking_uri=server.url,
                       evaluate=evaluate_while_another_gate_promotes_version_2)
    assert not decision.promote and decision.label == "rejected"
    assert "moved from version 1 to version 2 while this gate was evaluating" in decision.reason
    assert str(client.get_model_version_by_alias("raced", CHAMPION).version) == "2", "the other gate's choice stands"
    tags = client.get_model_version("raced", "3").tags
    assert tags[DECISION_TAG] == "rejected" and "moved from version 1" in tags["promotion.reason"]
    assert "promotion.superseded_by" not in client.get_model_version("raced", "1").tags


def test_no_record_claims_a_promotion_whose_alias_did_not_move(server, tmp_path, monkeypatch):
    client = registry(server, "ordered", versions=2, champion="1", challenger="2")
    real_set_alias = mlflow.MlflowClient.set_registered_model_alias

    def alias_write_fails(self, name, alias, version):
        raise MlflowException("API request to /registered-models/alias failed with exception ConnectionError")

    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", alias_write_fails)
    with pytest.raises(MlflowException):
        promote("ordered", "unused", rules=RULES, out_dir=tmp_path, tracking_uri=server.url, evaluate=better)
    assert str(client.get_model_version_by_alias("ordered", CHAMPION).version) == "1"
    assert DECISION_TAG not in client.get_model_version("ordered", "2").tags, "no 'promoted' without the move"

    # The other way round: the alias moves, then writing the record fails. The error says the
    # alias did move, and the registry's truth (the alias) is the promotion.
    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", real_set_alias)
    real_set_tag = mlflow.MlflowClient.set_model_version_tag

    def tag_write_fails(self, name, version, key, value):
        if key == DECISION_TAG:
            raise MlflowException("API request to /model-versions/set-tag failed with exception ConnectionError")
        return real_set_tag(self, name, version, key, value)

    monkeypatch.setattr(mlflow.MlflowClient, "set_model_version_tag", tag_write_fails)
    monkeypatch.setattr(promotion, "_RECORD_ATTEMPTS", 1)
    with pytest.raises(PromotionRecordError, match="ordered@champion now points to version 2"):
        promote("ordered", "unused", rules=RULES, out_dir=tmp_path, tracking_uri=server.url, evaluate=better)
    assert str(client.get_model_version_by_alias("ordered", CHAMPION).version) == "2"
