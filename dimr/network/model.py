"""The DiMR network: time-dependent norms, transformer and ConvNeXt branches, feature cascade.

Read top to bottom: time-dependent parameters and norms, the gated MLP, attention, the two
block types, a branch (`DiMRStage`), and the model that chains branches from low to high
resolution. Module names follow the official checkpoint keys, so a released state dict
loads without renaming (the numbered `nn.Sequential` slots are why some indices skip).
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from diffusers.utils import BaseOutput

from dimr.network.config import NUM_TRAIN_TIMESTEPS, normalize_official_config, stage_num_blocks


def time_condition(timestep, batch_size, device):
    """Diffusers timestep index k (0..999, floats allowed) -> the official `log_snr / 4`, shape [B] or [1]."""
    t = torch.as_tensor(timestep, device=device, dtype=torch.float32)
    if t.dim() == 0:
        # One shared time: time-dependent values are computed once and broadcast.
        t = t[None]
    elif t.shape[0] != batch_size:
        raise ValueError(f"timestep has {t.shape[0]} entries but the batch has {batch_size} samples")
    log_snr = (t + 1) / NUM_TRAIN_TIMESTEPS * 8 - 4
    return log_snr / 4.0


def _per_sample(value, x):
    """Reshape a [B or 1, D] per-sample value so it broadcasts over x [B, ..., D]."""
    return value.view(value.shape[0], *([1] * (x.dim() - 2)), value.shape[-1])


class TimeDependentParameter(nn.Module):
    """A parameter interpolated between two values by a learned sigmoid of time."""

    def __init__(self, dim, init):
        super().__init__()
        self.param0 = nn.Parameter(torch.full((dim,), float(init)))
        self.param1 = nn.Parameter(torch.full((dim,), float(init)))
        self.nodecay_weight = nn.Parameter(torch.zeros(dim))
        self.nodecay_bias = nn.Parameter(torch.zeros(dim))

    def forward(self, c):
        gate = torch.sigmoid(torch.addcmul(self.nodecay_bias[None], c[:, None], self.nodecay_weight[None] + 1))
        return torch.addcmul(self.param1[None], gate, self.param0[None] - self.param1[None])


class TDLayerNorm(nn.Module):
    """LayerNorm whose weight and bias depend on time."""

    def __init__(self, dim):
        super().__init__()
        self.dim = dim
        self.weight = TimeDependentParameter(dim, 1.0)
        self.bias = TimeDependentParameter(dim, 0.0)

    def forward(self, x, c):
        weight, bias = self.weight(c).to(x.dtype), self.bias(c).to(x.dtype)
        if weight.shape[0] == 1:
            return F.layer_norm(x, (self.dim,), weight[0], bias[0], eps=1e-5)
        return torch.addcmul(_per_sample(bias, x), _per_sample(weight, x), F.layer_norm(x, (self.dim,), eps=1e-5))


class TDRMSNorm(nn.Module):
    """RMSNorm (eps added to the RMS, not under the root) with a time-dependent scale."""

    def __init__(self, dim):
        super().__init__()
        self.dim = dim
        self.scale = TimeDependentParameter(dim, 1.0)

    def forward(self, x, c):
        rms = torch.linalg.vector_norm(x, dim=-1, keepdim=True) * self.dim**-0.5
        return x / (rms + 1e-8) * _per_sample(self.scale(c).to(x.dtype), x)


NORMS = {"LN": TDLayerNorm, "TDRMSN": TDRMSNorm}


class GatedMLP(nn.Module):
    """Pre-norm gated linear unit: w2(gelu(w0 h) * w1 h)."""

    def __init__(self, dim, hidden_dim, norm_type):
        super().__init__()
        self.norm = NORMS[norm_type](dim)
        self.w0 = nn.Linear(dim, hidden_dim)
        self.w1 = nn.Linear(dim, hidden_dim)
        self.w2 = nn.Linear(hidden_dim, dim)

    def forward(self, x, c):
        h = self.norm(x, c)
        return self.w2(F.gelu(self.w0(h)) * self.w1(h))


class SelfAttention(nn.Module):
    """Pre-norm multi-head self-attention over tokens [B, N, D]."""

    def __init__(self, dim, num_heads, norm_type):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_attention_heads {num_heads}")
        self.num_heads = num_heads
        self.norm = NORMS[norm_type](dim)
        self.query_key_value = nn.Linear(dim, 3 * dim, bias=False)
        self.dense = nn.Linear(dim, dim)

    def forward(self, x, c):
        b, n, d = x.shape
        qkv = self.query_key_value(self.norm(x, c)).view(b, n, 3 * self.num_heads, d // self.num_heads)
        q, k, v = qkv.transpose(1, 2).chunk(3, dim=1)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.dense(out.transpose(1, 2).reshape(b, n, d).to(x.dtype))


class ToChannelsFirst(nn.Module):
    """[B, H, W, C] -> [B, C, H, W] view (a channels-last tensor, no copy)."""

    def forward(self, x):
        return x.permute(0, 3, 1, 2)


class ToChannelsLast(nn.Module):
    """[B, C, H, W] -> [B, H, W, C] view."""

    def forward(self, x):
        return x.permute(0, 2, 3, 1)


class TransformerBlock(nn.Module):
    """x + attn(x), then x + mlp(x)."""

    def __init__(self, cfg, norm_type):
        super().__init__()
        self.block1 = SelfAttention(cfg["dim"], cfg["num_attention_heads"], norm_type)
        self.block2 = GatedMLP(cfg["dim"], cfg["hidden_dim"], norm_type)
        self.dropout = nn.Dropout(cfg["dropout_prob"])

    def forward(self, x, c):
        x = x + self.dropout(self.block1(x, c))
        return x + self.dropout(self.block2(x, c))


class ConvNeXtBlock(nn.Module):
    """x + depthwise conv(x) (no norm before it), then x + mlp(x), on a [B, H, W, C] grid."""

    def __init__(self, cfg, norm_type):
        super().__init__()
        dim, k = cfg["dim"], cfg["kernel_size"]
        self.block1 = nn.Sequential(
            ToChannelsFirst(), nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim), ToChannelsLast()
        )
        self.block2 = GatedMLP(dim, cfg["hidden_dim"], norm_type)
        self.dropout = nn.Dropout(cfg["dropout_prob"])

    def forward(self, x, c):
        x = x + self.dropout(self.block1(x))
        return x + self.dropout(self.block2(x, c))


BLOCKS = {"TransformerBlock": TransformerBlock, "ConvNeXtBlock": ConvNeXtBlock}


class AreaDownsample(nn.Module):
    """Average-pool the input by an integer ratio before patchifying."""

    def __init__(self, ratio):
        super().__init__()
        self.ratio = ratio

    def forward(self, x):
        return x if self.ratio == 1 else F.avg_pool2d(x, self.ratio)


class PositionEmbedding(nn.Module):
    """Learned absolute position table indexed by h * max_width + w."""

    def __init__(self, max_height, max_width, dim):
        super().__init__()
        self.max_height, self.max_width = max_height, max_width
        self.position_embeddings = nn.Embedding(max_height * max_width, dim)

    def forward(self, x):
        _, h, w, d = x.shape
        table = self.position_embeddings.weight.view(self.max_height, self.max_width, d)
        return x + table[:h, :w].to(x.dtype)


class PixelShuffleUpsample(nn.Module):
    """Linear to dim * r^2 channels, then spread them over an r x r neighbourhood."""

    def __init__(self, dim_in, dim_out, ratio):
        super().__init__()
        self.ratio = ratio
        self.kernel = nn.Linear(dim_in, dim_out * ratio * ratio)

    def forward(self, x):
        x = self.kernel(x)
        b, h, w, d = x.shape
        r = self.ratio
        x = x.view(b, h, w, r, r, d // (r * r)).transpose(2, 3)
        return x.reshape(b, h * r, w * r, d // (r * r))


class InputLayer(nn.Sequential):
    """Area-downsample, patchify convolution, channels-last, position embedding (the official `input_layer`)."""

    def __init__(self, cfg, channels):
        ratio = cfg["input_feature_ratio"]
        super().__init__(
            AreaDownsample(cfg["image_input_ratio"]),
            nn.Conv2d(channels, cfg["dim"], ratio, stride=ratio),
            ToChannelsLast(),
            PositionEmbedding(cfg["max_height"], cfg["max_width"], cfg["dim"]),
        )

    @property
    def patchify(self):
        return self[1]

    def forward(self, sample):
        return super().forward(sample.to(self.patchify.weight.dtype))


class CascadeUpsample(nn.ModuleList):
    """Feature cascade: TD-LN of the lower branch's features, pixel-shuffle up, TD-LN."""

    def __init__(self, lowres_dim, dim, ratio):
        super().__init__([TDLayerNorm(lowres_dim), PixelShuffleUpsample(lowres_dim, dim, ratio), TDLayerNorm(dim)])

    def forward(self, lowres, c):
        norm_in, shuffle, norm_out = self
        return norm_out(shuffle(norm_in(lowres, c)), c)


