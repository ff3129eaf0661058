"""Serving the dashboard like a tool: a real WSGI server (waitress, pure Python), the port checked
before anything is printed, and one line with the URL.

:func:`make_server` is the one place the WSGI application meets the network: wrap it
there (``middleware=``: request-size limits, validation) and every way of serving gets it.

Example:
    >>> port_taken_message("127.0.0.1", 8050)
    'port 8050 on 127.0.0.1 is already in use (another dashboard, or another program). Fix: pass --port 8051, or stop what listens there'
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Iterable

from graphviz_autograd.errors import ConfigError

from .guard import MAX_BODY, guard

THREADS = 8
Middleware = Callable[[Callable], Callable]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def port_taken_message(host: str, port: int) -> str:
    return (f"port {port} on {host} is already in use (another dashboard, or another program). "
            f"Fix: pass --port {port + 1}, or stop what listens there")


def make_server(wsgi_app: Callable, host: str = "127.0.0.1", port: int = 8050, *,
                threads: int = THREADS, middleware: Iterable[Middleware] = (guard,),
                max_body: int = MAX_BODY):
    """A waitress server bound to ``host:port`` (not yet serving: call ``.run()``).

    Binding happens here, so a taken port fails before anything is printed. ``middleware``
    wraps the WSGI application, innermost first (by default :func:`dashboard.guard.guard`:
    callback requests checked before Dash sees them). Bodies over ``max_body`` bytes are
    refused by waitress with 413 before they are read.

    Raises:
        ConfigError: the port is taken, or the address cannot be bound (the message names
            it and the fix).
    """
    from waitress.server import create_server

    for wrap in middleware:
        wsgi_app = wrap(wsgi_app)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)   # "task queue depth" chatter
    try:
        return create_server(wsgi_app, host=host.strip("[]"), port=port, threads=threads,
                             ident="graphviz-autograd", max_request_body_size=max_body)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(port_taken_message(host, port)) from None
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}. Fix: pass "
                          "--host 127.0.0.1 or another --port") from None


def serve(runs_dir: str | os.PathLike, host: str = "127.0.0.1", port: int = 8050,
          debug: bool = False) -> None:
    """Serve the dashboard of the runs under ``runs_dir`` until interrupted.

    Prints exactly one line, with the URL, once the port is bound (plus a warning on
    stderr when listening beyond loopback). ``debug`` runs Dash's development server
    instead (reloader, dev tools).
    """
    from .app import create_app

    root = Path(runs_dir)
    app = create_app(root)                             # reads nothing yet
    if debug:                                          # the development server: same checks
        app.server.wsgi_app = guard(app.server.wsgi_app)
    server = None if debug else make_server(app.server, host, port)   # a taken port fails here
    root.mkdir(parents=True, exist_ok=True)
    shown = f"[{host.strip('[]')}]" if ":" in host else host
    print(f"graphviz-autograd dashboard: http://{shown}:{port}/  (runs in {root.resolve()}; "
          "Ctrl-C stops it)", flush=True)
    if not is_loopback(host):
        print(f"WARNING: listening on {host} exposes every run under {root.resolve()} to the network: "
              f"anyone who can reach this machine on port {port} can read them (no authentication). "
              f"Use --host 127.0.0.1 unless you mean it.", file=sys.stderr, flush=True)
    if server is None:
        app.run(host=host, port=port, debug=True, dev_tools_ui=True, threaded=True)
        return
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
