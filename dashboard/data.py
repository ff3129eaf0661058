"""Reading runs for the dashboard: open stores, laid-out scenes and per-step statistics, cached.

Nothing is read at import or construction; every method opens what it needs on
first use. Runs are looked up by name through :mod:`dashboard.runs` only.
"""
from __future__ import annotations

import bisect
import hashlib
import json
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

from graphviz_autograd.graph.model import Graph
from graphviz_autograd.store import STORE_GLOB, RankReader, Run, open_run

from . import fold
from .gradients import Heat, build_heat
from .graph_view import Scene, build_scene, elements_payload, fits_screen
from .runs import list_runs, resolve_run

HEAT_MAX_STEPS = 150           # more recorded steps than this: neighbours merge into one column
HEAT_MAX_ROWS = 32             # more parameters than this: grouped by module (problems stay alone)


class _LRU:
    """A small LRU cache; concurrent requests for one missing key compute it once."""

    def __init__(self, size: int):
        self.size, self.data = size, OrderedDict()
        self.lock = threading.Lock()
        self._busy: dict[Any, threading.Lock] = {}

    def has(self, key) -> bool:
        with self.lock:
            return key in self.data

    def get(self, key, make: Callable[[], Any]):
        with self.lock:
            if key in self.data:
                self.data.move_to_end(key)
                return self.data[key]
            busy = self._busy.setdefault(key, threading.Lock())
        with busy:
            with self.lock:
                if key in self.data:
                    return self.data[key]
            try:
                value = make()
            finally:
                with self.lock:
                    self._busy.pop(key, None)
            with self.lock:
                self.data[key] = value
                while len(self.data) > self.size:
                    self.data.popitem(last=False)
        return value


def folded_set(graph: Graph, state: dict | None, auto_max: int = fold.AUTO_MAX_NODES,
               auto: Callable[[Graph], frozenset[str]] | None = None) -> frozenset[str]:
    """Module paths to fold for a FOLDED store value on ``graph`` (``auto``: how the "auto" mode
    folds; by default :func:`dashboard.fold.auto_fold` to ``auto_max`` nodes)."""
    state = state or {}
    mode = state.get("mode", "auto")
    if mode == "none":
        return frozenset()
    if mode == "all":
        return fold.modules_at_depth(graph, 0)
    if mode == "paths":
        return frozenset(p for p in state.get("paths", ()) if isinstance(p, str)) & fold.all_modules(graph)
    return auto(graph) if auto is not None else fold.auto_fold(graph, auto_max)


def _digest(items) -> str:
    return hashlib.sha1("\x1f".join(sorted(items)).encode()).hexdigest()[:10]