class OutputHead(nn.ModuleList):
    """TD-LN then a k x k convolution to the noise prediction [B, C, H, W] (the official head)."""

    def __init__(self, dim, channels, kernel_size):
        super().__init__([TDLayerNorm(dim), ToChannelsFirst(), nn.Conv2d(dim, channels, kernel_size, padding=kernel_size // 2)])

    def forward(self, x, c):
        norm, to_channels_first, conv = self
        return conv(to_channels_first(norm(x, c)))


class UnpatchifyHead(nn.ModuleList):
    """U-ViT style head for single-resolution baselines: TD-LN, linear to p x p pixels per token, k x k conv."""

    def __init__(self, dim, channels, kernel_size, patch):
        super().__init__([TDLayerNorm(dim), nn.Linear(dim, channels * patch * patch),
                          nn.Conv2d(channels, channels, kernel_size, padding=kernel_size // 2)])
        self.patch = patch

    def forward(self, x, c):
        norm, linear, conv = self
        x = linear(norm(x, c)).permute(0, 3, 1, 2)
        return conv(F.pixel_shuffle(x, self.patch))


class DiMRStage(nn.Module):
    """One resolution branch: embed, add the cascade from below, U-ViT blocks, head."""

    def __init__(self, cfg, channels, num_classes, norm_type, lowres_dim=None, lowres_height=None):
        super().__init__()
        self.is_transformer = cfg["block_type"] == "TransformerBlock"
        self.input_layer = InputLayer(cfg, channels)
        # Only transformer branches see the class; the others receive it through the cascade.
        self.class_embeds = nn.Embedding(num_classes, cfg["dim"]) if self.is_transformer else None
        if lowres_dim is not None:
            self.upsample = CascadeUpsample(lowres_dim, cfg["dim"], cfg["max_height"] // lowres_height)
        block = BLOCKS[cfg["block_type"]]
        self.blocks = nn.ModuleList(block(cfg, norm_type) for _ in range(stage_num_blocks(cfg)))
        self.skip_denses = nn.ModuleList(nn.Linear(2 * cfg["dim"], cfg["dim"]) for _ in range(len(self.blocks) // 2))
        if cfg["head_patch_size"] == 1:
            self.output_layer = OutputHead(cfg["dim"], channels, cfg["final_kernel_size"])
        else:
            self.output_layer = UnpatchifyHead(cfg["dim"], channels, cfg["final_kernel_size"], cfg["head_patch_size"])
        self.gradient_checkpointing = False

    def _block(self, block, x, c):
        # Checkpointing only saves memory for a backward pass; without gradients it would only cost time.
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return self._gradient_checkpointing_func(block, x, c)
        return block(x, c)

    def forward(self, sample, c, class_labels, lowres=None, keep_features=True):
        """Returns this branch's prediction [B, C, h, w] and its feature stack for the next branch."""
        x = self.input_layer(sample)
        if lowres is not None:
            x = x + self.upsample(lowres, c)
        b, h, w, d = x.shape
        if self.is_transformer:
            x = torch.cat([self.class_embeds(class_labels)[:, None].to(x.dtype), x.reshape(b, h * w, d)], dim=1)

        features = [x]
        num_in = len(self.blocks) // 2
        skips = []
        for block in self.blocks[:num_in]:
            x = self._block(block, x, c)
            features.append(x)
            skips.append(x)
        x = self._block(self.blocks[num_in], x, c)
        features.append(x)
        for dense, block in zip(self.skip_denses, self.blocks[num_in + 1 :]):
            x = self._block(block, dense(torch.cat([x, skips.pop()], dim=-1)), c)
            features.append(x)

        if self.is_transformer:
            x = x[:, 1:].reshape(b, h, w, d)
        stack = None
        if keep_features:
            stack = torch.cat(features, dim=-1)
            if self.is_transformer:
                stack = stack[:, 1:].reshape(b, h, w, -1)
        return self.output_layer(x, c), stack


class DiMROutput(BaseOutput):
    """`sample`: the full-resolution noise prediction; `branch_samples`: every branch's, lowest first."""

    sample: torch.Tensor
    branch_samples: list


class DiMRModel(ModelMixin, ConfigMixin):
    """DiMR: branches from low to high resolution, each refining the features of the one below.

    Config fields use the official names (see `dimr.network.config`). `class_names` optionally names the
    classes 0..num_classes-2; the last class is the null class used for guidance.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, channels, num_classes, stage_configs, norm_type="TDRMSN", block_grad_to_lowres=False,
                 class_names=None):
        super().__init__()
        cfg = normalize_official_config(
            dict(channels=channels, num_classes=num_classes, stage_configs=stage_configs, norm_type=norm_type,
                 block_grad_to_lowres=block_grad_to_lowres)
        )
        # The config is kept normalised (branch defaults filled in), the one form every reader sees and saves.
        self.register_to_config(stage_configs=cfg["stage_configs"])
        stages = []
        lowres_dim = lowres_height = None
        for stage_cfg in self.config.stage_configs:
            stages.append(DiMRStage(stage_cfg, channels, num_classes, norm_type, lowres_dim, lowres_height))
            # The next branch receives this branch's whole feature stack: the embedded input and the output of
            # every block, concatenated along channels.
            lowres_dim = stage_cfg["dim"] * (stage_num_blocks(stage_cfg) + 1)
            lowres_height = stage_cfg["max_height"]
        self.stages = nn.ModuleList(stages)
        self.initialize_weights()

    def initialize_weights(self):
        """The official initialisation: normal weights of std 0.02 (trunc_normal_ with the official cut at +-2,
        i.e. 100 std) and zero biases for every linear, convolution and embedding; the time-dependent
        parameters keep their own. PyTorch's defaults scale with fan-in instead (up to 0.35 for the 7x7
        depthwise convolutions) and the embeddings with std 1."""
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d, nn.Embedding)):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if getattr(module, "bias", None) is not None:
                    nn.init.zeros_(module.bias)

    @property
    def sample_size(self):
        """Side of the square input the model was built for (latent or pixel)."""
        last = self.config.stage_configs[-1]
        return last["max_height"] * last["input_feature_ratio"] * last["image_input_ratio"]

    @property
    def null_class(self):
        return self.config.num_classes - 1

    @property
    def branch_scales(self):
        """Downsampling factor of each branch's prediction relative to the input, lowest resolution first."""
        return [self.sample_size // (s["max_height"] * s["head_patch_size"]) for s in self.config.stage_configs]

    def forward_branches(self, sample, timestep, class_labels):
        """Every branch's noise prediction [B, C, H / 2^l, W / 2^l], lowest resolution first."""
        c = time_condition(timestep, sample.shape[0], sample.device)
        outputs, lowres = [], None
        for i, stage in enumerate(self.stages):
            out, lowres = stage(sample, c, class_labels, lowres, keep_features=i + 1 < len(self.stages))
            outputs.append(out)
            if self.config.block_grad_to_lowres and lowres is not None:
                # Official option: the lower branch learns only from its own loss.
                lowres = lowres.detach()
        return outputs

    def forward(self, sample, timestep, class_labels, return_dict=True):
        branches = self.forward_branches(sample, timestep, class_labels)
        if not return_dict:
            return (branches[-1], branches)
        return DiMROutput(sample=branches[-1], branch_samples=branches)


def count_parameters(model):
    return sum(math.prod(p.shape) for p in model.parameters())
