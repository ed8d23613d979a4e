"""A dataset mixture (`datasets:` in a recipe's YAML, TRL's `DatasetMixtureConfig`) in every recipe, built-in tasks and
local files included: TRL's fraction rule, `--mix ID=SHARE`, and a study's grid over one dataset's share
(`align_proxy/data/mixture.py`)."""

import json

import pytest
import yaml

from align_proxy.data.mixture import apply_shares, mixed
from align_proxy.errors import RecipeArgumentError
from support import REPO, run_recipe

MIXTURE = [{"path": "builtin:arith", "fraction": 0.7}, {"path": "builtin:arith-3digit", "fraction": 0.3}]


def test_the_fraction_rule_is_trls_own(tmp_path):
    from trl.scripts.utils import DatasetConfig, DatasetMixtureConfig, get_dataset

    sizes, fractions = (50, 200), (0.3, 0.7)
    files = []
    for i, n in enumerate(sizes):
        files.append(tmp_path / f"part{i}.jsonl")
        files[-1].write_text("".join(json.dumps({"text": f"{i}-{j}"}) + "\n" for j in range(n)))
    trl = get_dataset(DatasetMixtureConfig(datasets=[DatasetConfig(path="json", data_files=str(f), fraction=w)
                                                     for f, w in zip(files, fractions)]))["train"]
    ours = mixed([{"fraction": w} for w in fractions], list(sizes))
    assert [sum(t.startswith(f"{i}-") for t in trl["text"]) for i in range(2)] == ours == [50, 117]
    assert mixed([{}, {}], [3, 4]) == [3, 4]  # no fractions: everything, concatenated
    with pytest.raises(RecipeArgumentError, match="for every dataset of the mixture or for none"):
        mixed([{"fraction": 0.5}, {}], [3, 4])


def test_a_share_set_by_mix_keeps_the_others_proportions_and_bad_shares_name_the_fix():
    three = MIXTURE + [{"path": "/data/chat.jsonl", "fraction": 0.35}]
    shares = [e["fraction"] for e in apply_shares(three, ["arith-3digit=0.5"])]
    assert shares == pytest.approx([0.5 * 0.7 / 1.05, 0.5, 0.5 * 0.35 / 1.05])
    with pytest.raises(RecipeArgumentError, match="no dataset 'arith3'; its datasets: arith, arith-3digit"):
        apply_shares(MIXTURE, ["arith3=0.2"])
    with pytest.raises(RecipeArgumentError, match="strictly between 0 and 1"):
        apply_shares(MIXTURE, ["arith=1.5"])


@pytest.mark.slow  # two short SFT runs on the tiny ladder, ~10 s
def test_sft_trains_on_a_mixture_of_built_in_tasks_and_mix_sets_a_share(tiny_model, tmp_path, capsys):
    config = yaml.safe_load((REPO / "recipes/configs/sft_ladder_cpu.yaml").read_text())
    config = {k: v for k, v in config.items() if k != "dataset_name"} | {"datasets": MIXTURE}
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump(config))
    common = ("--max_steps", "2", "--builtin_train_size", "100", "--builtin_test_size", "10", "--eval_size", "20")
    record = run_recipe("sft", str(tmp_path / "mix.yaml"), tmp_path / "a", tiny_model, *common)
    out = capsys.readouterr().out
    # TRL's rule: 70% / 30% without oversampling either 100-row task is 100 rows of arith and 43 of arith-3digit.
    assert "mixture: 100 of 100 training rows of builtin:arith (70%)" in out, out
    assert "mixture: 43 of 100 training rows of builtin:arith-3digit (30%)" in out
    assert len(record.scores.items_base["completion_nll"]) == 20  # both tasks' held-out rows (10 each)
    run_recipe("sft", str(tmp_path / "mix.yaml"), tmp_path / "b", tiny_model, *common, "--mix", "arith-3digit=0.5")
    assert "mixture: 100 of 100 training rows of builtin:arith-3digit (50%)" in capsys.readouterr().out


def test_a_study_grid_over_one_datasets_share_makes_distinct_cells_named_by_it(tmp_path):
    from align_proxy.studies.spec import StudySpecError, load_spec

    config = yaml.safe_load((REPO / "recipes/configs/sft_ladder_cpu.yaml").read_text()) | {"datasets": MIXTURE}
    (tmp_path / "mix.yaml").write_text(yaml.safe_dump(config))

    def spec(grid):
        path = tmp_path / "spec.yaml"
        path.write_text(yaml.safe_dump({"name": "mix", "output_dir": str(tmp_path / "out"), "seeds": [0],
                                        "models": ["ladder-s", "ladder-m"],
                                        "recipes": [{"recipe": "sft", "config": str(tmp_path / "mix.yaml"),
                                                     "grid": grid}]}))
        return load_spec(path)

    cells = [c for c in spec({"mix.arith-3digit": [0.1, 0.3, 0.5]}).cells() if c.model == "ladder-s"]
    assert sorted(c.overrides["mix"] for c in cells) == [["arith-3digit=0.1"], ["arith-3digit=0.3"],
                                                         ["arith-3digit=0.5"]]
    assert len({c.config_hash for c in cells}) == 3  # the share is part of each cell's hash
    assert sorted(c.variant for c in cells)[0] == "mix.arith-3digit=0.1"
    with pytest.raises(StudySpecError, match="has no dataset 'chat' in its datasets: mixture"):
        spec({"mix.chat": [0.1, 0.3, 0.5]})
    with pytest.raises(StudySpecError, match="shares strictly between 0 and 1"):
        spec({"mix.arith": [0.0, 0.5, 1.0]})
    # A proxy-tuning cell reads its held-out items by dataset_name: with a mixture it would score other items.
    raw = yaml.safe_load((tmp_path / "spec.yaml").read_text())
    raw["recipes"][0] = {"recipe": "sft", "config": str(tmp_path / "mix.yaml"), "proxy_tune": True}
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(StudySpecError, match="proxy_tune with a datasets: mixture .* is not supported yet"):
        load_spec(tmp_path / "spec.yaml")


def test_the_modules_doctests_hold():
    import doctest

    import align_proxy.data.mixture as module

    failed, attempted = doctest.testmod(module)
    assert attempted and not failed
