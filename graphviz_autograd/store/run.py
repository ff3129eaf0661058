"""A run: one store per rank in a run directory, opened with :func:`open_run`.

Example:
    >>> run = open_run("runs/lenet")        # doctest: +SKIP
    >>> run.loss(), run.ranks               # doctest: +SKIP
    (Series(steps=[0, 1, ...], values=[2.30, ...]), [0])
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any


from graphviz_autograd.errors import RunNotFoundError, StoreError
from graphviz_autograd.store import spread
from graphviz_autograd.store.reader import RankReader, scan_ranks
from graphviz_autograd.store.schema import STORE_GLOB, Closing


class Run(Closing):
    """A run directory (or a single store file) holding one store per rank.

    Every query method of :class:`RankReader` (``run.loss()``, ``run.matrix(...)``, ...)
    works on a Run too and reads the lowest rank; :meth:`rank` gives the others.
    :attr:`path` is the run directory (or the file it was opened on).
    """

    def __init__(self, path: Path, single_file: bool = False) -> None:
        self.path = path
        self._single = single_file
        first = RankReader(path) if single_file else RankReader(next(iter(scan_ranks(path).values())))
        self._readers: dict[int, RankReader] = {first.rank: first}
        self._primary = first

    @property
    def ranks(self) -> list[int]:
        """Ranks with a store, ascending (rescanned, so late ranks appear)."""
        return list(self._readers) if self._single else list(scan_ranks(self.path))

    @property
    def meta(self) -> dict[str, Any]:
        """Meta of the lowest rank (rank 0 normally)."""
        return self._primary.meta

    @property
    def world_size(self) -> int:
        """Number of ranks the run was started with."""
        return int(self.meta.get("world_size", len(self.ranks)))

    def rank(self, r: int) -> RankReader:
        """Reader of rank ``r``. Raises StoreError listing the available ranks."""
        if r not in self._readers:
            files = {} if self._single else scan_ranks(self.path)
            if r not in files:
                raise StoreError(f"no rank {r} in {self.path}; available ranks: {self.ranks}")
            self._readers[r] = RankReader(files[r])
        return self._readers[r]

    def rank_spread(self, key: str, stat: str | None = None, kind: str = "param") -> spread.Spread:
        """``stat`` of ``key`` over the ranks, by recorded step: min, mean, max and the ranks
        holding the min and the max (``kind="scalar"`` for a logged scalar, without stat).

        Read from a gathered run's store, or computed from the ranks' stores of a run
        recorded with ``ranks="each"``.
        """
        if spread.is_gathered(self.meta):
            return self._primary.rank_spread(key, stat, kind)
        return spread.spread_from_ranks({r: self.rank(r) for r in self.ranks}, key, stat, kind)

    def close(self) -> None:
        """Close every open rank reader."""
        for reader in self._readers.values():
            reader.close()

    def __getattr__(self, name: str) -> Any:
        """The query methods of :class:`RankReader` (steps, series, matrix, ...), on the lowest rank."""
        if not name.startswith("_") and callable(getattr(RankReader, name, None)):
            return getattr(self._primary, name)
        raise AttributeError(f"'Run' object has no attribute {name!r}")

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | {n for n in dir(RankReader) if not n.startswith("_")})


def open_run(path: str | os.PathLike) -> Run:
    """Open a run for reading: a run directory, or one ``.gva.sqlite`` file.

    Raises:
        RunNotFoundError: No store at ``path``.
        SchemaVersionError: A store was written by a newer graphviz-autograd.
        StoreError: A store file is damaged or not a run store.
    """
    path = Path(path)
    if path.is_file():
        return Run(path, single_file=True)
    if not path.is_dir():
        raise RunNotFoundError(f"no run at {path}: it does not exist. Looked for a run directory "
                               f"holding {STORE_GLOB} files, or a single .gva.sqlite file")
    if not scan_ranks(path):
        raise RunNotFoundError(f"no run store in {path}: looked for {STORE_GLOB} files. Fix: pass "
                               f"the run directory the recorder wrote to")
    return Run(path)



