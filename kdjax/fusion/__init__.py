"""Fusion of ensemble members: output-space combiners, fitted weights, DeepFusion, soups."""

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
