"""DiMR: multi-resolution diffusion models (NeurIPS 2024), a readable and fast reimplementation."""

from .config import VARIANTS, variant_config
from .model import DiMRModel

__all__ = ["DiMRModel", "VARIANTS", "variant_config"]
