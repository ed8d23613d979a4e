"""What runs one study cell, whoever runs it (a process on this machine or a Slurm job, `studies.execute`): its
command line, by its kind (`align_proxy.kinds.CellKind`)."""

from __future__ import annotations

from pathlib import Path

from align_proxy.kinds import cell_kind
from align_proxy.studies.spec import Cell


def cell_argv(cell: Cell, config: str, output_dir: Path, base_evals: Path, start_model: Path | None = None,
              reward_model: Path | None = None, judge_model: Path | None = None) -> list[str]:
    """A train cell's command line, its recipe script's: its config file, then every override as a flag; a cell that
    starts from another cell's model (`start_from`) gets that cell's directory as its model, one trained against
    another cell's reward model (`reward_from`) that directory as its only reward, and one judged by another cell's
    reward model (`judge_from`) that directory as its judge."""
    argv = ["--config", config, "--output_dir", str(output_dir), "--base_eval_cache", str(base_evals)]
    overrides = {**cell.overrides, **({"model_name_or_path": str(start_model)} if start_model else {}),
                 **({"reward_funcs": [str(reward_model)]} if reward_model else {}),
                 **({"eval_judge": [str(judge_model)]} if judge_model else {})}
    for key, value in overrides.items():
        values = value if isinstance(value, list) else [value]  # e.g. a grid over reward_funcs lists
        argv += [f"--{key}", *(str(v).lower() if isinstance(v, bool) else str(v) for v in values)]
    return argv


def proxy_cell_argv(cell: Cell, config: str | None, output_dir: Path, base_evals: Path | None, expert: Path,
                    reward_model: Path | None = None) -> list[str]:
    """A proxy-tuning cell's command line (`align_proxy.cells.proxy_tune`): the expert is the start cell's model."""
    params = cell.params
    return ["--base", cell.model, "--expert", str(expert), "--small", params.small, "--recipe", params.recipe,
            "--variant", params.variant, "--alpha", str(params.alpha), "--output_dir", str(output_dir)]


def best_of_n_cell_argv(cell: Cell, config: str | None, output_dir: Path, base_evals: Path | None,
                        policy: Path | None, reward_model: Path) -> list[str]:
    """A best-of-n cell's command line (`align_proxy.cells.best_of_n`): the policy is the start cell's model or the
    model the spec names."""
    params = cell.params
    argv = ["--policy", str(policy) if policy else params.policy, "--reward_model", str(reward_model),
            "--recipe", params.recipe, "--n", str(params.n), "--prompts", str(params.prompts), "--seed", str(cell.seed),
            "--temperature", str(params.temperature), "--max_new_tokens", str(params.max_new_tokens),
            "--task", params.task, "--output_dir", str(output_dir)]
    return argv + (["--gold", params.gold] if params.gold else [])


def cell_command(cell: Cell, script: Path, config: str, cell_dir: Path, base_evals: Path,
                 start_model: Path | None, reward_model: Path | None = None,
                 judge_model: Path | None = None) -> tuple[str, list[str]]:
    """What runs a cell, whoever runs it (this machine or a Slurm job): its kind's entry module, or for a train cell
    its recipe's script, and the kind's command line."""
    kind = cell_kind(cell.kind)
    program = kind.entry_path or script
    return str(program), kind.argv(cell, config, cell_dir, base_evals, start_model, reward_model, judge_model)
