"""The `align-proxy` command: models, tasks and data checks print what a user needs."""

import json

from align_proxy.cli import main


def test_models_lists_the_registry_with_parameter_counts(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "climb-62m" in out and "62,6" in out and "ladder-m" in out


def test_tasks_shows_an_example_pair(capsys):
    assert main(["tasks"]) == 0
    assert "builtin:arith" in capsys.readouterr().out


def test_data_check_accepts_good_data_and_explains_bad_data(tmp_path, capsys):
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"prompt": f"{i}+1=", "chosen": str(i + 1), "rejected": str(i)}) + "\n"
                            for i in range(10)))
    assert main(["data", "check", str(good), "--recipe", "dpo"]) == 0
    assert "[train]: 9 rows" in capsys.readouterr().out  # square brackets are printed, not taken for markup
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "1+1=", "chosen": "2", "reject": "3"}) + "\n" * 1)
    assert main(["data", "check", str(bad), "--recipe", "reward"]) == 2
    out = capsys.readouterr().out.replace("\n", "")
    assert "bad.jsonl" in out and "'rejected'" in out


def test_ladder_show_before_any_build_says_how_to_build(capsys):
    assert main(["ladder", "show", "--no-eval"]) == 1
    assert "align-proxy ladder build" in capsys.readouterr().out


def test_an_error_prints_its_bracketed_example(tmp_path, capsys):
    (tmp_path / "one.yaml").write_text("name: one\nmodels: [ladder-s]\n")
    assert main(["study", str(tmp_path / "one.yaml")]) == 2
    assert "(e.g. [ladder-s, ladder-m, ladder-l])" in capsys.readouterr().out
