"""SD 2.x and SDXL through the same methods: the family of a pipeline, its conditioning, A&E, ST, and loading.

Random-weight pipelines with each model's block layout and tiny channels (tests/model_structures.py), a few steps.
"""

import json
import shutil

import huggingface_hub
import numpy as np
import pytest
import torch
from diffusers import PNDMScheduler, StableDiffusionXLPipeline

from fidelity_lib.attend_excite import AttendExciteConfig, attend_and_excite, attention_layers, eot_ends
from fidelity_lib.attention import cross_attention_layers
from fidelity_lib.components import load_loss_clip
from fidelity_lib.conditioning import decodes_in_fp32, default_size, encode_prompts, micro_conditioning, model_family
from fidelity_lib.layout.predictor import ObjectPlacement
from fidelity_lib.models import UnsupportedModelError, WeightsNotFoundError, paper_pipeline
from fidelity_lib.spacetime import SpaceTimeConfig, SpaceTimeControl, region_masks, spacetime_control, spacetime_generate
from model_structures import save_folder, sd2_pipeline, sdxl_pipeline

PROMPT = "a cat and a dog"  # <sot> a cat and a dog <eot>: subjects 2 and 5, <eot> at 6
CAT, DOG = ObjectPlacement("cat", "a cat", 0.3, 0.5), ObjectPlacement("dog", "a dog", 0.7, 0.5)
SDXL_AE = dict(attention_res=8)  # a quarter of the tiny SDXL's 32 latent side, as 32 of SDXL's 128


def plms(pipe):
    pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sdxl():
    return plms(sdxl_pipeline(sample_size=32, vae_levels=2))  # 64x64 images: 32 latent, x2 VAE


@pytest.fixture(scope="module")
def sd2():
    return plms(sd2_pipeline(sample_size=32, levels=3))  # maps at 32, 16 and 8 (mid): a quarter of 32 is there


@pytest.fixture(scope="module")
def clip():
    return load_loss_clip("tiny")


def test_the_family_is_read_from_the_pipeline(tiny_pipe, sd2, sdxl):
    assert model_family(tiny_pipe).name == "sd1" and model_family(sd2).name == "sd2" and model_family(sdxl).name == "sdxl"
    assert model_family(sd2_pipeline(sample_size=16, levels=2, v_prediction=True)).name == "sd2-v"


def test_sdxl_defaults_to_1024_and_a_reads_its_32x32_maps():
    pipe = sdxl_pipeline(sample_size=128, vae_levels=4)
    assert default_size(pipe) == (1024, 1024) and pipe.vae_scale_factor == 8
    resolutions = {layer.resolution for layer in cross_attention_layers(pipe.unet, (128, 128))}
    assert resolutions == {(64, 64), (32, 32)}  # no attention at the 128 level, as in SDXL base
    layers = attention_layers(pipe, 1024, 1024, AttendExciteConfig().attention_res)
    assert {layer.resolution for layer in layers} == {(32, 32)}
    assert {".".join(layer.name.split(".")[:2]) for layer in layers} == {"down_blocks.2", "mid_block.attentions", "up_blocks.0"}
    assert decodes_in_fp32(pipe)


def test_eot_normalisation_follows_the_tokenizers(tiny_pipe, sd2, sdxl):
    config = AttendExciteConfig()
    assert eot_ends(tiny_pipe, [PROMPT], config) == [None]  # SD 1.x pads with <eot>: tokens 1..75
    assert eot_ends(sd2, [PROMPT], config) == [6] and eot_ends(sdxl, [PROMPT], config) == [6]  # "!" padding
    assert eot_ends(sd2, [PROMPT], AttendExciteConfig(normalize_eot=False)) == [None]

    def run(**normalisation):
        config = AttendExciteConfig(max_iter_to_alter=2, thresholds={}, **normalisation)
        return attend_and_excite(sd2, PROMPT, seed=0, num_inference_steps=2, config=config)

    auto, on, off = run(), run(normalize_eot=True), run(normalize_eot=False)
    assert auto.max_attention == on.max_attention
    assert min(on.max_attention[0]) > 4 * max(off.max_attention[0])  # 5 real tokens share the softmax, not 75


