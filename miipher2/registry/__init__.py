"""MLflow model registry: the restorer as a pyfunc model, versions with aliases, the promotion gate.

    register_restorer(model_dir, "miipher2")         # new version, alias `challenger`
    promote("miipher2", "data")                        # `champion` moves only if the challenger wins
    mlflow.pyfunc.load_model("models:/miipher2@champion").predict(to_model_input([wave], [16000]))
"""

from miipher2.registry.promotion import DEFAULT_FLOORS, DEFAULT_RULES, Decision, GateRule, check_floors, compare, promote
from miipher2.registry.pyfunc import (RegistryError, RestorerPyfunc, load_pyfunc, load_registered_restorer,
                                      log_restorer, to_model_input)
from miipher2.registry.versions import CHALLENGER, CHAMPION, register_restorer, version_by_alias

__all__ = ["CHALLENGER", "CHAMPION", "DEFAULT_FLOORS", "DEFAULT_RULES", "Decision", "GateRule", "RegistryError",
           "RestorerPyfunc", "check_floors", "compare", "load_pyfunc", "load_registered_restorer", "log_restorer",
           "promote", "register_restorer", "to_model_input", "version_by_alias"]
