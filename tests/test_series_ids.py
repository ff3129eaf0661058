"""Any node id the graph gives works in node_series; unknown ids and statistics raise
KeyError naming close matches (no silent empty series)."""
from __future__ import annotations

import pytest
import torch

import graphviz_autograd as ga
from graphviz_autograd.errors import StoreError
from graphviz_autograd.examples.models import LeNet5


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    path = tmp_path_factory.mktemp("series") / "lenet"
    torch.manual_seed(0)
    model = LeNet5()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with ga.Recorder(model, path, optimizer=opt, every=1) as rec:
        for step in range(3):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(torch.randn(8, 1, 28, 28)),
                                                     torch.randint(0, 10, (8,)))
            loss.backward()
            opt.step()
            rec.log(step, loss=loss)
    with ga.open_run(path) as r:
        yield r


def test_every_node_id_of_the_graph_works(run):
    graph = run.graph()
    for node in graph.nodes:
        run.node_series(node.id, "grad_norm")            # never raises for the graph's own ids
    param = run.node_series("param:fc1.weight", "grad_norm")
    assert param == run.param_series("fc1.weight", "grad_norm") and param.steps == [0, 1, 2]
    assert run.node_series("param:fc1.weight", "update_ratio").steps == [0, 1, 2]
    assert run.node_series("fc1/AddmmBackward0:0").steps == [0, 1, 2]
    output = [n.id for n in graph.nodes if n.id.startswith("output:")][0]
    assert run.node_series(output).steps == []           # in the graph, no statistics: empty


@pytest.mark.parametrize("call, args, message", [
    ("node_series", ("fc1/AddmmBackward:0",), r"no graph node 'fc1/AddmmBackward:0'.*did you mean 'fc1/AddmmBackward0:0'"),
    ("node_series", ("fc1.weight",), r"did you mean 'param:fc1.weight'"),
    ("node_series", ("param:fc9.weight",), r"no parameter 'fc9.weight'.*did you mean"),
    ("param_series", ("fc1.wieght",), r"no parameter 'fc1.wieght'.*did you mean 'fc1.weight'"),
    ("module_series", ("fc4",), r"no module 'fc4'"),
    ("node_series", ("fc1/AddmmBackward0:0", "grad_nrm"), r"unknown stat 'grad_nrm'.*did you mean 'grad_norm'"),
    ("param_series", ("fc1.weight", "norm"), r"unknown stat 'norm'"),
])
def test_unknown_ids_and_stats_raise_key_error_with_close_matches(run, call, args, message):
    with pytest.raises(KeyError, match=message) as info:
        getattr(run, call)(*args)
    assert isinstance(info.value, StoreError)          # one line at the CLI, like other store errors
    assert not str(info.value).startswith("'")         # the message, not a quoted repr
    assert "\n" not in str(info.value)


def test_modules_of_the_graph_are_known(run):
    assert run.module_series("fc1", "act_mean").steps == [0, 1, 2]
