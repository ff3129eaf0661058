"""How the optimizer changes a parameter at each step, as text (no torch: the dashboard
shows it in a parameter node's details, next to the forward and gradient rule of ops).

``g`` is the parameter's gradient ∂L/∂w after ``backward()``; numbers come from the
optimizer's settings when the run stored them (``meta["optimizer_settings"]``, a
dict like ``optimizer.defaults``), else the rule is written with their names.

Example:
    >>> title, lines = update_rule("SGD", {"lr": 0.01, "momentum": 0.9}, param="fc1.weight")
    >>> title
    'SGD with momentum: how optimizer.step() changes fc1.weight'
    >>> lines[0]
    'g = ∂L/∂fc1.weight (what backward() left in .grad)'
    >>> lines[1:]
    ('b ← 0.9 · b + g   (b = g at the first step: the velocity, a running sum of gradients)', 'fc1.weight ← fc1.weight − 0.01 · b')
"""
from __future__ import annotations

def _num(settings: dict, key: str, name: str | None = None) -> str:
    """The setting as a short number, or its name when the run did not store it."""
    value = settings.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return name or key
    return f"{float(value):g}"


def update_rule(optimizer: str | None, settings: dict | None = None,
                param: str = "w") -> tuple[str, tuple[str, ...]] | None:
    """``(title, lines)`` of the update ``optimizer.step()`` applies to ``param``.

    Args:
        optimizer: the optimizer's class name (``"SGD"``, ``"Adam"``, ``"AdamW"``, ...).
        settings: its hyper-parameters (``optimizer.defaults``); missing ones are named.
        param: how to call the parameter in the text.

    Returns:
        None for an unknown optimizer (or None).
    """
    if not optimizer:
        return None
    s = dict(settings or {})
    w, lr = param, _num(s, "lr")
    grad = f"g = ∂L/∂{w} (what backward() left in .grad)"
    decay = s.get("weight_decay", 0) or 0
    decay_line = (f"g ← g + {_num(s, 'weight_decay')} · {w}   (weight_decay: L2 on {w})"
                  if decay else None)
    if optimizer == "SGD":
        momentum = s.get("momentum", 0) or 0
        if not momentum and "momentum" in s:
            lines = [grad, decay_line, f"{w} ← {w} − {lr} · g"]
            return f"SGD: how optimizer.step() changes {w}", _clean(lines)
        if not momentum:        # settings unknown: plain SGD, and what momentum adds
            lines = [grad, f"{w} ← {w} − lr · g",
                     "(with momentum: b ← momentum · b + g, then {w} ← {w} − lr · b)".format(w=w)]
            return f"SGD: how optimizer.step() changes {w}", tuple(lines)
        m = _num(s, "momentum")
        damp = s.get("dampening", 0) or 0
        step = f"(1 − {_num(s, 'dampening')}) · g" if damp else "g"
        lines = [grad, decay_line,
                 f"b ← {m} · b + {step}   (b = g at the first step: the velocity, a running sum "
                 "of gradients)"]
        if s.get("nesterov"):
            lines += [f"g ← g + {m} · b   (Nesterov: look ahead along the velocity)",
                      f"{w} ← {w} − {lr} · g"]
        else:
            lines.append(f"{w} ← {w} − {lr} · b")
        return f"SGD with momentum: how optimizer.step() changes {w}", _clean(lines)
    if optimizer in ("Adam", "AdamW"):
        betas = s.get("betas")
        b1, b2 = (f"{float(betas[0]):g}", f"{float(betas[1]):g}") if isinstance(
            betas, (list, tuple)) and len(betas) == 2 else ("β1", "β2")
        eps = _num(s, "eps", "ε")
        lines = [grad]
        if optimizer == "AdamW" and decay:
            lines.append(f"{w} ← {w} − {lr} · {_num(s, 'weight_decay')} · {w}   (decoupled weight decay)")
        elif decay:
            lines.append(decay_line)
        lines += [f"m ← {b1} · m + (1 − {b1}) · g   (running mean of gradients)",
                  f"v ← {b2} · v + (1 − {b2}) · g²   (running mean of squared gradients)",
                  f"m̂ = m / (1 − {b1}^t),  v̂ = v / (1 − {b2}^t)   (t: the step count)",
                  f"{w} ← {w} − {lr} · m̂ / (√v̂ + {eps})   (each element's step is about {lr})"]
        return f"{optimizer}: how optimizer.step() changes {w}", _clean(lines)
    return (f"{optimizer}: how optimizer.step() changes {w}",
            (grad, f"{w} ← {w} − (a step {optimizer} computes from g and its state)"))


def rule_from_meta(meta: dict, param: str = "w") -> tuple[str, tuple[str, ...]] | None:
    """:func:`update_rule` for a run's metadata (``run.meta``): its ``optimizer`` and, when
    stored, ``optimizer_settings``."""
    settings = meta.get("optimizer_settings")
    return update_rule(meta.get("optimizer"), settings if isinstance(settings, dict) else None,
                       param)


def _clean(lines) -> tuple[str, ...]:
    return tuple(line for line in lines if line)
