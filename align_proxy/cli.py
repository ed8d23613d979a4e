"""The `align-proxy` command: run transfer studies and report them, build and inspect the offline
ladder, convert Megatron-LM checkpoints, list models and tasks, and check a dataset against a recipe
before spending compute on it. Recipes run as scripts (`python recipes/dpo.py ...` or
`accelerate launch ... recipes/dpo.py ...`), or from any directory as `align-proxy recipe dpo ...`."""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from align_proxy.kinds import KINDS

# Piped or logged output reads at 120 columns (rich assumes 80 off a terminal), a terminal's at its width, --wide's at
# any width (`main`); error messages stay on one line (soft wrap), so a path in them is never broken.
WIDTH = None if sys.stdout.isatty() else 120
console = Console(soft_wrap=True, width=WIDTH)

_debug = False  # --debug or ALIGN_PROXY_DEBUG=1: a user error keeps its traceback (set by `main`)


def _error(message) -> int:
    """Print a user error and give the exit code for one (2). The message is escaped: it quotes paths and
    examples such as `[ladder-s, ladder-m]`, which rich would otherwise take for markup and drop. Called while an
    exception is handled, under --debug, it re-raises that exception instead, traceback and all."""
    if _debug and sys.exc_info()[1] is not None:
        raise
    console.print(f"[red]error:[/red] {escape(str(message))}")
    return 2


def cmd_ladder(args) -> int:
    from align_proxy.models import ladder, ladder_spec
    from align_proxy.models.tables import ladder_table, task_accuracies

    spec = ladder_spec.LadderSpec(seed=args.seed)
    root = Path(args.home) if args.home else None
    if args.action == "build":
        console.print(f"building the offline ladder (seed {spec.seed}) in {ladder_spec.ladder_dir(spec, root)}")
        reports = ladder.build_ladder(spec, root, force=args.force, threads=args.threads,
                                      portable=not args.native_kernels)
    else:
        reports = ladder_spec.load_table(spec, root)
        if not reports:
            console.print("no rung is built yet: run `align-proxy ladder build`")
            return 1
    console.print(ladder_table(reports, None if args.no_eval else task_accuracies(reports, spec)))
    console.print(f"rungs saved in {ladder_spec.ladder_dir(spec, root)}")
    losses = [r.heldout_loss for r in reports]
    if len(reports) == len(spec.rungs) and losses != sorted(losses, reverse=True):
        console.print("[yellow]warning: held-out loss does not fall with every larger rung[/yellow]")
    return 0


def cmd_models(args) -> int:
    from align_proxy.models.tables import registry_table

    console.print(registry_table())
    return 0


def cmd_tasks(args) -> int:
    from align_proxy.data.tasks import BUILTIN_PREFIX, TASKS

    for name, task in TASKS.items():
        pair = task.preference(1, seed=0)[0]
        console.print(f"[bold]{BUILTIN_PREFIX}{name}[/bold]: operands of 1-{task.max_digits} digits, ops "
                      f"{' '.join(task.ops)}, {task.noise:.0%} mistakes in pretraining text; e.g. "
                      f"prompt={pair['prompt']!r} chosen={pair['chosen']!r} rejected={pair['rejected']!r}")
    return 0


def cmd_data_check(args) -> int:
    from align_proxy.chat_template import install_chat_template
    from align_proxy.data.loading import load_recipe_data
    from align_proxy.data.validation import validate_dataset
    from align_proxy.errors import UserInputError
    from align_proxy.recipe import load_tokenizer

    if args.chat_template_path and not (args.model or args.tokenizer):
        return _error("--chat_template_path goes on a tokenizer: give --model or --tokenizer too")
    try:
        tokenizer = load_tokenizer(args.model, args.tokenizer) if args.model or args.tokenizer else None
        if args.chat_template_path:
            install_chat_template(tokenizer, args.chat_template_path)
        data = load_recipe_data(args.dataset, args.recipe)
        for split, dataset in (("train", data.train), ("test", data.test)):
            fmt = validate_dataset(dataset, args.recipe, data.source, split, tokenizer, args.max_length)
            console.print(escape(f"{data.source} [{split}]: {len(dataset)} rows, {fmt.describe()}: ok"))
    except (UserInputError, ValueError) as err:
        return _error(err)
    return 0


