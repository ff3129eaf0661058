"""``graphviz-autograd demo``: train LeNet-5 with the recorder while the dashboard follows it.

The run goes to ``runs/lenet`` and the dashboard serves http://127.0.0.1:8050;
Ctrl-C stops both.
"""
from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import click

from graphviz_autograd.cli.train import POSITIVE, import_example
from graphviz_autograd.errors import ConfigError

_DASHBOARD_CMD = ("import sys; from graphviz_autograd.dashboard.app import serve; "
                  "serve(sys.argv[1], host=sys.argv[2], port=int(sys.argv[3]), debug=False)")


# -- demo -----------------------------------------------------------------------------
def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def _listening(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def dashboard_missing() -> str | None:
    """Why the dashboard cannot be served (None when it can)."""
    for mod, hint in (("dash", "pip install 'graphviz-autograd[dashboard]'"),
                      ("graphviz_autograd.dashboard.app", "the dashboard is not part of this install")):
        try:
            if importlib.util.find_spec(mod) is None:
                return f"{mod} is not importable ({hint})"
        except (ImportError, ValueError):
            return f"{mod} is not importable ({hint})"
    return None


def start_dashboard(runs_dir: str, host: str, port: int, log_path: str, *, cmd=None,
                    wait: float = 30.0) -> subprocess.Popen | None:
    """Serve the dashboard in a subprocess of its own session (Ctrl-C reaches only us).

    Waits until it listens on ``host:port``. Returns the process, or None (after
    saying why) when it exited or did not listen within ``wait`` seconds.
    """
    cmd = cmd or [sys.executable, "-c", _DASHBOARD_CMD, runs_dir, host, str(port)]
    os.makedirs(os.path.dirname(os.path.abspath(log_path)), exist_ok=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
    deadline = time.monotonic() + wait
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                click.echo(f"the dashboard exited at start (code {proc.returncode}); see {log_path}. "
                           "Training goes on without it.", err=True)
                return None
            if _listening(host, port):
                return proc
            time.sleep(0.2)
    except BaseException:       # Ctrl-C while waiting: do not leave it running
        stop_process(proc)
        raise
    stop_process(proc)
    click.echo(f"the dashboard did not listen on {host}:{port} within {wait:.0f} s; see {log_path}. "
               "Training goes on without it.", err=True)
    return None


def stop_process(proc: subprocess.Popen | None, timeout: float = 5.0) -> None:
    """Terminate ``proc`` (then kill it if it does not exit within ``timeout``)."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@click.command()
@click.option("--steps", type=POSITIVE, default=400, show_default=True, help="Training steps.")
@click.option("--epochs", type=POSITIVE, default=10, show_default=True,
              help="At most this many epochs (--steps usually ends training first).")
@click.option("--run-dir", default="runs/lenet", show_default=True, help="Run directory.")
@click.option("--data-dir", default=None, type=click.Path(),
              help="Folder with MNIST IDX files (default: $GVA_MNIST_DIR, torchvision, else synthetic).")
@click.option("--every", type=POSITIVE, default=10, show_default=True, help="Record statistics every N steps.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Dashboard interface.")
@click.option("--port", type=click.IntRange(1, 65535), default=8050, show_default=True,
              help="Dashboard port.")
@click.option("--no-dashboard", is_flag=True, help="Only train and render; do not serve the dashboard.")
@click.option("--overwrite", is_flag=True,
              help="Replace the run in --run-dir (default: keep it and write to NAME-2, ...).")
def demo(steps, epochs, run_dir, data_dir, every, host, port, no_dashboard, overwrite):
    """Train LeNet-5 on MNIST with the recorder while the dashboard follows it live.

    Writes the run and graph images (graph.svg, graph.png) into --run-dir and
    serves the dashboard on http://HOST:PORT. MNIST comes from --data-dir,
    $GVA_MNIST_DIR, torchvision's download, or else a synthetic digit set.
    Ctrl-C stops training and dashboard.
    """
    from graphviz_autograd.examples._common import fresh_dir

    run_dir = fresh_dir(run_dir, overwrite, click.echo)      # never replace a run silently
    runs_dir = os.path.dirname(os.path.abspath(run_dir))
    old_term = _exit_on_sigterm()
    log_path = os.path.join(runs_dir, f".dashboard-{port}.log")
    proc, url, training = None, f"http://{host}:{port}", True
    try:
        if not no_dashboard:
            missing = dashboard_missing()
            if missing:
                click.echo(f"no dashboard: {missing}; training only.")
            elif not _port_free(host, port):
                raise ConfigError(f"port {port} on {host} is in use (another dashboard?); "
                                  f"pass --port {port + 1} or --no-dashboard")
            else:
                proc = start_dashboard(runs_dir, host, port, log_path)
                if proc is not None:
                    click.echo(f"dashboard: {url}  (follows the training live; Ctrl-C stops everything)")
        result = import_example("lenet_mnist").run(
            epochs=epochs, steps=steps, run_dir=run_dir, data_dir=data_dir, every=every,
            echo=click.echo, overwrite=overwrite, browse_hint=False)
        training = False
        click.echo(f"images: {', '.join(result['files']) or '(none)'}")
        if proc is None or proc.poll() is not None:
            click.echo(f"browse the run with: graphviz-autograd dashboard {runs_dir}")
            return
        click.echo(f"training done; the dashboard keeps serving at {url}. Ctrl-C to stop.")
        proc.wait()
        click.echo(f"the dashboard exited (code {proc.returncode}); see {log_path}")
    except KeyboardInterrupt:
        stop_process(proc)
        if training:
            click.echo(f"\ninterrupted: the run so far is in {run_dir}")
            sys.exit(130)
        click.echo("\nstopped.")
    finally:
        stop_process(proc)
        if old_term is not None:
            signal.signal(signal.SIGTERM, old_term)


def _exit_on_sigterm():
    """Make SIGTERM (e.g. a killed ``make demo``) unwind like an exit, so the dashboard stops too."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, _frame):
        raise SystemExit(128 + signum)
    return signal.signal(signal.SIGTERM, handler)
