"""Cross-attention capture and editing on diffusers' attention-processor API, shared by every method of the book.

Three pieces, each with one job:

- ``cross_attention_layers(unet, latent_size)`` lists the UNet's cross-attention (``attn2``) layers with their place
  (down/mid/up) and the (height, width) of their query grid for a given latent size.
- ``CrossAttentionProcessor`` computes one layer's attention with an explicit softmax and hands the probabilities,
  shaped [batch, heads, pixels, tokens], to an ``AttentionHook``, which may return edited probabilities.
  While the hook is inactive the layer runs its original (fast, SDPA) processor instead.
- ``attention_hook(unet, layers, hook)`` installs that processor on the chosen layers only. It uses
  ``attention_processors(unet, {name: processor})``, the generic install-and-restore that methods editing attention
  outputs (spatial-temporal control) use directly. Both always restore the original processors, even on exceptions.

``AttentionStore`` is the hook that records maps (last forward or every step, conditional branch or both, with or
without the autograd graph); ``mean_attention`` averages them over layers and heads as Attend-and-Excite does.
An editing method subclasses ``AttentionHook`` and overrides ``edit``; the denoising loop calls
``hook.begin_forward(step, conditional)`` before each UNet forward so the hook knows which rows are conditional.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention


@dataclass(frozen=True)
class CrossAttentionLayer:
    """One ``attn2`` layer: its processor name, place in the UNet, query grid (height, width) and head count."""

    name: str
    place: str
    resolution: tuple[int, int]
    heads: int

    @property
    def pixels(self) -> int:
        return self.resolution[0] * self.resolution[1]


def _downsampled(size: int, factor_exponent: int) -> int:
    for _ in range(factor_exponent):
        size = math.ceil(size / 2)  # a stride-2, padding-1, 3x3 convolution
    return size


def _depth(name: str, num_blocks: int) -> tuple[str, int]:
    """(place, number of 2x downsamplings) of the block a processor name belongs to."""
    block, _, rest = name.partition(".")
    if block == "mid_block":
        return "mid", num_blocks - 1
    index = int(rest.split(".")[0])
    if block == "down_blocks":
        return "down", index
    return "up", num_blocks - 1 - index


def cross_attention_layers(unet: UNet2DConditionModel, latent_size: tuple[int, int]) -> list[CrossAttentionLayer]:
    """The UNet's cross-attention layers, in processor order, with their query grid for a (height, width) latent."""
    num_blocks = len(unet.config.down_block_types)
    modules = dict(unet.named_modules())
    layers = []
    for name in unet.attn_processors:
        module_name = name.removesuffix(".processor")
        if not module_name.endswith("attn2"):
            continue
        place, exponent = _depth(name, num_blocks)
        resolution = (_downsampled(latent_size[0], exponent), _downsampled(latent_size[1], exponent))
        layers.append(CrossAttentionLayer(name, place, resolution, modules[module_name].heads))
    return layers


def layers_at_resolution(layers: Iterable[CrossAttentionLayer], resolution: tuple[int, int]) -> list[CrossAttentionLayer]:
    """The layers whose query grid is ``resolution``; a ValueError names the resolutions there are."""
    chosen = [layer for layer in layers if layer.resolution == tuple(resolution)]
    if not chosen:
        available = sorted({layer.resolution for layer in layers}, reverse=True)
        raise ValueError(
            f"No cross-attention layer works at {resolution[0]}x{resolution[1]}; this UNet and image size have "
            f"{', '.join(f'{h}x{w}' for h, w in available)}. Choose one of those resolutions."
        )
    return chosen


class AttentionHook:
    """Receives the probabilities of every hooked layer; the base class neither records nor edits.

    ``active`` switches the hooked layers between this hook (explicit softmax) and their original processors.
    ``step`` and ``conditional`` describe the next UNet forward; ``conditional`` holds one flag per batch row
    (diffusers' classifier-free guidance batches are ``(False, True)``: unconditional first); None means all rows.
    """

    def __init__(self) -> None:
        self.active = True
        self.step: int | None = None
        self.conditional: tuple[bool, ...] | None = None

    def begin_forward(self, step: int | None = None, conditional: Sequence[bool] | None = None) -> None:
        """Say which denoising step the next UNet forward belongs to and which of its batch rows are conditional."""
        self.step = step
        self.conditional = tuple(conditional) if conditional is not None else None

    def conditional_rows(self, batch_size: int) -> torch.Tensor:
        """A boolean mask over the batch rows of the current forward."""
        if self.conditional is None:
            return torch.ones(batch_size, dtype=torch.bool)
        if len(self.conditional) != batch_size:
            raise ValueError(
                f"begin_forward was told about {len(self.conditional)} batch rows but the UNet runs {batch_size}."
            )
        return torch.tensor(self.conditional, dtype=torch.bool)

    def edit(self, layer: CrossAttentionLayer, probs: torch.Tensor, conditional: torch.Tensor) -> torch.Tensor | None:
        """Look at (or replace) ``probs`` [batch, heads, pixels, tokens]; return the probabilities to use, or None."""
        return None