def cmd_convert(args) -> int:
    from align_proxy.models.convert import convert_hf_to_megatron, convert_megatron_to_hf
    from align_proxy.models.megatron_reference import verify_conversion
    from align_proxy.models.megatron import ConversionError

    src, out = Path(args.src), Path(args.out_dir)
    to_megatron = (src / "config.json").exists()  # a Hugging Face directory goes the other way
    try:
        if to_megatron:
            report = convert_hf_to_megatron(src, out, iteration=args.iteration)
            console.print(f"wrote a Megatron-LM checkpoint (local spec) to {out}")
        else:
            report = convert_megatron_to_hf(src, out, tokenizer=args.tokenizer, variant=args.variant)
            console.print(f"wrote a Hugging Face model to {out}")
    except ConversionError as err:
        return _error(err)
    console.print_json(data={k: v for k, v in report.items() if k != "architecture"})
    if args.verify and not to_megatron:
        check = verify_conversion(src, out)
        if check["max_abs_logit_diff"] is None:
            console.print("verify: the converted model runs (finite logits: "
                          f"{check['hf_logits_finite']}); install megatron-core==0.16.1 to compare it with the source")
        else:
            console.print(f"verify: largest logit difference against megatron-core on {check['tokens']} tokens: "
                          f"{check['max_abs_logit_diff']:.3e}")
    return 0


def cmd_study(args) -> int:
    from dataclasses import replace

    from align_proxy.studies.report.console import print_report
    from align_proxy.studies.runner import StudyRunError, run_study, study_paths
    from align_proxy.studies.spec import load_spec

    # A bad spec, --slurm override or model (StudySpecError, ModelUnavailableError) is a user error: `main` prints it.
    spec = load_spec(args.spec)
    if args.jobs is not None and args.jobs < 1:
        return _error(f"--jobs {args.jobs}: run at least 1 cell at a time")
    if args.poll_seconds <= 0:
        return _error(f"--poll-seconds {args.poll_seconds}: give a positive number of seconds")
    if args.output_dir:
        spec = replace(spec, output_dir=args.output_dir)
    if args.status:
        return _print_study_status(Path(spec.output_dir))
    if args.slurm:
        spec = _with_slurm_overrides(spec, args.slurm)
    cells = spec.cells()
    proxy = sum(c.kind == "proxy-tuning" for c in cells)
    best = sum(c.kind == "best-of-n" for c in cells)
    console.print(f"study [bold]{spec.name}[/bold]: {len(spec.models)} models x {len(spec.recipes)} recipes "
                  f"({sum(len(p.variants()) for p in spec.recipes)} variants) x {len(spec.seeds)} seeds = "
                  f"{len(cells) - proxy - best} cells{f' + {proxy} proxy-tuning cells' if proxy else ''}"
                  f"{f' + {best} best-of-n cells' if best else ''}, in {spec.output_dir}", soft_wrap=False)
    if args.executor == "slurm":
        from align_proxy.studies.execute.slurm import shared_filesystem_warning

        warning = shared_filesystem_warning(Path(spec.output_dir))
        if warning:
            console.print(f"[yellow]warning:[/yellow] {escape(warning)}")
    try:
        outcome = run_study(spec, jobs=args.jobs, retry_failed=args.retry_failed, report=not args.no_report,
                            executor=args.executor, cancel_on_interrupt=args.cancel_on_interrupt,
                            ask_cancel=_ask_cancel if sys.stdin.isatty() else None, poll_s=args.poll_seconds)
    except StudyRunError as err:
        return _error(err)
    except KeyboardInterrupt as interrupt:
        jobs = getattr(interrupt, "jobs", 0)  # a Slurm run's (execute.scheduler.StudyInterrupted)
        console.print("interrupted: " + (f"{jobs} Slurm job(s) " + (
            "cancelled, their cells failed (--retry-failed submits them again)" if interrupt.cancelled else
            "left queued or running; rerun the same command to follow them (or scancel them)") if jobs else
            "rerun the same command to go on (finished cells are kept)"))
        return 130
    diverged = f", {outcome.diverged} diverged (a result: see --status)" if outcome.diverged else ""
    console.print(f"{outcome.done}/{outcome.total} cells done ({outcome.ran} run now), "
                  f"{outcome.failed} failed{diverged}; results in {study_paths(outcome.study_dir).db}", soft_wrap=False)
    if outcome.failed:
        console.print(f"failed cells keep their error and log: `align-proxy study {args.spec or ''} --status`; "
                      "rerun them with --retry-failed", soft_wrap=False)
    print_report(console, outcome.report, wide=args.wide)
    return 1 if outcome.failed else 0


