"""The one gate every callback request passes: body size, JSON depth, request shape and the type
of every callback input, checked before Dash sees the request.

A bad request is answered ``413`` (too big) or ``400`` (JSON ``{"error": ...}`` naming the input,
the value and the fix) instead of reaching a callback and ending as HTTP 500. Values of the right
type but naming nothing (an unknown run, a rank or step that does not exist) pass: the callbacks
answer them with a visible message. Inputs not listed in :data:`INPUTS` are only size- and
depth-checked.

Example:
    >>> check_inputs([{"id": "gva-rank", "property": "value", "value": [0]}])
    'input gva-rank.value is [0]; it must be an integer from 0 to 2147483647 or null. Fix: reload the page'
    >>> check_inputs([{"id": "gva-rank", "property": "value", "value": 1}]) is None
    True
"""
from __future__ import annotations

import io
import json
import math
from typing import Callable, Iterable

MAX_BODY = 8 * 2**20            # bytes of one request body (a 1 MB metric name travels twice)
MAX_DEPTH = 40                  # nesting of a callback request (Dash's own use is under 10)
CALLBACK_PATH = "/_dash-update-component"
BIG = 2**53                     # integers past this are not exact in the browser

Check = Callable[[object], bool]


# -- value checks: each a predicate with a ``what`` (how it reads in a message) ------------
def _check(what: str, test: Check) -> Check:
    test.what = what
    return test


def opt(check: Check) -> Check:
    return _check(f"{check.what} or null", lambda v: v is None or check(v))


def integer(lo: int = -BIG, hi: int = BIG) -> Check:
    return _check(f"an integer from {lo} to {hi}",
                  lambda v: type(v) is int and lo <= v <= hi)


def number(lo: float = -BIG, hi: float = BIG) -> Check:
    return _check(f"a finite number from {lo} to {hi}",
                  lambda v: type(v) in (int, float) and math.isfinite(v) and lo <= v <= hi)


def one_of(*values: str) -> Check:
    return _check("one of " + ", ".join(map(json.dumps, values)), lambda v: v in values)


def text(most: int = MAX_BODY) -> Check:
    return _check("a string" + (f" of at most {most} characters" if most < MAX_BODY else ""),
                  lambda v: isinstance(v, str) and len(v) <= most)


def boolean() -> Check:
    return _check("true or false", lambda v: type(v) is bool)


def anything() -> Check:
    return _check("any JSON value", lambda v: True)


def list_of(check: Check, most: int = 100_000) -> Check:
    return _check(f"a list of {check.what.split(' or null')[0]}",
                  lambda v: isinstance(v, list) and len(v) <= most and all(check(x) for x in v))


def record(required: dict[str, Check] | None = None, optional: dict[str, Check] | None = None) -> Check:
    """A JSON object with these keys (others are allowed: stores grow new fields)."""
    required, optional = required or {}, optional or {}
    names = ", ".join([*required, *(f"{k}?" for k in optional)])

    def test(v) -> bool:
        return (isinstance(v, dict) and all(k in v and c(v[k]) for k, c in required.items())
                and all(c(v[k]) for k, c in optional.items() if k in v))
    return _check(f"an object {{{names}}}" if names else "an object", test)


STEP = number()
RANK = integer(0, 2**31 - 1)
COUNT = opt(integer(0, BIG))
NAME = text()
LATEST = record({"run": NAME, "rank": RANK, "first": opt(integer()), "latest": opt(integer()),
                 "scalars": list_of(NAME)},
                {"ranks": list_of(RANK), "world": opt(integer(0, 2**31)), "n_steps": integer(0, BIG),
                 "versions": list_of(list_of(opt(integer()), 8)), "model": NAME})
POINTS = list_of(record(optional={"x": opt(number()), "y": opt(number())}), 1_000_000)
PLOT_EVENT = record(optional={"points": opt(POINTS),
                              "range": opt(record(optional={"x": opt(list_of(number(), 2))}))})
OPTIONS = list_of(record(optional={"label": anything(), "value": anything()}))

