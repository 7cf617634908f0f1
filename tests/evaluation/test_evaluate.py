"""`dimr evaluate`: the same file from any number of processes and from a resumed run, a failing rank named, bad
arguments refused before sampling, and the lab's measure as `distortion --images` gives it.

Every run uses one CPU thread per process (torchrun's default for several processes): on a CPU the convolution
kernels are picked by thread count and batch size, so the bits of a sample depend on both (module docstring).
"""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from dimr.__main__ import main
from dimr.lab.distortion import generated_images
from dimr.sampling.sample_files import write_samples

SAMPLES, BATCH, STEPS = 20, 4, 4  # five blocks of the tiny DiMR, four sampling steps each
JOB = ["--model", "tiny-dimr", "--samples", str(SAMPLES), "--steps", str(STEPS)]


def evaluate_command(out, processes=1, batch_size=BATCH):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)] if processes > 1 \
        else [sys.executable]
    return [*launcher, "-m", "dimr", "evaluate", *JOB, "--batch-size", str(batch_size), "--out", str(out)]


def run(command):
    return subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The job sampled by one process: the file every other way of running it must reproduce."""
    out = tmp_path_factory.mktemp("one") / "tiny-dimr.npz"
    done = run(evaluate_command(out))
    assert done.returncode == 0, done.stderr
    return out


def test_the_file_holds_the_job_in_the_adm_layout(one_process):
    with np.load(one_process) as data:
        images, labels = data["arr_0"], data["arr_1"]
    assert images.shape == (SAMPLES, 32, 32, 3) and images.dtype == np.uint8
    assert labels.tolist() == [i % 10 for i in range(SAMPLES)]
    assert len({image.tobytes() for image in images}) == SAMPLES  # every sample from its own noise
    record = json.loads(one_process.with_suffix(".json").read_text())
    assert record["settings"] | {"steps": STEPS, "guidance": 3.0, "batch_size": BATCH, "samples": SAMPLES} \
        == record["settings"]
    assert record["run"]["images_sampled"] == SAMPLES and record["run"]["sampling_seconds"] > 0
    assert record["software"]["torch"] and not one_process.with_name("tiny-dimr.shards").exists()


def test_two_processes_under_torchrun_write_the_same_bytes(one_process, tmp_path):
    out = tmp_path / "two.npz"
    done = run(evaluate_command(out, processes=2))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == one_process.read_bytes()
    assert json.loads(out.with_suffix(".json").read_text())["run"]["processes"] == 2


def test_another_batch_size_moves_pixels_by_at_most_one_level(one_process, tmp_path):
    # Sample i keeps its class and noise whatever the blocks; only the kernels' rounding changes with the batch.
    out = tmp_path / "batch3.npz"
    done = run(evaluate_command(out, batch_size=3))
    assert done.returncode == 0, done.stderr
    with np.load(one_process) as a, np.load(out) as b:
        difference = np.abs(a["arr_0"].astype(int) - b["arr_0"].astype(int))
        assert (a["arr_1"] == b["arr_1"]).all()
    assert difference.max() <= 1 and (difference > 0).mean() < 0.01


# `dimr evaluate` (argv[1:]) that kills itself (SIGKILL) as soon as its first block is written: a kill at a known
# point, however fast or slow the machine samples.
KILLED_AFTER_ITS_FIRST_BLOCK = """
import os, signal, sys
from dimr.__main__ import main
from dimr.evaluation import evaluate

write_shard = evaluate.write_shard

def write_then_die(*args):
    write_shard(*args)
    os.kill(os.getpid(), signal.SIGKILL)

