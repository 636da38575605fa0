import numpy as np
import pytest
import torch

from fidelity_lib.attend_excite import AttendExciteConfig, attend_and_excite, attend_and_excite_batch, attention_layers, gaussian_kernel, subject_max_attention
from fidelity_lib.models import clip_tokenizer, pndm_scheduler
from fidelity_lib.prompts import EmptyPromptError, TokenIndexError, check_token_indices, subject_token_indices, uses_sd2_tokenizer

PROMPT = "a cat and a dog"  # <sot> a cat and a dog <eot>: subjects 2 and 5, <eot> at 6


@pytest.fixture(scope="module")
def tokenizer():
    return clip_tokenizer()


def test_paper_defaults():
    config = AttendExciteConfig()
    assert config.max_iter_to_alter == 25 and config.thresholds == {0: 0.05, 10: 0.5, 20: 0.8}
    assert config.scale_factor == 20 and config.scale_range == (1.0, 0.5)
    assert (config.smooth_attentions, config.kernel_size, config.sigma) == (True, 3, 0.5)
    assert config.attention_res is None and config.max_refinement_steps == 20  # None: the model's own resolution


def test_the_default_attention_resolution_is_16_on_sd1(tiny_pipe):
    assert {layer.resolution for layer in attention_layers(tiny_pipe, 64, 64, AttendExciteConfig().attention_res)} == {(16, 16)}


def test_gaussian_kernel_has_the_official_values():
    kernel = gaussian_kernel(3, 0.5)
    expected = torch.tensor([[0.044919, 0.122103, 0.044919], [0.122103, 0.331911, 0.122103], [0.044919, 0.122103, 0.044919]])
    torch.testing.assert_close(kernel, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(kernel[1] / kernel[1].sum(), torch.tensor([0.211942, 0.576117, 0.211942]), atol=1e-6, rtol=0)


def test_step_sizes_follow_the_official_formula():
    scheduler = pndm_scheduler()
    scheduler.set_timesteps(50)
    assert len(scheduler.timesteps) == 51  # PNDM with skip_prk_steps repeats one timestep
    alphas = AttendExciteConfig().step_sizes(51)
    np.testing.assert_allclose(alphas[[0, 1, 10, 20, 24]], [20.000, 19.900, 18.974, 17.889, 17.436], atol=5e-4)
    np.testing.assert_allclose(AttendExciteConfig().step_sizes(50)[[0, 1, 10, 20, 24]], [20.000, 19.898, 18.952, 17.843, 17.379], atol=5e-4)


def test_sd2_normalisation_slices_only_real_prompt_tokens(tokenizer):
    attention = torch.rand(16, 16, 77, generator=torch.Generator().manual_seed(0))
    end = 6
    noisy_tail = attention.clone()
    noisy_tail[:, :, end:] = 5.0  # <eot> and padding dominate the SD 1.x softmax
    sd2 = subject_max_attention(attention, (2, 5), end=end)
    torch.testing.assert_close(subject_max_attention(noisy_tail, (2, 5), end=end), sd2)
    manual = torch.softmax(attention[:, :, 1:end] * 100, dim=-1)
    torch.testing.assert_close(sd2, torch.stack([manual[:, :, 1].max(), manual[:, :, 4].max()]))
    assert (subject_max_attention(noisy_tail, (2, 5)) < subject_max_attention(attention, (2, 5))).all()
    sd2_tokenizer = clip_tokenizer()
    sd2_tokenizer.pad_token = "!"
    assert uses_sd2_tokenizer(sd2_tokenizer) and not uses_sd2_tokenizer(tokenizer)


def test_smoothing_is_reflect_padded_3x3():
    attention = torch.zeros(16, 16, 77)
    attention[0, 0, 2] = 1.0  # a corner peak: reflect padding keeps it a single-pixel max
    smoothed = subject_max_attention(attention, (2,), kernel=gaussian_kernel())
    probs = torch.softmax(attention[:, :, 1:-1] * 100, dim=-1)[:, :, 1]
    padded = torch.nn.functional.pad(probs[None, None], (1, 1, 1, 1), mode="reflect")
    expected = torch.nn.functional.conv2d(padded, gaussian_kernel()[None, None]).max()
    torch.testing.assert_close(smoothed[0], expected)


def test_bad_inputs_give_named_errors(tokenizer):
    assert check_token_indices(tokenizer, PROMPT, [2, 5]) == (2, 5)
    for index, message in ((0, "startoftext"), (6, "endoftext"), (7, "padding"), (77, "out of range"), (-1, "out of range")):
        with pytest.raises(TokenIndexError, match=message):
            check_token_indices(tokenizer, PROMPT, [2, index])
    with pytest.raises(EmptyPromptError):
        check_token_indices(tokenizer, "  ", [1])


def test_automatic_subjects(tokenizer):
    assert subject_token_indices(tokenizer, "a dog and a frog") == (2, 5)  # the published indices
    assert subject_token_indices(tokenizer, "a gray backpack and a yellow crown") == (3, 7)
    assert subject_token_indices(tokenizer, "a red circle to the left of a blue square") == (3, 10)
    with pytest.raises(EmptyPromptError):
        subject_token_indices(tokenizer, "")


def test_attention_resolution_follows_the_image_size(tiny_pipe):
    default = attention_layers(tiny_pipe, 64, 64, 16)
    assert len(default) == 4 and {layer.resolution for layer in default} == {(16, 16)}
    larger = attention_layers(tiny_pipe, 128, 96, 16)  # same UNet depth at a larger size
    assert [layer.name for layer in larger] == [layer.name for layer in default]
    assert {layer.resolution for layer in larger} == {(32, 24)}
    with pytest.raises(ValueError, match="attention_res=8"):
        attention_layers(tiny_pipe, 64, 64, 8)
    with pytest.raises(ValueError, match="No cross-attention layer works at 16x16"):
        attention_layers(tiny_pipe, 128, 128, (16, 16))


def count_unet_forwards(pipe):
    """Batch sizes of every UNet forward, in order (1: the A&E forward, 2: the CFG forward)."""
    calls = []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(args[0].shape[0]))
    return calls, handle


