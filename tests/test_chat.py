"""Conversational data on base models: the shipped chat template, --chat_template_path on every recipe, held-out
items scored on the tokens TRL's trainers train on, and user errors that end with their message and exit code 2."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from datasets import Dataset

from align_proxy.chat_template import ChatTemplateError, install_chat_template, resolve_chat_template
from align_proxy.data.tasks import get_task
from align_proxy.kinds import KINDS
from align_proxy.models.tokenizer import build_tokenizer
from align_proxy.recipe import make_parser
from align_proxy.run_metrics import RunMetrics
from align_proxy.scoring import _tokenize_pair
from support import REPO, run_recipe, run_script


def user(text):
    return [{"role": "user", "content": text}]


def assistant(text):
    return [{"role": "assistant", "content": text}]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def chat_sft_rows(n, seed=0):
    """The built-in task as TRL's conversational language-modeling rows (`messages`)."""
    return [{"messages": user(r["prompt"]) + assistant(r["completion"])}
            for r in get_task("arith").sft(n, split="train", seed=seed)]


def chat_preference_rows(n, seed=0):
    """The built-in task's preference pairs as conversational rows with an implicit prompt."""
    return [{"chosen": user(r["prompt"]) + assistant(r["chosen"]),
             "rejected": user(r["prompt"]) + assistant(r["rejected"])}
            for r in get_task("arith").preference(n, split="train", seed=seed)]


def test_builtin_arith_chat_poses_arith_problems_as_messages():
    chat, plain = get_task("builtin:arith-chat"), get_task("builtin:arith")
    for make in ("sft", "preference", "rl"):
        for chat_row, row in zip(getattr(chat, make)(8, split="test"), getattr(plain, make)(8, split="test")):
            assert chat_row["prompt"] == user(row["prompt"])
            for column in ("completion", "chosen", "rejected"):
                if column in row:
                    assert chat_row[column] == assistant(row[column])
    assert chat.evaluation(4)["prompt"] == [user(p) for p in plain.evaluation(4)["prompt"]]


def test_a_base_evaluation_is_cached_per_chat_template(tmp_path):
    from types import SimpleNamespace

    from align_proxy.base_eval import base_cache_key
    from align_proxy.recipe import make_parser

    script_args = make_parser("sft").parse_args_and_config(["--output_dir", str(tmp_path)])[0]
    tokenizer = build_tokenizer()
    run = SimpleNamespace(script_args=script_args, tokenizer=tokenizer,
                          model=SimpleNamespace(path=str(tmp_path), name="m"))
    evaluation = SimpleNamespace(cache_key=lambda: {"evaluation": "policy"})
    without = base_cache_key(run, evaluation)
    assert "chat_template" not in without  # the keys of runs without a template are what they were
    install_chat_template(tokenizer, "minimal")
    minimal = base_cache_key(run, evaluation)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert len({json.dumps(k, sort_keys=True) for k in (without, minimal, base_cache_key(run, evaluation))}) == 3


def test_every_recipe_takes_chat_template_path_once():
    for name in KINDS:
        script_args, training_args, _ = make_parser(name).parse_args_and_config(
            ["--output_dir", "out", "--chat_template_path", "minimal"])
        values = [getattr(a, "chat_template_path", None) for a in (script_args, training_args)]
        assert values.count("minimal") == 1, (name, values)


def test_the_shipped_template_marks_assistant_replies_and_ends_them_with_eos():
    tokenizer = build_tokenizer()
    install_chat_template(tokenizer, "minimal")
    conversation = user("2+3=") + assistant("5") + user("1+1=") + assistant("2")
    assert tokenizer.apply_chat_template(conversation, tokenize=False) == \
        "<s>User: 2+3=\nAssistant: 5</s>\nUser: 1+1=\nAssistant: 2</s>"
    rendered = tokenizer.apply_chat_template(conversation, tokenize=True, return_dict=True,
                                             return_assistant_tokens_mask=True)
    marked = [t for t, m in zip(rendered["input_ids"], rendered["assistant_masks"]) if m]
    assert tokenizer.decode(marked) == " 5</s> 2</s>"  # what assistant_only_loss trains on