def _with_slurm_overrides(spec, pairs: list[str]):
    """`--slurm KEY=VALUE ...` over every recipe's `slurm:` resources, checked like the spec's own."""
    from dataclasses import replace

    import yaml

    from align_proxy.studies.slurm_resources import check_slurm
    from align_proxy.studies.spec import StudySpecError

    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise StudySpecError(f"--slurm {pair}: give KEY=VALUE, e.g. --slurm partition=gpu --slurm time=4:00:00")
        parsed = yaml.safe_load(value) if value else None  # numbers and {mappings} as the spec's YAML would read them
        values[key] = str(value) if key in ("time", "mem", "partition", "account", "qos", "constraint") else parsed
    return replace(spec, recipes=[replace(plan, slurm=check_slurm(values, plan.slurm, "--slurm", "--slurm"))
                                  for plan in spec.recipes])


def _print_study_status(study_dir: Path) -> int:
    from align_proxy.studies.report.console import study_status_table

    table = study_status_table(study_dir)
    if table is None:
        console.print(f"no study has run in {study_dir} yet")
        return 1
    console.print(table)
    return 0


def _ask_cancel(jobs: int) -> bool:
    from rich.prompt import Confirm

    return Confirm.ask(f"\ncancel this study's {jobs} queued or running Slurm job(s)? (no: they run on, and rerunning "
                       "the study follows them)", default=False, console=console)


def cmd_overoptimization(args) -> int:
    import numpy as np

    from align_proxy.studies import overoptimization_run as overoptimization
    from align_proxy.studies.report.overoptimization import write_curves

    if not args.reward_model and not args.rl_run:
        return _error("give proxy reward models for best-of-n (--policy and --reward-model) "
                      "and/or RL runs trained with --curve_every (--rl-run)")
    if args.reward_model and not args.policy:
        return _error("--reward-model needs --policy: the fixed policy that samples the pool")
    curves = [overoptimization.rl_curve(run) for run in args.rl_run]  # checked before any sampling
    document = {"gold": args.gold, "rl_runs": args.rl_run}
    if args.reward_model:
        bon, pool = overoptimization.run(args.policy, args.reward_model, gold=args.gold, n=args.n,
                                         prompts=args.prompts, task=args.task, seed=args.seed,
                                         max_new_tokens=args.max_new_tokens, temperature=args.temperature)
        distinct = np.mean([len(set(row)) for row in pool.completions])
        console.print(f"best-of-n from {args.policy}: {len(pool.prompts)} prompts x {pool.size} samples "
                      f"({distinct:.1f} distinct per prompt); gold = {args.gold}")
        document.update(policy=args.policy, prompts=len(pool.prompts), pool_size=pool.size)
        curves = bon + curves
    write_curves(console, curves, document, Path(args.output_dir))
    return 0


def cmd_report(args) -> int:
    from align_proxy.studies.report.console import print_report
    from align_proxy.studies.runner import study_paths, write_study_report

    study_dir = Path(args.study_dir)
    if not study_paths(study_dir).db.exists():
        return _error(f"{study_dir} holds no results.sqlite: pass the output directory of a "
                      "study (`align-proxy study` writes one)")
    print_report(console, write_study_report(study_dir), wide=args.wide)
    return 0


