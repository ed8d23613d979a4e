"""A malformed JSON or JSON Lines data file is an error naming the file, the line and the fix."""

import json

import pytest

from align_proxy.data.loading import load_recipe_data
from align_proxy.data.validation import DatasetFormatError

ROW = {"prompt": "1+1=", "completion": "2"}


def test_a_broken_jsonl_line_is_named(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps(ROW) + "\n" + json.dumps(ROW) + "\n" + '{"prompt": "2+2=", "completion": \n')
    with pytest.raises(DatasetFormatError, match=r"sft\.jsonl, line 3 column \d+: not valid JSON"):
        load_recipe_data(str(path), "sft")


def test_a_jsonl_line_that_is_not_an_object_is_named(tmp_path):
    path = tmp_path / "sft.jsonl"
    path.write_text(json.dumps(ROW) + "\n\n" + json.dumps(["1+1=", "2"]) + "\n")
    with pytest.raises(DatasetFormatError, match=r"sft\.jsonl, line 3: a JSON list, not an object"):
        load_recipe_data(str(path), "sft")


def test_a_broken_json_document_is_named_with_its_line(tmp_path):
    path = tmp_path / "sft.json"
    path.write_text("[\n" + json.dumps(ROW) + ",\n" + json.dumps(ROW) + "\n")  # the closing bracket is missing
    with pytest.raises(DatasetFormatError, match=r"sft\.json, line \d+ column \d+: not valid JSON"):
        load_recipe_data(str(path), "sft")


def test_json_lines_in_a_json_file_and_a_folder_of_files_still_load(tmp_path):
    (tmp_path / "lines.json").write_text("".join(json.dumps(ROW) + "\n" for _ in range(4)))
    assert len(load_recipe_data(str(tmp_path / "lines.json"), "sft").train) == 3  # one row held out
    folder = tmp_path / "splits"
    folder.mkdir()
    (folder / "train.jsonl").write_text(json.dumps(ROW) + "\n")
    (folder / "test.jsonl").write_text(json.dumps(ROW) + "\n{oops\n")
    with pytest.raises(DatasetFormatError, match=r"test\.jsonl, line 2"):
        load_recipe_data(str(folder), "sft")
