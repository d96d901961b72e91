"""Reading compiled KFP pipeline specs in tests."""


def all_tasks(spec: dict) -> dict:
    """task name -> task spec, across the root DAG and every sub-DAG (conditions, loops)."""
    tasks = dict(spec["root"]["dag"]["tasks"])
    for component in spec["components"].values():
        tasks.update(component.get("dag", {}).get("tasks", {}))
    return tasks


def executor_label(spec: dict, task: str) -> str:
    return spec["components"][all_tasks(spec)[task]["componentRef"]["name"]]["executorLabel"]