def cmd_proxy_tune(args) -> int:
    from align_proxy.models import registry
    from align_proxy.proxy_tuning import HeldOut, ProxyModels, VocabularyMismatchError, score_proxy_tuning, trained_from
    from align_proxy.studies.analysis.gap_closed import gap_closed_records
    from align_proxy.studies.report.console import proxy_tuning_table

    try:
        anti_expert = args.anti_expert or trained_from(args.expert)
        models = ProxyModels(args.base, args.expert, anti_expert, args.alpha)
        held_out = HeldOut.of_run(args.expert, dataset=args.dataset, eval_size=args.eval_size,
                                  eval_seed=args.eval_seed)
        console.print(f"proxy-tuning {models.base} by {models.expert} - {models.anti_expert} (alpha {models.alpha:g}) "
                      f"on {held_out.eval_size} held-out items of {held_out.dataset} (eval seed {held_out.eval_seed})")
        scores = score_proxy_tuning(models, held_out, args.tuned)
    except (VocabularyMismatchError, FileNotFoundError, ValueError) as err:
        return _error(err)
    small, large = registry.resolve(models.anti_expert), registry.resolve(models.base)
    gaps = {g.metric: g for g in gap_closed_records(scores, held_out.recipe, "", small.name, large.name,
                                                     small.parameters, large.parameters, models.alpha)}
    console.print(proxy_tuning_table(scores, gaps, small.name, large.name))
    if not scores.tuned:
        console.print("pass --tuned DIR (the large model tuned directly) for the gap closed")
    return 0


def cmd_recipe(args) -> int:
    from align_proxy.install import recipe_names, recipes_dir, run_recipe

    if args.where:
        print(recipes_dir())  # plain, for $(align-proxy recipe --where)/dpo.py
        return 0
    if args.name not in recipe_names():
        named = f"unknown recipe {args.name!r}; " if args.name else ""
        return _error(f"{named}name a recipe: {', '.join(recipe_names())} (scripts and configs in {recipes_dir()})")
    run_recipe(args.name, args.args)
    return 0


def cmd_slurm_local(args) -> int:
    """Runs the shipped script (align_proxy/studies/slurm_local.sh), so a wheel install has it too."""
    import subprocess

    script = Path(__file__).parent / "studies" / "slurm_local.sh"
    return subprocess.run(["bash", str(script), args.action]).returncode


