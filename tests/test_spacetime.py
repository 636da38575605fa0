"""Spatial-temporal attention control on the tiny pipeline with a tiny random CLIP (a few steps, CPU)."""

import os
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from fidelity_lib.attend_excite import AttendExciteConfig, attend_and_excite
from fidelity_lib.attention import cross_attention_layers
from fidelity_lib.components import load_loss_clip
from fidelity_lib.layout.predictor import ObjectPlacement
from fidelity_lib.spacetime import SpaceTimeConfig, SpaceTimeControl, SpaceTimeFallbackWarning, SpaceTimeProcessor, clip_global_view, convex_combination, crop_box, local_attention, local_clip_name, official_combination, region_masks, spacetime_control, spacetime_generate, weight_columns

CAT = ObjectPlacement("cat", "a cat", 0.3, 0.4)
DOG = ObjectPlacement("dog", "The dog", 0.7, 0.6)
PROMPT = "a cat to the left of a dog"


@pytest.fixture(scope="module")
def clip():
    return load_loss_clip("tiny")


def brute_force_disc(x: float, y: float, height: int, width: int, radius: float = 0.2) -> np.ndarray:
    return np.array(
        [[(c / width - x) ** 2 + (r / height - y) ** 2 < radius**2 for c in range(width)] for r in range(height)]
    )


def test_masks_are_discs_of_radius_0p2_at_every_sd_resolution():
    centre = [ObjectPlacement("bed", "the bed", 0.5, 0.5)]
    counts = {dim: int(region_masks(centre, dim).sum()) for dim in (64, 32, 16, 8)}
    assert counts == {64: 509, 32: 129, 16: 37, 8: 9}  # sizes under the rule of attention.py L240-263
    for placement in (CAT, DOG):
        for height, width in ((32, 32), (16, 16), (8, 12)):
            mask = region_masks([placement], (height, width))[0].reshape(height, width).numpy().astype(bool)
            assert (mask == brute_force_disc(placement.x, placement.y, height, width)).all()
            row, col = int(placement.y * height), int(placement.x * width)
            assert mask[row, col] and not mask[0, 0]


def test_mask_grid_is_cell_corners_with_a_strict_inequality():
    mask = region_masks([ObjectPlacement("a", "a", 0.0, 0.0)], 5)[0].reshape(5, 5)
    assert mask.sum() == 1 and mask[0, 0] == 1  # cells (0, 1) and (1, 0) are exactly 0.2 away: outside
    assert region_masks([], 16).shape == (0, 256)


