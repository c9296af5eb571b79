"""The Data Refinement Unit (DRU): per-coin metric selection and causal refinement.

* :mod:`~strategies.features.pool` - which metrics a coin may choose from (own + market-wide);
* :mod:`~strategies.features.selection` - Pearson correlation with 12/24/48-day forward returns,
  top/bottom picks per horizon, ranked by frequency; fitted on the training window, frozen;
* :mod:`~strategies.features.refine` - the step kernel: rolling z-score and rolling PCA;
* :mod:`~strategies.features.pipeline` - the one feature function: :class:`FeatureSpec`,
  batch :func:`compute_features` and bar-by-bar :class:`FeatureState` (bit-identical);
* :mod:`~strategies.features.report` - the per-coin selection report (JSON + heatmap).
"""

from strategies.features.pipeline import (
    FeatureFrame,
    FeatureSpec,
    FeatureState,
    compute_features,
    fit_feature_spec,
    with_known_at,
)
from strategies.features.pool import available_metrics, candidate_pool, qualified_id, split_id
from strategies.features.refine import Refiner, RefinerParams
from strategies.features.selection import (
    Exclusion,
    HorizonPicks,
    Selection,
    daily_closes,
    select_metrics,
)

__all__ = [
    "Exclusion",
    "FeatureFrame",
    "FeatureSpec",
    "FeatureState",
    "HorizonPicks",
    "Refiner",
    "RefinerParams",
    "Selection",
    "available_metrics",
    "candidate_pool",
    "compute_features",
    "daily_closes",
    "fit_feature_spec",
    "qualified_id",
    "select_metrics",
    "split_id",
    "with_known_at",
]