class DataSource:
    """Every read the dashboard does, for the runs under ``runs_root``."""

    def __init__(self, runs_root: str | Path, *, auto_max_nodes: int = fold.AUTO_MAX_NODES,
                 layout_engine: str = "auto"):
        self.root = Path(runs_root)
        self.auto_max_nodes = auto_max_nodes
        self.layout_engine = layout_engine
        self._runs: dict[str, tuple[Run, tuple]] = {}
        self._generation: dict[str, int] = {}
        self._lock = threading.Lock()
        self._scenes = _LRU(24)
        self._warmed: set[tuple[str, int | None]] = set()
        self._keys: dict[str, tuple[str, int, int, frozenset[str]]] = {}
        self._memo = _LRU(256)
        self._folds = _LRU(64)         # folded module sets: cheap to keep, slow to find (layouts)

    # -- runs ------------------------------------------------------------------
    def run_names(self) -> list[str]:
        return list_runs(self.root)

    def run(self, name: str) -> Run:
        """The open run called ``name`` (KeyError if the root does not list it).

        A run written again in the same directory (``overwrite=True``) replaces its store
        files: the new files are noticed (by inode) and reopened, and cached answers dropped.
        """
        with self._lock:
            cached = self._runs.get(name)
        if cached is not None:
            run, ident = cached
            if _identity(run.path) == ident:
                return run
            with self._lock:
                if self._runs.get(name) is cached:
                    del self._runs[name]
                    self._generation[name] = self._generation.get(name, 0) + 1
            run.close()
        path = resolve_run(self.root, name)
        ident = _identity(path)
        run = open_run(path)
        with self._lock:
            return self._runs.setdefault(name, (run, ident))[0]

    def _gen(self, name: str) -> int:
        return self._generation.get(name, 0)

    def reader(self, name: str, rank: int | None) -> RankReader:
        run = self.run(name)
        return run.rank(rank if rank is not None else run.ranks[0])

    def close(self) -> None:
        with self._lock:
            for run, _ident in self._runs.values():
                run.close()
            self._runs.clear()

    def summary(self, name: str, rank: int | None) -> dict:
        """What the run holds now (the LATEST store): steps, graph versions, scalars, ranks."""
        run = self.run(name)
        reader = self.reader(name, rank)
        latest = reader.latest_step()
        steps = self._memo.get(("steps", name, self._gen(name), reader.rank, latest), reader.steps)
        versions = [[v.version, v.first_step, v.n_nodes] for v in reader.graph_versions()]
        return {"run": name, "rank": reader.rank, "ranks": run.ranks, "world": run.world_size,
                "first": steps[0] if steps else None, "latest": latest, "n_steps": len(steps),
                "versions": versions, "scalars": reader.scalar_names(),
                "model": str(run.meta.get("model", ""))}

    # -- graphs and scenes -------------------------------------------------------
    def graph(self, name: str, rank: int | None, version: int) -> Graph:
        return self.reader(name, rank).graph(version)

    def version_at(self, name: str, rank: int | None, step: int | None) -> int | None:
        reader = self.reader(name, rank)
        if step is None:
            versions = reader.graph_versions()
            return versions[-1].version if versions else None
        version = reader.version_at(step)
        if version is None:              # before the first recorded graph: show the first one
            versions = reader.graph_versions()
            version = versions[0].version if versions else None
        return version

    def scene(self, name: str, rank: int | None, version: int,
              fold_state: dict | None) -> tuple[str, Scene]:
        """``(key, scene)`` of a graph version with modules folded per ``fold_state`` (the
        FOLDED store's value)."""
        reader = self.reader(name, rank)
        fingerprint = next((v.fingerprint for v in reader.graph_versions() if v.version == version),
                           str(version))
        graph = reader.graph(version)
        folded = self.folded(graph, fingerprint, fold_state)
        key = f"{name}|{reader.rank}|v{version}|{fingerprint}|{_digest(folded)}"
        scene = self._scene(graph, fingerprint, folded)
        with self._lock:
            self._keys[key] = (name, reader.rank, version, folded)
        return key, scene

    def _scene(self, graph: Graph, fingerprint: str, folded: frozenset[str]) -> Scene:
        return self._scenes.get(("scene", fingerprint, folded),
                                lambda: build_scene(fold.fold(graph, folded), self.layout_engine))

    def folded(self, graph: Graph, fingerprint: str, fold_state: dict | None) -> frozenset[str]:
        """The module paths folded for ``fold_state`` on ``graph`` (cached per graph)."""
        return self._folds.get((fingerprint, json.dumps(fold_state, sort_keys=True)),
                               lambda: folded_set(graph, fold_state, self.auto_max_nodes,
                                                  lambda g: self.auto_folded(g, fingerprint)))

    def auto_folded(self, graph: Graph, fingerprint: str) -> frozenset[str]:
        """What a graph opens with: the least folding (of :data:`fold.AUTO_BUDGETS`, at most
        ``auto_max_nodes`` boxes) whose layout fits a laptop screen at a readable zoom."""
        if len(graph) <= fold.AUTO_KEEP_NODES:
            return frozenset()               # small graphs are shown whole, however they fit
        budgets = [b for b in fold.AUTO_BUDGETS if b < self.auto_max_nodes] or [self.auto_max_nodes]
        if self.auto_max_nodes not in budgets:
            budgets.insert(0, self.auto_max_nodes)
        folded = frozenset()
        for budget in budgets:
            folded = fold.auto_fold(graph, budget)
            if fits_screen(self._scene(graph, fingerprint, folded)):
                break
        return folded

    def prewarm(self, name: str, rank: int | None, fold_state: dict | None) -> None:
        """Lay out the latest graph of a run in the background (once per run and rank; None is
        its first rank), before the browser asks."""
        try:
            rank = self.reader(name, rank).rank
        except Exception:  # noqa: BLE001 - only a head start; the callbacks report errors
            return
        with self._lock:
            if (name, rank) in self._warmed:
                return
            self._warmed.add((name, rank))

        def work() -> None:
            try:
                version = self.version_at(name, rank, None)
                if version is not None:
                    self.scene_json(self.scene(name, rank, version, fold_state)[0])
                self.heat(name, rank)     # reads every layer's history: slow on a cold disk
            except Exception:  # noqa: BLE001 - only a head start; the callback reports errors
                pass
        threading.Thread(target=work, name="gva-prewarm", daemon=True).start()

    def scene_for_key(self, key: str | None) -> Scene | None:
        """The scene the browser shows, from its GRAPH_KEY (None when unknown or malformed)."""
        with self._lock:
            known = self._keys.get(key) if isinstance(key, str) else None
        if known is None:
            return None
        name, rank, version, folded = known
        try:
            reader = self.reader(name, rank)
            graph = reader.graph(version)
            fingerprint = parse_key(key)[3]
        except Exception:  # noqa: BLE001 - the run went away or is unreadable
            return None
        return self._scene(graph, fingerprint, folded)

    def scene_json(self, key: str) -> bytes | None:
        """The elements of ``key`` as JSON bytes (cached with the scene), or None."""
        scene = self.scene_for_key(key)
        if scene is None:
            return None
        if scene.json is None:
            scene.json = json.dumps(elements_payload(scene), separators=(",", ":")).encode()
        return scene.json

    def cached(self, key, make: Callable[[], Any]):
        """Cache ``make()`` among the scenes (for scenes built elsewhere, e.g. version diffs)."""
        return self._scenes.get(key, make)

    # -- statistics --------------------------------------------------------------
    def recorded_steps(self, name: str, rank: int | None) -> list[int]:
        """Steps that carry statistics (the recorder writes them every ``every`` steps)."""
        reader = self.reader(name, rank)
        latest = reader.latest_step()

        def make() -> list[int]:
            params = reader.keys("param")
            if params:
                return reader.param_series(params[0], "param_norm").steps or \
                    reader.param_series(params[0], "grad_norm").steps
            nodes = reader.keys("node")
            return reader.node_series(nodes[0], "grad_norm").steps if nodes else []
        return self._memo.get(("recorded", name, self._gen(name), reader.rank, latest), make)

    def stats_step(self, name: str, rank: int | None, step: int | None) -> int | None:
        """The last step with statistics at or before ``step`` (the first one if none is before)."""
        recorded = self.recorded_steps(name, rank)
        if not recorded or step is None:
            return recorded[-1] if recorded else None
        i = bisect.bisect_right(recorded, step)
        return recorded[i - 1] if i else recorded[0]

    def stats_at(self, name: str, rank: int | None, step: int, kind: str,
                 stats: tuple[str, ...]) -> dict[str, dict[str, float]]:
        """``{stat: {key: value}}`` at ``step`` for keys of ``kind``, cached."""
        reader = self.reader(name, rank)
        keys = {stat: ("at", name, self._gen(name), reader.rank, step, kind, stat) for stat in stats}
        missing = tuple(stat for stat in stats if not self._memo.has(keys[stat]))
        if missing:                     # one query for all of them
            for stat, table in reader.stats_table_at(step, kind, missing).items():
                self._memo.get(keys[stat], lambda t=table: t)
        return {stat: self._memo.get(keys[stat], lambda s=stat: reader.stats_at(step, kind, s))
                for stat in stats}

    def key_stats_at(self, name: str, rank: int | None, step: int, kind: str, key: str,
                     stats: tuple[str, ...]) -> dict[str, float | None]:
        table = self.stats_at(name, rank, step, kind, stats)
        return {stat: table[stat].get(key) for stat in stats}

    def heat(self, name: str, rank: int | None, stat: str = "grad_norm") -> Heat:
        """``stat`` of every parameter over every recorded step, arranged for the heat map
        (:func:`dashboard.gradients.build_heat`: columns merged, never dropped, past
        HEAT_MAX_STEPS; rows grouped by module past HEAT_MAX_ROWS; problems first)."""
        reader = self.reader(name, rank)
        latest = reader.latest_step()

        def make() -> Heat:
            # A connection of its own: this reads every parameter's history (seconds on a cold
            # disk) and must not hold up the shared reader the interactive callbacks use.
            with RankReader(reader.path) as own:
                series = {key: tuple(own.param_series(key, stat)) for key in own.keys("param")}
            recorded = self.recorded_steps(name, rank)
            return build_heat(series, recorded, max_cols=HEAT_MAX_STEPS, max_rows=HEAT_MAX_ROWS)
        return self._memo.get(("heat", name, self._gen(name), reader.rank, stat, latest), make)


def _identity(run_dir: Path) -> tuple:
    """Which store files a run directory holds now: (name, inode) of each rank file."""
    try:
        return tuple(sorted((f.name, f.stat().st_ino) for f in Path(run_dir).glob(STORE_GLOB)))
    except OSError:
        return ()


def parse_key(key: object) -> tuple[str, int, int, str, str] | None:
    """Split a GRAPH_KEY ``run|rank|v<version>|fingerprint|digest``."""
    if not isinstance(key, str):
        return None
    parts = key.rsplit("|", 4)
    if len(parts) != 5 or not parts[2].startswith("v"):
        return None
    try:
        return parts[0], int(parts[1]), int(parts[2][1:]), parts[3], parts[4]
    except ValueError:
        return None
