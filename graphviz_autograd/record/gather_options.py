"""How a gathered run talks across ranks: :class:`GatherOptions` and the checks of
``Recorder(ranks=..., detail_ranks=...)`` (no torch, so it can be imported anywhere).

Example:
    >>> check_ranks(None, world=4) == GatherOptions()       # the default with several ranks
    True
    >>> check_ranks("each", world=4) is None
    True
"""
from __future__ import annotations

from dataclasses import dataclass

from graphviz_autograd.errors import ConfigError

MODES = ("gather", "each")


@dataclass(frozen=True)
class GatherOptions:
    """How a gathered run talks across ranks (``Recorder(ranks=GatherOptions(...))``).

    Attributes:
        timeout: seconds a recorder collective may wait for the other ranks (None: the
            timeout of the training's default process group, so the recorder never waits
            longer than training's own collectives would).
        join_timeout: seconds the ranks wait for each other when the Recorder is made; a rank
            left alone (e.g. a Recorder made on rank 0 only) records its own store instead.
        outlier_k: an outlier is beyond this many standard deviations of the other ranks
            (of ``sign(x) * log1p(|x|)``) ...
        outlier_ratio: ... and this many times their mean (or below it divided by this).
    """

    timeout: float | None = None
    join_timeout: float = 60.0
    outlier_k: float = 6.0
    outlier_ratio: float = 3.0


def check_ranks(ranks, world: int) -> GatherOptions | None:
    """``ranks=`` validated: GatherOptions when gathering (None: one store per rank)."""
    if ranks is None:
        ranks = "gather" if world > 1 else "each"
    if isinstance(ranks, GatherOptions):
        options = ranks
    elif isinstance(ranks, str) and ranks in MODES:
        options = GatherOptions() if ranks == "gather" else None
    else:
        raise ConfigError(f"ranks={ranks!r}: use 'gather' (one store on rank 0 with every rank's "
                          "spread, the default when distributed), 'each' (one store per rank) "
                          "or a GatherOptions")
    for name in ("timeout", "join_timeout", "outlier_k", "outlier_ratio"):
        value = getattr(options, name, 1.0)
        if value is None and name == "timeout":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"GatherOptions({name}={value!r}) must be a positive number of "
                              f"{'seconds' if 'timeout' in name else 'times'}")
    if options is not None and options.outlier_ratio <= 1:
        raise ConfigError(f"GatherOptions(outlier_ratio={options.outlier_ratio!r}) must be above 1")
    return options if world > 1 else None


def check_detail_ranks(detail_ranks, world: int) -> tuple[int, ...]:
    try:
        out = tuple(sorted(set(detail_ranks)))
    except TypeError:
        out = None
    if out is None or not all(isinstance(r, int) and not isinstance(r, bool) and 0 <= r < max(world, 1)
                              for r in out):
        raise ConfigError(f"detail_ranks={detail_ranks!r} must be ranks in [0, {max(world, 1)}), "
                          "e.g. detail_ranks=[0, 3]")
    return out
