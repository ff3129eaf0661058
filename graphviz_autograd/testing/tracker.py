"""Recording every gradient the parameters get while a test runs."""
from __future__ import annotations

import math

from graphviz_autograd.errors import GradientFlowError


class GradientTracker:
    """Records the gradient norm of each trainable parameter every time one is computed.

    Hooks go on the parameters themselves (``Tensor.register_hook``); the tracker
    owns them and :meth:`close` removes them (the ``gradient_tracker`` fixture
    does it at teardown; or use ``with GradientTracker(model) as t:``).

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(2, 1)
        >>> with GradientTracker(net) as tracker:
        ...     net(torch.ones(3, 2)).sum().backward()
        >>> tracker.missing(), len(tracker.norms["weight"])
        ([], 1)
    """

    def __init__(self, model):
        self.model = model
        self.norms: dict[str, list[float]] = {}
        self._handles: list = []

    def start(self) -> "GradientTracker":
        import torch

        try:
            for name, p in self.model.named_parameters():
                if p.requires_grad:
                    self.norms.setdefault(name, [])
                    self._handles.append(p.register_hook(
                        lambda g, _n=name: self._record(_n, g, torch)))
        except BaseException:
            self.close()
            raise
        return self

    def _record(self, name: str, grad, torch) -> None:
        with torch.no_grad():
            self.norms[name].append(float(torch.linalg.vector_norm(grad.double())))

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def __enter__(self) -> "GradientTracker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def missing(self) -> list[str]:
        """Trainable parameters that never got a gradient while tracked."""
        return [n for n, v in self.norms.items() if not v]

    def zero(self) -> list[str]:
        """Parameters that got gradients, all exactly zero (no gradient, in effect)."""
        return [n for n, v in self.norms.items() if v and all(x == 0.0 for x in v)]

    def nonfinite(self) -> list[str]:
        """Parameters that got a NaN/Inf gradient at least once."""
        return [n for n, v in self.norms.items() if not all(math.isfinite(x) for x in v)]

    def last(self) -> dict[str, float]:
        """The latest gradient norm of each parameter that got one."""
        return {n: v[-1] for n, v in self.norms.items() if v}

    def assert_all_received(self) -> None:
        """Fail naming each trainable parameter that never got a gradient, or only gradients
        that were exactly zero everywhere (as ``assert_gradients_flow`` does)."""
        __tracebackhide__ = True
        missing, zero = self.missing(), self.zero()
        if missing or zero:
            parts = []
            if missing:
                parts.append(f"never got a gradient: {_listed(missing)}")
            if zero:
                parts.append(f"only got gradients that are exactly zero everywhere: {_listed(zero)}")
            raise GradientFlowError(
                f"{len(missing) + len(zero)} of {len(self.norms)} trainable parameters of "
                f"{type(self.model).__name__} while tracked: " + "; ".join(parts)
                + ". Use assert_gradients_flow(model, inputs=x) to see where their path to the "
                "loss breaks or what zeroes it (dead ReLUs, a zero scale).")


def _listed(names: list[str]) -> str:
    return ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