class CrossAttentionProcessor:
    """Attention with an explicit softmax whose probabilities go through a hook; the original processor otherwise."""

    def __init__(self, layer: CrossAttentionLayer, hook: AttentionHook, original) -> None:
        self.layer = layer
        self.hook = hook
        self.original = original

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        if not self.hook.active:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size, sequence_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)
        value = attn.to_v(encoder_hidden_states)
        query = attn.head_to_batch_dim(query)
        key = attn.head_to_batch_dim(key)
        value = attn.head_to_batch_dim(value)

        probs = attn.get_attention_scores(query, key, attention_mask)
        batch = probs.shape[0] // attn.heads
        per_head = probs.view(batch, attn.heads, *probs.shape[1:])
        edited = self.hook.edit(self.layer, per_head, self.hook.conditional_rows(batch))
        if edited is not None:
            probs = edited.reshape(probs.shape)

        hidden_states = torch.bmm(probs, value)
        hidden_states = attn.batch_to_head_dim(hidden_states)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


@contextmanager
def attention_processors(unet: UNet2DConditionModel, processors: dict[str, object]) -> Iterator[dict[str, object]]:
    """Install ``processors`` ({processor name: processor}; other layers keep theirs); restore all on exit."""
    originals = unet.attn_processors
    unknown = [name for name in processors if name not in originals]
    if unknown:
        raise KeyError(f"Not attention processors of this UNet: {unknown}")
    unet.set_attn_processor({**originals, **processors})
    try:
        yield originals
    finally:
        unet.set_attn_processor(originals)


@contextmanager
def attention_hook(
    unet: UNet2DConditionModel, layers: Iterable[CrossAttentionLayer], hook: AttentionHook
) -> Iterator[AttentionHook]:
    """Route the given layers through ``hook`` (every other layer keeps its processor); restore all on exit."""
    current = unet.attn_processors
    processors = {layer.name: CrossAttentionProcessor(layer, hook, current[layer.name]) for layer in layers}
    with attention_processors(unet, processors):
        yield hook


class ForwardComplete(Exception):
    """Raised from inside the UNet by an AttentionStore with ``stop_after`` once it holds every map it needs."""


class AttentionStore(AttentionHook):
    """Records cross-attention probabilities as [rows, heads, height, width, tokens] per layer name.

    ``keep_graph`` keeps the autograd graph (Attend-and-Excite's gradient), otherwise maps are detached.
    ``branches`` is "conditional" (default) or "both". ``every_step`` keeps each step's maps in ``steps``
    (keyed by ``step``) instead of only the last forward's in ``maps``. ``mean_heads`` stores the head mean
    (one head slot) and ``device`` moves stored maps (e.g. "cpu"), to keep long captures small.
    ``stop_after`` (layer names) raises ForwardComplete once all of them are stored in the current forward, so a
    caller that needs only the maps skips the rest of the UNet.
    """

    def __init__(
        self,
        keep_graph: bool = False,
        branches: str = "conditional",
        every_step: bool = False,
        mean_heads: bool = False,
        device: str | torch.device | None = None,
        stop_after: Iterable[str] | None = None,
    ) -> None:
        super().__init__()
        if branches not in ("conditional", "both"):
            raise ValueError(f"branches must be 'conditional' or 'both', not {branches!r}")
        self.keep_graph = keep_graph
        self.branches = branches
        self.every_step = every_step
        self.mean_heads = mean_heads
        self.device = device
        self.stop_after = frozenset(stop_after) if stop_after is not None else None
        self.maps: dict[str, torch.Tensor] = {}
        self.steps: dict[int | None, dict[str, torch.Tensor]] = {}
        self.layers: dict[str, CrossAttentionLayer] = {}

    def begin_forward(self, step: int | None = None, conditional: Sequence[bool] | None = None) -> None:
        super().begin_forward(step, conditional)
        self.maps = self.steps.setdefault(step, {}) if self.every_step else {}

    def reset(self) -> None:
        """Forget everything recorded."""
        self.maps, self.steps = {}, {}

    def edit(self, layer: CrossAttentionLayer, probs: torch.Tensor, conditional: torch.Tensor) -> None:
        kept = probs if self.branches == "both" else probs[conditional.to(probs.device)]
        if not self.keep_graph:
            kept = kept.detach()
        if self.mean_heads:
            kept = kept.mean(dim=1, keepdim=True)
        if self.device is not None:
            kept = kept.to(self.device)
        self.layers[layer.name] = layer
        self.maps[layer.name] = kept.reshape(*kept.shape[:2], *layer.resolution, kept.shape[-1])
        if self.stop_after is not None and self.stop_after <= self.maps.keys():
            raise ForwardComplete


def mean_attention(maps: dict[str, torch.Tensor], row: int = 0) -> torch.Tensor:
    """Mean over layers and heads of one batch row's maps: [height, width, tokens] (all layers share a grid)."""
    per_layer = [layer_maps[row] for layer_maps in maps.values()]
    if not per_layer:
        raise ValueError("No attention maps were recorded: was the hook active during a UNet forward?")
    return torch.cat(per_layer, dim=0).mean(dim=0)
