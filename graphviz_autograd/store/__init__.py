"""The run store: per-step training records in SQLite, written and read live (no torch).

``schema`` (files, tables, checks), ``chunks`` (packed statistics), ``writer``
(:class:`RunWriter`, one per rank) with ``buffer`` (what a flush takes), ``flusher`` (the
background thread), ``lock`` (one writer per store), ``files`` (creating a store) and ``wal``
(a deleted ``-wal``); ``reader`` (:class:`RankReader`) with ``connect`` (read-only media) and
``run`` (:class:`Run`, :func:`open_run`).
"""
from graphviz_autograd.store.reader import RankReader
from graphviz_autograd.store.run import Run, open_run
from graphviz_autograd.store.schema import (KINDS, STATS, STORE_GLOB, STORE_SCHEMA_VERSION,
                                            GraphVersion, Incident, Series, store_filename)
from graphviz_autograd.store.writer import RunWriter

__all__ = ["KINDS", "STATS", "STORE_GLOB", "STORE_SCHEMA_VERSION", "GraphVersion", "Incident", "RankReader",
           "Run", "RunWriter", "Series", "open_run", "store_filename"]
