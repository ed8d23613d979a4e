"""The embedded offline default end to end: the real ladder and the quickstart's DPO run.

These build the default ladder (about 3-4 minutes on 2 cores), so they pin the README's claims
rather than a scaled-down copy of them.
"""

import pytest

from align_proxy.models import ladder
from tests.conftest import load_recipe, recipe_parser

# Building the real ladder takes ~4 minutes alone on 2 cores; leave room beyond the default timeout.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


@pytest.fixture(scope="module")
def default_ladder():
    return ladder.build_ladder(ladder.LadderSpec(), progress=False)


def test_larger_rungs_are_better_base_models(default_ladder):
    params = [r.parameters for r in default_ladder]
    losses = [r.heldout_loss for r in default_ladder]
    assert len(default_ladder) >= 3 and params == sorted(params) and params[-1] / params[0] >= 4
    assert losses == sorted(losses, reverse=True), losses


def test_quickstart_dpo_beats_the_base_model_on_preference_accuracy(default_ladder, tmp_path):
    dpo = load_recipe("dpo")
    args = recipe_parser("dpo").parse_args_and_config(
        ["--config", "recipes/configs/dpo_ladder_cpu.yaml", "--output_dir", str(tmp_path)]
    )
    metrics = dpo.main(*args).to_json()
    base, trained = metrics["eval"]["base"], metrics["eval"]["trained"]
    assert trained["preference_accuracy"] > base["preference_accuracy"]
    assert 0.0 < base["task_accuracy"] < 1.0  # a base model with partial skill
