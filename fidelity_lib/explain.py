"""Attention explanations: per-token cross-attention maps over denoising steps and layers.

The maps come from ``fidelity_lib.attention`` (no second capture mechanism). For a step, the latent the guidance
forward ran on is passed through the UNet once more with an ``AttentionStore`` on the chosen layers.

What a map is, exactly:
- ``conditional`` maps (the default, the maps Attend-and-Excite optimises): the conditional row's softmax
  probabilities, averaged over heads (and over layers for ``mean_over_layers``). At each pixel they sum to 1 over
  all 77 (or ``model_max_length``) key tokens.
- ``raw`` maps (what the A&E explanation notebook shows): the mean of the unconditional and conditional rows. The
  unconditional row attends to the empty prompt, so these mix in maps that have nothing to do with the subject.
The book draws the maps as the probabilities they are, on one colour scale per figure with its colorbar.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fidelity_lib.attention import AttentionStore, CrossAttentionLayer, attention_hook, cross_attention_layers
from fidelity_lib.conditioning import Pipeline, encode_prompts


@dataclass
class StepMaps:
    """Per-layer maps of one step: {layer name: [height, width, tokens]} (head mean), plus the layers."""

    step: int
    maps: dict[str, torch.Tensor]
    layers: dict[str, CrossAttentionLayer]

    def mean_over_layers(self, resolution: tuple[int, int]) -> torch.Tensor:
        """Mean over the layers at one resolution: [height, width, tokens]."""
        chosen = [self.maps[name] for name, layer in self.layers.items() if layer.resolution == tuple(resolution)]
        if not chosen:
            raise ValueError(f"No captured layer at {resolution}; captured: {sorted({l.resolution for l in self.layers.values()})}")
        return torch.stack(chosen).mean(dim=0)


class LatentRecorder:
    """A ``step_callback`` that keeps the latents of the chosen steps (on the CPU)."""

    def __init__(self, steps: list[int]):
        self.steps = set(steps)
        self.latents: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def __call__(self, step: int, timestep: torch.Tensor, latents: torch.Tensor) -> None:
        if step in self.steps:
            self.latents[step] = (timestep.detach().cpu(), latents.detach().cpu())


@torch.no_grad()
def step_attention(
    pipe: Pipeline,
    prompt: str,
    recorded: dict[int, tuple[torch.Tensor, torch.Tensor]],
    branches: str = "conditional",
) -> list[StepMaps]:
    """Cross-attention maps of every layer at each recorded step; ``branches="both"`` gives the raw (uncond+cond) mean."""
    if not recorded:
        return []
    device = pipe._execution_device
    size = tuple(side * pipe.vae_scale_factor for side in next(iter(recorded.values()))[1].shape[-2:])
    conditioning, unconditional = encode_prompts(pipe, [prompt], device, True, *size)
    cfg_kwargs = unconditional.cat(conditioning).unet_kwargs()  # the CFG batch: unconditional row first
    results = []
    for step, (timestep, latents) in sorted(recorded.items()):
        latents = latents.to(device)
        layers = cross_attention_layers(pipe.unet, tuple(latents.shape[-2:]))
        store = AttentionStore(branches=branches, mean_heads=True, device="cpu")
        with attention_hook(pipe.unet, layers, store):
            store.begin_forward(step, (False, True))
            latent_input = pipe.scheduler.scale_model_input(torch.cat([latents] * 2), timestep.to(device))
            pipe.unet(latent_input, timestep.to(device), **cfg_kwargs)
        maps = {name: layer_maps.mean(dim=0)[0] for name, layer_maps in store.maps.items()}  # rows, then the head slot
        results.append(StepMaps(step, maps, dict(store.layers)))
    return results
