"""Toy-world training: the grounding loss, and a run that reproduces its bytes and resumes after a kill."""

import pytest
import torch

from fidelity_lib.attention import AttentionStore, attention_hook, cross_attention_layers
from fidelity_lib.toyworld import train
from fidelity_lib.toyworld.model import build_text_encoder, build_unet
from fidelity_lib.toyworld.scenes import generate_scenes


def maps_from(attention: torch.Tensor) -> dict[str, torch.Tensor]:
    """One fake layer's head-mean probabilities [N, 1, h, w, T] from [N, h, w, T]."""
    return {"layer": attention[:, None]}


def test_grounding_targets_hold_each_mentions_tokens_and_mask():
    scenes = [s for s in generate_scenes(200, seed=1) if len(s.objects) == 2 and " with " not in s.caption][:4]
    tokens, masks = train.grounding_targets(scenes, "colours-and-nouns")
    nouns, _ = train.grounding_targets(scenes, "nouns")
    assert tokens.shape == (4, 6) and masks.shape == (4, 6, 16, 16) and nouns.shape == (4, 3)
    assert (nouns[:, :2] >= 0).all() and (nouns[:, 2] == -1).all()
    for row, scene in enumerate(scenes):
        assert torch.allclose(masks[row, 0].float(), torch.from_numpy(scene.object_masks(16)[0]), atol=1e-3)


def test_grounding_loss_is_zero_inside_the_mask_and_large_when_spread():
    masks = torch.zeros(1, 1, 16, 16)
    masks[0, 0, 4:8, 4:8] = 1
    tokens, keep = torch.tensor([[2]]), torch.tensor([True])
    inside = torch.full((1, 16, 16, 5), 0.01)
    inside[0, 4:8, 4:8, 2] = 1.0
    inside[0, :, :, 2] *= masks[0, 0]
    uniform = torch.full((1, 16, 16, 5), 0.2)
    assert train.grounding_loss(maps_from(inside), tokens, masks, keep) == pytest.approx(0.0, abs=1e-6)
    # a token spread evenly has 16/256 of its mass inside a 4x4 mask: loss (1 - 1/16)^2
    assert train.grounding_loss(maps_from(uniform), tokens, masks, keep) == pytest.approx((15 / 16) ** 2, rel=1e-5)
    # the 8x8 layers see the mask area-averaged: the same share for a mask aligned to 2x2 cells
    coarse = {"layer": torch.full((1, 1, 8, 8, 5), 0.2)}
    assert train.grounding_loss(coarse, tokens, masks, keep) == pytest.approx((15 / 16) ** 2, rel=1e-5)
    assert train.grounding_loss(maps_from(uniform), tokens, masks, torch.tensor([False])) == 0  # dropped caption


def test_the_grounding_loss_falls_while_training_the_toy_unet():
    torch.manual_seed(0)
    scenes = generate_scenes(8, seed=2)
    tokens, masks = train.grounding_targets(scenes, "nouns")
    unet, text_encoder = build_unet(), build_text_encoder(compact_vocabulary=True)
    ids, _ = train.caption_ids([scene.caption for scene in scenes])
    optimizer = torch.optim.AdamW([*unet.parameters(), *text_encoder.parameters()], lr=3e-3)
    store = AttentionStore(keep_graph=True, branches="both", mean_heads=True)
    latents, timesteps, keep = torch.randn(8, 4, 16, 16), torch.full((8,), 500), torch.ones(8, dtype=torch.bool)
    losses = []
    with attention_hook(unet, cross_attention_layers(unet, (16, 16)), store):
        for _ in range(10):
            store.begin_forward()
            unet(latents, timesteps, text_encoder(ids).last_hidden_state)
            loss = train.grounding_loss(store.maps, tokens, masks, keep)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert len(store.maps) == 7  # every attn2 layer: three at 16x16, four at 8x8
    assert losses[-1] < 0.7 * losses[0], losses


TINY_RUN = ["--n-scenes", "48", "--n-latents", "48", "--vae-steps", "2", "--unet-steps", "2", "--ground-steps", "3", "--clip-steps", "1",
            "--blip-steps", "1", "--batch-size", "4", "--threads", "1"]


def checksums(folder):
    return (folder / "SHA256SUMS").read_text()


@pytest.mark.slow
def test_training_reproduces_its_checksums_and_resumes_after_a_kill(tmp_path, monkeypatch):
    train.main(["--out", str(tmp_path / "a"), "--weights-dir", str(tmp_path / "wa"), *TINY_RUN])
    monkeypatch.setattr(train, "CHECKPOINT_SECONDS", -1)  # checkpoint after every step
    real_loss, calls = train.grounding_loss, []

    def killed_at_the_third_step(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_loss(*args)

    monkeypatch.setattr(train, "grounding_loss", killed_at_the_third_step)
    with pytest.raises(KeyboardInterrupt):
        train.main(["--out", str(tmp_path / "b"), "--weights-dir", str(tmp_path / "wb"), *TINY_RUN])
    # killed inside the grounded fine-tune, after the plain UNet stage finished
    assert (tmp_path / "b" / "unet_final.pt").exists() and not (tmp_path / "b" / "ground_final.pt").exists()
    assert (tmp_path / "b" / "ground.ckpt").exists()
    train.main(["--out", str(tmp_path / "b"), "--weights-dir", str(tmp_path / "wb"), *TINY_RUN])
    assert checksums(tmp_path / "wa") == checksums(tmp_path / "wb")
    assert len(checksums(tmp_path / "wa").splitlines()) == 8  # diffusion weights, toy CLIP and toy BLIP
    with pytest.raises(SystemExit, match="other arguments"):
        train.main(["--out", str(tmp_path / "b"), *TINY_RUN[:-2], "--threads", "2"])


def test_grounding_is_a_fine_tune_after_plain_training_unless_ground_steps_is_zero():
    plain, grounded = train.unet_stages(train.parse_args([]))
    assert (plain.name, plain.ground_weight, plain.init) == ("unet", 0.0, None)
    assert (grounded.name, grounded.ground, grounded.init, grounded.steps) == ("ground", "nouns", "unet_final.pt", 600)
    assert grounded.base_lr < plain.base_lr
    (scratch,) = train.unet_stages(train.parse_args(["--ground-steps", "0", "--ground-weight", "3"]))
    assert (scratch.name, scratch.ground, scratch.ground_weight, scratch.steps) == ("unet", "nouns", 3.0, 1800)
    with pytest.raises(SystemExit):
        train.parse_args(["--stage", "ground", "--ground-steps", "0"])
