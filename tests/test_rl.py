"""The RL recipes train a few steps on a tiny model with Hugging Face generation, and evaluate like RL runs."""

import json
import random
import shutil

import pytest
import torch
from trl.import_utils import is_vllm_available

import align_proxy.rl
from align_proxy.data.validation import DatasetFormatError
from align_proxy.rewards import RewardError
from support import changed, load_recipe, recipe_parser

pytestmark = pytest.mark.slow  # trains real models

# A few steps, small groups: seconds on one CPU core.
TINY = ["--max_steps", "3", "--per_device_train_batch_size", "16", "--num_generations", "4",
        "--builtin_train_size", "64", "--builtin_test_size", "32", "--eval_size", "16", "--eval_num_samples", "2",
        "--logging_steps", "1", "--learning_rate", "1e-3", "--warmup_steps", "0"]
RL_METRICS = {"task_accuracy", "reward", "gold_reward", "kl_to_reference", "response_length"}


def run_rl(name, config, out, model, *overrides):
    args = recipe_parser(name).parse_args_and_config(
        ["--config", f"recipes/configs/{config}", "--model_name_or_path", model, "--output_dir", str(out), *TINY,
         *overrides])
    return load_recipe(name).main(*args).to_json()  # metrics.json's layout


def assert_paired(metrics):
    items = metrics["eval"]["items"]
    for name, scores in items["trained"].items():
        assert len(scores) == len(items["base"][name]) > 0, name


def test_grpo_trains_with_hf_generation_and_weighted_gold_rewards(tiny_model, tmp_path, capsys):
    # Exact match alone can leave every group of a tiny model all-wrong (no advantage, no update): digit
    # overlap is dense, so the parameters must move.
    metrics = run_rl("grpo", "grpo_ladder_cpu.yaml", tmp_path / "out", tiny_model, "--reward_funcs",
                     "arith_exact_match", "arith_digit_overlap", "--reward_weights", "1.0", "0.5",
                     "--base_eval_cache", str(tmp_path / "cache"), "--eval_judge", "arith_digit_overlap")
    assert "rollouts: Hugging Face generate (vLLM not requested)" in capsys.readouterr().out
    base, trained = metrics["eval"]["base"], metrics["eval"]["trained"]
    assert RL_METRICS | {"arith_exact_match", "arith_digit_overlap"} <= set(trained) and set(trained) == set(base)
    assert base["kl_to_reference"] == 0.0 and trained["kl_to_reference"] != 0.0  # the policy left its reference
    assert trained["reward"] == pytest.approx(trained["arith_exact_match"] + 0.5 * trained["arith_digit_overlap"])
    assert trained["gold_reward"] == trained["arith_exact_match"]  # the same samples, the same gold
    # The judge scores the same samples: judging with one of the training rewards gives that reward, per prompt.
    items = metrics["eval"]["items"]["trained"]
    assert items["judge_reward"] == items["arith_digit_overlap"]
    assert metrics["eval"]["details"]["trained"]["judge"]["judges"][0]["spec"] == "arith_digit_overlap"
    assert_paired(metrics)
    logged = {key for entry in metrics["train"]["log_history"] for key in entry}
    assert {"loss", "rewards/arith_exact_match/mean", "rewards/arith_digit_overlap/mean"} <= logged
    assert changed(tmp_path / "out", tiny_model)
    # An RL base evaluation depends on the rewards: it is cached apart from SFT/DPO's policy evaluation.
    assert [p.name.split("-")[0] for p in (tmp_path / "cache").glob("*.json")] == ["rl_policy"]


def conversational_shape(prompts, completions, **kwargs):
    """1.0 for each (prompt, completion) that arrives as TRL gives conversational data: lists of messages."""
    return [float(isinstance(p, list) and isinstance(c, list) and c[0]["role"] == "assistant")
            for p, c in zip(prompts, completions)]


def test_grpo_on_conversational_prompts_renders_them_with_the_chat_template(tiny_model, tmp_path):
    """Prompts as lists of messages: TRL renders them with the chat template in training; the RL evaluation
    must render them the same way and hand the rewards conversational completions, as TRL does."""
    from transformers import AutoTokenizer

    from align_proxy.evals.rl import prompt_token_ids

    chat_model = tmp_path / "chat-model"
    shutil.copytree(tiny_model, chat_model)
    tokenizer = AutoTokenizer.from_pretrained(chat_model)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"  # the task's own text
    tokenizer.save_pretrained(chat_model)
    rng = random.Random(0)
    rows = [(rng.randrange(10, 50), rng.randrange(10, 50)) for _ in range(80)]
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"{a}+{b}="}], "answer": str(a + b)})
                            + "\n" for a, b in rows))
    chats = [[{"role": "user", "content": "12+35="}]]
    assert tokenizer.decode(prompt_token_ids(tokenizer, chats)[0]) == "12+35="

    metrics = run_rl("grpo", "grpo_ladder_cpu.yaml", tmp_path / "out", str(chat_model), "--dataset_name", str(data),
                     "--reward_funcs", "arith_exact_match", "arith_digit_overlap",
                     "test_rl:conversational_shape", "--reward_weights", "1.0", "0.5", "0.0")
    base, trained = metrics["eval"]["base"], metrics["eval"]["trained"]
    assert {"reward", "arith_exact_match", "arith_digit_overlap", "kl_to_reference", "response_length"} <= set(trained)
    assert base["conversational_shape"] == trained["conversational_shape"] == 1.0  # in evaluation, as in training:
    logged = {entry.get("rewards/conversational_shape/mean") for entry in metrics["train"]["log_history"]}
    assert 1.0 in logged and logged <= {1.0, None}
    assert "gold_reward" not in trained  # a user's dataset: its rewards are the judges
    assert base["arith_digit_overlap"] > 0  # the completions reached the rewards as text they could parse
    assert_paired(metrics)
    assert changed(tmp_path / "out", str(chat_model))


