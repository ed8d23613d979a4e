"""Every shipped config parses into its recipe's dataclasses, so a stale config fails CI."""

from pathlib import Path

import pytest
import yaml

from support import REPO, recipe_parser

CONFIGS = sorted((REPO / "recipes" / "configs").glob("*.yaml"))
ACCELERATE = sorted((REPO / "recipes" / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_recipe_config_parses_and_names_its_command(path: Path):
    recipe_name = path.name.split("_")[0]
    first_line = path.read_text().splitlines()[0]
    assert first_line.startswith("# ") and f"recipes/{recipe_name}.py --config recipes/configs/{path.name}" in first_line
    # GPU configs ask for bf16, which transformers refuses on a CPU-only machine: override only that.
    script_args, training_args, model_args = recipe_parser(recipe_name).parse_args_and_config(
        ["--config", str(path), "--bf16", "false", "--use_cpu", "true"]
    )
    assert script_args.dataset_name and model_args.model_name_or_path and training_args.output_dir


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_config_is_complete(path: Path):
    config = yaml.safe_load(path.read_text())
    assert config["distributed_type"] in {"NO", "MULTI_GPU", "DEEPSPEED"}
    if config["distributed_type"] == "DEEPSPEED":
        assert config["deepspeed_config"]["zero_stage"] in (2, 3)
    assert path.read_text().startswith("# accelerate launch --config_file recipes/accelerate/" + path.name)


def test_the_required_accelerate_configs_ship():
    names = {p.stem for p in ACCELERATE}
    assert {"single_gpu", "multi_gpu", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_cpu"} <= names


@pytest.mark.parametrize("path", [p for p in CONFIGS if p.name.split("_")[0] in ("grpo", "rloo")], ids=lambda p: p.name)
def test_rl_config_names_rewards_that_resolve(path: Path):
    from align_proxy.rewards import get_reward

    script_args, training_args, _ = recipe_parser(path.name.split("_")[0]).parse_args_and_config(
        ["--config", str(path), "--bf16", "false", "--use_cpu", "true"])
    assert script_args.reward_funcs
    assert training_args.reward_weights is None or len(training_args.reward_weights) == len(script_args.reward_funcs)
    # A learned reward is the output directory of a shipped reward-model config, which the comment says to run first.
    learned = {yaml.safe_load(p.read_text())["output_dir"] for p in CONFIGS if p.name.startswith("reward_")}
    for spec in script_args.reward_funcs:
        if spec not in learned:
            assert callable(get_reward(spec, training_args)), spec