# ``"<component id>.<property>"`` -> what it must be (the browser sends nothing else)
INPUTS: dict[str, Check] = {
    "gva-run.value": opt(text(4096)), "gva-runs.value": opt(list_of(text(4096), 64)),
    "gva-rank.value": opt(RANK), "gva-rank-a.value": opt(RANK), "gva-rank-b.value": opt(RANK),
    "gva-latest.data": opt(LATEST),
    "gva-step.data": opt(record(optional={"step": opt(STEP), "follow": opt(boolean()),
                                          "run": opt(NAME)})),
    "gva-step-slider.value": opt(STEP),
    "gva-picked.data": opt(record(optional={"step": opt(STEP), "at": opt(number(0, 1e12))})),
    "gva-loss.clickData": opt(PLOT_EVENT), "gva-loss.selectedData": opt(PLOT_EVENT),
    "gva-metrics.clickData": opt(PLOT_EVENT), "gva-metrics.selectedData": opt(PLOT_EVENT),
    "gva-interval.n_intervals": COUNT, "gva-mount-timer.n_intervals": COUNT,
    "gva-fit.n_clicks": COUNT, "gva-fold-all.n_clicks": COUNT, "gva-fold-toggle.n_clicks": COUNT,
    "gva-unfold-all.n_clicks": COUNT, "gva-search.n_submit": COUNT,
    "gva-live.value": opt(list_of(text(64), 8)), "gva-location.search": opt(text(65536)),
    "gva-metric.value": opt(text(200)), "gva-cmp-kind.value": opt(one_of("param", "node", "module")),
    "gva-cmp-stat.value": opt(text(200)), "gva-rank-stat.value": opt(text(200)),
    "gva-cmp-key.value": opt(NAME), "gva-scalars.value": opt(list_of(NAME)),
    "gva-version-a.value": opt(integer()), "gva-version-b.value": opt(integer()),
    "gva-selected.data": opt(NAME), "gva-graph-key.data": opt(NAME),
    "gva-graph.tapNodeData": opt(record(optional={"id": opt(NAME)})),
    "gva-search.value": opt(text(10_000)),
    "gva-search-result.data": opt(record(optional={
        "ids": opt(list_of(NAME)), "focus": opt(NAME), "index": opt(integer(0, BIG)),
        "query": opt(NAME), "key": opt(NAME), "target": opt(NAME)})),
    "gva-folded.data": opt(record(optional={"mode": opt(text(16)), "paths": opt(list_of(NAME))})),
    "gva-mounted.data": opt(boolean()), "gva-painted.data": opt(anything()),
    "gva-run.options": opt(OPTIONS), "gva-rank.options": opt(OPTIONS), "gva-runs.options": opt(OPTIONS),
    "gva-diff-graph.layout": opt(record()),
    "gva-spread-key.value": opt(NAME), "gva-spread-fig.clickData": opt(PLOT_EVENT),
    "gva-spread-stat.value": opt(text(200)),
    "gva-incident-chosen.data": opt(record(optional={
        "index": opt(integer(0, BIG)), "run": opt(NAME), "step": opt(STEP),
        "nodes": opt(list_of(NAME))})),
    "gva-outlined.data": opt(record(optional={
        "target": opt(NAME), "ids": opt(list_of(NAME)), "key": opt(NAME), "step": opt(STEP)})),
    # pattern-matched ids (a dict id): checked by the callback itself (an index into its rows)
    '{"index":["ALL"],"type":"gva-incident"}.n_clicks': opt(list_of(opt(COUNT))),
}


def _shown(value: object, most: int = 60) -> str:
    s = json.dumps(value)
    return s if len(s) <= most else s[:most] + f"… ({len(s)} characters)"


def check_inputs(items: Iterable[object]) -> str | None:
    """The first input (``{"id", "property", "value"}``) that is not what the page sends, as a
    message naming it, the value and the fix; None when all are fine."""
    for item in items:
        if isinstance(item, list):      # a pattern-matched input (ALL): one entry per component
            problem = _check_pattern(item)
            if problem is not None:
                return problem
            continue
        if not isinstance(item, dict) or "id" not in item or not isinstance(item.get("property"), str):
            return f"callback input {_shown(item)} is not {{id, property, value}}. Fix: reload the page"
        key = f"{item['id']}.{item['property']}" if isinstance(item["id"], str) else None
        check = INPUTS.get(key)
        if check is not None and not check(item.get("value")):
            return (f"input {key} is {_shown(item.get('value'))}; it must be {check.what}. "
                    "Fix: reload the page")
    return None


def _check_pattern(items: list) -> str | None:
    if len(items) > 10_000 or not all(isinstance(i, dict) and not isinstance(i.get("id"), str)
                                      for i in items):
        return f"callback input {_shown(items)} is not a list of pattern inputs. Fix: reload the page"
    return check_inputs(items)


def depth_over(value: object, most: int = MAX_DEPTH) -> bool:
    """True when ``value`` nests lists and objects more than ``most`` deep (no recursion)."""
    stack = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, (list, dict)):
            if depth > most:
                return True
            stack.extend((x, depth + 1) for x in (v.values() if isinstance(v, dict) else v))
    return False


def check_request(body: bytes) -> str | None:
    """Why a callback request body cannot be a callback request (None when it can)."""
    try:
        request = json.loads(body)
    except RecursionError:
        return f"the request nests deeper than {MAX_DEPTH} levels. Fix: send what the page sends"
    except ValueError as exc:
        return f"the request is not JSON ({exc}). Fix: send what the page sends"
    if depth_over(request):
        return f"the request nests deeper than {MAX_DEPTH} levels. Fix: send what the page sends"
    if not isinstance(request, dict) or not isinstance(request.get("output"), str):
        return "the request is not a callback request (no \"output\"). Fix: send what the page sends"
    for part in ("inputs", "state"):
        if not isinstance(request.get(part, []), list):
            return f"the request's {part!r} is not a list. Fix: send what the page sends"
    if not isinstance(request.get("changedPropIds", []), list):
        return "the request's 'changedPropIds' is not a list. Fix: send what the page sends"
    if not isinstance(request.get("outputs"), (dict, list)):
        return "the request's 'outputs' is missing. Fix: send what the page sends"
    return check_inputs([*request.get("inputs", []), *request.get("state", [])])


def _answer(start_response, status: str, message: str) -> list[bytes]:
    body = json.dumps({"error": message}).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def guard(app: Callable, max_body: int = MAX_BODY) -> Callable:
    """WSGI middleware: bodies over ``max_body`` get 413 without being read; callback requests
    that are malformed, too deep or carry inputs of the wrong type get 400."""
    too_big = (f"the request body is over {max_body // 2**20} MB. Fix: send what the page sends "
               "(a metric name or run name this long cannot be shown anyway)")

    def wrapped(environ, start_response):
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return _answer(start_response, "400 Bad Request", "Content-Length is not a number")
        if length > max_body:
            return _answer(start_response, "413 Request Entity Too Large", too_big)
        if environ.get("REQUEST_METHOD") == "POST" and environ.get("PATH_INFO", "").endswith(CALLBACK_PATH):
            body = environ["wsgi.input"].read(min(length, max_body + 1) if length else max_body + 1)
            if len(body) > max_body:
                return _answer(start_response, "413 Request Entity Too Large", too_big)
            problem = check_request(body)
            if problem is not None:
                return _answer(start_response, "400 Bad Request", problem)
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
        return app(environ, start_response)
    return wrapped
