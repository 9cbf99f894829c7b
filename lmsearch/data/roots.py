"""Where datasets are looked for: an explicit root, else ``$LMSEARCH_DATA``, else a dataset's default."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ENV_VAR", "search_roots", "default_download_root"]

ENV_VAR = "LMSEARCH_DATA"


def search_roots(root: str | os.PathLike | None, default: str | os.PathLike | None = None) -> list[Path]:
    """Folders to look in, in order: ``root`` alone when given; else ``$LMSEARCH_DATA``, then ``default``."""
    if root is not None:
        return [Path(root).expanduser()]
    roots = []
    env = os.environ.get(ENV_VAR)
    if env:
        roots.append(Path(env).expanduser())
    if default is not None:
        roots.append(Path(default))
    return roots


def default_download_root() -> Path:
    """Where a download goes when no root is given: ``$LMSEARCH_DATA`` or ``~/.cache/lmsearch/data``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "lmsearch" / "data"
