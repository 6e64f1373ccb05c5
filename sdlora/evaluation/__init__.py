"""What an adapter learned, in numbers (any model): the deterministic validation loss of held-out images,
one evaluation over checkpoints and strengths, its table and its plot. The toy world's figures live in
``sdlora.toy.evaluate``."""
from sdlora.evaluation.plot import plot
from sdlora.evaluation.run import STRENGTHS, EvalRow, evaluate
from sdlora.evaluation.table import format_table, write_outputs
from sdlora.evaluation.validation import TIMESTEPS, ValidationSet

__all__ = ["STRENGTHS", "TIMESTEPS", "EvalRow", "ValidationSet", "evaluate", "format_table", "plot",
           "write_outputs"]
