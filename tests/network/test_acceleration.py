"""GPU acceleration modes: the defaults per device, what is refused, and the compiled network path.

The bf16 / CUDA-graph parts need a GPU (benchmarks/sampling.py measures them there); on CPU these tests
check that the compiled network gives the eager network's numbers, that blocks share compiled code,
that a failing compiler falls back to eager, that the pipeline really calls the compiled network, and that
the shared network itself is never changed.
"""

import logging

import pytest
import torch

from dimr.network.acceleration import MODES, accelerate_pipeline, default_mode, fast_network, mode_dtype
from dimr.sampling.pipeline import DiMRPipeline, make_scheduler


@pytest.fixture(autouse=True)
def _fresh_compiler():
    torch.compiler.reset()
    yield
    torch.compiler.reset()


class CountingBackend:
    """A torch.compile backend that runs the traced graph as is and counts the graphs it was given."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, graph_module, example_inputs):
        self.graphs += 1
        return graph_module.forward


def broken_backend(graph_module, example_inputs):
    raise RuntimeError("no C++ compiler on this machine")


@pytest.fixture
def model(two_branch):
    return two_branch.model()


def inputs(model, batch=2):
    size = model.sample_size
    sample = torch.randn(batch, model.config.channels, size, size)
    return sample, torch.linspace(10, 990, batch), torch.arange(batch) % model.config.num_classes


def test_fast_on_gpu_unchanged_float32_on_cpu():
    assert default_mode("cuda") == "fast"
    assert default_mode(torch.device("cuda", 1)) == "fast"
    assert default_mode("cpu") == "none"
    assert mode_dtype("none") == torch.float32
    assert mode_dtype("fast") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown acceleration mode 'turbo'; choose one of none, bf16, fast"):
        mode_dtype("turbo")


@pytest.mark.parametrize("mode", [m for m in MODES if m != "none"])
def test_gpu_modes_refuse_a_float32_network_instead_of_casting_it(model, mode):
    pipe = DiMRPipeline(model=model, scheduler=make_scheduler())
    with pytest.raises(ValueError, match=rf"mode '{mode}' runs a torch.bfloat16 network, but this pipeline's is "
                                         rf"torch.float32; load it with .*torch_dtype=mode_dtype\('{mode}'\)"):
        accelerate_pipeline(pipe, mode)
    assert model.dtype == torch.float32 and pipe.network is None


@pytest.mark.parametrize("mode", [m for m in MODES if m != "none"])
def test_gpu_modes_refuse_a_cpu_pipeline(model, mode):
    pipe = DiMRPipeline(model=model.to(torch.bfloat16), scheduler=make_scheduler())
    with pytest.raises(ValueError, match=rf"mode '{mode}' needs a CUDA device, but the pipeline is on cpu; use mode 'none'"):
        accelerate_pipeline(pipe, mode)
    assert pipe.network is None


def test_none_mode_keeps_the_pipeline_as_it_was(model):
    pipe = DiMRPipeline(model=model, scheduler=make_scheduler())
    assert accelerate_pipeline(pipe, "none") is pipe
    assert model.dtype == torch.float32 and pipe.network is None


def test_compiled_network_gives_the_eager_numbers_and_blocks_share_compiled_code(model):
    sample, timestep, labels = inputs(model)
    with torch.inference_mode():
        expected = model.forward_branches(sample, timestep, labels)
        expected_shared_t = model.forward_branches(sample, timestep[0], labels)[-1]
        backend = CountingBackend()
        network = fast_network(model, cuda_graphs=False, backend=backend)
        got = network(sample, timestep, labels)
        graphs = backend.graphs
        shared_t = network(sample, timestep[0], labels)[-1]  # a shared timestep is a new input shape
    for out, ref in zip(got, expected, strict=True):
        torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(shared_t, expected_shared_t, rtol=1e-6, atol=1e-6)
    assert backend.graphs > graphs
    regions = sum(len(s.blocks) + 1 for s in model.stages) + len(model.stages) - 1  # blocks, heads, cascades
    assert 0 < graphs < regions, "blocks of one branch should reuse one compiled graph"
    assert fast_network(model) is network, "one fast network per network: compiled once"


def test_the_shared_network_is_left_as_it_was(model):
    sample, timestep, labels = inputs(model)
    backend = CountingBackend()
    network = fast_network(model, cuda_graphs=False, backend=backend)
    assert all(a is b for a, b in zip(network.compiled.parameters(), model.parameters(), strict=True)), \
        "the compiled copy shares the weights"
    other_batch = inputs(model, batch=3)  # a shape the compiled copy has not seen: compiled code would recompile
    with torch.inference_mode():
        network(sample, timestep, labels)
        graphs = backend.graphs
        model.forward_branches(*other_batch)
        model(*other_batch)
    assert graphs > 0 and backend.graphs == graphs, "the network itself still runs eagerly"
    assert "forward_branches" not in vars(model)


def test_a_failing_compiler_falls_back_to_eager_with_a_warning(model, caplog):
    sample, timestep, labels = inputs(model)
    with torch.inference_mode():
        expected = model.forward_branches(sample, timestep, labels)
        network = fast_network(model, cuda_graphs=False, backend=broken_backend)
        with caplog.at_level(logging.WARNING, logger="dimr.network.acceleration"):
            got = network(sample, timestep, labels)
    assert "torch.compile failed" in caplog.text and "running the network eagerly" in caplog.text
    assert network.compiled is None
    for out, ref in zip(got, expected, strict=True):
        torch.testing.assert_close(out, ref, rtol=0, atol=0)


def test_pipeline_samples_through_the_compiled_network_with_unchanged_results(model):
    plain = DiMRPipeline(model=model, scheduler=make_scheduler())
    fast = DiMRPipeline(model=model, scheduler=make_scheduler())
    for pipe in (plain, fast):
        pipe.set_progress_bar_config(disable=True)
    noise = torch.randn(2, *plain.latent_shape)
    call = dict(guidance_scale=1.4, num_inference_steps=3, latents=noise, output_type="latent")
    expected = plain([1, 2], **call).images
    backend = CountingBackend()
    fast.network = fast_network(model, cuda_graphs=False, backend=backend)
    got = fast([1, 2], **call).images
    graphs = backend.graphs
    assert graphs > 0
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    plain([1, 2], **call)
    assert backend.graphs == graphs and plain.network is None, "another pipeline of the same network stays eager"
