"""Fast sampling on a GPU: bf16 weights, compiled blocks and CUDA graphs, chosen by one mode.

    mode = default_mode(device)                        # "fast" on CUDA, "none" elsewhere
    pipe = accelerate_pipeline(load_pipeline(name, device=device, torch_dtype=mode_dtype(mode)), mode)

Modes, each adding to the one before (CPU supports only "none": bf16 there is hundreds of times slower):
- "none": unchanged, float32.
- "bf16": network and VAE weights in bfloat16 (loaded so: `mode_dtype`), so every matrix product, convolution
  and attention (flash attention through scaled_dot_product_attention) runs on bf16 tensor cores without
  per-call weight casts; `dimr.sampling.loading` keeps a bf16 VAE on CUDA in channels-last layout (cuDNN's fast path).
- "fast": "bf16" + `torch.compile` of every block, cascade and head (compiled once per block type: the
  blocks of a branch share their code) + one CUDA graph per input shape for the whole network call, which
  removes the per-kernel launch cost that dominates small batches. Compile or capture failures fall back
  to eager with a logged warning (as does a missing compiler or Triton).

The network and VAE are shared by every pipeline `load_pipeline` returns for the same model, device and dtype,
so nothing here changes them: a mode whose dtype differs from the network's is refused, and "fast" compiles a
copy of the network's modules that shares its weights, kept once per network. Only the pipeline object (new
for every `load_pipeline` call) is told which network call to run. The pipeline keeps its own loop free of host
syncs, so the graph replays back to back. Call this after the pipeline is on its device: a CUDA graph keeps the
addresses of the weights it captured.
"""

import copy
import importlib.util
import itertools
import logging
import threading
import weakref
from collections import OrderedDict

import torch

logger = logging.getLogger(__name__)

MODES = ("none", "bf16", "fast")
# CUDA graphs kept per network, one per input shape, least recently used dropped first. More than every shape a
# server warms at start-up (dimr.demo.batching.warm_up_batches: 24, for 1..16 images with and without guidance),
# so that none of them is captured again in a visitor's request.
MAX_GRAPHS = 32
_fast_networks = weakref.WeakKeyDictionary()  # network -> its FastNetwork, so that compiling happens once
_fast_networks_lock = threading.Lock()


def default_mode(device):
    """The fastest correct mode for a device: "fast" on CUDA, "none" (unchanged float32) elsewhere."""
    return "fast" if torch.device(device).type == "cuda" else "none"


def mode_dtype(mode):
    """The weight dtype a mode runs in (pass it to `load_pipeline(torch_dtype=...)`)."""
    _check_mode(mode)
    return torch.float32 if mode == "none" else torch.bfloat16


def accelerate_pipeline(pipe, mode="fast", compile=True, cuda_graphs=True):
    """Make `pipe` (a DiMRPipeline loaded with `torch_dtype=mode_dtype(mode)`) sample in `mode`; returns it.

    compile / cuda_graphs switch off the two parts of "fast" (for measuring each; both on by default).
    The network and VAE are left as they are (see the module docstring).
    """
    _check_mode(mode)
    if mode == "none":
        return pipe
    if pipe.model.dtype != mode_dtype(mode):
        raise ValueError(f"mode {mode!r} runs a {mode_dtype(mode)} network, but this pipeline's is {pipe.model.dtype}; "
                         f"load it with load_pipeline(..., torch_dtype=mode_dtype({mode!r}))")
    device = pipe.model.device
    if device.type != "cuda":
        raise ValueError(f"mode {mode!r} needs a CUDA device, but the pipeline is on {device}; "
                         "use mode 'none' (bf16 on CPU is hundreds of times slower than float32)")
    if mode == "fast":
        pipe.network = fast_network(pipe.model, compile=compile, cuda_graphs=cuda_graphs)
    return pipe


def fast_network(model, compile=True, cuda_graphs=True, backend="inductor"):
    """The FastNetwork of `model`: made once per network and then shared (CUDA graphs act only on CUDA tensors)."""
    with _fast_networks_lock:
        network = _fast_networks.get(model)
        if network is None:
            network = _fast_networks[model] = FastNetwork(model, compile, cuda_graphs, backend)
        network.use_graphs = network.use_graphs or cuda_graphs
        return network


def _check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"unknown acceleration mode {mode!r}; choose one of {', '.join(MODES)}")


def compiled_copy(model, backend="inductor"):
    """A copy of `model`'s modules sharing its weights, with every block, cascade and head compiled; None (with a
    warning) where torch.compile is unavailable.

    Blocks of one branch run the same code on same-shaped tensors, so they share one compiled graph: this
    compiles a handful of small graphs instead of the whole unrolled network, in seconds rather than minutes.
    """
    if model.device.type == "cuda" and importlib.util.find_spec("triton") is None:
        logger.warning("torch.compile is unavailable here (no Triton); running the network eagerly")
        return None
    shared = {id(tensor): tensor for tensor in itertools.chain(model.parameters(), model.buffers())}
    copied = copy.deepcopy(model, memo=shared)
    for stage in copied.stages:
        for region in [*stage.blocks, stage.output_layer] + ([stage.upsample] if hasattr(stage, "upsample") else []):
            region.compile(backend=backend)
    return copied


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

    @staticmethod
    def supports(sample):
        return sample.device.type == "cuda"

    def __call__(self, sample, timestep, class_labels):
        self.sample.copy_(sample)
        self.timestep.copy_(timestep)
        self.class_labels.copy_(class_labels)
        self.graph.replay()
        # Copies: the next replay overwrites the static outputs, and callers may keep what they get.
        return [out.clone() for out in self.outputs]


class FastNetwork:
    """The network call of "fast" mode (`pipe.network`), for one network.

    The first call of each input shape runs the compiled copy of the network once; if compilation fails,
    the copy is dropped with a warning and the call runs the network itself, eagerly. With `use_graphs`,
    that shape is then captured as a CUDA graph and replayed on later calls (a failed capture turns graphs
    off, with a warning). Calls with autograd on run the network directly.
    """

    def __init__(self, model, compile=True, use_graphs=True, backend="inductor"):
        self.model = weakref.ref(model)  # the network owns this object, not the other way round
        self.compiled = compiled_copy(model, backend) if compile else None
        self.use_graphs = use_graphs
        self.seen = set()
        self.graphs = OrderedDict()
        self.lock = threading.Lock()  # one network may serve several threads; graph buffers are shared

    def forward_branches(self, sample, timestep, class_labels):
        """The network's forward_branches: the compiled copy's while there is one."""
        return (self.compiled or self.model()).forward_branches(sample, timestep, class_labels)

    def __call__(self, sample, timestep, class_labels):
        timestep = torch.as_tensor(timestep, device=sample.device, dtype=torch.float32)
        if torch.is_grad_enabled():
            return self.forward_branches(sample, timestep, class_labels)
        use_graphs = self.use_graphs and _Graph.supports(sample)
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
            if self.compiled is None:
                raise
            logger.warning("torch.compile failed (%s: %s); running the network eagerly", type(err).__name__, err)
            self.compiled = None
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
