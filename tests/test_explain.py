import numpy as np
import torch

from fidelity_lib.attend_excite import AttendExciteConfig, attend_and_excite
from fidelity_lib.explain import LatentRecorder, step_attention

PROMPT = "a cat and a dog"
CONFIG = AttendExciteConfig(max_iter_to_alter=2, thresholds={})


def test_recording_latents_does_not_change_the_image(tiny_pipe):
    recorder = LatentRecorder([0, 2])
    observed = attend_and_excite(tiny_pipe, PROMPT, [2, 5], seed=3, config=CONFIG, num_inference_steps=3, step_callback=recorder)
    plain = attend_and_excite(tiny_pipe, PROMPT, [2, 5], seed=3, config=CONFIG, num_inference_steps=3)
    assert np.array_equal(observed.pixels, plain.pixels)
    assert sorted(recorder.latents) == [0, 2]


def test_maps_are_token_distributions_at_every_layer_and_step(tiny_pipe):
    recorder = LatentRecorder([0, 1])
    attend_and_excite(tiny_pipe, PROMPT, [2, 5], seed=0, config=CONFIG, num_inference_steps=3, step_callback=recorder)
    for branches in ("conditional", "both"):
        steps = step_attention(tiny_pipe, PROMPT, recorder.latents, branches=branches)
        assert [s.step for s in steps] == [0, 1]
        for step_maps in steps:
            resolutions = {layer.resolution for layer in step_maps.layers.values()}
            assert resolutions == {(32, 32), (16, 16)}
            for name, token_maps in step_maps.maps.items():
                assert token_maps.shape == (*step_maps.layers[name].resolution, 77)
                torch.testing.assert_close(token_maps.sum(dim=-1), torch.ones(token_maps.shape[:2]), atol=1e-5, rtol=0)
            mean16 = step_maps.mean_over_layers((16, 16))
            torch.testing.assert_close(mean16.sum(dim=-1), torch.ones(16, 16), atol=1e-5, rtol=0)


def test_raw_maps_mix_in_the_unconditional_branch(tiny_pipe):
    recorder = LatentRecorder([0])
    attend_and_excite(tiny_pipe, PROMPT, [2, 5], seed=0, config=CONFIG, num_inference_steps=2, step_callback=recorder)
    conditional = step_attention(tiny_pipe, PROMPT, recorder.latents)[0].mean_over_layers((16, 16))
    raw = step_attention(tiny_pipe, PROMPT, recorder.latents, branches="both")[0].mean_over_layers((16, 16))
    # raw = (unconditional + conditional) / 2, so 2 raw - conditional is the unconditional branch's distribution
    unconditional = 2 * raw - conditional
    assert unconditional.min() > -1e-6
    torch.testing.assert_close(unconditional.sum(dim=-1), torch.ones(16, 16), atol=1e-5, rtol=0)
    assert (unconditional - conditional).abs().max() > 1e-3  # the empty prompt's maps are not the prompt's


