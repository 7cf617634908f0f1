"""The distortion lab: tiny models trained here on shapes, a judge, and the measure that compares them.

May import: `dimr.network`, `dimr.sampling` (and `dimr.atomic`, `dimr.checks`). Never the demo or evaluation.

- `shapes`: the procedural shapes dataset; `corruptions`: shapes broken the ways samples break.
- `classifier`: the judge (a small CNN with a "none of these" class); `distortion`: the measure (`dimr distortion`).
- `train` (`dimr train`), `train_config`, `objective`, `lockstep`: training the tiny models.
- `reproduce`: both models from scratch side by side (`dimr reproduce`); `grow`: deepen a trained model's last branch.
- `configs/`: the models' training configs and the ablation arms.
"""