def test_baseline_is_plain_sd_with_the_same_seed(tiny_pipe):
    calls, handle = count_unet_forwards(tiny_pipe)
    try:
        result = attend_and_excite(tiny_pipe, PROMPT, seed=3, num_inference_steps=3, baseline=True)
    finally:
        handle.remove()
    reference = tiny_pipe(
        PROMPT, num_inference_steps=3, generator=torch.Generator("cpu").manual_seed(3), output_type="np"
    ).images[0]
    assert np.array_equal(result.pixels, reference)
    assert calls == [2] * 4 and result.losses == [] and result.image.size == (64, 64)


def test_refinement_triggers_exactly_at_the_threshold_steps(tiny_pipe):
    config = AttendExciteConfig(max_iter_to_alter=3, thresholds={0: 0.5, 2: 0.5, 4: 1e-4}, max_refinement_steps=2)
    calls, handle = count_unet_forwards(tiny_pipe)
    try:
        result = attend_and_excite(tiny_pipe, PROMPT, seed=0, num_inference_steps=5, config=config)
    finally:
        handle.remove()
    # steps 0 and 2 are below 0.5; at step 4 the loss (~0.985) is below 1 - 1e-4, so no refinement there
    assert result.refinement_iterations == {0: 2, 2: 2}
    assert result.guided_steps == [0, 1, 2, 4]  # i < 3, plus the threshold step 4; none after it
    assert result.token_indices == (2, 5) and result.tokens == ("cat</w>", "dog</w>")
    assert calls.count(1) == 4 + 2 + 2  # one A&E forward per guided step and per refinement iteration
    assert calls.count(2) == 6  # one CFG forward per PNDM timestep (6 for 5 steps)


def test_losses_fall_and_the_weakest_subject_rises(tiny_pipe):
    # The random tiny model attends almost uniformly (max ~ 1/70), so its gradients are tiny: a larger step size
    # makes the effect visible in a few steps.
    config = AttendExciteConfig(max_iter_to_alter=4, thresholds={}, scale_factor=2000)
    guided = attend_and_excite(tiny_pipe, PROMPT, seed=0, num_inference_steps=4, config=config)
    unguided = attend_and_excite(
        tiny_pipe, PROMPT, seed=0, num_inference_steps=4, config=AttendExciteConfig(max_iter_to_alter=4, thresholds={}, scale_factor=0)
    )
    assert guided.losses[0] == unguided.losses[0]
    assert guided.losses[-1] < guided.losses[0]
    assert min(guided.max_attention[-1]) > min(guided.max_attention[0])
    for step in range(1, 4):
        assert guided.losses[step] < unguided.losses[step]
        assert min(guided.max_attention[step]) > min(unguided.max_attention[step])


