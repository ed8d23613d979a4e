"""Compiled decoder layers compile once, up front, and are not recompiled as batch lengths change or as a run moves
between training and no-grad evaluation; the layers see one constant `max_length_q` whatever the batch.

torch.compile runs on CPU (the graphs go to aot_eager here instead of inductor: recompiles are decided by dynamo's
guards before any backend sees a graph, and inductor would only add minutes of C++ compilation)."""

import pytest
import torch
from torch._dynamo.utils import counters
from transformers import LlamaConfig, LlamaForCausalLM

from align_proxy import padding_free
from align_proxy.speed import RECOMPILE_LIMIT, compile_layers


@pytest.fixture
def tiny_llama(monkeypatch):
    original = torch.nn.Module.compile
    monkeypatch.setattr(torch.nn.Module, "compile",
                        lambda self, *args, **kwargs: original(self, *args, **{**kwargs, "backend": "aot_eager"}))
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64)
    yield LlamaForCausalLM(config)
    torch._dynamo.reset()


def padded_batch(lengths: list[int]) -> dict:
    width = max(lengths)
    ids = torch.randint(4, 64, (len(lengths), width))
    mask = (torch.arange(width)[None, :] < torch.tensor(lengths)[:, None]).long()
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def test_layers_compile_once_for_every_length_and_mode(tiny_llama):
    model = tiny_llama
    assert compile_layers(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)

    def train_step(lengths):
        model.train()
        model(**padded_batch(lengths)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()

    def evaluate(lengths):  # DPO's reference pass, or evaluation: eval mode, no grad
        model.eval()
        with torch.no_grad():
            model(**padded_batch(lengths))

    # Warm-up: one training step and one no-grad pass, each at its first shape.
    train_step([9, 5, 7])
    evaluate([6, 3])
    warm = graphs()
    assert warm > 0  # the layers did compile
    for lengths in ([12, 4, 4], [3, 7, 5], [17, 2, 9]):
        train_step(lengths)
    evaluate([11, 8, 5, 2])
    assert graphs() == warm, f"{graphs() - warm} graphs compiled after warm-up"
    # Every mode a run enters has room under the limit, so none falls back to eager.
    assert torch._dynamo.config.recompile_limit >= RECOMPILE_LIMIT >= 16


def test_layers_see_one_max_length_whatever_the_batch(tiny_llama):
    """FlashAttention needs only an upper bound: the padded batch's longest row, or TRL's packed SFT row's, would
    otherwise reach every compiled layer as a new Python int."""
    model = tiny_llama
    seen = []
    model.model.layers[0].register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["max_length_q"]),
                                                    with_kwargs=True)
    assert padding_free.pack_backbone(model)
    padding_free.bound_max_length(model, 32)
    model.eval()
    with torch.no_grad():
        for lengths in ([9, 5, 7], [3, 12, 4]):  # padded batches packed by the backbone
            model(input_ids=padded_batch(lengths)["input_ids"], attention_mask=padded_batch(lengths)["attention_mask"])
        # A row TRL packed itself (SFT, padding-free), with the collator's max_length_q
        model(input_ids=torch.randint(4, 64, (1, 10)), position_ids=torch.tensor([[0, 1, 2, 3, 0, 1, 2, 0, 1, 2]]),
              cu_seq_lens_q=torch.tensor([0, 4, 7, 10], dtype=torch.int32),
              cu_seq_lens_k=torch.tensor([0, 4, 7, 10], dtype=torch.int32), max_length_q=4, max_length_k=4)
    assert seen == [32, 32, 32]
