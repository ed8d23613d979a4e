"""The offline ladder and the model registry as console tables (`align-proxy ladder`, `align-proxy models`)."""

from __future__ import annotations

from rich.table import Table


def ladder_table(reports, accuracies: dict[str, float] | None = None) -> Table:
    """The built rungs (`ladder_spec.RungReport`): size, shape, held-out loss, task accuracy and pretraining time."""
    table = Table(title="offline ladder (held-out = problems never seen in pretraining)")
    for column in ("rung", "parameters", "layers", "hidden", "held-out loss", "task accuracy", "pretrain s"):
        table.add_column(column, justify="left" if column == "rung" else "right", no_wrap=True)
    for r in reports:
        accuracy = f"{accuracies[r.name]:.3f}" if accuracies and r.name in accuracies else "-"
        table.add_row(r.name, f"{r.parameters:,}", str(r.num_hidden_layers), str(r.hidden_size),
                      f"{r.heldout_loss:.4f}", accuracy, f"{r.seconds:.0f}")
    return table


def task_accuracies(reports, spec) -> dict[str, float]:
    """Each rung's accuracy on 300 held-out problems of the ladder's task."""
    from align_proxy.data.tasks import get_task
    from align_proxy.models.tokenizer import build_tokenizer
    from align_proxy.evals.suite import EvalSet, evaluate_policy

    task = get_task(spec.task)
    evalset = EvalSet(task=task, task_prompts=task.evaluation(300, seed=spec.seed))
    return {r.name: evaluate_policy(r.path, build_tokenizer(), evalset).metrics["task_accuracy"] for r in reports}


def registry_table() -> Table:
    """Every registry model: the ladder's rungs (built or not) and the CLIMB models (converted or not)."""
    from align_proxy.models import ladder_spec, registry

    table = Table(title="model registry (also: any local Hugging Face directory or Hub id)")
    for column in ("name", "parameters", "source", "status"):
        table.add_column(column, overflow="fold")  # a path wraps whole at the console's width, never cut to "…"
    built = {r.name: r for r in ladder_spec.load_table()}
    for rung in ladder_spec.LadderSpec().rungs:
        report = built.get(rung.name)
        params = f"{report.parameters:,}" if report else "-"
        table.add_row(rung.name, params, "offline ladder", report.path if report else "built on first use")
    for variant in registry.CLIMB.values():
        cached = registry.climb_cache_dir(variant)
        status = str(cached) if (cached / "config.json").exists() else f"convert into {cached}"
        table.add_row(variant.name, f"{registry.parameters_from_config(variant.config()):,}",
                      f"{registry.CLIMB_REPO} (Megatron-LM)", status)
    return table
