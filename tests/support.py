"""Builders the test files share, in one module every test file imports the same way (`from support import ...`;
pytest puts tests/ on sys.path): no test file imports another. Fixtures stay in conftest.py, which also sets the
test environment before anything here is imported. Heavy libraries (torch, transformers, TRL) are imported where
they are used, so a test that needs none of them does not load them.

Recipe runs in a test, and the plain TRL run each is held to: the same TRL trainer built directly on the same
model path, config, data and seed, with none of align-proxy's run around it (speed plan, tokenizer loading, base
evaluation, callbacks, saving).

Why a same-run reference and not pinned numbers: the tests' tiny ladder is pretrained on the machine that runs them,
and another processor's kernels add in another order, so each machine trains a slightly different base model and
logs other losses (up to 2.6% apart between two x86-64 machines). Both runs here start from the one base model this
machine built, so what is compared is only what the recipe adds to TRL.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
import runpy
import sqlite3
import sys
import zlib
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest
import yaml

from align_proxy import PROJECT_ROOT as REPO
from align_proxy.studies.store import CellResult

# --- the tiny ladder and the recipe scripts ------------------------------------------------------------------------


def tiny_spec(seed: int = 0, steps: int = 600):
    """A two-rung ladder small enough to pretrain in seconds, same code path as the real one."""
    from align_proxy.models.ladder_spec import LadderSpec, Rung

    return LadderSpec(
        rungs=(
            Rung("tiny-a", hidden_size=32, intermediate_size=96, num_attention_heads=2, num_key_value_heads=1,
                 num_hidden_layers=2),
            Rung("tiny-b", hidden_size=64, intermediate_size=176, num_attention_heads=4, num_key_value_heads=2,
                 num_hidden_layers=2),
        ),
        seed=seed, steps=steps, batch_size=16, seq_len=64, warmup_steps=20, heldout_rows=16,
    )


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


# --- recipe runs held to plain TRL ---------------------------------------------------------------------------------

TRL_TRAINERS = {"sft": "SFTTrainer", "dpo": "DPOTrainer", "reward": "RewardTrainer"}  # TRL's class for each recipe
# How close a recipe's logged losses must be to the plain TRL run's, relative. On CPU the speed plan changes nothing
# that reaches a loss (align_proxy/speed.py), and both runs execute the same kernels on the same batches in one
# process, so they agree to the bit (measured on a 2-core AMD EPYC: 0 difference for sft, dpo and reward, and for sft
# with lm-eval scoring its base model first). The tolerance leaves room for a BLAS whose float32 sums depend on where
# a buffer lies in memory (Intel MKL without its reproducibility mode): one float32 ulp of noise on every weight of
# the base model moved these runs' logged losses by at most 1.7e-7. What it must catch moves them far more (measured
# on the SFT run): a learning rate 1% off by 4e-4, one more warm-up step by 4e-3, another data order (another seed,
# or one example fewer) by 5e-3 to 3e-2.
LOSS_RTOL = 1e-5


@contextlib.contextmanager
def one_thread():
    """One thread, as a study cell on a 2-core machine runs, for a recipe and its reference alike: how many threads
    split a matrix product changes the order its sums are added in, so the two must use the same number."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def recipe_argv(config: str, model: str, output_dir, *overrides: str) -> list[str]:
    return ["--config", str(REPO / "recipes" / "configs" / config), "--model_name_or_path", model,
            "--output_dir", str(output_dir), "--logging_steps", "2", *overrides]


def run_recipe(name: str, config: str, output_dir, model: str, *overrides: str):
    """`python recipes/<name>.py --config recipes/configs/<config> ...` in this process; its `RunMetrics`."""
    recipe = load_recipe(name)
    args = recipe_parser(name).parse_args_and_config(recipe_argv(config, model, output_dir, *overrides))
    with one_thread():
        return recipe.main(*args)


def stop_after(steps: int):
    """A callback that ends training after `steps` optimizer steps without touching the schedule (it still spans
    the whole run), so the first logged losses of a long run are had at a fraction of its cost."""
    from transformers import TrainerCallback

    class StopAfter(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step >= steps:
                control.should_training_stop = True

    return StopAfter()


def plain_trl_losses(name: str, config: str, output_dir, model: str, *overrides: str,
                     steps: int | None = None) -> list[float]:
    """The logged training losses of TRL's own trainer on what `run_recipe` with the same arguments trains: the
    config as TRL's parser reads it (no speed plan applied), the model by path (TRL loads it, seeds a reward head
    and builds the DPO reference itself), TRL's own tokenizer loading, and the recipe's training split. `steps`
    stops it early, schedule unchanged."""
    import trl

    from align_proxy.data.loading import load_recipe_data

    script_args, training_args, _ = recipe_parser(name).parse_args_and_config(
        recipe_argv(config, model, output_dir, *overrides))
    data = load_recipe_data(script_args.dataset_name, name, script_args.dataset_config,
                            script_args.dataset_train_split, script_args.dataset_test_split,
                            script_args.builtin_train_size, script_args.builtin_test_size, seed=training_args.seed,
                            eval_seed=script_args.eval_seed)
    trainer = getattr(trl, TRL_TRAINERS[name])(model=model, args=training_args, train_dataset=data.train,
                                               callbacks=[stop_after(steps)] if steps else None)
    with one_thread():
        trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h]


