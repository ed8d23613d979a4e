"""The recipe kinds are one table: every shipped recipe is one entry, and a new kind registered there is accepted
by the spec check, data loading and validation, and the CLI (the runner: tests/test_study_runner.py runs one).
The cell kinds are another: a new one registered there expands, runs and is stored with its typed parameters."""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from datasets import Dataset

from align_proxy import kinds
from align_proxy.data.formats import PROMPT_ONLY
from align_proxy.kinds import CELL_KINDS, KINDS, CellKind, recipe_kind


@pytest.fixture
def toy(monkeypatch):
    """A prompt-only kind on SFT's classes, judged on completion NLL."""
    kind = replace(KINDS["sft"], name="toy", formats=(PROMPT_ONLY,), task_format="rl", primary_metric="completion_nll")
    monkeypatch.setitem(kinds.KINDS, "toy", kind)
    return kind


class Built(Exception):
    """Raised by a stand-in trainer class: the script got as far as building its trainer."""


@pytest.mark.parametrize("name", list(KINDS))
def test_each_shipped_kind_is_its_script_plus_its_entry(name, monkeypatch, tmp_path):
    """The kind's script, run with what its parser reads, prepares a run of this kind, applies (and so shows) its
    speed plan, and only then builds the kind's trainer."""
    from align_proxy.recipe import make_parser

    kind = recipe_kind(name)
    parsed = make_parser(name).parse_args_and_config(["--output_dir", str(tmp_path)])
    assert (type(parsed[0]), type(parsed[1])) == (kind.arguments_class, kind.config_class)
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", kind.script_path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)  # not as __main__: nothing runs yet
    prepared, built, steps = [], [], []

    class Run:  # what prepare_run returns, without loading a model or data
        evaluation = evaluate_base = track_reward_curve = lambda self, *a, **k: None
        trainer_kwargs = lambda self: {}  # noqa: E731
        apply_speed_plan = lambda self: steps.append("speed plan")  # noqa: E731

    def trainer(*args, **kwargs):
        built.append(kwargs)
        steps.append("trainer")
        raise Built

    monkeypatch.setattr(script, "prepare_run", lambda recipe, *a: prepared.append(recipe) or Run())
    for attribute, value in vars(script).items():
        if value is kind.trainer_class:
            monkeypatch.setattr(script, attribute, trainer)
    for helper in ("check_rollout_backend", "reward_set"):  # an RL script's checks of vLLM and its rewards
        if hasattr(script, helper):
            monkeypatch.setattr(script, helper, lambda *a: type("Rewards", (), {"funcs": []})())
    with pytest.raises(Built):
        script.main(*parsed)
    assert prepared == [name] and len(built) == 1 and steps == ["speed plan", "trainer"]


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


# --- cell kinds ---------------------------------------------------------------------------------------------------

def echo_cells(spec, cells: list) -> list:
    """The toy kind's expansion: one cell per train cell, evaluating its model."""
    from align_proxy.studies.spec import Cell
    from echo_cell import EchoParams

    return [Cell(c.model, CELL_KINDS["echo"].display(c.recipe), c.variant, c.seed, {}, f"echo{c.config_hash}",
                 start_from=c.config_hash, kind="echo", params=EchoParams(c.recipe, f"of {c.model}"))
            for c in cells if c.kind == "train"]


def echo_argv(cell, config, cell_dir, base_evals, start_model, reward_model) -> list[str]:
    return ["--note", cell.params.note, "--model", str(start_model), "--recipe", cell.params.recipe,
            "--output_dir", str(cell_dir)]


def test_a_new_cell_kind_is_one_entry_from_spec_to_store(monkeypatch, tmp_path):
    """Registered as one entry, a kind expands from the spec, builds its command, runs its entry module, and its
    typed parameters come back through metrics.json and the store."""
    import subprocess
    import sys

    from align_proxy.studies.cell_runs import cell_command
    from align_proxy.run_metrics import RunMetrics
    from align_proxy.studies.execute.cells import needed_dirs
    from align_proxy.studies.spec import load_spec
    from align_proxy.studies.store import ResultStore

    monkeypatch.setitem(kinds.CELL_KINDS, "echo", CellKind(
        "echo", "{recipe} (echoed)", "test_kinds:echo_cells", "test_kinds:echo_argv", entry="echo_cell",
        params="echo_cell:EchoParams"))
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump({"name": "t", "models": ["ladder-s", "ladder-m"], "recipes": [{"recipe": "sft"}]}))
    spec = load_spec(path)
    echoes = [c for c in spec.cells() if c.kind == "echo"]
    assert [(c.recipe, c.params.note) for c in echoes] == [("sft (echoed)", "of ladder-s"),
                                                           ("sft (echoed)", "of ladder-m")]
    assert spec.slurm_resources()["sft (echoed)"] == spec.recipes[0].slurm  # its recipe's resources
    echo, cell_dir = echoes[0], tmp_path / echoes[0].config_hash
    script, argv = cell_command(echo, spec.recipes[0].config, "unused.yaml", cell_dir, tmp_path / "base",
                                *needed_dirs(echo, lambda h: tmp_path / h))
    assert Path(script).name == "echo_cell.py" and argv[argv.index("--model") + 1] == str(tmp_path / echo.start_from)
    subprocess.run([sys.executable, script, *argv], check=True)
    metrics = RunMetrics.read(cell_dir)
    assert (metrics.kind, metrics.params) == ("echo", echo.params)
    store = ResultStore(tmp_path / "results.sqlite")
    store.add_cells(echoes)
    assert store.record_result(echo.config_hash, metrics, 1.0) == "done"
    (result,) = store.results()
    assert (result.recipe, result.kind, result.params) == ("sft (echoed)", "echo", echo.params)


def test_the_shipped_cell_kinds_name_their_store_recipes_as_studies_always_have():
    assert [kind.display("sft") for kind in CELL_KINDS.values()] == ["sft", "sft (proxy-tuned)", "sft (best-of-n)"]
    assert [kind.entry for kind in CELL_KINDS.values()] == [None, "align_proxy.cells.proxy_tune",
                                                            "align_proxy.cells.best_of_n"]
    assert all(kind.entry_path.is_file() for kind in CELL_KINDS.values() if kind.entry)


def test_an_rl_recipe_is_said_once_by_its_family():
    assert {k.name: (k.family, k.policy, k.generates) for k in KINDS.values()} == {
        "sft": ("policy", True, False), "dpo": ("policy", True, False), "reward": ("reward", False, False),
        "grpo": ("rl", True, True), "rloo": ("rl", True, True)}


@pytest.mark.parametrize("name", list(CELL_KINDS))
def test_each_cell_kind_names_its_analysis_section_and_its_report_section(name):
    """A kind owns where its results are read: an analysis section that loads, and a declared report section."""
    from align_proxy.studies.report.sections import SECTIONS

    kind = CELL_KINDS[name]
    assert callable(kinds.load_object(kind.analysis))
    assert kind.report in {section.id for section in SECTIONS}


def test_the_analysis_groups_results_by_every_registered_cell_kind(monkeypatch):
    from types import SimpleNamespace

    from align_proxy.studies.analysis import by_kind

    monkeypatch.setitem(CELL_KINDS, "echo", replace(CELL_KINDS["train"], name="echo"))
    cells = [SimpleNamespace(kind=k) for k in ("train", "echo", "proxy-tuning", "train")]
    groups = by_kind(cells)
    assert set(groups) >= {"train", "proxy-tuning", "best-of-n", "echo"}
    assert [len(groups[k]) for k in ("train", "echo", "proxy-tuning", "best-of-n")] == [2, 1, 1, 0]
