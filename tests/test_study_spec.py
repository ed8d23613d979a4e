"""Study specs: malformed ones fail before anything runs; good ones expand into hashed cells."""

from pathlib import Path

import pytest

from align_proxy.studies.spec import StudySpecError, load_spec

GOOD = """
name: t
models: [ladder-s, ladder-m]
seeds: [0, 1]
recipes:
  - recipe: dpo
    config: recipes/configs/dpo_ladder_cpu.yaml
    grid: {beta: [0.1, 0.3]}
"""


def spec_file(tmp_path, text):
    path = tmp_path / "study.yaml"
    path.write_text(text)
    return path


def test_embedded_default_study_is_valid_and_spans_the_ladder():
    spec = load_spec()
    assert spec.models == ["ladder-s", "ladder-m", "ladder-l"] and len(spec.seeds) >= 2
    assert {plan.recipe for plan in spec.recipes} == {"sft", "dpo", "reward"}
    assert len(spec.cells()) == 3 * 3 * 2 * len(spec.seeds)  # recipes x models x variants x seeds


def test_cells_are_the_full_grid_with_unique_stable_hashes(tmp_path):
    spec = load_spec(spec_file(tmp_path, GOOD))
    cells = spec.cells()
    assert len(cells) == 2 * 2 * 2
    assert len({c.config_hash for c in cells}) == len(cells)
    assert [c.config_hash for c in cells] == [c.config_hash for c in load_spec(spec_file(tmp_path, GOOD)).cells()]
    assert {c.variant for c in cells} == {"beta=0.1", "beta=0.3"}
    assert cells[0].overrides["model_name_or_path"] == "ladder-s" and "beta" in cells[0].overrides


def test_a_changed_hyperparameter_changes_the_hash(tmp_path):
    first = {c.variant: c.config_hash for c in load_spec(spec_file(tmp_path, GOOD)).cells() if c.seed == 0}
    other = GOOD.replace("[0.1, 0.3]", "[0.1, 0.5]")
    second = {c.variant: c.config_hash for c in load_spec(spec_file(tmp_path, other)).cells() if c.seed == 0}
    assert first["beta=0.1"] != second.get("beta=0.5")


@pytest.mark.parametrize(
    "change, expected",
    [
        (("recipe: dpo", "recipe: ppo"), r"unknown recipe 'ppo' \(did you mean 'dpo'\?\); available: sft, dpo, reward, grpo, rloo"),
        (("[ladder-s, ladder-m]", "[ladder-s, ladder-xl]"), "unknown model 'ladder-xl'"),
        (("{beta: [0.1, 0.3]}", "{betta: [0.1, 0.3]}"), "unknown key 'betta' \\(did you mean 'beta'\\?\\)"),
        (("[ladder-s, ladder-m]", "[ladder-m]"), "at least two model sizes"),
        (("{beta: [0.1, 0.3]}", "{beta: 0.1}"), "grid.beta must be a non-empty list"),
        (("seeds: [0, 1]", "seeds: []"), "'seeds' must be a non-empty list"),
        (("name: t", "nmae: t"), "unknown key\\(s\\) nmae"),
        (("recipes/configs/dpo_ladder_cpu.yaml", "recipes/configs/nope.yaml"), "config file recipes/configs/nope.yaml not found"),
        (("grid: {beta: [0.1, 0.3]}", "metric: accuracy"), "unknown metric 'accuracy'; choose one of task_accuracy"),
        (("grid: {beta: [0.1, 0.3]}", "launch: {num_processes: 2}"), "launch needs 'config_file'"),
        (("grid: {beta: [0.1, 0.3]}", "launch: {config_file: recipes/accelerate/multi_gpu.yaml, processes: 2}"),
         "unknown key 'processes' \\(did you mean 'num_processes'\\?\\)"),
        (("grid: {beta: [0.1, 0.3]}", "launch: {config_file: recipes/accelerate/multi_gpu.yaml, num_processes: 0}"),
         "launch.num_processes must be a positive integer"),
        (("grid: {beta: [0.1, 0.3]}", "launch: {config_file: nope.yaml}"), "launch: config file nope.yaml not found"),
    ],
    ids=["recipe", "model", "variant-key", "single-model", "grid-value", "seeds", "top-level", "config", "metric",
         "launch-config", "launch-key", "launch-processes", "launch-missing-file"],
)
def test_malformed_spec_names_the_problem(tmp_path, change, expected):
    path = spec_file(tmp_path, GOOD.replace(*change))
    with pytest.raises(StudySpecError, match=expected) as err:
        load_spec(path)
    assert str(path) in str(err.value)


def test_recipe_configs_are_found_from_any_working_directory(tmp_path, monkeypatch):
    path = spec_file(tmp_path, GOOD)
    monkeypatch.chdir(tmp_path)  # no recipes/ here: the project root's configs are used
    plan = load_spec(path).recipes[0]
    assert plan.config.endswith("recipes/configs/dpo_ladder_cpu.yaml") and plan.metric == "task_accuracy"


