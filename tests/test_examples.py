"""Every example runs in a shortened form and does what its docstring says."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

import graphviz_autograd as ga
from graphviz_autograd.examples import data as mnist_data

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MNIST_DIR = os.environ.get("GVA_MNIST_DIR") or os.path.join(os.path.dirname(REPO), "shared", "data", "MNIST")
HAVE_MNIST = bool(mnist_data.find_idx_files(MNIST_DIR))
LENET_PARAMS = {f"{m}.{k}" for m in ("conv1", "conv2", "fc1", "fc2", "fc3") for k in ("weight", "bias")}
quiet = dict(echo=lambda *_a, **_k: None)


@pytest.fixture(scope="module")
def mnist():
    """The real split when the shared copy is there, else the synthetic set."""
    return mnist_data.load_mnist(MNIST_DIR) if HAVE_MNIST else mnist_data.synthetic_mnist()


@pytest.fixture(scope="module")
def small():
    return mnist_data.synthetic_mnist(n_train=640, n_test=200)


def _is_svg(path) -> bool:
    with open(path, encoding="utf-8") as f:
        return "<svg" in f.read(2000)


def _is_png(path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_two_conv_renders_the_graph_with_its_parameters(tmp_path):
    from graphviz_autograd.examples import two_conv

    lines: list[str] = []
    result = two_conv.run(str(tmp_path), echo=lines.append)
    graph = result["graph"]
    assert set(graph.params) == {"conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"}
    assert graph.params["conv2.weight"].outputs[0].shape == (20, 20, 5, 5)
    assert result["output_shape"] == (1, 20, 24, 24)
    # as printed in the seed: ReLU after conv1 only
    assert sorted(n.op for n in graph.by_kind("op")) == ["ConvolutionBackward0"] * 2 + ["ReluBackward0"]
    (relu,) = [n for n in graph if n.op == "ReluBackward0"]
    assert graph.node(graph.successors(relu.id)[0]).module == "conv2"
    svg, png = result["files"]
    assert _is_svg(svg) and _is_png(png) and "conv2.weight" in open(svg).read()
    assert any("wrote" in line and line.endswith("graph.png") for line in lines)


def test_two_conv_main_parses_argv(tmp_path):
    from graphviz_autograd.examples import two_conv

    result = two_conv.main(["--run-dir", str(tmp_path / "x")])
    assert os.path.isfile(tmp_path / "x" / "graph.svg") and len(result["graph"]) == 8


def test_examples_never_replace_earlier_output(tmp_path):
    from graphviz_autograd.examples import two_conv

    first = two_conv.run(str(tmp_path / "out"), formats=("svg",), **quiet)
    before = open(first["files"][0], encoding="utf-8").read()
    lines: list[str] = []
    second = two_conv.run(str(tmp_path / "out"), formats=("svg",), echo=lines.append)
    assert os.path.dirname(second["files"][0]) == str(tmp_path / "out-2")
    assert any("already holds files; writing to" in line and "out-2" in line and "--overwrite" in line
               for line in lines)
    assert open(first["files"][0], encoding="utf-8").read() == before        # untouched
    third = two_conv.run(str(tmp_path / "out"), formats=("svg",), overwrite=True, **quiet)
    assert os.path.dirname(third["files"][0]) == str(tmp_path / "out")


def test_optimizers_write_three_runs_with_different_update_ratios(tmp_path):
    from graphviz_autograd.examples import optimizers

    lines: list[str] = []
    result = optimizers.run(steps=4, run_dir=str(tmp_path), echo=lines.append)
    assert set(result["runs"]) == {"sgd", "momentum", "adam"}
    ratios = []
    for name, path in result["runs"].items():
        with ga.open_run(path) as run:
            assert run.steps() == [0, 1, 2, 3]                      # every=1
            assert run.meta["optimizer"] in ("SGD", "Adam")
            series = run.param_series("conv2.weight", "update_ratio")
            assert len(series.values) == 4 and all(v > 0 for v in series.values)
            ratios.append(sum(series.values) / 4)
        assert result["final_loss"][name] < result["first_loss"][name]
    ratios.sort()
    assert ratios[1] > 1.5 * ratios[0] and ratios[2] > 1.5 * ratios[1]   # clearly different
    assert any(line.startswith("Adam lr=0.001") for line in lines)     # the table
    assert any("conv1.bias.grad before backward: None" in line for line in lines)
    # the update rules of SGD and momentum, the figure and where to compare the curves
    assert "    w ← w − 0.01 · g" in lines and "    w ← w − 0.01 · b" in lines
    assert any(line.startswith("    b ← 0.9 · b + g") for line in lines)
    svg = open(result["figure"], encoding="utf-8").read()
    assert result["figure"] == str(tmp_path / "loss.svg") and svg.count("<polyline") == 3
    assert "SGD lr=0.01 momentum=0.9" in svg and "Adam lr=0.001" in svg
    assert f"compare them in the dashboard: graphviz-autograd dashboard {tmp_path}" in lines
    assert any("http://127.0.0.1:8050/?runs=sgd,momentum,adam" in line for line in lines)
    with ga.open_run(result["runs"]["momentum"]) as run:
        assert run.meta["optimizer_settings"]["momentum"] == 0.9


def test_lenet_loss_decreases_and_run_is_recorded(tmp_path, mnist):
    from graphviz_autograd.examples import lenet_mnist

    lines: list[str] = []
    result = lenet_mnist.run(steps=50, run_dir=str(tmp_path), every=25, lr=0.05, data=mnist,
                             progress=False, echo=lines.append)
    first, last = sum(result["losses"][:10]) / 10, sum(result["losses"][-10:]) / 10
    if HAVE_MNIST:
        assert "MNIST test split" in result["source"]
        assert last < first - 0.3, (first, last)
        assert result["test_accuracy"] > 0.3
    else:  # synthetic digits: a weaker check
        assert last < first, (first, last)
    assert set(result["graph"].params) == LENET_PARAMS
    assert any(re.fullmatch(r"\[epoch 1\] loss: \d\.\d{3}", line) for line in lines)
    assert any(line.startswith("test accuracy: ") for line in lines)
    svg, png = result["files"]
    assert _is_svg(svg) and _is_png(png) and os.path.dirname(svg) == str(tmp_path)
    with ga.open_run(tmp_path) as run:
        assert run.loss().steps == list(range(50))
        assert run.series("test_accuracy").values == [pytest.approx(result["test_accuracy"])]
        assert run.meta["example"] == "lenet" and run.meta["every"] == 25
        assert len(run.param_series("fc1.weight").values) == 2           # steps 0 and 25


def test_seed_lenet_bug_is_explained_and_fixed(tmp_path):
    from graphviz_autograd.examples import seed_lenet_bug
    from rich.console import Console
    import io

    out = io.StringIO()
    lines: list[str] = []
    result = seed_lenet_bug.run(str(tmp_path), console=Console(file=out, width=100), echo=lines.append)
    # the errors a reader of the seed sees, with view as printed
    assert result["error"] == "RuntimeError: shape '[-1, 400]' is invalid for input of size 16384"
    assert result["silent"] == (64, 10)
    assert "Expected input batch_size (64) to match target batch_size (100)" in result["loss_error"]
    d = result["diagnosis"]
    assert d is not None and not d.ok
    mix = d.by_kind("batch_mixing")[0]
    assert mix.op == "view" and mix.source.startswith("models.py:") and "(100, 16, 4, 4)" in mix.title
    assert "nn.Linear(256, 120)" in mix.hint and "x.flatten(1)" in mix.hint
    text = " ".join(out.getvalue().split())
    assert "error batch_mixing" in text and "(64, 400)" in text
    assert _is_svg(result["files"][0]) and "ViewBackward0" in open(result["files"][0]).read()
    assert result["fixed_shape"] == (100, 10) and result["padded_shape"] == (100, 10)
    assert any("never view(-1, N)" in line for line in lines)


def test_seed_lenet_bug_plain_text(tmp_path):
    from graphviz_autograd.examples import seed_lenet_bug

    lines: list[str] = []
    result = seed_lenet_bug.run(str(tmp_path), use_doctor=False, echo=lines.append)
    assert result["diagnosis"].by_kind("batch_mixing") and _is_svg(result["files"][0])
    assert any(line.startswith("Diagnosis: 2 errors") for line in lines)


def test_seed_lenet_is_the_seed_code():
    import inspect

    from graphviz_autograd.examples.models import SeedLeNet5

    source = inspect.getsource(SeedLeNet5.forward)
    assert "x = x.view(-1, 16 * 5 * 5)" in source and "flatten" not in source
    assert SeedLeNet5().fc1.in_features == 400


def _reaches(graph, src: str, dst: str, via: str) -> bool:
    """Whether a path src -> ... -> dst passes through a node whose op starts with ``via``."""
    stack, seen = [(src, False)], set()
    while stack:
        node, passed = stack.pop()
        if node == dst and passed:
            return True
        for nxt in graph.successors(node):
            state = (nxt, passed or graph.node(nxt).op.startswith(via))
            if state not in seen:
                seen.add(state)
                stack.append(state)
    return False


def test_variants_penalty_branch_is_in_the_graph(tmp_path, small):
    from graphviz_autograd.examples import variants

    result = variants.run(steps=2, run_dir=str(tmp_path), every=1, only=["l1", "l2", "weight_decay"],
                          data=small, progress=False, **quiet)
    v = result["variants"]
    l2 = v["l2"]["graph"]
    pows = [n for n in l2 if n.op.startswith("PowBackward")]
    assert len(pows) == len(LENET_PARAMS)                     # one per parameter
    root = l2.roots[0]
    # each p.pow(2) -> sum -> ... -> the AddBackward of ce + lambda * l2 -> loss
    assert all(_reaches(l2, p.id, root, "AddBackward") for p in pows)
    assert sum(n.op.startswith("AbsBackward") for n in v["l1"]["graph"]) == len(LENET_PARAMS)
    assert not any(n.op.startswith(("PowBackward", "AbsBackward")) for n in v["weight_decay"]["graph"])
    assert _is_svg(v["l2"]["files"][0])
    with ga.open_run(v["l2"]["run_dir"]) as run:
        assert {"cross_entropy", "penalty", "loss"} <= set(run.scalar_names())
        pen, ce, loss = (run.series(n).values[0] for n in ("penalty", "cross_entropy", "loss"))
        assert loss == pytest.approx(ce + variants.L2_LAMBDA * pen, rel=1e-5)
    assert result["softmax"]["naive"] == float("inf") and result["softmax"]["stable"] == pytest.approx(120.0)
    assert result["modes"] == {"differ_train": True, "same_eval": True}


def test_variants_correct_the_seed_where_the_reader_looks(tmp_path, small):
    from graphviz_autograd.examples import variants

    doc = variants.__doc__
    assert "nn.L1Loss" in doc and "nn.MSELoss" in doc and "They do not" in doc
    assert "CrossEntropyLoss" in doc and "weight_decay" in doc
    lines: list[str] = []
    result = variants.run(steps=3, run_dir=str(tmp_path), every=3, only=["weight_decay"], data=small,
                          progress=False, echo=lines.append)
    assert lines[0] == variants.SEED_CORRECTION and "They do not" in lines[0]
    # a few steps leave the plain LeNet on the start plateau: said, with the way out
    assert result["plateau"] == ["weight_decay"]
    assert any("still on the start plateau after 3 steps" in line and "--steps" in line for line in lines)
    readme = open(os.path.join(REPO, "examples", "README.md"), encoding="utf-8").read()
    assert "nn.L1Loss" in readme and "do not implement" in readme


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_MNIST, reason="needs the shared MNIST split")
def test_variants_leave_the_plateau_at_the_default_steps(tmp_path, mnist):
    from graphviz_autograd.examples import variants

    result = variants.run(run_dir=str(tmp_path), every=100, only=["weight_decay"], data=mnist,
                          progress=False, **quiet)
    assert result["plateau"] == []
    assert all(r["test_accuracy"] > 0.85 for r in result["variants"].values()), result["variants"]


def test_dynamic_records_several_graph_versions(tmp_path, small):
    from graphviz_autograd.examples import dynamic

    result = dynamic.run(steps=12, run_dir=str(tmp_path), data=small, **quiet)
    versions = result["versions"]
    assert len(versions) >= 2
    assert len({v.n_nodes for v in versions}) == len(versions)      # really different graphs
    used = sorted(s for steps in result["steps_by_version"].values() for s in steps)
    assert used == list(range(12))
    # more repeats of the hidden layer -> 3 more nodes (Addmm, T, Relu) per repeat
    by_repeat = {result["repeats"][v.version]: v.n_nodes for v in versions}
    for r, n in by_repeat.items():
        if r + 1 in by_repeat:
            assert by_repeat[r + 1] == n + 3
    assert len(result["files"]) == len(versions) and all(_is_svg(f) for f in result["files"])


def test_large_models_trace_and_fold(tmp_path):
    from graphviz_autograd.examples import large_model

    result = large_model.run(str(tmp_path), formats=("dot",), **quiet)
    resnet, tr = result["resnet18"], result["transformer"]
    assert len(resnet["graph"].params) == 62 and resnet["nodes"] > 100
    assert resnet["folded_nodes"] < resnet["nodes"] / 3
    assert tr["nodes"] > 300 and tr["folded_nodes"] < tr["nodes"] / 3
    for r in result.values():
        assert len(r["files"]) == 2 and all(os.path.getsize(f) > 1000 for f in r["files"])


@pytest.mark.slow
def test_distributed_two_ranks_record_into_one_run(tmp_path):
    env = dict(os.environ, GVA_MNIST_DIR=MNIST_DIR if HAVE_MNIST else "", GVA_MNIST_DOWNLOAD="0",
               PYTHONPATH=REPO)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           os.path.join(REPO, "examples", "distributed.py"), "--steps", "4", "--every", "2",
           "--run-dir", str(tmp_path / "ddp"), "--quiet"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "2 rank(s), gloo backend" in proc.stdout
    with ga.open_run(tmp_path / "ddp") as run:
        assert run.ranks == [0] and run.world_size == 2 and run.meta["ranks"] == "gather"
        assert run.loss().steps == [0, 1, 2, 3] and run.series("test_accuracy").steps == [4]
        # DDP's `module.` prefix is stripped: ids match a single-process run
        assert "conv1.weight" in run.keys("param") and "param:conv1.weight" in run.graph()
        spread = run.rank_spread("conv1.weight", "grad_norm")     # DDP: the same gradient on both
        assert spread.steps == [0, 2] and spread.min == pytest.approx(spread.max, rel=1e-6)
        assert run.rank_spread("loss", kind="scalar").steps == [0, 1, 2, 3]
    assert os.path.isfile(tmp_path / "ddp" / "graph.svg")


def test_readme_lists_every_example_with_a_command():
    text = open(os.path.join(REPO, "examples", "README.md"), encoding="utf-8").read()
    scripts = sorted(f for f in os.listdir(os.path.join(REPO, "examples"))
                     if f.endswith(".py") and not f.startswith("_") and f not in ("models.py", "data.py"))
    assert len(scripts) == 8
    for script in scripts:
        assert f"examples/{script}" in text, f"{script} is not in examples/README.md"
