"""The recipe kinds are one table: every shipped recipe is one entry, and a new kind registered there is accepted
by the spec check, data loading and validation, and the CLI (the runner: tests/test_study_runner.py runs one)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import yaml
from datasets import Dataset

from align_proxy import kinds
from align_proxy.data.formats import PROMPT_ONLY
from align_proxy.kinds import KINDS, recipe_kind
from conftest import REPO


@pytest.fixture
def toy(monkeypatch):
    """A prompt-only kind on SFT's classes, judged on completion NLL."""
    kind = replace(KINDS["sft"], name="toy", formats=(PROMPT_ONLY,), task_format="rl", primary_metric="completion_nll")
    monkeypatch.setitem(kinds.KINDS, "toy", kind)
    return kind


@pytest.mark.parametrize("name", list(KINDS))
def test_each_shipped_kind_is_its_script_plus_its_entry(name):
    kind = recipe_kind(name)
    script = kind.script_path.read_text()
    assert kind.script_path == REPO / "recipes" / f"{name}.py"
    trainer = kind.trainer.rpartition(":")[2]
    assert f"{trainer}(**run.trainer_kwargs()" in script and f'prepare_run("{name}"' in script
    assert f'make_parser("{name}")' in script
    from align_proxy.recipe import make_parser

    parsed = make_parser(name).parse_args_and_config(["--output_dir", "/tmp/x"])
    assert (type(parsed[0]), type(parsed[1])) == (kind.arguments_class, kind.config_class)


def test_an_unknown_kind_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown recipe 'sfft' \(did you mean 'sft'\?\); available: sft, dpo"):
        recipe_kind("sfft")


def test_a_registered_kind_is_accepted_by_the_spec_check(toy, tmp_path):
    from align_proxy.studies.spec import load_spec

    config = tmp_path / "toy.yaml"
    config.write_text("learning_rate: 0.001\n")
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "models": ["ladder-s", "ladder-m"],
                                    "recipes": [{"recipe": "toy", "config": str(config),
                                                 "grid": {"learning_rate": [1e-3, 3e-4]}}]}))
    spec = load_spec(path)
    assert spec.recipes[0].metric == "completion_nll"  # the kind's primary metric
    assert {cell.recipe for cell in spec.cells()} == {"toy"} and len(spec.cells()) == 4


def test_a_registered_kind_is_accepted_by_data_loading_and_validation(toy):
    from align_proxy.data.loading import load_recipe_data
    from align_proxy.data.validation import validate_dataset

    data = load_recipe_data("builtin:arith", "toy", builtin_train_size=8, builtin_test_size=4)
    assert validate_dataset(data.train, "toy", data.source, "train") == PROMPT_ONLY  # the task's RL prompts
    assert validate_dataset(Dataset.from_dict({"prompt": ["1+1="]}), "toy", "x", "train") == PROMPT_ONLY


def test_a_registered_kind_is_accepted_by_the_cli(toy, tmp_path, capsys):
    from align_proxy.cli import main

    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"{i}+1="}) + "\n" for i in range(20)))
    assert main(["data", "check", str(data), "--recipe", "toy"]) == 0
    assert "prompt-only" in capsys.readouterr().out