def test_attend_and_excite_losses_fall_on_sdxl(sdxl):
    def run(scale_factor: float):
        config = AttendExciteConfig(max_iter_to_alter=4, thresholds={}, scale_factor=scale_factor, **SDXL_AE)
        return attend_and_excite(sdxl, PROMPT, seed=0, num_inference_steps=4, config=config)

    guided, unguided = run(2000), run(0)  # the random model's gradients are tiny: a large step shows the effect
    assert guided.losses[0] == unguided.losses[0] and guided.image.size == (64, 64)
    for step in range(1, 4):
        assert guided.losses[step] < unguided.losses[step]
    assert guided.losses[-1] < guided.losses[0]
    assert not np.array_equal(np.asarray(guided.image), np.asarray(unguided.image))


def test_sdxl_conditioning_carries_both_encoders_and_the_size_ids(sdxl):
    conditioning, unconditional = encode_prompts(sdxl, [PROMPT, "a dog"], "cpu", True, 64, 48)
    assert conditioning.embeds.shape == (2, 77, 64) == (2, 77, sdxl.unet.config.cross_attention_dim)  # 32 + 32 features
    assert conditioning.pooled.shape == (2, 32) and torch.equal(unconditional.embeds, torch.zeros_like(unconditional.embeds))
    assert conditioning.time_ids.tolist() == [[64, 48, 0, 0, 64, 48]] * 2
    cfg = unconditional.cat(conditioning)
    assert cfg.rows([2]).pooled.shape == (1, 32) and set(cfg.unet_kwargs()["added_cond_kwargs"]) == {"text_embeds", "time_ids"}


def test_a_mismatched_sdxl_folder_is_named(sdxl, monkeypatch):
    assert micro_conditioning(sdxl, 64, 48, torch.zeros(3, 32)).tolist() == [[64, 48, 0, 0, 64, 48]] * 3
    with pytest.raises(ValueError, match="unet/ and text_encoder_2/ do not match"):
        micro_conditioning(sdxl, 64, 64, torch.zeros(1, 16))  # a 16-wide pooled embedding where the UNet wants 32
    split = type("Split", (), {"__call__": lambda self, prompt: type("Ids", (), {"input_ids": [49406, 320, 49407]})()})()
    monkeypatch.setattr(sdxl, "tokenizer_2", split)
    with pytest.raises(ValueError, match="two tokenizers split 'a cat and a dog' differently"):
        attend_and_excite(sdxl, PROMPT, seed=0, num_inference_steps=1, config=AttendExciteConfig(**SDXL_AE))


@pytest.mark.parametrize("latent_statistics", [False, True])
def test_sdxl_baseline_is_the_sdxl_pipeline_with_the_same_seed(latent_statistics):
    pipe = plms(sdxl_pipeline(sample_size=32, vae_levels=2))
    if latent_statistics:  # a VAE that declares latent statistics is unscaled with them, as the pipeline does
        pipe.vae.register_to_config(latents_mean=[0.1, -0.2, 0.3, 0.0], latents_std=[0.9, 1.1, 1.0, 0.8])
    result = attend_and_excite(pipe, PROMPT, seed=3, num_inference_steps=3, baseline=True, height=48, width=64,
                               config=AttendExciteConfig(**SDXL_AE))
    reference = pipe(PROMPT, num_inference_steps=3, guidance_scale=7.5, height=48, width=64,
                     generator=[torch.Generator("cpu").manual_seed(3)], output_type="np").images[0]
    assert result.pixels.shape == (48, 64, 3) and np.abs(result.pixels - reference).max() <= 1e-5


def test_v_prediction_768_reads_a_quarter_of_its_latent():
    pipe = sd2_pipeline(sample_size=96, v_prediction=True)
    assert default_size(pipe) == (768, 768) and model_family(pipe).name == "sd2-v"
    assert {layer.resolution for layer in attention_layers(pipe, 768, 768, None)} == {(24, 24)}