def test_launch_runs_cells_under_accelerate_and_is_part_of_the_cell(tmp_path):
    plain = load_spec(spec_file(tmp_path, GOOD)).cells()
    launched_spec = GOOD + "    launch: {config_file: recipes/accelerate/deepspeed_cpu.yaml}\n"
    launched = load_spec(spec_file(tmp_path, launched_spec)).cells()
    assert all(c.processes == 1 and not c.launch for c in plain)
    assert all(c.processes == 2 for c in launched)  # the accelerate config's own num_processes
    assert launched[0].launch["config_file"].endswith("recipes/accelerate/deepspeed_cpu.yaml")
    # Two processes double the global batch: another run, so another cell, never a cached result.
    assert not {c.config_hash for c in plain} & {c.config_hash for c in launched}
    wider = load_spec(spec_file(tmp_path, launched_spec.replace("deepspeed_cpu.yaml}", "deepspeed_cpu.yaml, num_processes: 4}"))).cells()
    assert all(c.processes == 4 for c in wider)
    assert not {c.config_hash for c in wider} & {c.config_hash for c in launched}


CHAIN = GOOD.replace("recipe: dpo\n    config: recipes/configs/dpo_ladder_cpu.yaml\n    grid: {beta: [0.1, 0.3]}",
                     "recipe: sft\n    config: recipes/configs/sft_ladder_cpu.yaml\n    grid: {learning_rate: [0.001]}") + """\
  - recipe: grpo
    config: recipes/configs/grpo_ladder_cpu.yaml
    start_from: sft
"""


def test_start_from_links_each_cell_to_the_same_model_and_seed_of_the_earlier_recipe(tmp_path):
    cells = load_spec(spec_file(tmp_path, CHAIN)).cells()
    sft = {(c.model, c.seed): c.config_hash for c in cells if c.recipe == "sft"}
    grpo = [c for c in cells if c.recipe == "grpo"]
    assert len(grpo) == 4 and all(c.start_from == sft[c.model, c.seed] for c in grpo)
    assert all(c.start_from is None for c in cells if c.recipe == "sft")
    # A change to the start cell is a change to every cell trained from its model.
    other = {c.config_hash for c in load_spec(spec_file(tmp_path, CHAIN.replace("[0.001]", "[0.0003]"))).cells()
             if c.recipe == "grpo"}
    assert not other & {c.config_hash for c in grpo}


@pytest.mark.parametrize("start, expected", [
    ("start_from: dpo", "'dpo' is not a recipe listed before this one \\(listed before: sft\\)"),
    ("start_from: {recipe: sft, variant: learning_rate=0.1}", "sft has no variant 'learning_rate=0.1'; its variants: "
                                                             "learning_rate=0.001"),
    ("start_from: {recipe: sft, seed: 1}", "unknown key 'seed'"),
])
def test_a_bad_start_from_names_the_problem(tmp_path, start, expected):
    with pytest.raises(StudySpecError, match=expected):
        load_spec(spec_file(tmp_path, CHAIN.replace("start_from: sft", start)))


def test_start_from_a_recipe_with_several_variants_must_name_one(tmp_path):
    text = CHAIN.replace("[0.001]", "[0.001, 0.0003]")
    with pytest.raises(StudySpecError, match="sft has 2 variants; name the one to start from with 'variant' "
                                             "\\(learning_rate=0.001, learning_rate=0.0003\\)"):
        load_spec(spec_file(tmp_path, text))
    named = text.replace("start_from: sft", "start_from: {recipe: sft, variant: learning_rate=0.0003}")
    cells = load_spec(spec_file(tmp_path, named)).cells()
    chosen = {c.config_hash for c in cells if c.recipe == "sft" and c.variant == "learning_rate=0.0003"}
    assert {c.start_from for c in cells if c.recipe == "grpo"} == chosen


def test_a_recipe_listed_twice_is_refused(tmp_path):
    text = GOOD + "  - recipe: dpo\n    config: recipes/configs/dpo_ladder_cpu.yaml\n"
    with pytest.raises(StudySpecError, match="recipe 'dpo' is listed twice"):
        load_spec(spec_file(tmp_path, text))


def test_the_readme_spec_example_is_a_valid_spec(tmp_path):
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    example = readme[readme.index("name: dpo-beta"):]
    spec = load_spec(spec_file(tmp_path, example[:example.index("```")]))
    assert [plan.recipe for plan in spec.recipes] == ["dpo", "sft", "grpo"]
    assert spec.recipes[1].launch["num_processes"] == 4 and spec.recipes[2].start_from["recipe"] == "sft"


def test_the_shipped_rlhf_study_chains_grpo_onto_sft():
    spec = load_spec(Path(__file__).parents[1] / "align_proxy/studies/rlhf.yaml")
    cells = spec.cells()
    sft = {(c.model, c.seed): c.config_hash for c in cells if c.recipe == "sft"}
    assert len(cells) == 18 and {c.start_from for c in cells if c.recipe == "grpo"} == set(sft.values())
