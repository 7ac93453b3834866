"""Fusion of ensemble members: output-space combiners, fitted weights, DeepFusion, soups,
and weight-space merges (task arithmetic, TIES, DARE, SLERP, model stock, Fisher, RegMean)."""

from kdjax.fusion._combine import SPACES as SPACES
from kdjax.fusion._combine import average as average
from kdjax.fusion._combine import check_weights as check_weights
from kdjax.fusion._combine import weighted as weighted
from kdjax.fusion._deep import DeepFusion as DeepFusion
from kdjax.fusion._deep import DeepFusionFit as DeepFusionFit
from kdjax.fusion._deep import fit_deep_fusion as fit_deep_fusion
from kdjax.fusion._deep import prior_params as prior_params
from kdjax.fusion._fit import FusionWeights as FusionWeights
from kdjax.fusion._fit import fit_weights as fit_weights
from kdjax.fusion._fit import simplex_grid as simplex_grid
from kdjax.fusion._soups import GreedySoup as GreedySoup
from kdjax.fusion._soups import greedy_soup as greedy_soup
from kdjax.fusion._soups import uniform_soup as uniform_soup
from kdjax.fusion._merge import dare as dare
from kdjax.fusion._merge import model_stock as model_stock
from kdjax.fusion._merge import slerp as slerp
from kdjax.fusion._merge import task_arithmetic as task_arithmetic
from kdjax.fusion._merge import ties_merge as ties_merge
from kdjax.fusion._fisher_regmean import diagonal_fisher as diagonal_fisher
from kdjax.fusion._fisher_regmean import fisher_merge as fisher_merge
from kdjax.fusion._fisher_regmean import input_grams as input_grams
from kdjax.fusion._fisher_regmean import regmean as regmean
from kdjax.fusion._rebasin import PermutationSpec as PermutationSpec
from kdjax.fusion._rebasin import permutation_align as permutation_align
from kdjax.fusion._rebasin import permutation_spec as permutation_spec
from kdjax.fusion._rebasin import repair_batch_norm as repair_batch_norm