def test_parity_with_diffusers_attend_and_excite(tiny_pipe):
    try:
        from diffusers import StableDiffusionAttendAndExcitePipeline
    except ImportError:
        pytest.skip("this diffusers no longer exports StableDiffusionAttendAndExcitePipeline: parity not checked")
    components = {name: module for name, module in tiny_pipe.components.items() if name != "image_encoder"}
    reference_pipe = StableDiffusionAttendAndExcitePipeline(**components, requires_safety_checker=False)
    reference_pipe.set_progress_bar_config(disable=True)
    config = AttendExciteConfig(max_iter_to_alter=3, thresholds={0: 0.3})  # diffusers fixes 20 refinement steps
    reference = reference_pipe(
        PROMPT,
        token_indices=[2, 5],
        num_inference_steps=4,
        generator=torch.Generator("cpu").manual_seed(0),
        output_type="np",
        max_iter_to_alter=config.max_iter_to_alter,
        thresholds=config.thresholds,
        attn_res=(16, 16),
    ).images[0]
    ours = attend_and_excite(tiny_pipe, PROMPT, [2, 5], seed=0, num_inference_steps=4, config=config)
    baseline = attend_and_excite(tiny_pipe, PROMPT, seed=0, num_inference_steps=4, baseline=True)
    assert ours.refinement_iterations == {0: 20}
    assert np.abs(ours.pixels - reference).max() <= 1e-3
    assert np.abs(baseline.pixels - reference).max() > 1e-3  # the updates did change the image


def test_batched_attend_and_excite_matches_per_image_calls(tiny_pipe):
    # Step 0's threshold (loss target 0.985) sits between the three images' first losses (~0.9854, ~0.9872, ~0.9842),
    # so the batch holds images that refine a different number of times and one that does not refine at all.
    prompts = ["a cat and a dog", "a red cat and a dog", "a cat with a blue dog"]
    indices = [(2, 5), (3, 6), (2, 6)]
    config = AttendExciteConfig(max_iter_to_alter=3, thresholds={0: 0.015}, max_refinement_steps=4, scale_factor=2000)
    calls, handle = count_unet_forwards(tiny_pipe)
    try:
        batched = attend_and_excite_batch(tiny_pipe, prompts, indices, seeds=[0, 1, 2], config=config, num_inference_steps=4)
    finally:
        handle.remove()
    single = [attend_and_excite(tiny_pipe, p, i, seed=s, config=config, num_inference_steps=4) for p, i, s in zip(prompts, indices, [0, 1, 2])]
    refined = [result.refinement_iterations.get(0, 0) for result in single]
    assert refined[2] == 0 and refined[0] > 0 and refined[1] > 0
    for ours, reference in zip(batched, single):
        assert ours.refinement_iterations == reference.refinement_iterations
        assert np.abs(ours.pixels - reference.pixels).max() <= 1e-3
        assert np.allclose(ours.losses, reference.losses, atol=1e-5)
    # one A&E forward for the whole batch per guided step, one per refinement iteration for the images still refining
    assert calls.count(3) == 3 and calls.count(6) == 5 and sum(1 for c in calls if c in (1, 2)) == max(refined)


def test_batched_baseline_equals_the_pipeline_with_one_generator_per_image(tiny_pipe):
    results = attend_and_excite_batch(tiny_pipe, [PROMPT, PROMPT], seeds=[3, 4], num_inference_steps=3, baseline=True)
    for seed, result in zip([3, 4], results):
        reference = tiny_pipe(PROMPT, num_inference_steps=3, generator=torch.Generator("cpu").manual_seed(seed), output_type="np").images[0]
        assert np.abs(result.pixels - reference).max() <= 1e-5


def test_batched_attend_and_excite_rejects_mismatched_inputs(tiny_pipe):
    with pytest.raises(ValueError, match="one seed per prompt"):
        attend_and_excite_batch(tiny_pipe, [PROMPT, PROMPT], seeds=[0], num_inference_steps=1)
    with pytest.raises(ValueError, match="one token-index tuple"):
        attend_and_excite_batch(tiny_pipe, [PROMPT], [(2, 5), (2, 5)], seeds=[0], num_inference_steps=1)