def losses(metrics) -> list[float]:
    """Logged training losses of a run's metrics (`RunMetrics.to_json()` or metrics.json)."""
    return [h["loss"] for h in metrics["train"]["log_history"] if "loss" in h]


def max_relative_difference(found: list[float], reference: list[float]) -> float:
    return max(abs(a - b) / abs(b) for a, b in zip(found, reference, strict=True))


def assert_losses_match_plain_trl(found: list[float], reference: list[float]) -> None:
    """The recipe's logged losses are the plain TRL run's, step for step (printed by `pytest -s`)."""
    print(f"recipe losses {found}\nplain TRL     {reference}")
    assert len(found) == len(reference) >= 3 and all(math.isfinite(x) for x in reference)
    print(f"max relative difference {max_relative_difference(found, reference):.2e}")
    assert found == pytest.approx(reference, rel=LOSS_RTOL, abs=0)


def changed(out, base_path) -> bool:
    """Whether training moved any weight the saved model shares with its base."""
    import torch
    from safetensors.torch import load_file

    trained, base = load_file(str(out / "model.safetensors")), load_file(f"{base_path}/model.safetensors")
    shared = [k for k in base if k in trained]
    return bool(shared) and any(not torch.equal(trained[k], base[k]) for k in shared)


# --- planted studies: synthetic cells with known effects -----------------------------------------------------------

MODELS = {"ladder-s": 202_272, "ladder-m": 797_760, "ladder-l": 1_786_464}
TARGET = ("climb-350m", 345_300_000.0)
PRIMARY = {"sft": "task_accuracy", "dpo": "task_accuracy", "reward": "preference_accuracy"}
SEEDS = (0, 1, 2)
# Seed-level offsets that sum to zero: each model's mean gain is exactly the planted one, yet seeds differ.
SEED_OFFSETS = {0: -0.01, 1: 0.0, 2: 0.01}


def planted_cells(recipe: str, gains: dict[str, dict[str, float]], metric: str = "task_accuracy",
                  seeds=SEEDS, n_items: int = 60, noise: float = 0.05, base_level: float = 0.5) -> list[CellResult]:
    """Cells whose per-item gains average exactly gains[variant][model] over seeds (centred item noise)."""
    cells = []
    for variant, per_model in gains.items():
        for model, gain in per_model.items():
            base = np.random.default_rng(MODELS[model]).normal(base_level, 0.1, n_items)  # shared base eval
            for seed in seeds:
                rng = np.random.default_rng(zlib.crc32(f"{recipe}/{variant}/{model}/{seed}".encode()))
                item_noise = rng.normal(0, noise, n_items)
                trained = base + gain + SEED_OFFSETS.get(seed, 0.0) + item_noise - item_noise.mean()
                cells.append(CellResult(
                    f"{recipe}-{variant}-{model}-{seed}", model, MODELS[model], recipe, variant, seed,
                    {metric: float(base.mean())}, {metric: float(trained.mean())},
                    {metric: base.tolist()}, {metric: trained.tolist()},
                    [{"step": s, "loss": 2.0 / (s + 1) + 0.01 * seed} for s in range(1, 11)], 1.0))
    return cells


def everywhere(gain: float) -> dict[str, float]:
    return {model: gain for model in MODELS}


def headline(analysis: dict, recipe: str) -> dict:
    return next(h for h in analysis.headline if h.recipe == recipe)


def gain_of(analysis: dict, recipe: str, variant: str, model: str, metric: str = "task_accuracy") -> dict:
    return next(g for g in analysis.gains if (g.recipe, g.variant, g.model, g.metric) ==
                (recipe, variant, model, metric))


def diverging(cells: list[CellResult], variant: str, model: str, seeds=SEEDS) -> list[CellResult]:
    """The cells of `variant` on `model` (those seeds) as a diverged run leaves them: base scores only."""
    out = []
    for c in cells:
        if (c.variant, c.model) == (variant, model) and c.seed in seeds:
            c = CellResult(c.config_hash, c.model, c.parameters, c.recipe, c.variant, c.seed, c.base, {},
                           c.items_base, {}, c.log_history, c.duration_s, {"step": 7, "loss": 1.5e5})
        out.append(c)
    return out


