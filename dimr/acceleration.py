"""Fast sampling on a GPU: bf16 weights, compiled blocks and CUDA graphs, applied to a DiMRPipeline in place.

    mode = default_mode(device)                        # "fast" on CUDA, "none" elsewhere
    pipe = load_pipeline(name, device=device, torch_dtype=mode_dtype(mode))
    accelerate_pipeline(pipe, mode)

Modes, each adding to the one before (CPU supports only "none": bf16 there is hundreds of times slower):
- "none": unchanged, float32.
- "bf16": network and VAE weights in bfloat16, so every matrix product, convolution and attention (flash
  attention through scaled_dot_product_attention) runs on bf16 tensor cores without per-call weight casts;
  the VAE also in channels-last layout (cuDNN's fast path for bf16 convolutions).
- "fast": "bf16" + `torch.compile` of every block, cascade and head (compiled once per block type: the
  blocks of a branch share their code) + one CUDA graph per input shape for the whole network call, which
  removes the per-kernel launch cost that dominates small batches. Compile or capture failures fall back
  to eager with a logged warning (as does a missing compiler or Triton).

The pipeline keeps its own loop free of host syncs, so the graph replays back to back. Call this after
the pipeline is on its device: a CUDA graph keeps the addresses of the weights it captured.
"""

import logging
import threading
from collections import OrderedDict

import torch

logger = logging.getLogger(__name__)

MODES = ("none", "bf16", "fast")
MAX_GRAPHS = 4  # CUDA graphs kept per network (one per input shape), least recently used dropped first


def default_mode(device):
    """The fastest correct mode for a device: "fast" on CUDA, "none" (unchanged float32) elsewhere."""
    return "fast" if torch.device(device).type == "cuda" else "none"


def mode_dtype(mode):
    """The weight dtype a mode runs in (pass it to `load_pipeline(torch_dtype=...)`)."""
    _check_mode(mode)
    return torch.float32 if mode == "none" else torch.bfloat16


def accelerate_pipeline(pipe, mode="fast", compile=True, cuda_graphs=True):
    """Speed up `pipe` (a DiMRPipeline) in place for `mode` and return it.

    compile / cuda_graphs switch off the two parts of "fast" (for measuring each; both on by default).
    Applying a mode twice, or "bf16" then "fast", is fine; going back to a lower mode is not supported.
    """
    _check_mode(mode)
    if mode == "none":
        return pipe
    device = pipe.model.device
    if device.type != "cuda":
        raise ValueError(f"mode {mode!r} needs a CUDA device, but the pipeline is on {device}; "
                         "use mode 'none' (bf16 on CPU is hundreds of times slower than float32)")
    if pipe.model.dtype != torch.bfloat16:
        pipe.model.to(torch.bfloat16)
    if pipe.vae is not None:
        pipe.vae.to(dtype=torch.bfloat16, memory_format=torch.channels_last)
    if mode == "fast":
        make_fast(pipe.model, compile=compile, cuda_graphs=cuda_graphs)
    return pipe


def make_fast(model, compile=True, cuda_graphs=True, backend="inductor"):
    """Compile `model`'s regions and route its network calls through a FastNetwork (any device; CUDA graphs
    only act on CUDA tensors). Idempotent."""
    compiled = compile and compile_regions(model, backend)
    if not (compiled or cuda_graphs):
        return model
    forward = model.__dict__.get("forward_branches")
    if isinstance(forward, FastNetwork):
        forward.use_graphs = forward.use_graphs or cuda_graphs
    else:
        # An instance attribute shadows the method, so the pipeline (and model.forward) call this.
        model.forward_branches = FastNetwork(model, cuda_graphs)
    return model


def _check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"unknown acceleration mode {mode!r}; choose one of {', '.join(MODES)}")


def compile_regions(model, backend="inductor"):
    """torch.compile every block, cascade and head of `model` in place; False (with a warning) if unavailable.

    Blocks of one branch run the same code on same-shaped tensors, so they share one compiled graph: this
    compiles a handful of small graphs instead of the whole unrolled network, in seconds rather than minutes.
    """
    if not hasattr(torch, "compile") or (model.device.type == "cuda" and not _has_triton()):
        logger.warning("torch.compile is unavailable here (no Triton); running the network eagerly")
        return False
    for stage in model.stages:
        regions = [*stage.blocks, stage.output_layer] + ([stage.upsample] if hasattr(stage, "upsample") else [])
        for region in regions:
            if getattr(region, "_compiled_call_impl", None) is None:
                region.compile(backend=backend)
    return True


