"""The command line: render, train, demo, and the help of every command."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from click.testing import CliRunner

import graphviz_autograd as ga
from graphviz_autograd.cli import demo as cli_demo, train as cli_train
from graphviz_autograd.examples import data as mnist_data
from graphviz_autograd.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_DIR = os.environ.get("GVA_MNIST_DIR") or os.path.join(os.path.dirname(REPO), "shared", "data", "MNIST")
HAVE_MNIST = bool(mnist_data.find_idx_files(MNIST_DIR))


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def offline(monkeypatch):
    """No download in tests: the shared MNIST when present, else synthetic digits."""
    monkeypatch.setenv(mnist_data.DOWNLOAD_ENV_VAR, "0")
    if HAVE_MNIST:
        monkeypatch.setenv(mnist_data.ENV_VAR, MNIST_DIR)
    else:
        monkeypatch.delenv(mnist_data.ENV_VAR, raising=False)


def _one_line_error(result) -> str:
    text = result.stderr.strip()
    assert result.exit_code == 2, result.output
    assert text.count("\n") == 0, text
    assert "Traceback" not in result.output
    return text


# -- render ---------------------------------------------------------------------------
def test_render_module_spec_writes_a_real_svg(runner, tmp_path):
    out = tmp_path / "lenet.svg"
    result = runner.invoke(main, ["render", "examples.models:LeNet5", "--input-shape", "1,1,28,28",
                                  "-o", str(out)])
    assert result.exit_code == 0, result.output
    svg = out.read_text()
    assert svg.lstrip().startswith("<?xml") and "<svg" in svg
    for name in ("conv1.weight", "fc1.weight", "fc3.bias", "AddmmBackward0"):
        assert name in svg
    assert "Graph(" in result.output and str(out) in result.output


def test_render_file_spec(runner, tmp_path):
    model_file = tmp_path / "my_model.py"
    model_file.write_text(
        "import torch\n"
        "class Tiny(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.proj = torch.nn.Linear(6, 3)\n"
        "    def forward(self, x):\n"
        "        return torch.tanh(self.proj(x))\n")
    out = tmp_path / "tiny.svg"
    result = runner.invoke(main, ["render", f"{model_file}:Tiny", "--input-shape", "4,6", "-o", str(out)])
    assert result.exit_code == 0, result.output
    svg = out.read_text()
    assert "proj.weight" in svg and "TanhBackward0" in svg


@pytest.mark.parametrize("args, expected", [
    (["render", "no_such_module_xyz:Net", "--input-shape", "1,1,28,28"], ("no_such_module_xyz", "import")),
    (["render", "examples.models", "--input-shape", "1,1,28,28"], ("'examples.models'", "file.py:ClassName")),
    (["render", "examples.models:NoSuchNet", "--input-shape", "1,1,28,28"], ("NoSuchNet", "LeNet5")),
    (["render", "examples.models:LeNet5", "--input-shape", "1,a,28"], ("'1,a,28'", "1,3,224,224")),
    (["render", "examples.models:LeNet5", "--input-shape", "1,0,28,28"], ("'1,0,28,28'", "1,3,224,224")),
])
def test_render_bad_spec_or_shape_is_one_clear_line(runner, args, expected):
    """What is wrong, the bad value, and the fix (an example of the right form) on one line."""
    result = runner.invoke(main, args)
    line = _one_line_error(result)
    assert line.startswith("error: ")
    for part in expected:
        assert part in line, (part, line)


def test_doctor_refuses_an_image_size_as_input_shape(runner):
    result = runner.invoke(main, ["doctor", "graphviz_autograd.examples.models:LeNet5",
                                  "--input-shape", "28x28"])
    line = _one_line_error(result)
    assert "input shape '28x28'" in line and "batch first" in line and "1,1,28,28" in line


def test_every_command_has_help(runner):
    names = main.list_commands(None)
    assert set(names) >= {"render", "train", "demo", "dashboard", "doctor"}
    for name in names:
        result = runner.invoke(main, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        assert result.output.startswith(f"Usage: main {name}") or "Usage:" in result.output
        assert len(result.output.splitlines()) > 4
    top = runner.invoke(main, ["--help"])
    assert top.exit_code == 0 and all(name in top.output for name in names)


def test_console_script_help():
    exe = os.path.join(os.path.dirname(sys.executable), "graphviz-autograd")
    if not os.path.exists(exe):
        pytest.skip(f"console script not installed at {exe} (pip install -e .)")
    proc = subprocess.run([exe, "train", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "lenet" in proc.stdout and "optimizers" in proc.stdout


# -- train ----------------------------------------------------------------------------
def test_train_lenet_writes_a_run(runner, tmp_path, offline):
    run_dir = tmp_path / "lenet"
    result = runner.invoke(main, ["train", "lenet", "--steps", "5", "--every", "2", "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "[epoch 1] loss: " in result.output and "test accuracy: " in result.output
    with ga.open_run(run_dir) as run:
        assert run.loss().steps == [0, 1, 2, 3, 4]
        assert run.meta["model"] == "LeNet5" and run.meta["every"] == 2
        assert {v.version for v in run.graph_versions()} == {1}
    assert (run_dir / "graph.svg").is_file() and (run_dir / "graph.png").is_file()


def test_train_twice_into_one_run_dir_keeps_the_first_run(runner, tmp_path, offline):
    run_dir = tmp_path / "runs" / "lenet"
    args = ["train", "lenet", "--steps", "3", "--every", "1", "--run-dir", str(run_dir)]
    first = runner.invoke(main, args)
    assert first.exit_code == 0, first.output
    store = run_dir / "rank-0.gva.sqlite"
    before = (store.stat().st_mtime_ns, store.read_bytes())
    second = runner.invoke(main, args[:3] + ["5"] + args[4:])
    assert second.exit_code == 0, second.output
    fresh = tmp_path / "runs" / "lenet-2"
    assert f"{run_dir} already holds a run; writing to {fresh} instead" in second.output
    assert "--overwrite" in second.output
    assert (store.stat().st_mtime_ns, store.read_bytes()) == before       # first run intact
    with ga.open_run(run_dir) as run, ga.open_run(fresh) as new:
        assert run.loss().steps == [0, 1, 2] and new.loss().steps == [0, 1, 2, 3, 4]
    third = runner.invoke(main, args[:3] + ["2"] + args[4:] + ["--overwrite"])
    assert third.exit_code == 0 and "already holds" not in third.output
    with ga.open_run(run_dir) as run:
        assert run.loss().steps == [0, 1]                                 # replaced, as asked
    assert not (tmp_path / "runs" / "lenet-3").exists()


def test_train_dynamic_via_cli(runner, tmp_path, offline):
    result = runner.invoke(main, ["train", "dynamic", "--steps", "6", "--run-dir", str(tmp_path / "dyn")])
    assert result.exit_code == 0, result.output
    assert "graph versions in 6 steps" in result.output


def test_train_rejects_options_the_example_does_not_take(runner, tmp_path):
    result = runner.invoke(main, ["train", "optimizers", "--epochs", "2", "--run-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "`train optimizers` does not take --epochs" in result.output
    assert not list(tmp_path.iterdir())


def test_train_unknown_example_and_bad_steps(runner):
    result = runner.invoke(main, ["train", "resnet"])
    assert result.exit_code == 2 and "'resnet' is not one of" in result.output
    result = runner.invoke(main, ["train", "lenet", "--steps", "0"])
    assert result.exit_code == 2 and "--steps" in result.output


def test_train_data_dir_without_mnist_is_one_clear_line(runner, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = runner.invoke(main, ["train", "lenet", "--steps", "1", "--data-dir", str(empty),
                                  "--run-dir", str(tmp_path / "run")])
    line = _one_line_error(result)
    assert f"no MNIST in {empty}" in line and "--data-dir" in line
    assert not (tmp_path / "run").exists()


# -- demo -----------------------------------------------------------------------------
def test_demo_without_dashboard_trains_and_renders(runner, tmp_path, offline):
    run_dir = tmp_path / "runs" / "lenet"
    result = runner.invoke(main, ["demo", "--no-dashboard", "--steps", "3", "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert "images: " in result.output
    assert result.output.count("graphviz-autograd dashboard") == 1         # said once
    assert f"browse the run with: graphviz-autograd dashboard {run_dir.parent}" in result.output
    assert (run_dir / "graph.png").is_file()
    with ga.open_run(run_dir) as run:
        assert run.loss().steps == [0, 1, 2]
    again = runner.invoke(main, ["demo", "--no-dashboard", "--steps", "2", "--run-dir", str(run_dir)])
    assert again.exit_code == 0, again.output
    assert f"writing to {run_dir}-2 instead" in again.output
    with ga.open_run(run_dir) as run:
        assert run.loss().steps == [0, 1, 2]                                # not replaced


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_refuses_a_busy_port(runner, tmp_path, monkeypatch):
    monkeypatch.setattr(cli_demo, "dashboard_missing", lambda: None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = runner.invoke(main, ["demo", "--port", str(port), "--run-dir", str(tmp_path / "r" / "l")])
    line = _one_line_error(result)
    assert f"port {port}" in line and f"--port {port + 1}" in line


def test_demo_serves_then_stops_the_dashboard_on_ctrl_c(runner, tmp_path, monkeypatch, offline):
    started = []
    real_start = cli_demo.start_dashboard

    def fake_start(runs_dir, host, port, log_path):
        cmd = [sys.executable, "-m", "http.server", str(port), "--bind", host, "--directory", runs_dir]
        proc = real_start(runs_dir, host, port, log_path, cmd=cmd, wait=20)
        started.append(proc)
        return proc

    def interrupted(**_kw):
        assert started[0].poll() is None            # the dashboard serves during training
        raise KeyboardInterrupt
    monkeypatch.setattr(cli_demo, "dashboard_missing", lambda: None)
    monkeypatch.setattr(cli_demo, "start_dashboard", fake_start)
    monkeypatch.setattr(cli_train.import_example("lenet_mnist"), "run", interrupted)
    port = _free_port()
    result = runner.invoke(main, ["demo", "--port", str(port), "--run-dir", str(tmp_path / "runs" / "lenet")])
    assert result.exit_code == 130, result.output
    assert f"dashboard: http://127.0.0.1:{port}" in result.output and "interrupted" in result.output
    assert "Traceback" not in result.output
    assert started[0].poll() is not None            # terminated


def test_start_dashboard_reports_a_crash(tmp_path):
    log = tmp_path / "dash.log"
    cmd = [sys.executable, "-c", "import sys; print('boom'); sys.exit(3)"]
    assert cli_demo.start_dashboard(str(tmp_path), "127.0.0.1", _free_port(), str(log), cmd=cmd, wait=20) is None
    assert "boom" in log.read_text()
