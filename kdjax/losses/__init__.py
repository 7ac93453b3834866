"""Distillation losses: pure functions of arrays, one value per example unless batch-level.

Per-example losses (``soft_target_kl``, ``cross_entropy``, ``soft_cross_entropy``,
``hinton_kd``, ``dkd``, ``hint``, ``attention_transfer``) return ``[B]``; average them
once, in the step.
Batch-level losses (``dist``, ``similarity_preserving``, ``rkd_distance``,
``rkd_angle``, ``pkt``, ``weight_matching``) return a scalar for the batch.
``make_objective`` composes named, weighted terms for the trainer.

Labels: every loss that takes integer labels ignores the rows whose label is outside
``[0, C)`` (``-1``, ``-100``, ``C``, ...), like PyTorch's ``ignore_index``: loss 0, no
gradient; ``label_mask`` gives the valid rows, and averages over them give 0 for a batch
of only ignored rows. Masks (``where``) select, never multiply: NaN or inf in a masked
entry reaches neither the value nor the gradient.
"""

from kdjax.losses._compose import LossInputs as LossInputs
from kdjax.losses._compose import Objective as Objective
from kdjax.losses._compose import TERMS as TERMS
from kdjax.losses._compose import TermSpec as TermSpec
from kdjax.losses._compose import make_objective as make_objective
from kdjax.losses._compose import term_keywords as term_keywords
from kdjax.losses._checks import label_mask as label_mask
from kdjax.losses._checks import masked_mean as masked_mean
from kdjax.losses._divergences import forward_kl as forward_kl
from kdjax.losses._divergences import generalized_jsd as generalized_jsd
from kdjax.losses._divergences import reverse_kl as reverse_kl
from kdjax.losses._divergences import skew_kl as skew_kl
from kdjax.losses._divergences import skew_reverse_kl as skew_reverse_kl
from kdjax.losses._divergences import total_variation as total_variation
from kdjax.losses._features import Projector as Projector
from kdjax.losses._features import attention_transfer as attention_transfer
from kdjax.losses._features import hint as hint
from kdjax.losses._fused import fused_distillation_loss as fused_distillation_loss
from kdjax.losses._fused_ce import fused_cross_entropy as fused_cross_entropy
from kdjax.losses._targets import cross_entropy as cross_entropy
from kdjax.losses._kd import dist as dist
from kdjax.losses._kd import dkd as dkd
from kdjax.losses._kd import hinton_kd as hinton_kd
from kdjax.losses._targets import soft_cross_entropy as soft_cross_entropy
from kdjax.losses._kd import soft_target_kl as soft_target_kl
from kdjax.losses._kd import soft_target_kl_with_log_targets as soft_target_kl_with_log_targets
from kdjax.losses._relational import pkt as pkt
from kdjax.losses._relational import rkd_angle as rkd_angle
from kdjax.losses._relational import rkd_distance as rkd_distance
from kdjax.losses._relational import similarity_preserving as similarity_preserving
from kdjax.losses._sparse import sparse_kl as sparse_kl
from kdjax.losses._weights import flatten_params as flatten_params
from kdjax.losses._weights import init_from_teacher as init_from_teacher
from kdjax.losses._weights import weight_matching as weight_matching
