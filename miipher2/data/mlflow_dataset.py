"""The dataset as MLflow sees it: a run input whose source is a DVC revision.

Logged with `Tracker.log_dataset`, it fills the Dataset column of MLflow's run table (name and
digest) and the run page's inputs (schema, row count, and where it came from). The digest is
DVC's directory hash (`<md5>.dir`, exactly MLflow's 36-character digest field), so two runs
trained on equal bytes show equal digests. The source names the repository, the revision as
given, the commit it resolved to and the tracked path: `source.load()` fetches that version again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import register_dataset_source

from miipher2.data.manifest import manifest_path, read_manifest


class DvcDatasetSource(DatasetSource):
    """`path` of the DVC repository `repo` at `commit` (resolved from `revision`)."""

    def __init__(self, repo: str, revision: str, commit: str, path: str, md5: str):
        self.repo, self.revision, self.commit, self.path, self.md5 = repo, revision, commit, path, md5

    @staticmethod
    def _get_source_type() -> str:
        return "dvc"

    def load(self, dst_path: str | None = None) -> str:
        """Fetch this version of the dataset (verified file by file) into `dst_path`; returns the directory."""
        import tempfile

        from miipher2.data.versioning import fetch_dataset

        dest = dst_path or tempfile.mkdtemp(prefix="miipher2-dataset-")
        return str(fetch_dataset(self.repo, self.commit or self.revision, dest, path=self.path).path)

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False  # never guessed from a bare string: always built explicitly

    @classmethod
    def _resolve(cls, raw_source: Any) -> DvcDatasetSource:
        raise NotImplementedError("a DVC dataset source is built from its fields, not resolved from a string")

    def to_dict(self) -> dict[str, Any]:
        return {"repo": self.repo, "revision": self.revision, "commit": self.commit, "path": self.path,
                "md5": self.md5}

    @classmethod
    def from_dict(cls, source_dict: dict[str, Any]) -> DvcDatasetSource:
        return cls(**{k: source_dict.get(k, "") for k in ("repo", "revision", "commit", "path", "md5")})


register_dataset_source(DvcDatasetSource)  # lets `mlflow.data.get_source(run input)` rebuild it


def dvc_dataset(data_root: str | Path, split: str, *, repo: str, revision: str, commit: str, md5: str,
                path: str = "data"):
    """The `split` manifest of a materialised DVC dataset version as an MLflow dataset, named
    `split@<short commit>` (or `split@revision` when the commit is unknown): `HEAD` or `main`
    would name different data over time."""
    import mlflow

    frame = read_manifest(manifest_path(Path(data_root), split))
    source = DvcDatasetSource(repo=repo, revision=revision, commit=commit, path=path, md5=md5)
    return mlflow.data.from_pandas(frame, source=source, name=f"{split}@{commit[:12] or revision}", digest=md5)
