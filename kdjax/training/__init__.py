"""Train state, pure steps, teachers, checkpoints and the resumable training loop."""

from kdjax.training._checkpoint import DamagedCheckpointWarning as DamagedCheckpointWarning
from kdjax.training._checkpoint import load_params as load_params
from kdjax.training._checkpoint import load_variables as load_variables
from kdjax.training._config import default_config as default_config
from kdjax.training._config import smoke_variant as smoke_variant
from kdjax.training._loop import check_config as check_config
from kdjax.training._loop import train_and_evaluate as train_and_evaluate
from kdjax.training._nonfinite import NonFiniteError as NonFiniteError
from kdjax.training._optim import make_optimizer as make_optimizer
from kdjax.training._optim import make_schedule as make_schedule
from kdjax.training._preemption import Preempted as Preempted
from kdjax.training._state import TrainState as TrainState
from kdjax.training._state import create_train_state as create_train_state
from kdjax.training._step import frozen_teacher_apply as frozen_teacher_apply
from kdjax.training._step import make_predict as make_predict
from kdjax.training._step import make_train_chunk as make_train_chunk
from kdjax.training._step import predict_in_batches as predict_in_batches
from kdjax.training._teacher import TeacherGroup as TeacherGroup
from kdjax.training._teacher import load_teacher_groups as load_teacher_groups
from kdjax.training._teacher import load_run as load_run
from kdjax.training._teacher import load_teachers as load_teachers
from kdjax.training._teacher import teacher_log_probs as teacher_log_probs
