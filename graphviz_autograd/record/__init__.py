"""Recording training: the :class:`Recorder` (owner of every hook it installs) and the
statistics it computes (``stats``, with the optional C extension ``_reduce``)."""

from graphviz_autograd.record.incidents import IncidentOptions  # noqa: E402  (torch-free)

__all__ = ["IncidentOptions"]
