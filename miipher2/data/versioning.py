"""The dataset under DVC: read any git revision of it, pull, push, and keep the demo in sync.

`data.dvc` pins `data/` by DVC's directory hash (`<md5>.dir`). Everything here goes through DVC
(`DVCFileSystem`, `dvc.repo.Repo`), so a revision is read from DVC's cache or remote exactly as
recorded at that commit, never from whatever happens to sit in the working copy.

    info = fetch_dataset(".", rev="v1.0", dest="/tmp/data-v1")   # download + verify every file
    info.md5           # '2f6c...dir': the version, as recorded in data.dvc at v1.0
    info.files         # {'manifests/train.csv': '9a1b...', ...}: per-file md5s
    dataset_md5("https://github.com/org/miipher2", rev="main")   # the version only, no download
    materialise_dataset(url, "v1.0", "/workspace/datasets")      # into datasets/<md5>, once per version

A verified copy is recorded beside it (`<dest>.verified.json`: each file's md5 with its size,
mtime and inode), so checking it again later hashes only files that changed since (DVC's own
state database works the same way): at terabyte scale a re-check costs a directory walk, not
hours of hashing.

Remotes and credentials: see docs/data.md (credentials only from the environment or
`.dvc/config.local`, never from committed config or from function arguments that get logged).
A pod of a cluster reads from the platform's S3 remote (`platform_remote`); a private git
repository is cloned with a token from the environment (`miipher2.data.git_credentials`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

DATASET_PATH = "data"  # the tracked directory, relative to the repository root
# The platform's DVC remote (ConfigMap miipher2-settings): an S3 URL, its endpoint and region
# from the S3 Secret's variables (unset endpoint: AWS itself).
PLATFORM_REMOTE, PLATFORM_REMOTE_URL_ENV = "platform", "MIIPHER2_DVC_REMOTE_URL"
_VERIFIED_SUFFIX = ".verified.json"
DVCFILE = f"{DATASET_PATH}.dvc"
TOOLCHAIN_KEY = "built_with"  # data.dvc `meta` entry: the tool versions the pinned corpus was built with


class DatasetVersionError(RuntimeError):
    """A dataset revision cannot be read, or what was read does not match its recorded hashes."""


class DeterminismError(DatasetVersionError):
    """A rebuilt demo corpus differs from the version pinned in data.dvc."""


@dataclass(frozen=True)
class DatasetInfo:
    """A dataset revision materialised on local disk.

    path:  local directory holding the dataset's files.
    md5:   DVC's hash of the whole directory as recorded in the `.dvc` file (`<md5>.dir`);
           equal md5 means equal bytes in every file.
    files: relative POSIX path -> md5 of that file, as recorded by DVC and verified on disk.
    rev:   the git revision it was read at (None: the workspace's HEAD state).
    commit: the git commit `rev` resolved to ('' when DVC cannot tell): a branch name moves, this does not.
    """

    path: Path
    md5: str
    files: dict[str, str]
    rev: str | None = None
    commit: str = ""


def dataset_filesystem(repo: str | os.PathLike, rev: str | None = None, remote: str | None = None,
                       remote_config: dict[str, Any] | None = None):
    """A `DVCFileSystem` over `repo` (local path or git URL) at `rev`.

    `remote` picks a named remote instead of the default; `remote_config` overrides its settings
    (e.g. `{"endpointurl": ...}`). Keep credentials out of `remote_config` when its values could
    be logged: DVC/boto read AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from the environment.
    """
    from dvc.api import DVCFileSystem

    try:
        return DVCFileSystem(str(repo), rev=rev, remote=remote, remote_config=remote_config)
    except Exception as err:  # dvc/scmrepo raise many kinds; all mean "cannot open this revision"
        raise DatasetVersionError(f"cannot open DVC repository {_shown(repo)!r} at revision {rev!r}: {err}") from err


def dataset_md5(repo: str | os.PathLike, rev: str | None = None, path: str = DATASET_PATH,
                remote: str | None = None) -> str:
    """DVC's directory hash of `path` as recorded at `rev` (no data is downloaded)."""
    fs = dataset_filesystem(repo, rev, remote)
    return _recorded_md5(fs, repo, rev, path)


def platform_remote(remote: str | None = None) -> tuple[str | None, dict[str, Any] | None]:
    """(remote name, remote settings) to read a dataset from.

    A named `remote` is the repository's own. Without one, a pod reads from the platform's remote
    when `MIIPHER2_DVC_REMOTE_URL` is set (`s3://bucket/prefix`; endpoint `AWS_ENDPOINT_URL` and
    region `AWS_DEFAULT_REGION` when set, for S3-compatible stores), because the default remote
    a repository commits (a directory beside a checkout) does not exist in a fresh clone.
    Elsewhere: the repository's default remote. Credentials stay in the environment (boto)."""
    if remote:
        return remote, None
    url = os.environ.get(PLATFORM_REMOTE_URL_ENV)
    if not url:
        return None, None
    settings = {"url": url}
    for option, variable in (("endpointurl", "AWS_ENDPOINT_URL"), ("region", "AWS_DEFAULT_REGION")):
        if os.environ.get(variable):
            settings[option] = os.environ[variable]
    return PLATFORM_REMOTE, settings


def materialise_dataset(repo: str | os.PathLike, rev: str | None, datasets_dir: str | os.PathLike,
                        remote: str | None = None, path: str = DATASET_PATH) -> DatasetInfo:
    """`path` of `repo` at `rev`, fetched and verified into `<datasets_dir>/<md5>` once per version.

    The remote is chosen by `platform_remote`; a private git repository is read with the token
    in the environment (`git_credentials`). Runs fetching the same version at once take turns."""
    from miipher2.data.git_credentials import git_credentials
    from miipher2.locking import exclusive_lock

    name, settings = platform_remote(remote)
    with git_credentials() as authenticated:
        if authenticated:
            _forget_clone(repo)
        fs = dataset_filesystem(repo, rev, name, settings)
        md5 = _recorded_md5(fs, repo, rev, path)
        if not re.fullmatch(r"[0-9a-f]{32}\.dir", md5):
            raise DatasetVersionError(f"{path!r} of {_shown(repo)!r} at {rev!r} records an unexpected hash {md5!r}")
        dest = Path(datasets_dir) / md5
        with exclusive_lock(Path(datasets_dir) / f".{dest.name}.lock"):
            return _fetch(fs, repo, rev, dest, md5, name, path)


def fetch_dataset(repo: str | os.PathLike, rev: str | None, dest: str | os.PathLike, remote: str | None = None,
                  remote_config: dict[str, Any] | None = None, path: str = DATASET_PATH) -> DatasetInfo:
    """Materialise `path` of `repo` at `rev` into `dest` and verify every file's md5.

    Data comes through DVC: from the repository's cache when it has the objects, else from
    `remote` (or the default remote). `dest` is replaced whole only after verification; when
    it already holds exactly this version nothing is downloaded (and, thanks to its verification
    record, only files changed since are hashed again).
    """
    fs = dataset_filesystem(repo, rev, remote, remote_config)
    return _fetch(fs, repo, rev, Path(dest), _recorded_md5(fs, repo, rev, path), remote, path)


def _fetch(fs, repo, rev, dest: Path, md5: str, remote: str | None, path: str) -> DatasetInfo:
    try:  # the file list of a version comes from its `.dir` object: in the cache or on the remote
        listing = fs.find(path, detail=True)
    except Exception as err:
        raise DatasetVersionError(f"cannot list {path!r} of {_shown(repo)!r} at {rev!r} from remote "
                                  f"{remote or '(default)'}: {err}") from err
    expected = {PurePosixPath(name).relative_to(path).as_posix(): info["md5"] for name, info in listing.items()}
    commit = resolved_commit(fs)
    dest = dest.absolute()
    if dest.is_dir() and verify_copy(dest, md5, expected) == []:
        return DatasetInfo(dest, md5, expected, rev, commit)
    staging = dest.parent / f".{dest.name}.fetching-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    try:
        try:
            fs.get(path, str(staging), recursive=True)
        except Exception as err:
            raise DatasetVersionError(f"cannot download {path!r} of {_shown(repo)!r} at {rev!r} from remote "
                                      f"{remote or '(default)'}: {err}") from err
        bad, stamps = _compare(staging, expected, {})
        if bad:
            raise DatasetVersionError(f"{len(bad)} file(s) of {path!r} at {rev!r} do not match their DVC hashes: "
                                      + ", ".join(bad[:10]))
        retired = dest.parent / f".{dest.name}.old-{os.getpid()}"
        _verified_path(dest).unlink(missing_ok=True)
        if dest.exists():
            os.replace(dest, retired)
        os.replace(staging, dest)  # a rename: sizes, mtimes and inodes stay what was verified
        shutil.rmtree(retired, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    _write_record(dest, md5, stamps)
    return DatasetInfo(dest, md5, expected, rev, commit)


def resolved_commit(fs) -> str:
    """The git commit a `DVCFileSystem` reads at (its revision resolved); '' when it cannot tell."""
    try:
        return str(fs.repo.get_rev() or "")
    except Exception:  # noqa: BLE001 — a repository without git (e.g. `dvc init --no-scm`)
        return ""


def verify_copy(dest: str | os.PathLike, md5: str, expected: dict[str, str]) -> list[str]:
    """Check a materialised copy of version `md5` against `expected` (relative path -> md5);
    returns what is missing, extra or different (empty: identical, and then recorded as verified).

    Files whose size, mtime and inode match the copy's verification record are trusted without
    being read: only new or changed files are hashed."""
    dest = Path(dest)
    record = _verification_record(dest, md5)
    mismatched, stamps = _compare(dest, expected, record)
    if not mismatched and stamps != record:
        _write_record(dest, md5, stamps)
    return mismatched


def file_hashes(root: str | os.PathLike) -> dict[str, str]:
    """md5 of every file under `root`, keyed by sorted relative POSIX path (DVC's per-file hash)."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): _md5(p) for p in sorted(root.rglob("*")) if p.is_file()}


def directory_md5(root: str | os.PathLike) -> str:
    """DVC's hash (`<md5>.dir`) of any directory, as `dvc add` would record it (nothing is cached)."""
    import tempfile

    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem

    fs = LocalFileSystem()
    with tempfile.TemporaryDirectory(prefix="miipher2-dvc-hash-") as scratch:
        _, _, tree = build(HashFileDB(fs, scratch), str(Path(root).absolute()), fs, "md5", dry_run=True)
    return tree.hash_info.value


# --------------------------------------------------------------------------- workspace operations

def workspace_md5(repo_root: str | os.PathLike, dvcfile: str = DVCFILE) -> tuple[str, str | None]:
    """(recorded, actual): the hash in `dvcfile` and the hash of the workspace copy (None: absent).

    DVC's state database remembers file hashes by inode/mtime, so a second call is fast.
    """
    from dvc.repo import Repo

    try:
        with Repo(str(repo_root)) as repo:
            outs = [out for stage in repo.stage.collect(_inside(repo_root, dvcfile)) for out in stage.outs]
            if len(outs) != 1:
                raise DatasetVersionError(f"{dvcfile} in {repo_root} should track exactly one output, found {len(outs)}")
            recorded = outs[0].hash_info.value
            actual = outs[0].get_hash().value if Path(outs[0].fs_path).exists() else None
    except DatasetVersionError:
        raise
    except Exception as err:
        raise DatasetVersionError(f"cannot read {dvcfile} in {repo_root}: {err}") from err
    return recorded, actual


def pull(repo_root: str | os.PathLike, remote: str | None = None, dvcfile: str = DVCFILE) -> None:
    """`dvc pull` of one tracked output from `remote` (default remote when None)."""
    _run_dvc(repo_root, "pull", targets=[_inside(repo_root, dvcfile)], remote=remote)


def push(repo_root: str | os.PathLike, remote: str | None = None, dvcfile: str = DVCFILE) -> None:
    """`dvc push` of one tracked output (which must be in the cache) to `remote`."""
    _run_dvc(repo_root, "push", targets=[_inside(repo_root, dvcfile)], remote=remote)


def ensure_demo_dataset(repo_root: str | os.PathLike, remote: str | None = None, config=None,
                        progress: Callable[[str], None] = lambda message: None) -> str:
    """Make `<repo_root>/data` hold exactly the demo corpus pinned in `data.dvc`; say what was done.

    1. data/ already matches data.dvc: nothing to do ("up to date").
    2. The remote has it: `dvc pull` ("pulled").
    3. Otherwise (a fresh clone with no remote copy): build the corpus, check its hash equals
       data.dvc (the build is deterministic; if not, raise `DeterminismError` saying which tools
       differ from those data.dvc records and what to do), cache it and push it to the remote so
       the next machine can pull ("built and pushed").
    `config` is the `DemoConfig` to build with (default: the full corpus); `progress` receives
    one line per step.
    """
    from miipher2.data.demo import build_demo

    repo_root = Path(repo_root)
    recorded, actual = workspace_md5(repo_root)
    if actual == recorded:
        return "up to date"
    state = "is missing" if actual is None else f"differs from data.dvc ({recorded})"
    progress(f"{DATASET_PATH}/ {state}: trying `dvc pull` from remote {remote or '(default)'}")
    try:
        with _quiet_dvc():  # a miss is expected on a fresh machine; DVC would warn about every file
            pull(repo_root, remote)
    except DatasetVersionError:
        progress("not on the remote: rebuilding the demo corpus (deterministic, about a minute)")
    else:
        if workspace_md5(repo_root)[1] == recorded:
            return "pulled"
    build_demo(repo_root / DATASET_PATH, config)
    actual = workspace_md5(repo_root)[1]
    if actual != recorded:
        raise DeterminismError(_rebuild_mismatch(repo_root, recorded, actual, remote))
    _run_dvc(repo_root, "commit", target=_inside(repo_root, DVCFILE), force=True)  # into the cache, data.dvc unchanged
    progress(f"rebuilt corpus matches data.dvc; pushing it to remote {remote or '(default)'}")
    push(repo_root, remote)
    return "built and pushed"


def pin_demo_dataset(repo_root: str | os.PathLike, remote: str | None = None, config=None) -> str:
    """Rebuild the demo corpus and make it the version data.dvc pins: `dvc add`, the toolchain
    into data.dvc's `meta: built_with`, `dvc push`. For deliberate changes; commit data.dvc after."""
    from miipher2.data.demo import build_demo, toolchain

    repo_root = Path(repo_root)
    build_demo(repo_root / DATASET_PATH, config)
    _run_dvc(repo_root, "add", targets=[_inside(repo_root, DATASET_PATH)])
    _write_toolchain(repo_root, toolchain())
    push(repo_root, remote)
    return workspace_md5(repo_root)[0]


def recorded_toolchain(repo_root: str | os.PathLike) -> dict[str, str]:
    """The tool versions data.dvc says its corpus was built with (empty when it records none)."""
    import yaml

    meta = yaml.safe_load((Path(repo_root) / DVCFILE).read_text()).get("meta") or {}
    return {str(k): str(v) for k, v in (meta.get(TOOLCHAIN_KEY) or {}).items()}


def _write_toolchain(repo_root: Path, tools: dict[str, str]) -> None:
    """DVC keeps a .dvc file's `meta` through later `dvc add`s and ignores it otherwise."""
    import yaml

    from miipher2.files import atomic_write_text

    dvcfile = repo_root / DVCFILE
    content = yaml.safe_load(dvcfile.read_text())
    content["meta"] = {**(content.get("meta") or {}), TOOLCHAIN_KEY: tools}
    atomic_write_text(dvcfile, yaml.safe_dump(content, sort_keys=False))


def _rebuild_mismatch(repo_root: Path, recorded: str, actual: str | None, remote: str | None) -> str:
    """What went wrong and the ways forward, for the person whose `make demo` just stopped."""
    from miipher2.data.demo import toolchain

    pinned, here = recorded_toolchain(repo_root), toolchain()
    differences = [f"{tool} {here.get(tool, '(missing)')} here, {version} pinned"
                   for tool, version in pinned.items() if here.get(tool) != version]
    if differences:
        cause = (f"This machine's tools differ from those data.dvc was built with: {'; '.join(differences)}. "
                 "The pinned versions (`make setup` installs them on Debian 12) should reproduce it.")
    elif pinned:
        cause = ("This machine has the tools data.dvc records, so the build has lost determinism: a bug "
                 "(docs/data.md, \"Determinism\", says how to find the files that differ).")
    else:
        cause = "data.dvc records no toolchain to compare with."
    return (f"the demo corpus rebuilt here (DVC hash {actual}, now in {DATASET_PATH}/) is not the version data.dvc "
            f"pins ({recorded}), and remote {remote or '(default)'} does not have that version. {cause} Ways forward: "
            "fetch the pinned corpus from a machine that has it (there `dvc push -r s3`, here `miipher2 data pull "
            "--remote s3`; docs/data.md); or, if the difference is intended (a new builder, degradation or tool "
            "version), make this build the pinned version with `miipher2 data pin-demo` and commit data.dvc.")


# --------------------------------------------------------------------------- helpers

def _recorded_md5(fs, repo, rev, path: str) -> str:
    try:
        info = fs.info(path)
    except FileNotFoundError as err:
        raise DatasetVersionError(f"{path!r} is not in {_shown(repo)!r} at revision {rev!r}") from err
    except Exception as err:  # the filesystem opens lazily: unknown revisions surface here
        raise DatasetVersionError(f"cannot read {path!r} of {_shown(repo)!r} at revision {rev!r}: {err}") from err
    md5 = info.get("dvc_info", {}).get("md5")
    if not md5 or info["type"] != "directory":
        raise DatasetVersionError(f"{path!r} in {_shown(repo)!r} at revision {rev!r} is not a DVC-tracked directory")
    return md5


def _compare(root: Path, expected: dict[str, str], verified: dict[str, list]) -> tuple[list[str], dict[str, list]]:
    """(relative paths missing, extra or differing from `expected`; name -> [md5, size, mtime_ns,
    inode] of every file that matches). A file whose entry in `verified` still fits its stamp is
    trusted without being read; every other file is hashed."""
    present = _stamps(root)
    mismatched, stamps = sorted(set(expected) - set(present)), {}
    for name in sorted(present):
        want = expected.get(name)
        if want is None:
            mismatched.append(name)
            continue
        entry = [want, *present[name]]
        if verified.get(name) == entry or _md5(root / name) == want:
            stamps[name] = entry
        else:
            mismatched.append(name)
    return sorted(mismatched), stamps


def _stamps(root: Path) -> dict[str, list[int]]:
    """Relative POSIX path -> [size, mtime_ns, inode] of every file under `root`, one stat each."""
    found, pending, prefix = {}, [str(root)], len(str(root)) + 1
    while pending:
        with os.scandir(pending.pop()) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    pending.append(entry.path)
                elif entry.is_file():
                    stat = entry.stat()
                    found[entry.path[prefix:].replace(os.sep, "/")] = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
    return found


def _verified_path(dest: Path) -> Path:
    return dest.parent / f"{dest.name}{_VERIFIED_SUFFIX}"


def _verification_record(dest: Path, md5: str) -> dict[str, list]:
    """name -> [md5, size, mtime_ns, inode] of the files verified in `dest` for version `md5`."""
    try:
        record = json.loads(_verified_path(dest).read_text())
    except (OSError, ValueError):
        return {}
    return record.get("files", {}) if record.get("md5") == md5 else {}


def _write_record(dest: Path, md5: str, stamps: dict[str, list]) -> None:
    from miipher2.files import atomic_write_text

    atomic_write_text(_verified_path(dest), json.dumps({"md5": md5, "files": stamps}))


def _md5(path: Path) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "md5").hexdigest()


@contextlib.contextmanager
def _quiet_dvc():
    """Drop DVC's "missing cache files" warning. A filter on the emitting logger, because DVC
    resets the levels and handlers of its parent logger whenever a Repo runs a command."""
    loggers = [logging.getLogger(name) for name in ("dvc.data_cloud", "dvc_data.index.fetch")]
    drop_warnings = lambda record: record.levelno > logging.WARNING  # noqa: E731
    for logger in loggers:
        logger.addFilter(drop_warnings)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(drop_warnings)


def shown_repo(repo: str | os.PathLike) -> str:
    """The repository as it may be shown and recorded: a URL without any user:password@ part."""
    repo = str(repo)
    if "://" in repo and "@" in repo.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = repo.split("://", 1)
        return f"{scheme}://{rest.split('@', 1)[1]}"
    return repo


_shown = shown_repo


def _forget_clone(repo) -> None:
    """Make DVC clone `repo` afresh rather than update its earlier clone in this process: the
    update goes through pygit2, which (scmrepo 3.6) answers a credential request only once per
    fetch while libgit2 connects twice, so an authenticated update fails where a clone works."""
    with contextlib.suppress(ImportError):
        from dvc.repo.open_repo import CLONES

        entry = CLONES.pop(str(repo), None)
        if entry:
            shutil.rmtree(entry[0], ignore_errors=True)


def _inside(repo_root, relative: str) -> str:
    """DVC resolves targets against the process's working directory; pin them to the repo."""
    return str(Path(repo_root).absolute() / relative)


def _run_dvc(repo_root, command: str, **kwargs) -> None:
    from dvc.repo import Repo

    try:
        with Repo(str(repo_root)) as repo:
            getattr(repo, command)(**kwargs)
    except Exception as err:
        raise DatasetVersionError(f"dvc {command} in {repo_root} failed: {err}") from err
