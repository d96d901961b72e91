"""Clone a private git repository with a token from the environment, never from a URL.

    with git_credentials():            # MIIPHER2_GIT_TOKEN (and MIIPHER2_GIT_USERNAME) set
        fetch_dataset("https://git.example.com/org/private.git", "v1", dest)

On a cluster the variables come from Secret `miipher2-git` (keys GIT_USERNAME, GIT_TOKEN). The
token is handed to git the way git itself asks for credentials: through a GIT_ASKPASS program,
which DVC's git libraries (scmrepo over dulwich, pygit2 or the git command) all use when a server
answers 401. A token spliced into the clone URL instead would surface in DVC's error messages,
its temporary-clone names and our logs; this way it lives only in the environment.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

TOKEN_ENV, USERNAME_ENV = "MIIPHER2_GIT_TOKEN", "MIIPHER2_GIT_USERNAME"
# Hosts accept any user name with a token (GitHub: x-access-token, GitLab: oauth2); one is needed.
DEFAULT_USERNAME = "git"

# Answers git's prompts from the environment: it holds no secret itself.
_ASKPASS = f"""#!/bin/sh
case "$1" in
  Username*) printf '%s\\n' "${{{USERNAME_ENV}:-{DEFAULT_USERNAME}}}" ;;
  *) printf '%s\\n' "${TOKEN_ENV}" ;;
esac
"""


@contextlib.contextmanager
def git_credentials() -> Iterator[bool]:
    """Within the block, git asks the environment's token for HTTPS credentials (yields True);
    without a token nothing changes (yields False)."""
    if not os.environ.get(TOKEN_ENV):
        yield False
        return
    with tempfile.TemporaryDirectory(prefix="miipher2-askpass-") as scratch:
        program = Path(scratch) / "askpass"
        program.write_text(_ASKPASS)
        program.chmod(stat.S_IRWXU)
        saved = {key: os.environ.get(key) for key in ("GIT_ASKPASS", "GIT_TERMINAL_PROMPT")}
        os.environ.update({"GIT_ASKPASS": str(program), "GIT_TERMINAL_PROMPT": "0"})
        _forget_cached_askpass()
        try:
            yield True
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            _forget_cached_askpass()


def _forget_cached_askpass() -> None:
    """scmrepo remembers the askpass program it found first (a cached property): look it up again."""
    with contextlib.suppress(ImportError):
        from scmrepo.git.credentials import memory_helper

        memory_helper.__dict__.pop("askpass", None)