def test_official_and_convex_combinations_match_their_formulas():
    g_c = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])  # [rows 1, pixels 3, dim 2]
    g_u = torch.tensor([[[0.5, 0.5], [1.0, 1.0], [2.0, 2.0]]])
    local = torch.stack([torch.full((3, 2), 10.0), torch.full((3, 2), 20.0)])[None]  # [1, objects 2, 3, 2]
    masks = torch.tensor([[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    weights = torch.tensor([0.5, 2.0])
    official = official_combination(g_c, g_u, local, masks, weights)
    expected = torch.tensor([[[1 + 0.5 * 9.5, 2 + 0.5 * 9.5], [3 + 0.5 * 9 + 2 * 19, 4 + 0.5 * 9 + 2 * 19], [5 + 2 * 18, 6 + 2 * 18]]])
    assert torch.allclose(official, expected)
    convex = convex_combination(g_c, local, masks, torch.tensor([0.25, 0.5]))
    lam = masks * torch.tensor([0.25, 0.5])[:, None]  # [objects, pixels]
    expected = (1 - lam.sum(0))[None, :, None] * g_c + torch.einsum("np,rnpd->rpd", lam, local)
    assert torch.allclose(convex, expected)


def test_local_attention_is_the_layer_attention_over_another_context(tiny_pipe):
    layer = cross_attention_layers(tiny_pipe.unet, (32, 32))[0]
    attn = tiny_pipe.unet.get_submodule(layer.name.removesuffix(".processor"))
    hidden, context = torch.randn(2, layer.pixels, attn.query_dim), torch.randn(3, 77, 32)
    with torch.no_grad():
        local = local_attention(attn, hidden, context)
        for row in range(2):
            for k in range(3):
                expected = attn.processor(attn, hidden[row : row + 1], context[k : k + 1])[0]
                assert torch.allclose(local[row, k], expected, atol=1e-5)


def _layer_outputs(pipe, placements, weights, hidden_states, context, local_embeds):
    """Every attn2 layer's output under control (conditional row 1), keyed by layer name."""
    latent = (32, 32)
    layers = cross_attention_layers(pipe.unet, latent)
    masks = {layer.resolution: region_masks(placements, layer.resolution) for layer in layers}
    control = SpaceTimeControl(local_embeds[: len(placements)], masks, "official")
    outputs = {}
    with torch.no_grad(), spacetime_control(pipe, control, latent):
        for layer in layers:
            attn = pipe.unet.get_submodule(layer.name.removesuffix(".processor"))
            control.begin_forward(weights[: len(placements)], (False, True))
            assert isinstance(attn.processor, SpaceTimeProcessor)
            outputs[layer.name] = attn.processor(attn, hidden_states[layer.name], context)
    return outputs, layers


def test_local_attention_changes_conditional_outputs_only_inside_its_region(tiny_pipe):
    originals = dict(tiny_pipe.unet.attn_processors)
    layers = cross_attention_layers(tiny_pipe.unet, (32, 32))
    torch.manual_seed(0)
    hidden = {
        layer.name: torch.randn(2, layer.pixels, tiny_pipe.unet.get_submodule(layer.name.removesuffix(".processor")).query_dim)
        for layer in layers
    }
    context, local_embeds, weights = torch.randn(2, 77, 32), torch.randn(2, 77, 32), torch.tensor([2.5, 2.5])
    with_cat, _ = _layer_outputs(tiny_pipe, [CAT], weights, hidden, context, local_embeds)
    with_both, _ = _layer_outputs(tiny_pipe, [CAT, DOG], weights, hidden, context, local_embeds)
    plain, _ = _layer_outputs(tiny_pipe, [CAT], torch.zeros(2), hidden, context, local_embeds)
    assert tiny_pipe.unet.attn_processors == originals  # restored on exit
    for layer in layers:
        attn = tiny_pipe.unet.get_submodule(layer.name.removesuffix(".processor"))
        with torch.no_grad():
            reference = attn.processor(attn, hidden[layer.name], context)
        assert torch.equal(plain[layer.name], reference)  # zero weights: the layer's own output
        for outputs in (with_cat, with_both):
            assert torch.equal(outputs[layer.name][0], reference[0])  # unconditional row untouched
        dog = region_masks([DOG], layer.resolution)[0].bool()
        changed = (with_both[layer.name][1] - with_cat[layer.name][1]).abs().amax(dim=-1) > 0
        assert changed[dog].all() and not changed[~dog].any()  # adding the dog changes exactly its disc
        cat = region_masks([CAT], layer.resolution)[0].bool()
        changed = (with_cat[layer.name][1] - reference[1]).abs().amax(dim=-1) > 0
        assert changed[cat].all() and not changed[~cat].any()


def test_clip_views_follow_the_original():
    image = torch.rand(1, 3, 512, 512)
    view = clip_global_view(image, (224, 224))
    assert view.shape == (1, 3, 224, 224)
    upsampled = image.repeat_interleave(7, dim=2).repeat_interleave(7, dim=3)
    assert torch.allclose(view, torch.nn.functional.avg_pool2d(upsampled, 16), atol=1e-6)
    assert crop_box(ObjectPlacement("a", "a", 0.1, 0.5), 0.2, 512, 512) == (slice(153, 358), slice(0, 153))
    assert local_clip_name("The silver bed near the other bed") == "silver bed near other bed"
    assert weight_columns(51, 50) == [0] + list(range(50)) and weight_columns(4, 4) == [0, 1, 2, 3]


def test_weights_get_gradients_and_the_clip_loss_falls_over_passes(tiny_pipe, clip):
    # lr 0.5, not 0.005: with the original lr two Adam updates move W by ~0.01 (plms.py L216-291), a change of the loss
    # that a random CLIP barely registers; a larger step makes the descent measurable on the tiny model.
    config = SpaceTimeConfig(num_inference_steps=4, learning_rate=0.5)
    flags = [p.requires_grad for p in tiny_pipe.unet.parameters()]
    result = spacetime_generate(tiny_pipe, PROMPT, [CAT, DOG], seed=0, config=config, clip_model=clip)
    assert len(result.weights) == len(result.losses) == 3
    assert result.weights[0].shape == (2, 4) and np.allclose(result.weights[0], 2.5)
    moved = np.abs(result.weights[1] - result.weights[0])
    assert (moved > 0.4).all()  # Adam's first step moves every weight by ~lr: every weight got a non-zero gradient
    assert result.losses[0] > result.losses[1] > result.losses[2]
    assert result.image.size == (64, 64) and not result.fallback
    extras = result.manifest_extras()
    assert extras["layout"][1] == {"name": "dog", "phrase": "The dog", "x": 0.7, "y": 0.6}
    assert np.allclose(extras["weights"], result.weights[-1], atol=1e-6)
    assert [p.requires_grad for p in tiny_pipe.unet.parameters()] == flags  # frozen only during the call


def _saved_bytes(pipe, clip, steps: int, checkpointing: bool) -> int:
    """Bytes of the tensors autograd keeps for backward during one optimised pass (what waits in memory)."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    config = SpaceTimeConfig(num_inference_steps=steps, passes=2, checkpointing=checkpointing)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        spacetime_generate(pipe, PROMPT, [CAT], config=config, clip_model=clip)
    return total


@pytest.mark.slow  # ~6-10 s with its fixture: kept out of the fast loop
def test_checkpointed_memory_stays_flat_when_steps_double(tiny_pipe, clip):
    checkpointed = {steps: _saved_bytes(tiny_pipe, clip, steps, True) for steps in (2, 4)}
    full = {steps: _saved_bytes(tiny_pipe, clip, steps, False) for steps in (2, 4)}
    per_unet_call = (full[4] - full[2]) / 2
    assert checkpointed[4] - checkpointed[2] < 0.02 * per_unet_call  # only the per-step latents are kept
    assert checkpointed[4] < 0.2 * full[4]


WRITES: list[list[str]] = []  # the write log of the test that is watching, if any


def _audit_writes(event, args):
    """One audit hook for the whole session (Python cannot remove audit hooks): logs opens for writing while watched."""
    if event != "open" or not WRITES:
        return
    mode, flags = args[1], args[2]
    by_mode = isinstance(mode, str) and any(char in mode for char in "wax+")
    by_flags = isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
    if by_mode or by_flags:
        WRITES[-1].append(args[0])


sys.addaudithook(_audit_writes)


@pytest.fixture
def file_writes():
    """The paths opened for writing while the test runs."""
    WRITES.append([])
    try:
        yield WRITES[-1]
    finally:
        WRITES.pop()


def test_combined_mode_and_no_file_written_outside_the_output_folder(tiny_pipe, clip, tmp_path, monkeypatch, file_writes):
    monkeypatch.chdir(tmp_path)
    config = SpaceTimeConfig(num_inference_steps=3, passes=2)
    result = spacetime_generate(tiny_pipe, PROMPT, [CAT, DOG], config=config, clip_model=clip, method="st+ae")
    assert file_writes == [] and list(tmp_path.iterdir()) == []
    assert result.method == "st+ae" and len(result.losses) == 2


def test_st_plus_ae_is_st_moved_by_the_given_attend_and_excite(tiny_pipe, clip):
    config = SpaceTimeConfig(num_inference_steps=3, passes=1)
    st = spacetime_generate(tiny_pipe, PROMPT, [CAT, DOG], config=config, clip_model=clip)
    idle = replace(config, attend_excite=AttendExciteConfig(max_iter_to_alter=0, thresholds={}))
    unmoved = spacetime_generate(tiny_pipe, PROMPT, [CAT, DOG], config=idle, clip_model=clip, method="st+ae")
    strong = replace(config, attend_excite=AttendExciteConfig(max_iter_to_alter=3, thresholds={}, scale_factor=2000))
    moved = spacetime_generate(tiny_pipe, PROMPT, [CAT, DOG], config=strong, clip_model=clip, method="st+ae")
    pixels = [np.asarray(r.image, dtype=np.float32) / 255 for r in (st, unmoved, moved)]
    assert np.abs(pixels[1] - pixels[0]).max() <= 1 / 255  # an A&E that alters nothing leaves ST as it is
    assert np.abs(pixels[2] - pixels[0]).max() > 0.02  # the A&E it is given moves the latents (0.047 here)


def test_st_plus_ae_without_the_spatial_edit_is_the_ae_method(tiny_pipe, clip):
    """Zero region weights and no optimisation pass switch ST off: what is left is A&E with the same config."""
    ae_config = AttendExciteConfig(max_iter_to_alter=3, thresholds={1: 0.9}, scale_factor=2000, max_refinement_steps=2)
    config = SpaceTimeConfig(num_inference_steps=4, passes=1, weight_init=0.0, checkpointing=False, attend_excite=ae_config)
    indices = (2, 7)  # "cat", "dog"
    both = spacetime_generate(tiny_pipe, PROMPT, [CAT, DOG], seed=5, config=config, clip_model=clip, method="st+ae", token_indices=indices)
    ae = attend_and_excite(tiny_pipe, PROMPT, indices, seed=5, config=ae_config, num_inference_steps=4)
    plain = spacetime_generate(tiny_pipe, PROMPT, [CAT, DOG], seed=5, config=config, clip_model=clip, method="st")
    pixels = [np.asarray(image, dtype=np.float32) / 255 for image in (both.image, ae.image, plain.image)]
    assert np.abs(pixels[0] - pixels[1]).max() <= 2 / 255  # the same A&E updates, within float tolerance
    assert np.abs(pixels[2] - pixels[1]).max() > 4 / 255  # A&E moved this image: the match is not trivial


def test_no_object_falls_back_to_plain_sd(tiny_pipe, clip):
    config = SpaceTimeConfig(num_inference_steps=2)
    with pytest.warns(SpaceTimeFallbackWarning):
        result = spacetime_generate(tiny_pipe, PROMPT, [], seed=3, config=config, clip_model=clip)
    expected = tiny_pipe(PROMPT, num_inference_steps=2, generator=torch.Generator("cpu").manual_seed(3)).images[0]
    assert result.fallback and result.weights == [] and np.array_equal(np.asarray(result.image), np.asarray(expected))
