"""Shared fixtures (a tiny ladder the tests build themselves) and the test environment, isolated from the user's
cache. Builders that are plain functions live in support.py."""

from __future__ import annotations

import os
import tempfile

import pytest

# Keep every test offline and out of the user's cache, whatever the machine has set. Set at import,
# before anything imports huggingface_hub (it reads HF_HUB_OFFLINE once, at its own import: set
# later, a Hub lookup would retry the network for tens of seconds) and before any fixture runs.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
_HOME = tempfile.TemporaryDirectory(prefix="align-proxy-test-home-")
os.environ["ALIGN_PROXY_HOME"] = _HOME.name
# Under pytest-xdist each worker gets its share of the cores, and so do the processes it starts (they inherit it):
# two workers each running two-thread kernels on two cores thrash, and a two-rank gloo run beside them slows 8-fold.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))
    os.environ.setdefault("MKL_NUM_THREADS", str(_threads))

from support import REPO, tiny_spec  # noqa: E402 - after the environment above is set


def pytest_collection_modifyitems(config, items):
    """Order the tests so that pytest-xdist's workers stay busy (the suite is timed on 2 cores). Its `worksteal`
    scheduler hands each worker a contiguous chunk of this list (len // workers, the last one the rest) and a worker
    that runs dry steals the tail of another's. So the last chunk starts with the tests that need the tiny ladder,
    its worker building the ladder at once while the others run tests that need none, and every chunk starts with
    its slow tests (real training, launched processes), leaving the quick ones at the tails to be stolen. Order
    only: any test still runs alone (`pytest tests/x.py::test_y`) and in any order."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
    if workers < 2:
        return

    def slow_first(tests):
        return sorted(tests, key=lambda item: not (item.get_closest_marker("slow")
                                                   or item.get_closest_marker("distributed")))

    ladder = slow_first([item for item in items if "tiny_ladder" in item.fixturenames])
    rest = slow_first([item for item in items if "tiny_ladder" not in item.fixturenames])
    remaining = len(items)
    for worker in range(workers - 1):  # the sizes worksteal's first distribution gives
        remaining -= remaining // (workers - worker)
    start = len(items) - remaining  # where the last chunk begins
    items[:] = rest[:start] + ladder + rest[start:]


@pytest.fixture(scope="session")
def tiny_ladder(tmp_path_factory):
    """Reports of a tiny ladder pretrained once per session on the built-in task."""
    from align_proxy.models.ladder import build_ladder

    # Under pytest-xdist its workers share one build in the run's common temporary directory (build_ladder holds a
    # file lock: one worker pretrains, the others wait and read it); a run without workers builds its own.
    shared = os.environ.get("PYTEST_XDIST_WORKER")
    root = tmp_path_factory.getbasetemp().parent / "tiny-ladder" if shared else tmp_path_factory.mktemp("tiny-ladder")
    # On this processor's own kernels, in this process: no test compares its weights with another machine's, and
    # the portable build (a child process, 2.4x slower) has tests of its own in test_ladder.py.
    return build_ladder(tiny_spec(), root=root, progress=False, portable=False)


@pytest.fixture(scope="session")
def tiny_model(tiny_ladder) -> str:
    """Path of the larger tiny rung: a base model with some skill, in Hugging Face format."""
    return tiny_ladder[-1].path


@pytest.fixture(scope="module")
def random_model(tmp_path_factory) -> str:
    """A small random Llama with the ladder's tokenizer (no pretraining needed for loss equality). A large
    initialisation makes attention matter, so attending across examples visibly changes the loss."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from align_proxy.models.tokenizer import BOS_ID, EOS_ID, PAD_ID, build_tokenizer

    tokenizer = build_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, initializer_range=0.2, pad_token_id=PAD_ID,
                         bos_token_id=BOS_ID, eos_token_id=EOS_ID)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("random-llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture
def fake_kind(monkeypatch):
    """The fake recipe kind (tests/fake_recipe.py) registered in this process, for a runner run in-process;
    subprocesses register it through tests/fake_study.py."""
    from align_proxy import kinds
    from fake_recipe import FAKE

    monkeypatch.setitem(kinds.KINDS, FAKE.name, FAKE)
    monkeypatch.syspath_prepend(str(REPO))
    return FAKE

