"""zoo: generative models in JAX/Flax on one set of jit-compiled, sharded train steps.

What most users import::

    from zoo import TrainState, make_train_step, compile_train_step, make_strategy
"""

from zoo.core.compiled import CompiledStep, compile_eval_step, compile_train_step
from zoo.core.parallel import make_strategy, sync_axis
from zoo.core.step import PER_EXAMPLE, AllPlayers, Update, make_eval_step, make_train_step
from zoo.core.train_state import TrainState

__version__ = "0.1.0"
__all__ = ["PER_EXAMPLE", "AllPlayers", "CompiledStep", "TrainState", "Update", "compile_eval_step",
           "compile_train_step", "make_eval_step", "make_strategy", "make_train_step",
           "sync_axis"]
