"""``graphviz-autograd train`` and ``demo`` (being built)."""
from __future__ import annotations
