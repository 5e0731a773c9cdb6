"""Confining the files a launched job may read to the configured roots.

A model or dataset that is not a preset name is a path. It must not contain
``..``; relative paths are taken from the first root; after following
symlinks it must exist inside one of the roots (so a link inside a root
that points elsewhere is refused). The checked absolute path is what the
worker gets, so it cannot be swapped for another between check and use by
editing the request.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from backend.errors import Invalid


def confine(value: str, roots: Sequence[Path], field: str, env_var: str) -> Path:
    """The real path of ``value`` inside one of ``roots``; raise Invalid naming ``field``."""
    loc = ("body", field)
    where = ", ".join(str(r) for r in roots)
    if "\x00" in value:
        raise Invalid.at(loc, "contains a NUL character")
    path = Path(value).expanduser()
    if ".." in path.parts:
        raise Invalid.at(loc, f"{value!r} contains '..'; give a path inside {where}")
    candidate = path if path.is_absolute() else roots[0] / path
    try:
        real = candidate.resolve(strict=True)
    except (OSError, RuntimeError):
        raise Invalid.at(
            loc,
            f"{value!r} is neither a preset nor an existing path under {where} "
            f"(roots come from {env_var})",
        ) from None
    for root in roots:
        if real.is_relative_to(root.resolve()):
            return real
    raise Invalid.at(
        loc,
        f"{value!r} resolves to {real}, outside the allowed roots {where}; "
        f"move it there or add its folder to {env_var}",
    )
