"""Adapter tools: what users do with adapters after training, each exact or saying how far from exact it is.

- ``merge``   the weighted sum of adapters' ΔW: ``concat`` (exact, LoRA inputs) or ``svd`` (any algorithm,
              re-factorised to a target rank with the relative Frobenius error reported)
- ``resize``  SVD re-rank of any algorithm into LoRA/LoCon, γ = alpha/rank kept
- ``extract`` a LoRA/LoCon from the difference of two checkpoints, streaming the tuned one
- ``convert`` between key dialects (kohya / lycoris / peft, SGM or diffusers UNet names), bit for bit
Each returns a ``Report``; ``Report.format()`` is what the CLI prints.
"""
from sdlora.tools.report import ModuleFit, Report
from sdlora.tools.svd import choose_rank, svd_factors
from sdlora.tools.convert import convert
from sdlora.tools.extract import extract
from sdlora.tools.merge import merge, parse_input
from sdlora.tools.resize import resize

__all__ = ["merge", "parse_input", "resize", "extract", "convert", "Report", "ModuleFit", "choose_rank",
           "svd_factors"]
