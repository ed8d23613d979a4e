"""The length-controlled win rate: a judge that prefers longer replies rewards length, and the length-controlled
rate says what a reply of the reference's length would win; its interval is checked by simulating the design."""

import numpy as np
import pytest

from align_proxy.evals.length_control import length_controlled_win_rate


def planted(seed: int, prompts: int = 60, samples: int = 4):
    """A judge that always prefers the longer reply, and a policy whose replies run ~3 tokens longer than the
    reference, by prompt and by sample: at the reference's length a reply wins half the time."""
    rng = np.random.default_rng(seed)
    diffs = rng.normal(3, 3, size=(prompts, 1)) + rng.normal(0, 3, size=(prompts, samples))
    wins = np.where(diffs > 0, 1.0, np.where(diffs == 0, 0.5, 0.0))
    return wins, diffs


def test_a_judge_that_prefers_longer_replies_wins_raw_but_not_length_controlled():
    wins, diffs = planted(0)
    lc = length_controlled_win_rate(wins, diffs)
    assert lc.raw > 0.7  # far from 0.5: the judge rewards length
    assert lc.low <= 0.5 <= lc.high and abs(lc.estimate - 0.5) < abs(lc.raw - 0.5) / 2, lc


def test_no_length_difference_leaves_the_win_rate_as_it_is():
    wins = np.array([[1.0, 0.0], [0.5, 1.0], [1.0, 1.0]])
    lc = length_controlled_win_rate(wins, np.zeros_like(wins), resamples=50)
    assert lc.estimate == lc.raw == pytest.approx(0.75)
    with pytest.raises(ValueError, match="prompts x samples"):
        length_controlled_win_rate([0.5, 1.0], [1.0, 2.0])


@pytest.mark.slow  # 60 simulated runs, each with its bootstrap, ~10 s
def test_the_interval_covers_the_planted_truth_at_its_level_in_the_runs_design():
    """Prompts drawn, samples within a prompt sharing its length offset: the design a judged run's data come from.
    100 runs gave 94% coverage at 95% (evals/length_control.py); 60 here, held to 88% (2.5 standard errors)."""
    covered = [lc.low <= 0.5 <= lc.high for lc in (length_controlled_win_rate(*planted(100 + s), resamples=200, seed=s)
                                                   for s in range(60))]
    assert np.mean(covered) >= 0.88, np.mean(covered)


def test_the_batched_bootstrap_fits_each_resample_as_a_single_fit_would():
    """The interval's resamples are fitted together (one Newton loop over all of them); each must be the fit a
    resample alone gets, including a resample whose lengths do not vary (the plain win rate)."""
    from align_proxy.evals.length_control import _fit_at_zero, _fits_at_zero

    wins, diffs = planted(7, prompts=12, samples=3)
    wins, diffs = wins.reshape(6, -1), diffs.reshape(6, -1)
    diffs[2] = 1.5  # no length variation in this resample
    wins[4] = 1.0  # separated: the ridge keeps the slope finite
    expected = [_fit_at_zero(w, d) for w, d in zip(wins, diffs)]
    assert np.allclose(_fits_at_zero(wins, diffs), expected, rtol=0, atol=1e-12)
    assert _fits_at_zero(wins, diffs)[2] == wins[2].mean()