def test_an_unknown_template_names_the_shipped_ones(tmp_path):
    with pytest.raises(ChatTemplateError, match=r"--chat_template_path chatml: no template named 'chatml'.*"
                                                r"Shipped templates: minimal"):
        resolve_chat_template("chatml")
    with pytest.raises(ChatTemplateError, match="is a directory: .* --tokenizer_name_or_path"):
        resolve_chat_template(str(tmp_path))
    (tmp_path / "mine.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    assert resolve_chat_template(str(tmp_path / "mine.jinja")) == tmp_path / "mine.jinja"


def test_a_scored_span_is_the_completion_mask_trls_sft_trainer_builds(random_model, tmp_path):
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(random_model)
    install_chat_template(tokenizer, "minimal")
    rows = [{"prompt": user("12+30="), "completion": assistant("42")},
            {"prompt": user("7-2=") + assistant("5") + user("5*2="), "completion": assistant("10")}]
    args = SFTConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], max_length=None)
    trainer = SFTTrainer(model=random_model, args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer)
    for row, trained in zip(rows, trainer.train_dataset):
        ids, start = _tokenize_pair(tokenizer, row["prompt"], row["completion"])
        assert ids == trained["input_ids"]
        # TRL folds its completion mask into the labels: -100 on every token it does not train on.
        assert [0] * start + [1] * (len(ids) - start) == [int(label != -100) for label in trained["labels"]]
        assert tokenizer.decode(ids[start:]) == f" {row['completion'][0]['content']}</s>"


@pytest.mark.slow  # three recipe runs on a tiny model, ~30 s
def test_sft_and_dpo_on_conversational_data_score_nll_and_preference_accuracy(tiny_model, tmp_path, capsys):
    sft_data = write_jsonl(tmp_path / "chats.jsonl", chat_sft_rows(80))
    run = ("--max_steps", "4", "--eval_size", "16", "--max_length", "64", "--chat_template_path", "minimal",
           "--dataset_name")
    sft = run_recipe("sft", "sft_ladder_cpu.yaml", tmp_path / "sft", tiny_model, *run, sft_data)
    out = capsys.readouterr().out
    # The run says what it measures, and why the rest is left out.
    assert "held-out evaluation: completion NLL on 8 completions; not measured: task accuracy (it checks greedy " \
           "replies against a built-in task's gold answers); preference accuracy (the test split holds no " \
           "chosen/rejected pairs)" in out
    table = out.split("base vs trained")[-1]
    assert "completion NLL" in table
    # A local file without a test split holds out a tenth of its rows: 8 of 80, each scored.
    assert sft.scores.base["completion_nll"] > 0 and len(sft.scores.items_base["completion_nll"]) == 8
    # The template is saved with the model, so what was trained on renders the same way when it is loaded.
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(tmp_path / "sft").chat_template == \
        resolve_chat_template("minimal").read_text()

    dpo_data = write_jsonl(tmp_path / "prefs.jsonl", chat_preference_rows(80))
    dpo = run_recipe("dpo", "dpo_ladder_cpu.yaml", tmp_path / "dpo", tiny_model, *run, dpo_data)
    table = capsys.readouterr().out.split("base vs trained")[-1]
    assert "completion NLL" in table and "preference accuracy" in table and "implicit-reward accuracy" in table
    assert len(dpo.scores.items_base["preference_accuracy"]) == 8

    # The built-in task in chat form: task accuracy from greedy replies to prompts rendered by the template.
    builtin = run_recipe("sft", "sft_ladder_cpu.yaml", tmp_path / "arith-chat", tiny_model, *run, "builtin:arith-chat",
                         "--builtin_train_size", "64", "--builtin_test_size", "16")
    assert len(builtin.scores.items_base["task_accuracy"]) == 16
    table = capsys.readouterr().out.split("base vs trained")[-1].splitlines()
    assert {"task accuracy", "completion NLL", "preference accuracy"} <= {line.split("  ")[0].split(" (")[0]
                                                                         for line in table}