evaluate.write_shard = write_then_die
sys.exit(main(sys.argv[1:]))
"""


def test_a_killed_run_resumes_to_the_same_file(one_process, tmp_path):
    out = tmp_path / "killed.npz"
    shards = tmp_path / "killed.shards"
    python, _, _, *arguments = evaluate_command(out)  # python -m dimr evaluate ...
    killed = run([python, "-c", KILLED_AFTER_ITS_FIRST_BLOCK, *arguments])
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    finished = len(list(shards.glob("block-*.npz")))
    assert finished == 1 and not out.exists()

    done = run(evaluate_command(out))
    assert done.returncode == 0, done.stderr
    assert out.read_bytes() == one_process.read_bytes()
    assert json.loads(out.with_suffix(".json").read_text())["run"]["images_from_earlier_runs"] == finished * BATCH


def test_a_failing_rank_is_named_and_finished_blocks_are_kept(tmp_path):
    out = tmp_path / "failing.npz"
    shards = tmp_path / "failing.shards"
    # Block 3 is rank 1's second block; a directory where its file goes makes that write fail.
    (shards / "block-0000003.npz").mkdir(parents=True)
    done = run(evaluate_command(out, processes=2))
    assert done.returncode != 0
    assert "rank 1 of 2" in done.stderr and "failed on block 3 (samples 12..15)" in done.stderr
    assert "run the same command again to resume" in done.stderr
    assert {p.name for p in shards.glob("block-*.npz") if p.is_file()} == {f"block-000000{b}.npz" for b in range(3)}


@pytest.mark.parametrize("change, message", [
    (["--samples", "0"], "--samples must be at least 1, got 0"),
    (["--model", "DiMR-Q/9R"], "unknown model 'DiMR-Q/9R'"),
    (["--batch-size", "-2"], "--batch-size must be at least 1"),
    (["--out", "{tmp}/a-file/out.npz"], "cannot write --out"),
    (["--out", "{tmp}/out.png"], "--out must end in .npz"),
    (["--steps", "0"], "num_inference_steps=0 is out of range"),
])
def test_a_bad_argument_is_refused_before_sampling(tmp_path, capsys, change, message):
    (tmp_path / "a-file").write_text("not a folder")
    args = ["evaluate", *JOB, "--out", str(tmp_path / "ok.npz")]
    args += [value.format(tmp=tmp_path) for value in change]  # argparse keeps the last of a repeated option
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]  # no job started


def test_every_process_of_a_torchrun_job_refuses_a_bad_argument_before_joining_the_others(tmp_path):
    """Both ranks started as torchrun starts them, but each on its own: under torchrun the first to fail has the
    launcher stop the other, maybe before it spoke. A rank past the check would wait for its peer in vain (or, with
    both past it, sample); each must refuse at once."""
    python, *arguments = evaluate_command(tmp_path / "out.npz")
    ranks = [subprocess.Popen([python, *arguments, "--samples", "0"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              text=True, env={**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank),
                                              "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                                              "MASTER_PORT": "29517"})
             for rank in (0, 1)]
    for rank in ranks:
        _, stderr = rank.communicate(timeout=600)
        assert rank.returncode == 2 and "error: --samples must be at least 1, got 0" in stderr, stderr
    assert list(tmp_path.iterdir()) == []


def test_evaluate_reports_the_lab_measure_distortion_gives_for_its_file(one_process, tmp_path):
    lab = json.loads(one_process.with_suffix(".json").read_text())["lab"]
    assert main(["distortion", "--images", str(one_process), "--json", str(tmp_path / "d.json")]) == 0
    judged = json.loads((tmp_path / "d.json").read_text())
    assert judged["samples"] == SAMPLES
    # The same verdicts; features computed in another process (other threads) may differ in the last float bits.
    assert significant({k: judged[k] for k in lab}) == significant(lab)


def significant(value, digits=6):
    """value with every float rounded to `digits` significant digits, at any depth of dicts and lists."""
    if isinstance(value, float):
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: significant(v, digits) for k, v in value.items()}
    if isinstance(value, list):
        return [significant(v, digits) for v in value]
    return value


def test_a_finished_job_is_scored_again_not_resampled(one_process, tmp_path, capsys):
    copy = tmp_path / "copy.npz"
    copy.write_bytes(one_process.read_bytes())
    copy.with_suffix(".json").write_text(one_process.with_suffix(".json").read_text())
    assert main(["evaluate", *JOB, "--batch-size", str(BATCH), "--out", str(copy)]) == 0
    assert "distortion rate of tiny-dimr" in capsys.readouterr().out
    assert copy.read_bytes() == one_process.read_bytes()
    assert main(["evaluate", *JOB, "--batch-size", "5", "--out", str(copy)]) == 2
    assert "batch_size 4 there, 5 now" in capsys.readouterr().err


def test_distortion_judges_a_samples_file_as_it_judges_its_own_samples(tmp_path):
    images, labels = generated_images("tiny-dimr", SAMPLES, num_inference_steps=STEPS, progress=False)
    hwc = images.permute(0, 2, 3, 1).numpy()
    write_samples(tmp_path / "s.npz", hwc.shape, [(hwc, labels.numpy())])
    assert main(["distortion", "--model", "tiny-dimr", "--samples", str(SAMPLES), "--steps", str(STEPS),
                 "--json", str(tmp_path / "model.json")]) == 0
    assert main(["distortion", "--images", str(tmp_path / "s.npz"), "--json", str(tmp_path / "file.json")]) == 0
    own, given = (json.loads((tmp_path / name).read_text()) for name in ("model.json", "file.json"))
    assert given["settings"]["samples"] == SAMPLES
    assert "refinement" in own and "refinement" not in given  # the branches' estimates are not in a samples file
    assert {k: v for k, v in own.items() if k not in ("model", "settings", "refinement")} \
        == {k: v for k, v in given.items() if k not in ("model", "settings")}
