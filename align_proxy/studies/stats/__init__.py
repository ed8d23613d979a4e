"""Statistics of a transfer study: how sure is a recipe's gain, and does it carry from small models to large.

Pure functions over arrays (numpy and scipy, no torch), each with a doctest that shows a value:

- `intervals`: `Interval`, percentile and censored intervals, the interval of a ratio;
- `resampling`: the crossed design (items shared by every cell, seeds per training run) and
  `CrossedResampler`, which draws every quantity's replicates jointly, as the study's data were made;
  gains, gap closed and ordering probabilities on those replicates;
- `power`: what design would resolve an effect that is still unclear;
- `rankings`: how alike two scales order the variants.

Every name is importable from here. `tests/test_calibration.py` checks the intervals' coverage in the design
that produced the data.
"""

from align_proxy.studies.stats.intervals import (
    NAN_INTERVAL,
    Interval,
    censored_interval,
    percentile_interval,
    ratio_interval,
)
from align_proxy.studies.stats.power import Power, required_design
from align_proxy.studies.stats.rankings import decision_accuracy, rank_agreement, rank_correlations, sign_agreement
from align_proxy.studies.stats.resampling import (
    CrossedResampler,
    VarianceParts,
    as_matrix,
    gain_interval,
    gap_closed,
    mean_interval,
    probability_greater,
)

__all__ = [
    "NAN_INTERVAL", "Interval", "censored_interval", "percentile_interval", "ratio_interval", "Power",
    "required_design", "decision_accuracy", "rank_agreement", "rank_correlations", "sign_agreement",
    "CrossedResampler", "VarianceParts", "as_matrix", "gain_interval", "gap_closed", "mean_interval",
    "probability_greater",
]
