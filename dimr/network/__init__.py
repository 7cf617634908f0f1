"""The network: DiMR itself, config in, tensors out, and the official weights it loads.

May import: nothing of `dimr` but `dimr.atomic` and `dimr.checks`. Knows nothing of sampling, the demo or the lab.

- `model`: `DiMRModel` (time-dependent norms, transformer and ConvNeXt branches, the feature cascade), one file.
- `config`: official config fields and their defaults, the named variants (`VARIANTS`, `variant_config`).
- `weights`: official `.pth` checkpoints read safely, checked key by key, converted to safetensors.
- `acceleration`: GPU modes (bf16 weights, compiled blocks, CUDA graphs) behind one `FastNetwork`.
- `convert_cli`: `dimr convert`.
"""
