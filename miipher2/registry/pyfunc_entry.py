"""Entry point of the logged pyfunc model ("models from code"): MLflow runs this file at load time.

Logging the model as code rather than a pickled object means loading a registered model never
unpickles anything: the weights are safetensors and the model class comes from this source.
"""

import mlflow

from miipher2.registry.pyfunc import RestorerPyfunc

mlflow.models.set_model(RestorerPyfunc())
