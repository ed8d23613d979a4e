"""Shared fixtures: a tiny ladder the tests build themselves, isolated from the user's cache."""

from __future__ import annotations

import importlib.util
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

from align_proxy import PROJECT_ROOT as REPO  # noqa: E402 - after the environment above is set


def tiny_spec(seed: int = 0, steps: int = 600):
    """A two-rung ladder small enough to pretrain in seconds, same code path as the real one."""
    from align_proxy.models.ladder import LadderSpec, Rung

    return LadderSpec(
        rungs=(
            Rung("tiny-a", hidden_size=32, intermediate_size=96, num_attention_heads=2, num_key_value_heads=1,
                 num_hidden_layers=2),
            Rung("tiny-b", hidden_size=64, intermediate_size=176, num_attention_heads=4, num_key_value_heads=2,
                 num_hidden_layers=2),
        ),
        seed=seed, steps=steps, batch_size=16, seq_len=64, warmup_steps=20, heldout_rows=16,
    )


@pytest.fixture(scope="session")
def tiny_ladder(tmp_path_factory):
    """Reports of a tiny ladder pretrained once per session on the built-in task."""
    from align_proxy.models.ladder import build_ladder

    root = tmp_path_factory.mktemp("tiny-ladder")
    # On this processor's own kernels, in this process: no test compares its weights with another machine's, and
    # the portable build (a child process, 2.4x slower) has tests of its own in test_ladder.py.
    return build_ladder(tiny_spec(), root=root, progress=False, portable=False)


@pytest.fixture(scope="session")
def tiny_model(tiny_ladder) -> str:
    """Path of the larger tiny rung: a base model with some skill, in Hugging Face format."""
    return tiny_ladder[-1].path


@pytest.fixture
def fake_kind(monkeypatch):
    """The fake recipe kind (tests/fake_recipe.py) registered in this process, for a runner run in-process;
    subprocesses register it through tests/fake_study.py."""
    from align_proxy import kinds
    from fake_recipe import FAKE

    monkeypatch.setitem(kinds.KINDS, FAKE.name, FAKE)
    monkeypatch.syspath_prepend(str(REPO))
    return FAKE


def load_recipe(name: str):
    """Import `recipes/<name>.py` as a module, as `python recipes/<name>.py` would run it."""
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", REPO / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def recipe_parser(name: str):
    """The parser `python recipes/<name>.py` builds: its kind's script arguments, TRL config and ModelConfig."""
    from align_proxy.recipe import make_parser

    return make_parser(name)
