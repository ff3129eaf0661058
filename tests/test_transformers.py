"""The Hugging Face callback with a real ``Trainer`` on a tiny BERT built from a config (random
weights, no download): the loss, parameter and node statistics of every optimizer step,
checked against what a second callback reads."""
from __future__ import annotations

import os
import warnings

import pytest

transformers = pytest.importorskip("transformers")
import torch  # noqa: E402

import graphviz_autograd as ga  # noqa: E402
from graphviz_autograd.integrations.transformers import RecorderCallback  # noqa: E402

pytestmark = pytest.mark.slow


class Truth(transformers.TrainerCallback):
    def __init__(self):
        self.norms = {}

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.norms[state.global_step + 1] = {n: float(p.grad.double().norm())
                                             for n, p in model.named_parameters() if p.grad is not None}


class Tokens(torch.utils.data.Dataset):
    def __init__(self, n=24):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(5, 1000, (n, 16), generator=g)
        self.labels = torch.randint(0, 2, (n,), generator=g)

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": torch.ones(16, dtype=torch.long),
                "labels": self.labels[i]}


@pytest.mark.parametrize("accumulation", [1, 2])
def test_trainer_is_recorded_once_per_optimizer_step(tmp_path, monkeypatch, accumulation):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    config = transformers.BertConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=2,
                                     intermediate_size=128, vocab_size=1000, num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "out"), max_steps=3, per_device_train_batch_size=4,
        gradient_accumulation_steps=accumulation, report_to=[], save_strategy="no",
        logging_steps=1, use_cpu=True, disable_tqdm=True, dataloader_num_workers=0)
    truth = Truth()
    trainer = transformers.Trainer(model=model, args=args, train_dataset=Tokens(),
                                   callbacks=[RecorderCallback(tmp_path / "run", every=1), truth])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    assert [str(w.message) for w in caught if "graphviz-autograd" in str(w.message)] == []
    run = ga.open_run(tmp_path / "run")
    assert run.steps() == [1, 2, 3]
    name = "classifier.weight"
    assert run.param_series(name).values == pytest.approx([truth.norms[s][name] for s in (1, 2, 3)],
                                                          rel=1e-6)
    assert all(v > 0 for v in run.param_series(name, "update_ratio").values)
    graph = run.graph()
    assert "param:bert.embeddings.word_embeddings.weight" in graph
    assert any(n.op == "NllLossBackward0" for n in graph.nodes)       # the model's own loss
    assert len(graph) > 150 and len(run.keys("node")) > 100
    assert all(v == v and v > 0 for v in run.loss().values)
    assert os.path.isdir(tmp_path / "run")