def test_conversational_prompts_without_a_chat_template_fail_before_training(tiny_model, tmp_path):
    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"prompt": [{"role": "user", "content": f"{i}+1="}]}) + "\n" for i in range(20)))
    with pytest.raises(DatasetFormatError, match="column 'prompt' is conversational"):
        run_rl("grpo", "grpo_ladder_cpu.yaml", tmp_path / "out", tiny_model, "--dataset_name", str(data))
    assert not (tmp_path / "out" / "run_config.yaml").exists()


@pytest.fixture(scope="module")
def tiny_reward_model(tiny_model, tmp_path_factory):
    """A reward model trained by recipes/reward.py on the tiny rung, as a study or a user would make one."""
    out = tmp_path_factory.mktemp("reward-model")
    reward = load_recipe("reward")
    args = recipe_parser("reward").parse_args_and_config(
        ["--config", "recipes/configs/reward_ladder_cpu.yaml", "--model_name_or_path", tiny_model, "--output_dir",
         str(out), "--max_steps", "8", "--builtin_train_size", "256", "--eval_size", "16"])
    reward.main(*args)
    return str(out)


def test_rloo_with_a_learned_reward_reports_learned_and_gold_rewards(tiny_model, tiny_reward_model, tmp_path):
    metrics = run_rl("rloo", "rloo_ladder_cpu.yaml", tmp_path, tiny_model, "--reward_funcs", tiny_reward_model,
                     "--curve_every", "1", "--curve_prompts", "4")
    # The overoptimization curve: a point before the first step and after each, proxy and gold reward and KL.
    curve = metrics["train"]["curve"]
    assert [p["step"] for p in curve] == list(range(metrics["train"]["global_step"] + 1))
    assert curve[0]["kl_to_reference"] == 0.0  # the policy is its reference before it trains
    assert all({"proxy_reward", "gold_reward", "kl_to_reference", "sqrt_kl", "items"} <= set(p) for p in curve)
    assert all(len(p["items"]["gold_reward"]) == 4 for p in curve)  # per prompt, for resampling prompts
    assert curve[-1]["kl_to_reference"] != 0.0
    from align_proxy.studies.overoptimization_run import rl_curve

    measured = rl_curve(str(tmp_path), n_resamples=100)  # what `align-proxy overoptimization --rl-run` fits
    assert measured.form == "rl" and measured.reward_model == tiny_reward_model and measured.d[0] == 0.0
    assert measured.gold.shape == (4, len(curve)) and measured.fit is not None
    base, trained = metrics["eval"]["base"], metrics["eval"]["trained"]
    for scores in (base, trained):
        assert RL_METRICS | {"learned_reward"} <= set(scores)
        # Two different judges of the same samples: a logit of the reward model and a 0/1 gold check.
        assert scores["learned_reward"] != scores["gold_reward"]
    assert trained["learned_reward"] != base["learned_reward"]
    assert "rewards/learned_reward/mean" in {key for entry in metrics["train"]["log_history"] for key in entry}
    assert_paired(metrics)
    assert changed(tmp_path, tiny_model)


def test_a_reward_that_breaks_its_contract_stops_training_naming_it(tiny_model, tmp_path):
    with pytest.raises(RewardError, match="reward 'gives_nan' returned nan"):
        run_rl("grpo", "grpo_ladder_cpu.yaml", tmp_path, tiny_model, "--reward_funcs",
               "support:gives_nan", "--eval_before", "false")