def test_conversational_data_without_a_template_ends_with_exit_code_2_and_no_traceback(tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "prefs.jsonl", chat_preference_rows(20))
    result = subprocess.run([sys.executable, "recipes/dpo.py", "--config", "recipes/configs/dpo_ladder_cpu.yaml",
                             "--model_name_or_path", tiny_model, "--dataset_name", data,
                             "--output_dir", str(tmp_path / "out")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "error: " in result.stderr and "prefs.jsonl" in result.stderr and "--chat_template_path minimal" in \
        result.stderr
    assert not (tmp_path / "out").exists()


def test_win_rates_count_ties_half():
    from align_proxy.evals.judge import win_rates
    from align_proxy.evals.rl import per_prompt

    assert win_rates([1.0, 0.0, 2.0, 3.0], [0.0, 0.0, 3.0, 1.0]) == [1.0, 0.5, 0.0, 1.0]
    assert per_prompt([1.0, 0.5, 0.0, 1.0], 2) == [0.75, 0.5]


@pytest.mark.slow  # an SFT run whose base and trained models each sample two replies per prompt, ~15 s
def test_a_judged_run_reports_judge_reward_win_rates_and_length(tiny_model, tmp_path, capsys):
    record = run_recipe("sft", "sft_ladder_cpu.yaml", tmp_path / "run", tiny_model, "--max_steps", "8",
                        "--builtin_train_size", "256", "--eval_size", "12", "--eval_judge", "arith_exact_match",
                        "--eval_num_samples", "2")
    out = capsys.readouterr().out
    for who in ("base model", "trained model"):
        assert f"[align-proxy] {who}: length-controlled win rate vs reference " in out, out
    table = out.split("base vs trained")[-1]
    for label in ("judge reward", "win rate vs reference", "win rate vs base", "response length", "LC win rate"):
        assert label in table, table
    base, trained = record.scores.items_base, record.scores.items_trained
    assert base["win_rate_vs_base"] == [0.5] * 12  # the base against itself, by definition
    assert len(trained["win_rate_vs_base"]) == 12 and all(0 <= w <= 1 for w in trained["win_rate_vs_base"])
    # The judge is exact match and the reference is the gold answer: a sample wins only by a tie's half, never more.
    assert all(w <= 0.5 for w in base["win_rate_vs_reference"] + trained["win_rate_vs_reference"])
    assert all(n >= 1 for n in trained["response_length"])
    # metrics.json names the judge by its content and keeps each model's length-controlled win rate.
    written = RunMetrics.read(tmp_path / "run").scores
    import align_proxy.rewards.arith as arith

    for details in (written.details_base, written.details_trained):
        (judge,) = details["judge"]["judges"]
        assert judge["spec"] == "arith_exact_match" and judge["path"] == str(Path(arith.__file__).resolve())
        assert judge["sha256"] == hashlib.sha256(b"arith.py" + Path(arith.__file__).read_bytes()).hexdigest()
        assert details["judge"]["sampling"]["num_samples"] == 2
        lc = details["length_controlled_win_rate"]
        assert lc["prompts"] == 12 and all(0 <= lc[k] <= 1 for k in ("estimate", "low", "high")) and lc["raw"] <= 0.5
    # The per-prompt length-controlled values a study resamples average to the run's estimate.
    for items, details in ((base, written.details_base), (trained, written.details_trained)):
        values = items["length_controlled_win_rate"]
        estimate = details["length_controlled_win_rate"]["estimate"]
        assert len(values) == 12 and sum(values) / 12 == pytest.approx(estimate)


def test_a_judge_on_a_recipe_that_trains_no_policy_from_data_is_refused_before_anything_loads(tmp_path, monkeypatch,
                                                                                              capsys):
    code, out = run_script("reward", ["--config", "recipes/configs/reward_ladder_cpu.yaml", "--output_dir",
                                      str(tmp_path / "out"), "--eval_judge", "arith_exact_match"], monkeypatch, capsys)
    assert code == 2 and "--eval_judge judges the replies of a policy" in out and "Traceback" not in out
