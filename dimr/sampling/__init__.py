"""Sampling: a DiMR network turned into images, with every branch's estimate at every step, and models by name.

May import: `dimr.network` (and `dimr.atomic`, `dimr.checks`). Never the demo, the lab or evaluation.

- `pipeline`: `DiMRPipeline` (diffusers-style `__call__`), samplers (`SAMPLERS`), guidance, the branch trace.
- `loading`: `load_pipeline(name)` for the bundled models, the released ones (downloaded once) or a directory.
- `labels`: class lookup by id, name or synonym; `defaults`: a model's starting guidance and steps.
- `caches`: what stays in memory between calls, in one store; `grids`: uint8 images, tiled, as PNG.
- `sample_files`: sample files (ADM layout); `sample_cli`: `dimr sample`.
"""