@pytest.mark.parametrize("recipe", ["grpo", "rloo"])
def test_use_vllm_without_vllm_fails_at_startup(recipe, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setattr(align_proxy.rl, "is_vllm_available", lambda: False)
    with pytest.raises(ImportError, match=r"--use_vllm is set, but vLLM is not installed.*\.\[vllm\]"):
        run_rl(recipe, f"{recipe}_ladder_cpu.yaml", tmp_path, tiny_model, "--use_vllm", "true",
               "--reward_funcs", "arith_exact_match")
    assert not (tmp_path / "run_config.yaml").exists()  # stopped before anything was read, run or written


def test_an_unknown_vllm_mode_fails_at_startup(tiny_model, tmp_path):
    with pytest.raises(ValueError, match="--vllm_mode 'remote'.*'colocate'.*'server'"):
        run_rl("grpo", "grpo_ladder_cpu.yaml", tmp_path, tiny_model, "--use_vllm", "true", "--vllm_mode", "remote")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiled decoding is set up only on a CUDA GPU")
def test_hf_rollouts_on_a_gpu_use_a_static_cache_and_compiled_decoding(tiny_model, tmp_path, capsys):
    metrics = run_rl("grpo", "grpo_ladder_cpu.yaml", tmp_path, tiny_model, "--use_cpu", "false",
                     "--reward_funcs", "arith_digit_overlap")
    assert "static cache, compiled decoding (CUDA graphs)" in capsys.readouterr().out
    assert metrics["train"]["distributed"]["device"] == "cuda" and changed(tmp_path, tiny_model)


@pytest.mark.skipif(not (torch.cuda.is_available() and is_vllm_available()), reason="vLLM rollouts need vLLM and a GPU")
def test_grpo_rolls_out_with_colocated_vllm(tiny_model, tmp_path, capsys):
    run_rl("grpo", "grpo_ladder_cpu.yaml", tmp_path, tiny_model, "--use_cpu", "false", "--use_vllm", "true",
           "--vllm_gpu_memory_utilization", "0.2", "--reward_funcs", "arith_digit_overlap")
    assert "rollouts: vLLM (colocated on this GPU" in capsys.readouterr().out
    assert changed(tmp_path, tiny_model)
    assert json.loads((tmp_path / "metrics.json").read_text())["eval"]["trained"]["kl_to_reference"] != 0.0


def test_compiled_rollouts_keep_one_static_cache_between_generate_calls():
    """transformers builds a fresh static cache every generate() call, and CUDA graphs of the compiled decoding step
    would record again for its new addresses: the recipe's rollouts reuse one, reset in place, with the same output."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from align_proxy.rl import StaticCacheReuse

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                         pad_token_id=0, eos_token_id=2)).eval()
    config = GenerationConfig(max_new_tokens=5, do_sample=False, cache_implementation="static", pad_token_id=0,
                              eos_token_id=2)
    prompts = [torch.randint(3, 32, (4, length)) for length in (6, 9, 7)]  # lengths within one rounded cache
    with torch.no_grad():
        fresh = [model.generate(input_ids=ids, generation_config=config) for ids in (*prompts[:2], prompts[2][:2])]
        reuse = StaticCacheReuse(model)
        outputs = [reuse(input_ids=prompts[0], generation_config=config)]
        first = reuse.cache
        outputs.append(reuse(input_ids=prompts[1], generation_config=config))
        assert reuse.cache is first and reuse.built == 1  # same batch, longer prompts but room: reset, not rebuilt
        outputs.append(reuse(input_ids=prompts[2][:2], generation_config=config))
        assert reuse.built == 2  # another batch size: another cache
    assert all(torch.equal(a, b) for a, b in zip(fresh, outputs))
    assert config.cache_implementation == "static"  # TRL's generation config is left as it was


def test_compiled_evaluation_sampling_decodes_equal_batches_through_one_kept_static_cache(monkeypatch):
    """The judged and RL evaluations' sampler, with compiled decoding forced on (on a GPU it is chosen when the
    decoding is long enough): 10 replies at batch 4 become 3 batches of 4, the last padded and cut back, all through
    one static cache, and the replies are those eager decoding gives (top_k=1: sampling without chance)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    import align_proxy.evals.rl as evals_rl
    from align_proxy.evals.rl import Sampling, compile_blocker, decoding_plan, sample_completions

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                                         pad_token_id=0, eos_token_id=2)).eval()
    caches = []

    class Recorded(align_proxy.rl.StaticCacheReuse):
        def __init__(self, model):
            super().__init__(model)
            caches.append(self)

    monkeypatch.setattr(evals_rl, "StaticCacheReuse", Recorded)
    prompts = [torch.randint(3, 32, (length,)).tolist() for length in (5, 9, 7, 6, 8)]
    sampling = Sampling(max_new_tokens=6, top_k=1, num_samples=2)
    tokenizer = type("Tokenizer", (), {"pad_token_id": 0})()
    eager = sample_completions(model, tokenizer, prompts, sampling, [2], batch_size=4, compile=False)
    assert not caches
    compiled = sample_completions(model, tokenizer, prompts, sampling, [2], batch_size=4, compile=True)
    (reuse,) = caches
    assert (reuse.calls, reuse.built) == (3, 1)
    assert compiled == eager and len(compiled[1]) == 10
    # Left to itself on a CPU it stays eager, and says why.
    assert compile_blocker(model, 10, 4, 6) == "not on a GPU"
    assert decoding_plan(model, 10, 4, 6) == "eager decoding, dynamic cache (not on a GPU)"
