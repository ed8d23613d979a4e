"""Bad datasets fail with an error naming the file, column and TRL format, before any training."""

import json

import pytest
from datasets import Dataset

from align_proxy.data.loading import load_recipe_data
from align_proxy.data.validation import DatasetFormatError, validate_dataset
from align_proxy.models.tokenizer import build_tokenizer
from support import load_recipe, recipe_parser


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_missing_column_is_named_with_the_format_expected():
    ds = Dataset.from_dict({"prompt": ["1+1="], "chosen": ["2"]})
    with pytest.raises(DatasetFormatError) as err:
        validate_dataset(ds, "dpo", "prefs.jsonl", "train")
    message = str(err.value)
    assert "prefs.jsonl" in message and "'rejected'" in message and "preference format" in message


def test_misnamed_column_gets_a_rename_hint():
    ds = Dataset.from_dict({"prompt": ["1+1="], "chosen": ["2"], "rejectd": ["3"]})
    with pytest.raises(DatasetFormatError, match="found 'rejectd': rename it"):
        validate_dataset(ds, "reward", "prefs.csv", "train")


def test_empty_dataset_is_rejected():
    ds = Dataset.from_dict({"prompt": [], "completion": []})
    with pytest.raises(DatasetFormatError, match="sft.jsonl \\(split 'train'\\) has no rows"):
        validate_dataset(ds, "sft", "sft.jsonl", "train")


def test_wrong_value_type_names_the_column():
    ds = Dataset.from_dict({"prompt": ["1+1="], "completion": [2]})
    with pytest.raises(DatasetFormatError, match="column 'completion' holds int64 values.*prompt-completion"):
        validate_dataset(ds, "sft", "sft.parquet", "train")


def test_null_values_are_rejected():
    ds = Dataset.from_dict({"prompt": ["1+1=", None], "completion": ["2", "3"]})
    with pytest.raises(DatasetFormatError, match="column 'prompt' has 1 empty"):
        validate_dataset(ds, "sft", "sft.jsonl", "train")


def test_prompts_longer_than_max_length_everywhere_are_rejected():
    ds = Dataset.from_dict({"prompt": ["1234567890+1=", "99+99="], "chosen": ["a", "b"], "rejected": ["c", "d"]})
    with pytest.raises(DatasetFormatError, match="every prompt in column 'prompt' is at least 7 tokens.*max_length is 6"):
        validate_dataset(ds, "dpo", "prefs.jsonl", "train", build_tokenizer(), max_length=6)
    # One prompt that fits is enough: TRL truncates the others.
    assert validate_dataset(ds, "dpo", "prefs.jsonl", "train", build_tokenizer(), max_length=8).name == "preference"


def test_each_recipe_accepts_its_trl_formats():
    tok = build_tokenizer()
    assert validate_dataset(Dataset.from_dict({"text": ["1+1=2"]}), "sft", "x", "train", tok, 32).name == \
        "language-modeling"
    implicit = Dataset.from_dict({"chosen": ["1+1=2"], "rejected": ["1+1=3"]})
    assert validate_dataset(implicit, "reward", "x", "train", tok, 32).name == "implicit-prompt preference"
    messages = Dataset.from_dict({"messages": [[{"role": "user", "content": "hi"}]]})
    assert validate_dataset(messages, "sft", "x", "train").name == "conversational language-modeling"


def test_local_files_of_each_type_load(tmp_path):
    rows = [{"prompt": f"{i}+1=", "completion": str(i + 1)} for i in range(20)]
    jsonl = write_jsonl(tmp_path / "d.jsonl", rows)
    Dataset.from_list(rows).to_csv(str(tmp_path / "d.csv"))
    Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    (tmp_path / "d.json").write_text(json.dumps(rows))
    for path in (jsonl, tmp_path / "d.csv", tmp_path / "d.parquet", tmp_path / "d.json"):
        data = load_recipe_data(str(path), "sft", seed=0)
        assert len(data.train) + len(data.test) == 20 and len(data.test) == 2  # seeded held-out share


def test_header_only_csv_is_reported_as_having_no_rows(tmp_path):
    (tmp_path / "d.csv").write_text("prompt,completion\n")
    with pytest.raises(DatasetFormatError, match="d.csv has no rows"):
        load_recipe_data(str(tmp_path / "d.csv"), "sft")


def test_unsupported_file_type_and_unknown_hub_dataset_get_clear_errors(tmp_path):
    (tmp_path / "d.txt").write_text("x")
    with pytest.raises(ValueError, match="unsupported file type '.txt'"):
        load_recipe_data(str(tmp_path / "d.txt"), "sft")
    with pytest.raises(ValueError, match="Offline, use a built-in task"):
        load_recipe_data("no-such-user/no-such-dataset", "sft")


@pytest.mark.parametrize(
    "rows, expected",
    [
        ([], "is empty"),
        ([{"prompt": "1+1=", "chosen": "2"}], "missing column 'rejected'"),
        ([{"prompt": "1+1=", "chosen": "2", "rejectd": "3"}], "found 'rejectd'"),
        ([{"prompt": "1+1=", "chosen": 2, "rejected": 3}], "column 'chosen' holds int64"),
        ([{"prompt": "123456789012345678901234567890123=", "chosen": "2", "rejected": "3"}], "max_length is 32"),
    ],
)
def test_dpo_recipe_fails_on_bad_data_before_loading_any_model(tmp_path, monkeypatch, rows, expected):
    from align_proxy.models import registry

    def no_model(*args, **kwargs):
        raise AssertionError("the model was resolved before the data was checked")

    monkeypatch.setattr(registry, "resolve", no_model)
    data = write_jsonl(tmp_path / "bad.jsonl", rows * 4)
    dpo = load_recipe("dpo")
    parser = recipe_parser("dpo")
    args = parser.parse_args_and_config(
        ["--config", "recipes/configs/dpo_ladder_cpu.yaml", "--dataset_name", data, "--output_dir",
         str(tmp_path / "out")]
    )
    with pytest.raises(DatasetFormatError, match=expected) as err:
        dpo.main(*args)
    assert "bad.jsonl" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_conversational_data_needs_a_chat_template_before_anything_loads():
    prompts = Dataset.from_dict({"prompt": [[{"role": "user", "content": "1+1="}]]})
    tok = build_tokenizer()
    assert tok.chat_template is None
    with pytest.raises(DatasetFormatError, match="column 'prompt' is conversational .* no chat template .*"
                                                 "--chat_template_path minimal .*--tokenizer_name_or_path"):
        validate_dataset(prompts, "grpo", "chats.jsonl", "train", tok)
    # A tokenizer with a template renders the messages.
    tok.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert validate_dataset(prompts, "grpo", "chats.jsonl", "train", tok).name == "prompt-only"
