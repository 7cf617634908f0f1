"""DiMR: multi-resolution diffusion models (NeurIPS 2024), a readable and fast reimplementation."""

from dimr.network.config import VARIANTS, variant_config
from dimr.network.model import DiMRModel
from dimr.sampling.loading import MODELS, load_pipeline
from dimr.sampling.pipeline import SAMPLERS, DiMRPipeline, DiMRPipelineOutput

__all__ = ["DiMRModel", "DiMRPipeline", "DiMRPipelineOutput", "MODELS", "SAMPLERS", "VARIANTS", "load_pipeline",
           "variant_config"]