# --- fake studies: cells of the fake recipe kind (tests/fake_recipe.py), run by tests/fake_study.py ----------------

FAKE_STUDY = [sys.executable, str(REPO / "tests" / "fake_study.py")]


def fake_models(tmp_path: Path) -> list[str]:
    """Two model directories the registry resolves (a config.json, no weights: fake cells never load them)."""
    from transformers import LlamaConfig

    models = []
    for name, width in (("fake-s", 16), ("fake-l", 32)):
        path = tmp_path / name
        LlamaConfig(vocab_size=32, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=1).save_pretrained(path)
        models.append(str(path))
    return models


def write_spec(tmp_path: Path, name: str, grid: dict, seeds: list[int], recipes: list[dict] | None = None,
               seconds: float = 0.0, recipe: str = "fake", config: dict | None = None, models=None) -> Path:
    config_path = tmp_path / f"{name}-{recipe}.yaml"
    config_path.write_text(yaml.safe_dump(config if config is not None else {"seconds": seconds}))
    spec = {"name": name, "output_dir": str(tmp_path / name), "models": models or fake_models(tmp_path),
            "seeds": seeds, "recipes": [{"recipe": recipe, "config": str(config_path), "grid": grid}, *(recipes or [])]}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def rows(db: Path, sql: str, timeout: float = 5.0) -> list[tuple]:
    with closing(sqlite3.connect(db, timeout=timeout)) as conn:  # sqlite3's own context manager commits but never closes
        return conn.execute(sql).fetchall()


# --- recipe trainers on the speed plan's paths ---------------------------------------------------------------------

def parse(recipe: str, *argv: str):
    return recipe_parser(recipe).parse_args_and_config(list(argv))


def build_trainer(recipe: str, model: str, tmp_path, *flags: str):
    """The trainer `recipes/<recipe>.py` builds, on a few built-in examples, without evaluation."""
    from align_proxy.recipe import prepare_run

    args = parse(recipe, "--config", str(REPO / "recipes" / "configs" / f"{recipe}_ladder_cpu.yaml"),
                 "--model_name_or_path", model, "--output_dir", str(tmp_path / "-".join(flags or ["plain"])),
                 "--builtin_train_size", "48", "--builtin_test_size", "8", "--eval_before", "false", *flags)
    run = prepare_run(recipe, *args)
    run.apply_speed_plan()
    return run.kind.trainer_class(**run.trainer_kwargs()), run


def step_away_from_reference(model, scale: float = 0.05) -> None:
    import torch

    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))


# --- rewards that break their contract -----------------------------------------------------------------------------

def gives_nan(prompts, completions, **kwargs):
    """A reward function returning nan for every completion (loaded by name too: `support:gives_nan`)."""
    return [math.nan] * len(completions)


def logged_exact_match(prompts, completions, **kwargs):
    """The arithmetic task's exact match as a judge (`tests.support:logged_exact_match`) that appends, per call, the
    calling run's --output_dir and how many replies it scored to $JUDGE_LOG: a test counts who judged what."""
    from align_proxy.rewards.arith import exact_match

    if os.environ.get("JUDGE_LOG"):
        run = sys.argv[sys.argv.index("--output_dir") + 1] if "--output_dir" in sys.argv else "?"
        with open(os.environ["JUDGE_LOG"], "a") as log:
            log.write(f"{run} {len(completions)}\n")
    return exact_match(prompts, completions, **kwargs)


# --- checkpoints ---------------------------------------------------------------------------------------------------

class Payload:
    """Unpickles to `function(argument)`: what a malicious checkpoint carries in its `args`."""

    def __init__(self, function, argument):
        self.function, self.argument = function, argument

    def __reduce__(self):
        return self.function, (self.argument,)


def run_script(recipe: str, argv: list[str], monkeypatch, capsys) -> tuple[int, str]:
    """`python recipes/<recipe>.py ARGV` in this process (its `__main__`, `align_proxy.recipe.run_script`): its exit
    code and everything it printed."""
    monkeypatch.setattr(sys, "argv", [f"recipes/{recipe}.py", *argv])
    monkeypatch.chdir(REPO)
    with pytest.raises(SystemExit) as ended:
        runpy.run_path(str(REPO / "recipes" / f"{recipe}.py"), run_name="__main__")
    out = capsys.readouterr()
    return ended.value.code, out.out + out.err
