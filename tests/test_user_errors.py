"""Errors for people: every bad input a user gives a recipe script or an `align-proxy` command ends with one message
naming the file, flag or key and the fix, and exit code 2, never a traceback; ALIGN_PROXY_DEBUG=1 shows it."""

import json
import pytest

from align_proxy.cli import main as cli
from support import run_script

BAD_DATA = [  # the validation tests' bad preference files (test_validation.py), and what their error says
    ([], "is empty"),
    ([{"prompt": "1+1=", "chosen": "2"}], "missing column 'rejected'"),
    ([{"prompt": "1+1=", "chosen": "2", "rejectd": "3"}], "found 'rejectd'"),
    ([{"prompt": "1+1=", "chosen": 2, "rejected": 3}], "column 'chosen' holds int64"),
    ([{"prompt": "123456789012345678901234567890123=", "chosen": "2", "rejected": "3"}], "max_length is 32"),
    ([{"prompt": [{"role": "user", "content": "1+1="}], "chosen": [{"role": "assistant", "content": "2"}],
       "rejected": [{"role": "assistant", "content": "3"}]}], "--chat_template_path minimal"),
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("rows, expected", BAD_DATA, ids=[e for _, e in BAD_DATA])
def test_bad_data_ends_the_recipe_and_the_data_check_with_its_message_and_exit_code_2(
        tmp_path, monkeypatch, capsys, rows, expected):
    data = write_jsonl(tmp_path / "bad.jsonl", rows * 4)
    code, out = run_script("dpo", ["--config", "recipes/configs/dpo_ladder_cpu.yaml", "--dataset_name", data,
                                   "--model_name_or_path", "ladder-s", "--output_dir", str(tmp_path / "out")],
                           monkeypatch, capsys)
    assert code == 2 and "Traceback" not in out and "error: " in out and "bad.jsonl" in out, out
    assert expected in out.replace("\n", " "), out
    assert not (tmp_path / "out").exists()
    code = cli(["data", "check", data, "--recipe", "dpo", "--model", "ladder-s", "--max_length", "32"])
    out = capsys.readouterr().out.replace("\n", " ")
    assert code == 2 and "Traceback" not in out and "error: " in out and expected in out, out


LOADER_CASES = [  # the validation tests' other bad inputs (test_validation.py): what the file holds, what the error says
    ("nulls.jsonl", '{"prompt": "1+1=", "completion": "2"}\n{"prompt": null, "completion": "3"}\n' * 4,
     "column 'prompt' has 4 empty"),
    ("header.csv", "prompt,completion\n", "header.csv has no rows"),
    ("data.txt", "1+1=2\n", "unsupported file type '.txt'"),
    (None, None, "Offline, use a built-in task"),  # a Hub dataset this machine cannot reach
]


@pytest.mark.parametrize("name, text, expected", LOADER_CASES, ids=[e for *_, e in LOADER_CASES])
def test_data_that_does_not_load_ends_the_recipe_and_the_data_check_with_exit_code_2(tmp_path, monkeypatch, capsys,
                                                                                    name, text, expected):
    data = "no-such-user/no-such-dataset"
    if name:
        data = str(tmp_path / name)
        (tmp_path / name).write_text(text)
    code, out = run_script("sft", ["--config", "recipes/configs/sft_ladder_cpu.yaml", "--dataset_name", data,
                                   "--output_dir", str(tmp_path / "out")], monkeypatch, capsys)
    assert code == 2 and "Traceback" not in out and "error: " in out and expected in out.replace("\n", " "), out
    code = cli(["data", "check", data, "--recipe", "sft"])
    out = capsys.readouterr().out.replace("\n", " ")
    assert code == 2 and "Traceback" not in out and "error: " in out and expected in out, out


@pytest.mark.parametrize("recipe, flags, expected", [
    ("sft", ["--dataset_name", "data/nowhere.txt"], "no-such"),
    ("sft", ["--dataset_name", "builtin:arithmetic"], "unknown built-in task 'builtin:arithmetic'"),
    ("sft", ["--model_name_or_path", "no-such-org/no-such-model"], "no-such-org/no-such-model"),
    ("dpo", ["--chat_template_path", "chatml"], "Shipped templates: minimal"),
    ("grpo", ["--use_vllm", "true", "--vllm_mode", "remote"], "--vllm_mode 'remote'"),
    ("rloo", ["--use_vllm", "true"], "pip install -e '.[vllm]'"),
], ids=["missing file", "unknown task", "unknown model", "unknown template", "bad flag value", "missing extra"])
def test_bad_flags_end_the_recipe_with_their_message_and_exit_code_2(tmp_path, monkeypatch, capsys, recipe, flags,
                                                                     expected):
    config = f"{recipe}_ladder_cpu.yaml"
    monkeypatch.setattr("align_proxy.rl.is_vllm_available", lambda: False)  # as on CI, whatever this machine has
    code, out = run_script(recipe, ["--config", f"recipes/configs/{config}", "--output_dir", str(tmp_path / "out"),
                                    *flags], monkeypatch, capsys)
    expected = expected if expected != "no-such" else "data/nowhere.txt"
    assert code == 2 and "Traceback" not in out and "error: " in out, out
    assert expected in out, out


def test_a_bad_spec_or_template_ends_a_command_with_exit_code_2_and_debug_shows_the_traceback(tmp_path, monkeypatch,
                                                                                              capsys):
    (tmp_path / "spec.yaml").write_text("name: x\nmodels: [ladder-s, ladder-m]\nrecipes: [{recipe: sfft}]\n")
    assert cli(["study", str(tmp_path / "spec.yaml")]) == 2
    assert "sfft" in capsys.readouterr().out
    data = write_jsonl(tmp_path / "chats.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}] * 4)
    assert cli(["data", "check", data, "--recipe", "sft", "--model", "ladder-s", "--chat_template_path", "chatml"]) == 2
    assert "Shipped templates: minimal" in capsys.readouterr().out
    from align_proxy.chat_template import ChatTemplateError

    for flags in (["--debug", "data", "check"], ["data", "check", "--debug"]):  # for debugging align-proxy itself
        with pytest.raises(ChatTemplateError):
            cli([*flags, data, "--recipe", "sft", "--model", "ladder-s", "--chat_template_path", "chatml"])
    # A recipe's --debug is transformers' (TrainingArguments.debug), so a recipe script takes the variable.
    monkeypatch.setenv("ALIGN_PROXY_DEBUG", "1")

    with pytest.raises(ChatTemplateError):
        run_script("dpo", ["--config", "recipes/configs/dpo_ladder_cpu.yaml", "--output_dir", str(tmp_path / "o"),
                           "--chat_template_path", "chatml"], monkeypatch, capsys)


@pytest.mark.parametrize("argv, expected", [
    (["report", "{tmp}"], "holds no results.sqlite"),
    (["study", "{tmp}/nowhere.yaml"], "cannot read study spec"),
    (["study", "--slurm", "badkey=1", "--executor", "slurm"], "unknown key 'badkey'"),
    (["recipe", "sfft"], "unknown recipe 'sfft'"),
    (["convert", "{tmp}", "{tmp}/out"], "no Megatron checkpoint at"),
    (["proxy-tune", "--base", "ladder-l", "--expert", "{tmp}"], "run_config.yaml not found"),
], ids=["report", "study spec", "slurm key", "recipe", "convert", "proxy-tune"])
def test_each_command_ends_a_bad_input_with_its_message_and_exit_code_2(tmp_path, capsys, argv, expected):
    code = cli([word.format(tmp=tmp_path) for word in argv])
    out = capsys.readouterr().out.replace("\n", " ")
    assert code == 2 and "Traceback" not in out and "error: " in out and expected in out, out
