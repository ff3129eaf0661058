"""Old import path of the diagnosis (``from graphviz_autograd.diagnose import diagnose``).

The package is ``graphviz_autograd.diagnosis``; ``ga.diagnose`` is the function. This
module stays for code written against the old path, and is itself callable, so
``ga.diagnose(...)`` keeps working even after something imported this module (which
makes Python bind the module, not the function, to ``ga.diagnose``).
"""
from __future__ import annotations

import sys
import types

from graphviz_autograd.diagnosis import Diagnosis, Finding, FindingKind, LayerStats, Severity  # noqa: F401
from graphviz_autograd.diagnosis.core import diagnose


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs):
        return diagnose(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
