"""DiMR: multi-resolution diffusion models (NeurIPS 2024), a readable and fast reimplementation."""

from .config import VARIANTS, variant_config
from .loading import MODELS, load_pipeline
from .model import DiMRModel
from .pipeline import SAMPLERS, DiMRPipeline, DiMRPipelineOutput

__all__ = ["DiMRModel", "DiMRPipeline", "DiMRPipelineOutput", "MODELS", "SAMPLERS", "VARIANTS", "load_pipeline",
           "variant_config"]
