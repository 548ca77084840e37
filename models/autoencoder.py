"""The masked autoencoder for mixed tables, its training and its direct (one-pass) imputation:
the names of ``lakefill.models.network`` (the network and its loss), ``.gaussian`` (the EM
member), ``.mixture`` (the members as one model, ``predict``) and ``.training`` (the loops,
the schedule, the time budget) in one place.

Input: the encoded row with missing cells blanked (zeros) plus the per-column missing-mask.
Output: for numeric columns a mean and a log-variance, for categorical columns logits over the
known values. Training hides extra observed cells at random and scores only those (squared
error for numerics, cross-entropy for categories): the loss never touches a missing cell.
Inputs are robust-scaled (median, IQR); each numeric column's squared error is weighted so that
it counts on the column's min-max scale (``loss_scale="range"``): a heavy-tailed column's
outliers, huge in robust units, do not drive the training. Opt-in, ``AEConfig.squash``
log-compresses the numeric inputs beyond +-squash before the first layer (outputs unchanged).
The log-variance head is trained on the detached mean (it does not pull the mean), and gives
the per-cell uncertainty that row confidence is built from.
The model is an ensemble of networks of different sizes (``AEConfig.extra_sizes``) trained on
the same split, plus a multivariate normal fitted by EM (``GaussianMember``, a registered member, ``lakefill.models.members``);
their means and probabilities are mixed with weights fitted on held-out cells (``Ensemble``,
``train_ensemble``). Where a row to fill is a copy of a training row (``lakefill.models.donors``,
a member), ``predict`` blends the copy's cells in, with a weight fitted the same way;
before that, the numeric columns' boosted trees (``lakefill.models.trees``, a member) with a
weight fitted the same way.
"""

from __future__ import annotations

from lakefill.models._config import AEConfig
from lakefill.models.gaussian import GAUSSIAN_MAX_FEATURES, GAUSSIAN_MAX_ROWS, GaussianMember, fit_gaussian
from lakefill.models.members import blend_donors, blend_trees
from lakefill.models.mixture import Ensemble, Prediction, direct_fill_inputs, mix, predict
from lakefill.models.network import MaskedAutoencoder, cell_losses
from lakefill.models.training import (Budget, TrainPlan, TrainResult, _loss_weights, _PlateauSchedule, train_autoencoder,
                                      train_ensemble)

__all__ = ["AEConfig", "TrainPlan", "Budget", "MaskedAutoencoder", "GaussianMember", "TrainResult", "train_autoencoder",
           "train_ensemble", "Ensemble", "fit_gaussian", "mix", "cell_losses", "predict", "Prediction",
           "direct_fill_inputs", "blend_donors", "blend_trees", "GAUSSIAN_MAX_FEATURES", "GAUSSIAN_MAX_ROWS",
           "_loss_weights", "_PlateauSchedule"]