def uncompile_regions(model):
    for module in model.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None


def _has_triton():
    try:
        from torch.utils._triton import has_triton
    except ImportError:
        return False
    return has_triton()


class _Graph:
    """One captured network call: the static inputs it reads and the static outputs it writes."""

    def __init__(self, forward, sample, timestep, class_labels):
        self.sample, self.timestep, self.class_labels = sample.clone(), timestep.clone(), class_labels.clone()
        # Warm up on a side stream (as CUDA graph capture requires) so that capture records the steady state.
        stream = torch.cuda.Stream(device=sample.device)
        stream.wait_stream(torch.cuda.current_stream(sample.device))
        with torch.cuda.stream(stream):
            for _ in range(2):
                forward(self.sample, self.timestep, self.class_labels)
        torch.cuda.current_stream(sample.device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"):
            self.outputs = forward(self.sample, self.timestep, self.class_labels)

    def __call__(self, sample, timestep, class_labels):
        self.sample.copy_(sample)
        self.timestep.copy_(timestep)
        self.class_labels.copy_(class_labels)
        self.graph.replay()
        # Copies: the next replay overwrites the static outputs, and callers may keep what they get.
        return [out.clone() for out in self.outputs]


class FastNetwork:
    """Stands in for `model.forward_branches` in "fast" mode.

    The first call of each input shape runs the (compiled) network once; if compilation fails, the
    blocks are un-compiled with a warning and the call runs eagerly. With `use_graphs`, that shape is then
    captured as a CUDA graph and replayed on later calls (a failed capture turns graphs off, with a
    warning). Calls with autograd on run the network directly.
    """

    def __init__(self, model, use_graphs):
        self.model = model
        self.forward_branches = type(model).forward_branches.__get__(model)
        self.use_graphs = use_graphs
        self.seen = set()
        self.graphs = OrderedDict()
        self.lock = threading.Lock()  # one pipeline may serve several threads; graph buffers are shared

    def __call__(self, sample, timestep, class_labels):
        timestep = torch.as_tensor(timestep, device=sample.device, dtype=torch.float32)
        if torch.is_grad_enabled():
            return self.forward_branches(sample, timestep, class_labels)
        use_graphs = self.use_graphs and sample.device.type == "cuda"
        key = (tuple(sample.shape), sample.dtype, tuple(timestep.shape), tuple(class_labels.shape),
               class_labels.dtype, sample.device)
        with self.lock:
            if key not in self.seen:
                outputs = self._first_call(sample, timestep, class_labels)
                self.seen.add(key)
                if not use_graphs:
                    return outputs
            graph = self._graph(key, sample, timestep, class_labels) if use_graphs else None
            if graph is not None:
                return graph(sample, timestep, class_labels)
        return self.forward_branches(sample, timestep, class_labels)

    def _first_call(self, sample, timestep, class_labels):
        try:
            return self.forward_branches(sample, timestep, class_labels)
        except Exception as err:
            if not any(getattr(m, "_compiled_call_impl", None) is not None for m in self.model.modules()):
                raise
            logger.warning("torch.compile failed (%s: %s); running the network eagerly", type(err).__name__, err)
            uncompile_regions(self.model)
            return self.forward_branches(sample, timestep, class_labels)

    def _graph(self, key, sample, timestep, class_labels):
        """The graph for this input shape, captured now if new; None (graphs off) if capture fails."""
        if key in self.graphs:
            self.graphs.move_to_end(key)
            return self.graphs[key]
        try:
            graph = _Graph(self.forward_branches, sample, timestep, class_labels)
        except Exception as err:  # noqa: BLE001 - whatever breaks capture, the eager network still works
            logger.warning("CUDA graph capture failed (%s: %s); running the network without graphs",
                           type(err).__name__, err)
            self.use_graphs = False
            self.graphs.clear()
            return None
        self.graphs[key] = graph
        while len(self.graphs) > MAX_GRAPHS:
            self.graphs.popitem(last=False)
        return graph