DEBUG_HELP = "show the traceback of a user error too (as ALIGN_PROXY_DEBUG=1 does), to debug align-proxy itself"
WIDE_HELP = "print tables whole and each conclusion on one line, however wide (default: fit the console's width)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="align-proxy", description=__doc__)
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    # Every command takes --debug after its name too; SUPPRESS keeps a subcommand's unset flag from overwriting
    # the top-level one (`align-proxy --debug study` and `align-proxy study --debug` both work).
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser = functools.partial(sub.add_parser, parents=[common])

    ladder_p = sub.add_parser("ladder", help="build or show the offline ladder of tiny base models")
    ladder_p.add_argument("action", choices=("build", "show"), help="build the uncached rungs, or show the built ones")
    ladder_p.add_argument("--seed", type=int, default=0, help="pretraining seed (same seed, same weights)")
    ladder_p.add_argument("--force", action="store_true", help="rebuild even if cached")
    ladder_p.add_argument("--home", help="cache root (default: $ALIGN_PROXY_HOME or ~/.cache/align-proxy)")
    ladder_p.add_argument("--no-eval", action="store_true", help="skip the held-out task accuracy column")
    # For checking how much a study depends on its base models (docs/concepts/machines.md):
    # another summation order pretrains other rungs, as another processor's kernels would. Use another --home.
    ladder_p.add_argument("--threads", type=int, default=1,
                          help="pretraining threads (default 1: the same weights on any core count)")
    ladder_p.add_argument("--native-kernels", action="store_true",
                          help="pretrain on this processor's own vectorized kernels, not the portable ones that "
                               "build the same weights on any x86-64 processor (for robustness checks)")
    ladder_p.set_defaults(func=cmd_ladder)

    convert_p = sub.add_parser("convert", help="convert a Megatron-LM checkpoint to Hugging Face format, or back")
    convert_p.add_argument("src", help="model_optim_rng.pt, an iter_* directory, a checkpoint root with "
                                       "latest_checkpointed_iteration.txt, or a Hugging Face directory (-> Megatron)")
    convert_p.add_argument("out_dir", help="a new directory to write")
    convert_p.add_argument("--tokenizer", help="tokenizer to save with the model (e.g. the Llama-2 tokenizer)")
    convert_p.add_argument("--variant", choices=("62m", "350m"), help="CLIMB shapes, for checkpoints without args")
    convert_p.add_argument("--iteration", type=int, default=0, help="iteration recorded in a Megatron output")
    convert_p.add_argument("--verify", action="store_true",
                           help="run the converted model and, with megatron-core installed, compare its logits")
    convert_p.set_defaults(func=cmd_convert)

    study_p = sub.add_parser("study", help="run a transfer study (the embedded default without a spec) and report it")
    study_p.add_argument("spec", nargs="?", help="study spec YAML (default: the embedded ladder study)")
    study_p.add_argument("--jobs", type=int, help="cells run at once (default: one per GPU, else one per CPU core); "
                                                  "cells go to the least busy GPU")
    study_p.add_argument("--retry-failed", action="store_true", help="run failed cells again")
    study_p.add_argument("--output-dir", help="study directory (default: the spec's output_dir)")
    study_p.add_argument("--status", action="store_true", help="list the cells and their status, run nothing")
    study_p.add_argument("--no-report", action="store_true", help="skip writing the report at the end")
    study_p.add_argument("--executor", choices=("local", "slurm"), default="local",
                         help="run cells on this machine (default) or submit each as a Slurm job (through submitit)")
    study_p.add_argument("--slurm", action="append", metavar="KEY=VALUE",
                         help="override a slurm: resource of every recipe (partition, account, qos, time, mem, cpus, "
                              "gpus_per_cell, constraint); repeatable")
    study_p.add_argument("--cancel-on-interrupt", action=argparse.BooleanOptionalAction, default=None,
                         help="on Ctrl-C, cancel the study's Slurm jobs (or, with --no-cancel-on-interrupt, leave them "
                              "running for a rerun to follow) without asking")
    study_p.add_argument("--poll-seconds", type=float, default=10.0,
                         help="how often the Slurm coordinator asks squeue about its jobs (default 10)")
    study_p.add_argument("--wide", action="store_true", help=WIDE_HELP)
    study_p.set_defaults(func=cmd_study)

    slurm_p = sub.add_parser("slurm-local", help="start or stop a single-node Slurm on this machine (root; Debian's "
                                                 "slurm-wlm and munge) to try --executor slurm")
    slurm_p.add_argument("action", choices=("start", "stop", "status"), help="start, stop or report the local Slurm")
    slurm_p.set_defaults(func=cmd_slurm_local)

    recipe_p = sub.add_parser("recipe", help="run a recipe script from any directory: align-proxy recipe sft --config "
                                             "sft_ladder_cpu.yaml ... (shipped config names resolve)")
    recipe_p.add_argument("name", nargs="?", help="sft, dpo, reward, grpo or rloo")
    recipe_p.add_argument("args", nargs=argparse.REMAINDER,
                          help="the recipe's own flags, as `python recipes/NAME.py` takes them")
    recipe_p.add_argument("--where", action="store_true", help="print where the recipe scripts and configs are")
    recipe_p.set_defaults(func=cmd_recipe)

    proxy_p = sub.add_parser("proxy-tune", help="decode a large base model steered by a small model's tuning "
                                                "(Liu et al. 2024) and measure the gap it closes")
    proxy_p.add_argument("--base", required=True, help="the large base model (registry name or directory)")
    proxy_p.add_argument("--expert", required=True, help="a small model a recipe tuned (its output directory)")
    proxy_p.add_argument("--anti-expert", help="the small model the expert was tuned from (default: the model its "
                                               "run_config.yaml names)")
    proxy_p.add_argument("--tuned", help="the large model tuned directly by the same recipe: gives the gap closed")
    proxy_p.add_argument("--alpha", type=float, default=1.0, help="strength: base + alpha * (expert - anti-expert)")
    proxy_p.add_argument("--dataset", help="held-out data (default: the expert's run's dataset)")
    proxy_p.add_argument("--eval-size", type=int, help="held-out items per metric (default: the expert's run's)")
    proxy_p.add_argument("--eval-seed", type=int, help="seed of the held-out items (default: the expert's run's)")
    proxy_p.set_defaults(func=cmd_proxy_tune)

    report_p = sub.add_parser("report", help="write a study's report (HTML, Markdown, JSON) from its results")
    report_p.add_argument("study_dir", help="the study's output directory")
    report_p.add_argument("--wide", action="store_true", help=WIDE_HELP)
    report_p.set_defaults(func=cmd_report)

    over_p = sub.add_parser("overoptimization", help="gold vs proxy reward against sqrt(KL) per proxy reward model, "
                                                     "for best-of-n and RL, with Gao et al.'s fits")
    over_p.add_argument("--policy", help="best-of-n: the fixed policy that samples the pool (name or directory)")
    over_p.add_argument("--reward-model", nargs="+", default=[],
                        help="best-of-n: proxy reward model directories (recipes/reward.py outputs), e.g. one per rung")
    over_p.add_argument("--rl-run", nargs="+", default=[],
                        help="RL: output directories of grpo/rloo runs trained against one learned reward with "
                             "--curve_every")
    over_p.add_argument("--gold", default="arith_exact_match",
                        help="best-of-n's gold reward: a reward name, module:function, or a reward-model directory")
    over_p.add_argument("--n", type=int, default=64, help="pool size per prompt: best-of-n for every n up to it")
    over_p.add_argument("--prompts", type=int, default=64, help="held-out prompts of the built-in task")
    over_p.add_argument("--task", default="arith", help="built-in task whose evaluation prompts are used")
    over_p.add_argument("--seed", type=int, default=0, help="prompt and sampling seed")
    over_p.add_argument("--max-new-tokens", type=int, default=8, help="completion length")
    over_p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the policy")
    over_p.add_argument("--output-dir", default="overoptimization",
                        help="where overoptimization.json and overoptimization.png go")
    over_p.add_argument("--wide", action="store_true", help=WIDE_HELP)
    over_p.set_defaults(func=cmd_overoptimization)

    sub.add_parser("models", help="list registry models and their parameter counts").set_defaults(func=cmd_models)
    sub.add_parser("tasks", help="list the built-in tasks").set_defaults(func=cmd_tasks)

    data_p = sub.add_parser("data", help="check a dataset against a recipe's TRL format")
    data_p.add_argument("action", choices=("check",), help="check: load the dataset and validate it for the recipe")
    data_p.add_argument("dataset", help="builtin:<task>, a local file, or a Hub dataset id")
    data_p.add_argument("--recipe", required=True, choices=list(KINDS), help="a recipe kind (align_proxy/kinds.py)")
    data_p.add_argument("--model", help="model whose tokenizer measures prompt lengths")
    data_p.add_argument("--tokenizer", help="tokenizer to measure prompt lengths with")
    data_p.add_argument("--max_length", type=int, help="the recipe's max_length")
    data_p.add_argument("--chat_template_path", help="chat template for conversational data, as the recipe takes it "
                                                      "(a shipped name such as minimal, or a .jinja file)")
    data_p.set_defaults(func=cmd_data_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. A user error any command meets (`align_proxy.errors.UserInputError`: bad data, spec, flag,
    model, template) prints its message and gives exit code 2, not a traceback (--debug or ALIGN_PROXY_DEBUG=1 shows
    it). Any other exception is a bug and keeps its traceback."""
    from align_proxy.errors import UserInputError, show_tracebacks

    global _debug
    args = build_parser().parse_args(argv)
    _debug = args.debug or show_tracebacks()
    console.width = 1000 if getattr(args, "wide", False) else WIDTH  # --wide: room for the widest table
    try:
        return args.func(args)
    except UserInputError as err:
        return _error(err)


if __name__ == "__main__":
    sys.exit(main())
