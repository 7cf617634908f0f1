"""A deepened last branch starts exactly where the trained model is, so a continued arm measures the added depth."""

import json

import pytest
import torch

from dimr.lab.grow import deepen_last_branch, grow_model_dir
from dimr.network.model import DiMRModel
from dimr.sampling.loading import CHECKPOINTS_DIR


def test_a_grown_model_predicts_what_the_trained_one_predicts(tmp_path):
    grow_model_dir(CHECKPOINTS_DIR / "tiny-dimr", tmp_path / "grown", num_blocks=3)
    trained = DiMRModel.from_pretrained(CHECKPOINTS_DIR / "tiny-dimr").eval()
    grown = DiMRModel.from_pretrained(tmp_path / "grown").eval()
    assert len(grown.stages[-1].blocks) == len(trained.stages[-1].blocks) + 2
    x, t, y = torch.randn(4, 3, 32, 32), torch.tensor([10, 300, 600, 999]), torch.tensor([0, 3, 7, 10])
    with torch.no_grad():
        for before, after in zip(trained.forward_branches(x, t, y), grown.forward_branches(x, t, y)):
            torch.testing.assert_close(after, before, rtol=0, atol=1e-6)
    # The new blocks can learn: their residual outputs start at zero, their inputs do not.
    new_block = grown.stages[-1].blocks[0]
    assert new_block.block2.w2.weight.abs().max() == 0 and new_block.block2.w0.weight.abs().max() > 0
    assert json.loads((tmp_path / "grown" / "config.json").read_text())["stage_configs"][-1]["num_blocks"] == 3


def test_growing_needs_more_blocks_than_the_branch_has():
    config = json.loads((CHECKPOINTS_DIR / "tiny-dimr" / "config.json").read_text())
    with pytest.raises(ValueError, match="num_blocks=2 builds 3 blocks; the last branch already has 3"):
        deepen_last_branch({}, {**config, "stage_configs": [*config["stage_configs"][:-1],
                                {**config["stage_configs"][-1], "num_blocks": 3}]}, 2, {})
