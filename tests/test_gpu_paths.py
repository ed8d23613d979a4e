"""On a GPU: the shipped fast path (packed rows, varlen attention, compiled decoder layers, bf16) trains like the plain
path on the same examples, and compiles once; GRPO decodes compiled, with one kept cache. Skipped without CUDA;
`benchmarks/gpu_check.sh` runs these first.

Each recipe's fast and plain trainers start from the same weights and take the same few batches (lengths differ
from step to step, as in training). Per step, loss and gradient norm must agree within bf16 tolerance, and after
the first step no decoder-layer graph may compile again."""

import pytest
import torch
from torch._dynamo.utils import counters

from support import REPO, build_trainer, parse, step_away_from_reference

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="the packed, compiled bf16 paths run on a CUDA GPU; the CPU suite checks "
                                       "their logic (tests/test_speed.py, tests/test_compiled_layers.py)")
LOSS_TOLERANCE = 2e-2  # relative: bf16 autocast, a different summation order in the varlen kernel
GRAD_TOLERANCE = 5e-2
BATCHES = ([0, 1, 2, 3, 4, 5], [6, 7, 8], [9, 10, 11, 12, 13, 14, 15, 16])  # rows of the plain trainer's data


def step(trainer, examples) -> tuple[float, float]:
    """Loss and gradient norm of one micro-batch, as `training_step` computes them (autocast), without an update."""
    trainer.model.train()
    batch = trainer._prepare_inputs(trainer.data_collator(examples))
    with trainer.accelerator.autocast():
        loss = trainer.compute_loss(trainer.model, batch)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(trainer.model.parameters(), float("inf"))
    trainer.model.zero_grad(set_to_none=True)
    return float(loss), float(norm)


@pytest.mark.parametrize("recipe", ["sft", "dpo", "reward"])
def test_fast_path_trains_like_the_plain_path_and_compiles_once(recipe, random_model, tmp_path):
    gpu = ("--use_cpu", "false", "--bf16", "true")
    plain, _ = build_trainer(recipe, random_model, tmp_path, "--proxy_speed", "false", *gpu)
    torch._dynamo.reset()
    counters.clear()
    fast, run = build_trainer(recipe, random_model, tmp_path, *gpu)
    assert run.speed.compiled_layers, run.speed.record()
    assert fast.args.packing if recipe == "sft" else run.speed.padding_free_batches, run.speed.record()
    if recipe == "reward":  # the score head is drawn at random when each trainer loads the model
        fast.model.load_state_dict(plain.model.state_dict())
    if recipe == "dpo":  # away from the reference, or both losses are log 2 whatever the reference
        for trainer in (plain, fast):
            step_away_from_reference(trainer.model)
    graphs = []
    for rows in BATCHES:
        plain_loss, plain_norm = step(plain, [plain.train_dataset[i] for i in rows])
        fast_loss, fast_norm = step(fast, [fast.train_dataset[i] if recipe == "dpo" else plain.train_dataset[i]
                                           for i in rows])
        assert fast_loss == pytest.approx(plain_loss, rel=LOSS_TOLERANCE), (rows, fast_loss, plain_loss)
        assert fast_norm == pytest.approx(plain_norm, rel=GRAD_TOLERANCE), (rows, fast_norm, plain_norm)
        graphs.append(counters["stats"]["unique_graphs"])
    assert graphs[0] > 0 and graphs[-1] == graphs[0], f"graphs compiled per step: {graphs}"


def test_grpo_steps_decode_compiled_with_one_kept_cache(random_model, tmp_path):
    from align_proxy.rl import StaticCacheReuse, configure_rollouts, reward_set
    from align_proxy.recipe import prepare_run

    script_args, training_args, model_args = parse(
        "grpo", "--config", str(REPO / "recipes" / "configs" / "grpo_ladder_cpu.yaml"), "--model_name_or_path",
        random_model, "--output_dir", str(tmp_path / "grpo"), "--builtin_train_size", "48", "--builtin_test_size",
        "8", "--eval_before", "false", "--use_cpu", "false", "--bf16", "true", "--reward_funcs",
        "arith_digit_overlap", "--max_steps", "3", "--steps_per_generation", "1", "--save_strategy", "no")
    rewards = reward_set(script_args, training_args)
    run = prepare_run("grpo", script_args, training_args, model_args)
    run.apply_speed_plan()
    trainer = run.kind.trainer_class(**run.trainer_kwargs(), reward_funcs=rewards.funcs)
    assert "compiled decoding (CUDA graphs)" in configure_rollouts(trainer, script_args)
    generate = trainer.accelerator.unwrap_model(trainer.model).generate
    assert isinstance(generate, StaticCacheReuse)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    trainer.train()
    assert trainer.state.global_step == 3 and generate.calls == 3 and generate.built == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


def test_evaluation_sampling_long_enough_to_repay_it_decodes_compiled_with_one_kept_cache(random_model, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import align_proxy.evals.rl as evals_rl
    from align_proxy.evals.rl import COMPILE_FROM_STEPS, Sampling, decoding_plan, sample_completions
    from align_proxy.rl import StaticCacheReuse

    caches = []

    class Recorded(StaticCacheReuse):
        def __init__(self, model):
            super().__init__(model)
            caches.append(self)

    monkeypatch.setattr(evals_rl, "StaticCacheReuse", Recorded)
    model = AutoModelForCausalLM.from_pretrained(random_model).cuda()
    tokenizer = AutoTokenizer.from_pretrained(random_model)
    prompts = [tokenizer(f"{i} + {i} =")["input_ids"] for i in range(6)]
    sampling = Sampling(max_new_tokens=COMPILE_FROM_STEPS // 2, top_k=1, num_samples=2)  # 12 rows, 2 batches of 6
    assert "compiled decoding" in decoding_plan(model, 12, 6, sampling.max_new_tokens)
    _, compiled = sample_completions(model, tokenizer, prompts, sampling, [tokenizer.eos_token_id], batch_size=6)
    (reuse,) = caches
    assert (reuse.calls, reuse.built) == (2, 1)
    _, eager = sample_completions(model, tokenizer, prompts, sampling, [tokenizer.eos_token_id], batch_size=6,
                                  compile=False)
    # Greedy in both: the same replies, but for a rare near-tie that compiled kernels round the other way.
    assert sum(a == b for a, b in zip(compiled, eager)) >= 10
