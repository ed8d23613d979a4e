"""What runs one study cell, whoever runs it (a process on this machine or a Slurm job, `studies.execute`): its
recipe's command line, or the proxy-tuning or best-of-n cell's."""

from __future__ import annotations

from pathlib import Path

from align_proxy.studies.spec import Cell


def cell_argv(cell: Cell, config: str, output_dir: Path, base_evals: Path, start_model: Path | None = None,
              reward_model: Path | None = None) -> list[str]:
    """The recipe's command line for a cell: its config file, then every override as a flag; a cell that
    starts from another cell's model (`start_from`) gets that cell's directory as its model, and one trained against
    another cell's reward model (`reward_from`) that directory as its only reward."""
    argv = ["--config", config, "--output_dir", str(output_dir), "--base_eval_cache", str(base_evals)]
    overrides = {**cell.overrides, **({"model_name_or_path": str(start_model)} if start_model else {}),
                 **({"reward_funcs": [str(reward_model)]} if reward_model else {})}
    for key, value in overrides.items():
        values = value if isinstance(value, list) else [value]  # e.g. a grid over reward_funcs lists
        argv += [f"--{key}", *(str(v).lower() if isinstance(v, bool) else str(v) for v in values)]
    return argv


# A proxy-tuning cell trains nothing: this module's __main__ steers the cell's large base with the small cell's model.
PROXY_CELL_SCRIPT = Path(__file__).resolve().parents[1] / "proxy_tuning.py"
# Nor does a best-of-n cell: evals/overoptimization.py's __main__ ranks the policy's samples by the cell's reward model.
BEST_OF_N_CELL_SCRIPT = Path(__file__).resolve().parents[2] / "evals" / "overoptimization.py"


def proxy_cell_argv(cell: Cell, output_dir: Path, expert: Path) -> list[str]:
    """A proxy-tuning cell's command line (`align_proxy.proxy_tuning.run_cell`)."""
    proxy = cell.proxy
    return ["--base", cell.model, "--expert", str(expert), "--small", proxy["small"], "--recipe", proxy["recipe"],
            "--variant", proxy["variant"], "--alpha", str(proxy["alpha"]), "--output_dir", str(output_dir)]


def best_of_n_cell_argv(cell: Cell, output_dir: Path, policy: Path | None, reward_model: Path) -> list[str]:
    """A best-of-n cell's command line (`align_proxy.evals.overoptimization.run_cell`): the policy is the start cell's model
    or the model the spec names."""
    settings = cell.best_of_n
    argv = ["--policy", str(policy) if policy else settings["policy"], "--reward-model", str(reward_model),
            "--n", str(settings["n"]), "--prompts", str(settings["prompts"]), "--seed", str(cell.seed),
            "--temperature", str(settings["temperature"]), "--max-new-tokens", str(settings["max_new_tokens"]),
            "--task", settings["task"], "--output-dir", str(output_dir)]
    return argv + (["--gold", settings["gold"]] if settings.get("gold") else [])


def cell_command(cell: Cell, script: Path, config: str, cell_dir: Path, base_evals: Path,
                 start_model: Path | None, reward_model: Path | None = None) -> tuple[str, list[str]]:
    """What runs a cell, whoever runs it (this machine or a Slurm job): its recipe's script and arguments, or the
    proxy-tuning or best-of-n cell's."""
    if cell.proxy:
        return str(PROXY_CELL_SCRIPT), proxy_cell_argv(cell, cell_dir, start_model)
    if cell.best_of_n:
        return str(BEST_OF_N_CELL_SCRIPT), best_of_n_cell_argv(cell, cell_dir, start_model, reward_model)
    return str(script), cell_argv(cell, config, cell_dir, base_evals, start_model, reward_model)
