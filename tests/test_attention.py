import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor2_0

from fidelity_lib.attention import (
    AttentionHook,
    AttentionStore,
    CrossAttentionProcessor,
    ForwardComplete,
    attention_hook,
    attention_processors,
    cross_attention_layers,
    layers_at_resolution,
    mean_attention,
)

TINY_16 = {
    "down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor",
    "mid_block.attentions.0.transformer_blocks.0.attn2.processor",
    "up_blocks.0.attentions.0.transformer_blocks.0.attn2.processor",
    "up_blocks.0.attentions.1.transformer_blocks.0.attn2.processor",
}


@pytest.fixture(scope="module")
def inputs():
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn(2, 4, 32, 32, generator=generator)
    embeddings = torch.randn(2, 77, 32, generator=generator)
    return latents, embeddings


def unet_out(pipe, latents, embeddings):
    with torch.no_grad():
        return pipe.unet(latents, 500, encoder_hidden_states=embeddings).sample


def test_layers_and_resolutions(tiny_pipe):
    layers = cross_attention_layers(tiny_pipe.unet, (32, 32))
    assert len(layers) == 7 and all(layer.name.endswith("attn2.processor") for layer in layers)
    assert {layer.name for layer in layers if layer.resolution == (16, 16)} == TINY_16
    assert {layer.resolution for layer in layers} == {(32, 32), (16, 16)}
    mid = next(layer for layer in layers if layer.place == "mid")
    assert mid.heads == 4 and mid.pixels == 256
    non_square = cross_attention_layers(tiny_pipe.unet, (24, 41))
    assert {layer.resolution for layer in non_square} == {(24, 41), (12, 21)}
    with pytest.raises(ValueError, match="32x32, 16x16"):
        layers_at_resolution(layers, (8, 8))


def test_only_chosen_layers_are_hooked_and_restored_after_an_exception(tiny_pipe):
    originals = tiny_pipe.unet.attn_processors
    chosen = layers_at_resolution(cross_attention_layers(tiny_pipe.unet, (32, 32)), (16, 16))
    with pytest.raises(RuntimeError, match="boom"):
        with attention_hook(tiny_pipe.unet, chosen, AttentionStore()):
            installed = tiny_pipe.unet.attn_processors
            assert {name for name, p in installed.items() if isinstance(p, CrossAttentionProcessor)} == TINY_16
            assert all(installed[name] is originals[name] for name in originals if name not in TINY_16)
            raise RuntimeError("boom")
    restored = tiny_pipe.unet.attn_processors
    assert all(restored[name] is originals[name] for name in originals)
    assert all(isinstance(p, AttnProcessor2_0) for p in restored.values())
    with pytest.raises(KeyError, match="Not attention processors"):
        with attention_processors(tiny_pipe.unet, {"no.such.processor": AttnProcessor2_0()}):
            pass
    assert tiny_pipe.unet.attn_processors == originals


def test_store_keeps_only_what_is_asked(tiny_pipe, inputs):
    latents, embeddings = inputs
    layers = cross_attention_layers(tiny_pipe.unet, (32, 32))
    reference = unet_out(tiny_pipe, latents, embeddings)
    store = AttentionStore()
    with attention_hook(tiny_pipe.unet, layers_at_resolution(layers, (16, 16)), store):
        store.begin_forward(step=0, conditional=(False, True))
        captured = unet_out(tiny_pipe, latents, embeddings)
        store.active = False
        bypassed = unet_out(tiny_pipe, latents, embeddings)
    assert torch.equal(bypassed, reference)  # inactive: the original SDPA processors run
    torch.testing.assert_close(captured, reference, atol=1e-5, rtol=1e-5)  # explicit softmax, same attention
    assert set(store.maps) == TINY_16
    mid = store.maps["mid_block.attentions.0.transformer_blocks.0.attn2.processor"]
    assert mid.shape == (1, 4, 16, 16, 77) and not mid.requires_grad  # conditional row only, detached
    torch.testing.assert_close(mid.sum(-1), torch.ones(1, 4, 16, 16))
    assert mean_attention(store.maps).shape == (16, 16, 77)
    torch.testing.assert_close(mean_attention(store.maps), torch.cat([m[0] for m in store.maps.values()]).mean(0))


def test_store_both_branches_every_step_head_mean_and_graph(tiny_pipe, inputs):
    latents, embeddings = inputs
    layers = cross_attention_layers(tiny_pipe.unet, (32, 32))
    store = AttentionStore(branches="both", every_step=True, mean_heads=True)
    with attention_hook(tiny_pipe.unet, layers, store):
        for step in range(2):
            store.begin_forward(step=step, conditional=(False, True))
            unet_out(tiny_pipe, latents, embeddings)
    assert set(store.steps) == {0, 1} and len(store.steps[1]) == 7
    assert store.steps[0]["down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor"].shape == (2, 1, 32, 32, 77)

    graph = AttentionStore(keep_graph=True, stop_after=TINY_16)
    with attention_hook(tiny_pipe.unet, layers_at_resolution(layers, (16, 16)), graph):
        leaf = latents[:1].clone().requires_grad_(True)
        with pytest.raises(ForwardComplete):
            tiny_pipe.unet(leaf, 500, encoder_hidden_states=embeddings[:1])
    (gradient,) = torch.autograd.grad(mean_attention(graph.maps)[..., 2].max(), leaf)
    assert gradient.abs().sum() > 0


class UniformConditional(AttentionHook):
    """An editing hook: uniform attention over the tokens in the conditional rows."""

    def edit(self, layer, probs, conditional):
        edited = probs.clone()
        edited[conditional] = 1.0 / probs.shape[-1]
        return edited


def test_an_editing_hook_changes_only_the_conditional_branch(tiny_pipe, inputs):
    latents, embeddings = inputs
    layers = cross_attention_layers(tiny_pipe.unet, (32, 32))
    outputs = {}
    for name, hook in (("plain", AttentionHook()), ("edited", UniformConditional())):
        with attention_hook(tiny_pipe.unet, layers, hook):
            hook.begin_forward(step=0, conditional=(False, True))
            outputs[name] = unet_out(tiny_pipe, latents, embeddings)
    assert torch.equal(outputs["edited"][0], outputs["plain"][0])
    assert (outputs["edited"][1] - outputs["plain"][1]).abs().max() > 1e-3
    hook = AttentionHook()
    with attention_hook(tiny_pipe.unet, layers, hook), pytest.raises(ValueError, match="batch rows"):
        hook.begin_forward(conditional=(True,))
        unet_out(tiny_pipe, latents, embeddings)
