"""Evaluation at scale: many samples across processes and GPUs, then scored.

May import: `dimr.network`, `dimr.sampling`, `dimr.lab` (and `dimr.atomic`, `dimr.checks`). Never the demo.

- `evaluate`: `dimr evaluate`, sharded under torchrun, resumable, one sample file.
- `fid`: Inception FID of a sample file (`dimr fid`).
"""