def test_spatial_temporal_edits_only_inside_its_regions_on_sdxl(sdxl):
    latent = (32, 32)
    layers = cross_attention_layers(sdxl.unet, latent)
    masks = {layer.resolution: region_masks([CAT], layer.resolution) for layer in layers}
    torch.manual_seed(0)
    context, local = torch.randn(2, 77, 64), torch.randn(1, 77, 64)
    for weight in (0.0, 2.5):
        control = SpaceTimeControl(local, masks, "official")
        with torch.no_grad(), spacetime_control(sdxl, control, latent):
            for layer in layers:
                attn = sdxl.unet.get_submodule(layer.name.removesuffix(".processor"))
                hidden = torch.randn(2, layer.pixels, attn.query_dim, generator=torch.Generator().manual_seed(1))
                reference = attn.processor.inner(attn, hidden, context)
                control.begin_forward(torch.tensor([weight]), (False, True))
                edited = attn.processor(attn, hidden, context)
                assert torch.equal(edited[0], reference[0])  # the unconditional row is untouched
                changed = (edited[1] - reference[1]).abs().amax(dim=-1) > 0
                inside = masks[layer.resolution][0].bool()
                assert not changed[~inside].any() and (changed[inside].all() if weight else not changed.any())


@pytest.mark.parametrize("method", ["st", "st+ae"])
def test_spatial_temporal_control_runs_on_sdxl(sdxl, clip, method):
    ae_config = AttendExciteConfig(max_iter_to_alter=2, thresholds={}, **SDXL_AE)
    config = SpaceTimeConfig(num_inference_steps=3, passes=2, attend_excite=ae_config)
    result = spacetime_generate(sdxl, "a cat to the left of a dog", [CAT, DOG], seed=0, config=config, clip_model=clip, method=method)
    assert result.image.size == (64, 64) and np.isfinite(result.losses).all()
    assert not np.allclose(result.weights[1], result.weights[0])  # the CLIP loss reached the weights


@pytest.mark.parametrize("checkpointing", [True, False])
def test_spatial_temporal_control_on_a_half_precision_sdxl_decodes_in_fp32(clip, checkpointing):
    pipe = plms(sdxl_pipeline(sample_size=16, vae_levels=2)).to(torch.bfloat16)  # fp16 on a GPU; bf16 runs on a CPU
    config = SpaceTimeConfig(num_inference_steps=2, passes=2, checkpointing=checkpointing)
    result = spacetime_generate(pipe, "a cat to the left of a dog", [CAT, DOG], seed=0, config=config, clip_model=clip)
    assert np.isfinite(result.losses).all() and not np.allclose(result.weights[1], result.weights[0])
    assert pipe.vae.dtype == torch.bfloat16  # restored after the run


def test_paper_pipeline_loads_sdxl_and_sd2_folders_by_their_model_index(tmp_path):
    absent = {"image_encoder": ["transformers", "CLIPVisionModelWithProjection"],
              "feature_extractor": ["transformers", "CLIPImageProcessor"]}
    xl = paper_pipeline(save_folder(sdxl_pipeline(sample_size=16, vae_levels=2), tmp_path / "xl", absent), torch.float32)
    assert isinstance(xl, StableDiffusionXLPipeline) and model_family(xl).name == "sdxl"
    assert isinstance(xl.scheduler, PNDMScheduler) and xl.scheduler.config.skip_prk_steps and "SDXL" in xl.weights_id
    assert (xl.scheduler.config.timestep_spacing, xl.scheduler.config.steps_offset, xl.scheduler.config.beta_end) == ("leading", 1, 0.012)
    v = paper_pipeline(save_folder(sd2_pipeline(sample_size=16, levels=2, v_prediction=True), tmp_path / "v"), torch.float32)
    assert model_family(v).name == "sd2-v" and v.scheduler.config.prediction_type == "v_prediction"
    assert isinstance(v.scheduler, PNDMScheduler) and v.scheduler.config.skip_prk_steps
    index = json.loads((tmp_path / "v" / "model_index.json").read_text())
    (tmp_path / "v" / "model_index.json").write_text(json.dumps({**index, "_class_name": "KandinskyPipeline"}))
    with pytest.raises(UnsupportedModelError, match="'KandinskyPipeline'.*StableDiffusionXLPipeline"):
        paper_pipeline(tmp_path / "v", torch.float32)


