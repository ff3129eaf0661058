"""Which runs the dashboard may open: directories under the runs root, found by listing it.

A name coming from the browser is never turned into a path directly: it must be
one of the names :func:`list_runs` returns, and those are built only from what
the root holds (no ``..``, no absolute paths, no symlink leading out of the root).
"""
from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

MAX_DEPTH = 3                      # runs/<group>/<sub>/<run> at most
_STORE = re.compile(r"^rank-\d+\.gva\.sqlite$")
ROOT_NAME = "."                    # the root itself is a run directory


def _inside(path: Path, real_root: Path) -> bool:
    try:
        return Path(os.path.realpath(path)).is_relative_to(real_root)
    except OSError:
        return False


def _reason(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def _store_files(directory: Path, real_root: Path,
                 skipped: list[tuple[str, str]] | None = None, name: str = "") -> list[Path] | None:
    """The rank store files of ``directory``; None when it holds none or one leads outside.

    A store file that cannot be a store (a directory, a symlink loop, a dangling link) is
    noted in ``skipped`` as ``(name, why)``.
    """
    try:
        entries = [e for e in os.scandir(directory) if _STORE.match(e.name)]
    except OSError:
        return None
    files = [Path(e.path) for e in entries]
    if not files or not all(_inside(f, real_root) for f in files):
        return None
    for f in files:
        try:
            os.stat(f)
        except OSError as exc:
            if skipped is not None:
                skipped.append((f"{name}/{f.name}".lstrip("/"), _reason(exc)))
            return None
        if not f.is_file():
            if skipped is not None:
                skipped.append((f"{name}/{f.name}".lstrip("/"), "not a file"))
            return None
    return files


def scan_runs(root: str | os.PathLike) -> tuple[list[str], list[tuple[str, str]]]:
    """``(run names, skipped)`` under ``root``: names as :func:`list_runs` gives them, and the
    entries that could not be read as ``(relative path, why)`` (a symlink loop, a dangling
    link, a directory where a store file belongs, a directory that cannot be listed)."""
    root = Path(root)
    skipped: list[tuple[str, str]] = []
    if not root.is_dir():
        return [], skipped
    real_root = Path(os.path.realpath(root))
    found: list[str] = []
    if _store_files(root, real_root, skipped, ""):
        found.append(ROOT_NAME)
    stack: list[tuple[Path, tuple[str, ...]]] = [(root, ())]
    while stack:
        directory, parts = stack.pop()
        if len(parts) >= MAX_DEPTH:
            continue
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            if parts:
                skipped.append(("/".join(parts), _reason(exc)))
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            sub = (*parts, entry.name)
            try:
                is_dir = entry.is_dir()
                if not is_dir and entry.is_symlink():
                    os.stat(entry.path)           # a link to a file is not a run: no error
            except OSError as exc:
                skipped.append(("/".join(sub), _reason(exc)))
                continue
            if not is_dir:
                continue
            path = Path(entry.path)
            if not _inside(path, real_root):
                continue            # a symlink out of the root
            if _store_files(path, real_root, skipped, "/".join(sub)):
                found.append("/".join(sub))
            stack.append((path, sub))
    return sorted(found), sorted(set(skipped))


def list_runs(root: str | os.PathLike) -> list[str]:
    """Run names under ``root`` (POSIX relative paths, sorted); ``"."`` when root is a run.
    Entries that cannot be read are left out (:func:`scan_runs` says which and why)."""
    return scan_runs(root)[0]


def is_safe_name(name: object) -> bool:
    """Shape check before any lookup: relative, no ``..``, no backslashes or NULs."""
    if not isinstance(name, str) or not name or len(name) > 1024:
        return False
    if name == ROOT_NAME:
        return True
    if "\\" in name or "\x00" in name or name.startswith("/"):
        return False
    parts = PurePosixPath(name).parts
    return all(p not in ("", ".", "..") for p in parts)


def resolve_run(root: str | os.PathLike, name: object) -> Path:
    """The directory of run ``name``; KeyError unless the root listing holds that name."""
    if not is_safe_name(name) or name not in list_runs(root):
        raise KeyError(f"no run named {name!r} under {root}")
    return Path(root) if name == ROOT_NAME else Path(root).joinpath(*str(name).split("/"))


def newest_run(root: str | os.PathLike, names: list[str] | None = None) -> str | None:
    """The run whose store files changed last (the one probably still training)."""
    names = list_runs(root) if names is None else names
    best, best_time = None, -1.0
    for name in names:
        directory = Path(root) if name == ROOT_NAME else Path(root).joinpath(*name.split("/"))
        try:
            mtime = max(f.stat().st_mtime for f in directory.iterdir() if _STORE.match(f.name)
                        or f.name.endswith(".gva.sqlite-wal"))
        except (OSError, ValueError):
            continue
        if mtime > best_time:
            best, best_time = name, mtime
    return best