def test_a_repo_id_loads_from_the_local_cache_only(tmp_path, monkeypatch):
    repo = "stabilityai/stable-diffusion-xl-base-1.0"
    hub = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    with pytest.raises(WeightsNotFoundError, match=f"huggingface-cli download {repo}"):
        paper_pipeline(repo, torch.float32)
    snapshot = hub / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    save_folder(sdxl_pipeline(sample_size=16, vae_levels=2), snapshot)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    pipe = paper_pipeline(repo, torch.float32)
    assert isinstance(pipe, StableDiffusionXLPipeline) and pipe.weights_id.startswith(repo)


def test_v_prediction_runs_every_method(clip):
    pipe = plms(sd2_pipeline(sample_size=16, levels=2, v_prediction=True))
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    config = AttendExciteConfig(max_iter_to_alter=2, thresholds={}, attention_res=16)
    ae = attend_and_excite(pipe, PROMPT, seed=0, num_inference_steps=3, config=config)
    assert np.isfinite(ae.losses).all() and ae.image.size == (32, 32)  # 16 latent, x2 VAE
    sd = pipe(PROMPT, num_inference_steps=3, generator=torch.Generator("cpu").manual_seed(0), output_type="np").images[0]
    assert np.isfinite(sd).all() and sd.shape == (32, 32, 3)
    for method in ("st", "st+ae"):
        st = spacetime_generate(pipe, "a cat to the left of a dog", [CAT, DOG], seed=0, method=method, clip_model=clip,
                                config=SpaceTimeConfig(num_inference_steps=3, passes=2, attend_excite=config))
        assert np.isfinite(st.losses).all() and not np.allclose(st.weights[1], st.weights[0])


def test_the_generator_runs_every_method_on_an_sdxl_folder_and_records_what_ran(clip, tmp_path):
    from fidelity_lib.components import load_pipeline
    from fidelity_lib.datasets import PromptRecord
    from fidelity_lib.generate import GenerationOptions, generate, read_manifest

    pipe = load_pipeline("paper", weights=save_folder(sdxl_pipeline(sample_size=32, vae_levels=2), tmp_path / "sdxl"), device="cpu")
    record = PromptRecord("test", 0, "a cat to the left of a dog", ("cat", "dog"))
    options = GenerationOptions(steps=2, ae_config=AttendExciteConfig(max_iter_to_alter=2, thresholds={}), loss_clip=clip,
                                layouts={record.prompt: [CAT, DOG]}, st_config=SpaceTimeConfig(passes=2))
    for method in ("sd", "ae", "st", "st+ae"):
        generate(pipe, method, [record], [0], tmp_path / "out", profile="paper", options=options, progress=False)
    lines = {line["method"]: line for line in read_manifest(tmp_path / "out")}
    assert set(lines) == {"sd", "ae", "st", "st+ae"}
    assert all(line["weights"] == f"{tmp_path / 'sdxl'} [SDXL base 1.0]" for line in lines.values())
    for settings in (lines["ae"]["config"], lines["st+ae"]["config"]["attend_excite"]):  # the defaults that ran
        assert settings["attention_res"] == 8 and settings["normalize_eot"] is True  # a quarter of the 32 latent


def test_missing_weights_are_named_as_what_they_look_like(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(WeightsNotFoundError, match=r"the folder weights \(no model_index.json there\)"):
        paper_pipeline("./weights", torch.float32)  # not a valid repo id: a folder that does not exist
    with pytest.raises(WeightsNotFoundError, match="no model_index.json for it in the cache, and no folder of that name"):
        paper_pipeline("weights/sd14", torch.float32)  # either reading, both named
    folder = save_folder(sdxl_pipeline(sample_size=16, vae_levels=2), tmp_path / "xl")
    shutil.rmtree(folder / "text_encoder_2")
    with pytest.raises(WeightsNotFoundError, match="lacks text_encoder_2/") as error:
        paper_pipeline(folder, torch.float32)
    assert "huggingface-cli download stabilityai/stable-diffusion-xl-base-1.0" in str(error.value)  # SDXL, not v1.4
