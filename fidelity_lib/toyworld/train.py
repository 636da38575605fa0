"""Train the toy world on a CPU: VAE, UNet + text encoder on VAE latents, a token-grounding fine-tune, a small CLIP and BLIP.

    python -m fidelity_lib.toyworld.train --stage all --threads 1
    python -m fidelity_lib.toyworld.train --stage unet   # resumes from ~/.cache/fidelity_lib/toyworld_run

Each stage trains for a fixed number of steps (the learning rate follows a cosine over them), checkpoints every few
minutes (atomic writes) and resumes from its checkpoint exactly: the same arguments and thread count give the same
bytes, interrupted or not. ``export`` writes the shipped weights into data/toyworld/ with SHA256SUMS, and
training.json records the command, the thread count and every stage's log.

The UNet stage trains on the diffusion loss alone; the ``ground`` stage then fine-tunes UNet and text encoder for
``--ground-steps`` steps on the diffusion loss plus ``ground_weight`` times TokenCompose's token term (Wang et al., CVPR 2024,
"TokenCompose", its ``L_token``): for each grounded token t of an object and the object's mask M at the layer's grid,
(1 - sum_p M_p A_pt / sum_p A_pt)^2, averaged over objects, tokens and every cross-attention layer (16x16 and 8x8).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from tqdm import tqdm

from fidelity_lib.attention import AttentionStore, attention_hook, cross_attention_layers
from fidelity_lib.models import clip_tokenizer
from fidelity_lib.toyworld.captioner import build_toy_blip, save_toy_blip, training_batch
from fidelity_lib.toyworld.model import (
    TOKENIZER_MAX_LENGTH,
    WEIGHTS_DIR,
    build_clip,
    build_text_encoder,
    build_unet,
    build_vae,
    compact_ids,
    clip_text_tokenizer,
    save_clip,
    save_weights,
    training_noise_scheduler,
    write_checksums,
)
from fidelity_lib.toyworld.scenes import BACKGROUND, Scene, generate_scenes, parse_caption

CHECKPOINT_SECONDS = 180
CAPTION_DROPOUT = 0.1
KL_WEIGHT = 1e-4
OBJECT_WEIGHT = 5.0  # without it the VAE sits on an all-grey plateau for ~100 steps
BLIP_BATCH = 128
VAE_BATCH = 32  # more, smaller steps: the VAE leaves its all-grey plateau after a number of steps, not of samples
DEFAULT_RUN_DIR = Path.home() / ".cache" / "fidelity_lib" / "toyworld_run"
VALIDATION_SEED = 10_000  # held-out scenes for every validation figure; training draws from --seed
GROUND_MODES = ("nouns", "colours-and-nouns", "none")
OPENAI_MEAN = torch.tensor([0.48145466, 0.4578275, 0.40821073]).view(1, 3, 1, 1)
OPENAI_STD = torch.tensor([0.26862954, 0.26130258, 0.27577711]).view(1, 3, 1, 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def atomic_save(obj: object, path: Path) -> None:
    """torch.save to a temporary file, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, temporary)
    os.replace(temporary, path)


def scene_images(scenes: list[Scene]) -> torch.Tensor:
    """Images as a uint8 tensor (N, 3, 32, 32)."""
    return torch.from_numpy(np.stack([scene.image for scene in scenes])).permute(0, 3, 1, 2).contiguous()


def grounding_targets(scenes: list[Scene], mode: str, size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Per scene, the grounded token positions [N, G] (-1 pads) and their objects' masks [N, G, size, size] (fp16).

    ``mode`` "nouns" grounds each object's shape noun, "colours-and-nouns" its colour word as well (when named).
    """
    per_object = 2 if mode == "colours-and-nouns" else 1
    slots = 3 * per_object
    tokens = torch.full((len(scenes), slots), -1, dtype=torch.long)
    masks = torch.zeros((len(scenes), slots, size, size), dtype=torch.float16)
    for row, scene in enumerate(scenes):
        mentions = parse_caption(scene.caption).mentions
        object_masks = torch.from_numpy(scene.object_masks(size))
        slot = 0
        for k, mention in enumerate(mentions):
            positions = [mention.noun_index] + ([mention.colour_index] if per_object == 2 and mention.colour_index else [])
            for position in positions:
                tokens[row, slot], masks[row, slot] = position, object_masks[k]
                slot += 1
    return tokens, masks


def grounding_loss(maps: dict[str, torch.Tensor], tokens: torch.Tensor, masks: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """TokenCompose's token term over every recorded layer; ``keep`` [N] drops rows (dropped captions).

    ``maps`` are head-mean probabilities [N, 1, h, w, T]; ``masks`` [N, G, 16, 16] are area-averaged to each grid.
    """
    valid = (tokens >= 0) & keep[:, None]
    if not valid.any():
        return torch.zeros(())
    losses = []
    for layer_maps in maps.values():
        batch, _, height, width, length = layer_maps.shape
        attention = layer_maps[:, 0].reshape(batch, height * width, length)
        chosen = attention.gather(2, tokens.clamp(min=0)[:, None, :].expand(-1, height * width, -1)).transpose(1, 2)
        grid = F.adaptive_avg_pool2d(masks.float(), (height, width)).reshape(batch, masks.shape[1], -1)
        share = (grid * chosen).sum(-1) / chosen.sum(-1).clamp_min(1e-8)
        losses.append(((1 - share) ** 2)[valid].mean())
    return torch.stack(losses).mean()


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float() / 127.5 - 1


def learning_rate(base: float, step: int, fraction: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine over the run's steps down to 10% of ``base``."""
    cosine = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(fraction, 1.0)))
    return base * min(1.0, (step + 1) / warmup) * cosine


def train_loop(
    name: str,
    modules: dict[str, torch.nn.Module],
    step_fn: Callable[[torch.Generator], tuple[torch.Tensor, dict[str, float]]],
    out: Path,
    steps: int,
    base_lr: float,
    warmup: int,
    seed: int,
) -> dict:
    """Run ``step_fn`` (loss, logged extras) for ``steps`` optimiser steps; resumable from out/<name>.ckpt; returns its log."""
    parameters = [p for module in modules.values() for p in module.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=base_lr, weight_decay=0.01)
    generator = torch.Generator().manual_seed(seed)
    checkpoint_path = out / f"{name}.ckpt"
    state = {"step": 0, "elapsed": 0.0, "losses": []}
    if checkpoint_path.exists():
        saved = torch.load(checkpoint_path, weights_only=False)
        for key, module in modules.items():
            module.load_state_dict(saved["modules"][key])
        optimizer.load_state_dict(saved["optimizer"])
        generator.set_state(saved["generator"])
        if "torch_rng" in saved:  # the VAE samples its posterior from the global generator
            torch.set_rng_state(saved["torch_rng"])
        state = saved["state"]
        print(f"[{name}] resumed at step {state['step']} after {state['elapsed'] / 60:.1f} min")
    for module in modules.values():
        module.train()

    def save() -> None:
        snapshot = {
            "modules": {key: module.state_dict() for key, module in modules.items()},
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "state": state,
        }
        atomic_save(snapshot, checkpoint_path)

    progress = tqdm(total=steps, initial=state["step"], desc=name, unit="step", mininterval=10)
    last_checkpoint = time.monotonic()
    window: list[dict[str, float]] = []
    while state["step"] < steps:
        started = time.monotonic()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(base_lr, state["step"], state["step"] / steps, warmup)
        loss, extras = step_fn(generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        seconds = time.monotonic() - started
        state["step"] += 1
        state["elapsed"] += seconds
        window.append({"loss": loss.item()} | extras)
        progress.update(1)
        if len(window) == 50:
            means = {key: sum(entry[key] for entry in window) / len(window) for key in window[0]}
            state["losses"].append({"step": state["step"], "minutes": round(state["elapsed"] / 60, 2)} | means)
            progress.set_postfix({key: f"{value:.4f}" for key, value in means.items()})
            print(f"[{name}] step {state['step']} {state['elapsed'] / 60:.1f} min " + " ".join(f"{k} {v:.4f}" for k, v in means.items()), flush=True)
            window = []
        if time.monotonic() - last_checkpoint > CHECKPOINT_SECONDS:
            save()
            last_checkpoint = time.monotonic()
    progress.close()
    save()
    for module in modules.values():
        module.eval()
    return state


def object_weights(batch: torch.Tensor) -> torch.Tensor:
    """Per-pixel loss weights: OBJECT_WEIGHT on object pixels, 1 on the background (objects cover ~10% of a scene)."""
    background = to_unit_range(torch.tensor(BACKGROUND, dtype=torch.uint8)).view(1, 3, 1, 1)
    is_object = (batch - background).abs().amax(dim=1, keepdim=True) > 0.05
    return 1 + (OBJECT_WEIGHT - 1) * is_object.float()


def train_vae(out: Path, steps: int, images: torch.Tensor, held_out: torch.Tensor, seed: int) -> None:
    """AutoencoderKL on the scenes: object-weighted L1 + MSE + a small KL; then scaling_factor = 1 / latent std."""
    seed_everything(seed)
    vae = build_vae()

    def step(generator: torch.Generator) -> torch.Tensor:
        batch = to_unit_range(images[torch.randint(len(images), (VAE_BATCH,), generator=generator)])
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        error = (reconstruction - batch).abs()
        return (object_weights(batch) * (error + error**2)).mean() + KL_WEIGHT * kl, {}

    state = train_loop("vae", {"vae": vae}, step, out, steps, 1e-3, 20, seed)
    with torch.no_grad():
        latents = vae.encode(to_unit_range(images[:2048])).latent_dist.sample()
        reconstruction = vae.decode(vae.encode(to_unit_range(held_out)).latent_dist.mode()).sample
    scaling = float(1 / latents.std())
    held_out_mse = float(F.mse_loss(reconstruction, to_unit_range(held_out)))
    atomic_save({"vae": vae.state_dict(), "scaling_factor": scaling, "log": state, "reconstruction_mse": held_out_mse}, out / "vae_final.pt")
    print(f"[vae] scaling_factor {scaling:.4f}, reconstruction MSE ({len(held_out)} held-out scenes, [-1,1]) {held_out_mse:.5f}")


def load_vae(out: Path) -> AutoencoderKL:
    """The trained VAE of a run folder, with its scaling_factor."""
    saved = torch.load(out / "vae_final.pt", weights_only=False)
    vae = build_vae(saved["scaling_factor"])
    vae.load_state_dict(saved["vae"])
    return vae.eval()


def encode_latents(out: Path, images: torch.Tensor, n_latents: int) -> None:
    """Posterior means of the first ``n_latents`` scenes (fp16), the UNet's training latents.

    Means, not samples: the posterior std (~0.26, ~0.18 after scaling) is noise the UNet cannot predict, and training
    on samples left the loss on a ~0.09 floor.
    """
    vae = load_vae(out)
    means = []
    with torch.no_grad():
        for start in tqdm(range(0, n_latents, 512), desc="encode", mininterval=10):
            means.append(vae.encode(to_unit_range(images[start : min(start + 512, n_latents)])).latent_dist.mean.half())
    atomic_save({"mean": torch.cat(means)}, out / "latents.pt")


def caption_ids(captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP token ids (N, 16) of each caption, and those of the empty caption used for guidance."""
    tokenizer = clip_tokenizer(TOKENIZER_MAX_LENGTH)
    unique = sorted(set(captions))
    encoded = tokenizer(unique + [""], padding="max_length", max_length=TOKENIZER_MAX_LENGTH, truncation=True, return_tensors="pt")
    row = {caption: i for i, caption in enumerate(unique)}
    ids = compact_ids(encoded.input_ids)
    return ids[[row[c] for c in captions]], ids[-1]


@dataclass(frozen=True)
class UnetStage:
    """One UNet + text-encoder stage: its checkpoint name, steps, learning rate, grounding and starting weights."""

    name: str
    steps: int
    base_lr: float
    warmup: int
    ground: str
    ground_weight: float
    init: str | None = None  # a previous stage's final file in the run folder


def unet_stages(args: argparse.Namespace) -> list[UnetStage]:
    """Plain diffusion training, then a grounded fine-tune; with ``--ground-steps 0`` the UNet stage itself is grounded."""
    if args.ground_steps == 0:
        return [UnetStage("unet", args.unet_steps, 1e-3, 100, args.ground, args.ground_weight)]
    return [
        UnetStage("unet", args.unet_steps, 1e-3, 100, "none", 0.0),
        UnetStage("ground", args.ground_steps, args.ground_lr, 20, args.ground, args.ground_weight, init="unet_final.pt"),
    ]


def train_unet(out: Path, stage: UnetStage, scenes: list[Scene], seed: int, batch_size: int) -> None:
    """UNet2DConditionModel + CLIPTextModel, epsilon prediction, 10% caption dropout, plus the grounding loss."""
    ground, ground_weight = stage.ground, stage.ground_weight
    seed_everything(seed)
    latents = torch.load(out / "latents.pt")
    scaling = load_vae(out).config.scaling_factor
    scenes = scenes[: len(latents["mean"])]
    ids, empty_ids = caption_ids([scene.caption for scene in scenes])
    ground_tokens, ground_masks = grounding_targets(scenes, ground)
    unet, text_encoder = build_unet(), build_text_encoder(compact_vocabulary=True)
    if stage.init is not None:
        if not (out / stage.init).exists():
            raise SystemExit(f"the {stage.name} stage starts from {out / stage.init}; run --stage unet first")
        start = torch.load(out / stage.init, weights_only=False)
        unet.load_state_dict(start["unet"])
        text_encoder.load_state_dict(start["text_encoder"])
    noise_scheduler = training_noise_scheduler()
    store = AttentionStore(keep_graph=True, branches="both", mean_heads=True)
    store.active = ground != "none" and ground_weight > 0

    def step(generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        rows = torch.randint(len(ids), (batch_size,), generator=generator)
        clean = latents["mean"][rows].float() * scaling
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(noise_scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        dropped = torch.rand(batch_size, generator=generator) < CAPTION_DROPOUT
        tokens = torch.where(dropped[:, None], empty_ids[None], ids[rows])
        text = text_encoder(tokens).last_hidden_state
        store.begin_forward()
        prediction = unet(noise_scheduler.add_noise(clean, noise, timesteps), timesteps, text).sample
        diffusion = F.mse_loss(prediction, noise)
        if not store.active:
            return diffusion, {}
        grounding = grounding_loss(store.maps, ground_tokens[rows], ground_masks[rows], ~dropped)
        return diffusion + ground_weight * grounding, {"diffusion": diffusion.item(), "grounding": grounding.item()}

    with attention_hook(unet, cross_attention_layers(unet, (unet.config.sample_size,) * 2), store):
        modules = {"unet": unet, "text_encoder": text_encoder}
        state = train_loop(stage.name, modules, step, out, stage.steps, stage.base_lr, stage.warmup, seed)
    atomic_save({"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(), "log": state}, out / STAGE_OUTPUTS[stage.name])


def train_clip(out: Path, steps: int, images: torch.Tensor, captions: list[str], seed: int) -> None:
    """Contrastive training of the toy open_clip CLIP; identical captions in a batch count as positives."""
    seed_everything(seed)
    model = build_clip(compact_vocabulary=True)
    tokenizer = clip_text_tokenizer()
    unique = sorted(set(captions))
    unique_tokens = compact_ids(tokenizer(unique))
    row = {caption: i for i, caption in enumerate(unique)}
    caption_index = torch.tensor([row[caption] for caption in captions])

    def step(generator: torch.Generator) -> torch.Tensor:
        rows = torch.randint(len(images), (256,), generator=generator)
        pixels = (images[rows].float() / 255 - OPENAI_MEAN) / OPENAI_STD
        which = caption_index[rows]
        image_features = F.normalize(model.encode_image(pixels), dim=-1)
        text_features = F.normalize(model.encode_text(unique_tokens[which]), dim=-1)
        logits = model.logit_scale.exp() * image_features @ text_features.T
        targets = (which[:, None] == which[None]).float()
        targets = targets / targets.sum(dim=1, keepdim=True)
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2, {}

    state = train_loop("clip", {"clip": model}, step, out, steps, 5e-4, 50, seed)
    atomic_save({"clip": model.state_dict(), "log": state}, out / "clip_final.pt")


def train_blip(out: Path, steps: int, images: torch.Tensor, captions: list[str], seed: int) -> None:
    """Teacher-forced captioning of the toy BLIP on the scenes: "a picture of " + caption, BLIP's own LM loss."""
    seed_everything(seed)
    model, processor = build_toy_blip(seed)

    def step(generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        rows = torch.randint(len(images), (BLIP_BATCH,), generator=generator)
        batch = training_batch(processor, images[rows], [captions[i] for i in rows.tolist()])
        return model(**batch).loss, {}

    state = train_loop("blip", {"blip": model}, step, out, steps, 5e-4, 50, seed)
    atomic_save({"blip": model.state_dict(), "log": state}, out / "blip_final.pt")


def export(out: Path, weights_dir: Path, stages: list[UnetStage]) -> None:
    """Write the trained weights (and the toy CLIP when trained) into ``weights_dir`` with SHA256SUMS and training.json."""
    vae = load_vae(out)
    saved = torch.load(out / STAGE_OUTPUTS[stages[-1].name], weights_only=False)
    unet, text_encoder = build_unet(), build_text_encoder(compact_vocabulary=True)
    unet.load_state_dict(saved["unet"])
    text_encoder.load_state_dict(saved["text_encoder"])
    save_weights(vae, unet, text_encoder, weights_dir)
    vae_saved = torch.load(out / "vae_final.pt", weights_only=False)
    logs = {
        "arguments": json.loads((out / ARGUMENTS_FILE).read_text(encoding="utf-8")),
        "vae": vae_saved["log"] | {"held_out_reconstruction_mse": vae_saved["reconstruction_mse"]},
    } | {stage.name: torch.load(out / STAGE_OUTPUTS[stage.name], weights_only=False)["log"] for stage in stages}
    if (out / "clip_final.pt").exists():
        clip_saved = torch.load(out / "clip_final.pt", weights_only=False)
        model = build_clip(compact_vocabulary=True)
        model.load_state_dict(clip_saved["clip"])
        save_clip(model, weights_dir)
        logs["clip"] = clip_saved["log"]
    if (out / "blip_final.pt").exists():
        blip_saved = torch.load(out / "blip_final.pt", weights_only=False)
        blip, _ = build_toy_blip()
        blip.load_state_dict(blip_saved["blip"])
        save_toy_blip(blip, weights_dir)
        logs["blip"] = blip_saved["log"]
    (weights_dir / "training.json").write_text(json.dumps(logs, indent=1) + "\n", encoding="utf-8")
    write_checksums(weights_dir)
    print(f"[export] wrote {weights_dir}")


ARGUMENTS_FILE = "arguments.json"
STAGE_OUTPUTS = {
    "vae": "vae_final.pt", "encode": "latents.pt", "unet": "unet_final.pt", "ground": "ground_final.pt", "clip": "clip_final.pt",
    "blip": "blip_final.pt",
}
RECORDED_ARGUMENTS = (
    "vae_steps", "unet_steps", "ground_steps", "ground_lr", "clip_steps", "blip_steps", "n_scenes", "n_latents", "batch_size", "seed",
    "threads", "ground", "ground_weight", "object_counts",
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=("vae", "encode", "unet", "ground", "clip", "blip", "export", "all"), default="all")
    parser.add_argument("--vae-steps", type=int, default=400)
    parser.add_argument("--unet-steps", type=int, default=1800, help="plain diffusion steps (grounded too when --ground-steps is 0)")
    parser.add_argument(
        "--ground-steps", type=int, default=600, help="steps of the grounded fine-tune after the UNet stage; 0 grounds the UNet stage itself"
    )
    parser.add_argument("--ground-lr", type=float, default=3e-4, help="peak learning rate of the grounded fine-tune")
    parser.add_argument("--clip-steps", type=int, default=300)
    parser.add_argument("--blip-steps", type=int, default=2400)
    parser.add_argument("--out", type=Path, default=DEFAULT_RUN_DIR, help="checkpoint folder")
    parser.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--n-scenes", type=int, default=60000)
    parser.add_argument("--n-latents", type=int, default=32000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ground", choices=GROUND_MODES, default="nouns", help="which tokens the grounding loss ties to their object")
    parser.add_argument("--ground-weight", type=float, default=1.0, help="lambda of the grounding loss")
    parser.add_argument("--threads", type=int, default=1, help="torch threads; part of what makes a run reproducible")
    parser.add_argument("--object-counts", default="0.65,0.30,0.05", help="shares of one-, two- and three-object training scenes")
    args = parser.parse_args(argv)
    try:
        shares = [float(share) for share in args.object_counts.split(",")]
    except ValueError:
        shares = []
    if len(shares) != 3 or min(shares) < 0 or abs(sum(shares) - 1) > 1e-6:
        parser.error(f"--object-counts takes three shares that sum to 1 (one, two, three objects), not {args.object_counts!r}")
    if args.ground_steps < 0 or args.ground_lr <= 0:
        parser.error(f"--ground-steps must be >= 0 and --ground-lr positive, not {args.ground_steps} and {args.ground_lr}")
    if args.stage == "ground" and args.ground_steps == 0:
        parser.error("--stage ground needs --ground-steps > 0 (with 0, the UNet stage is the grounded one)")
    for name in ("vae_steps", "unet_steps", "clip_steps", "blip_steps", "n_scenes", "n_latents", "batch_size", "threads"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, not {getattr(args, name)}")
    return args


def record_arguments(args: argparse.Namespace) -> None:
    """Write the run's arguments to out/arguments.json, or refuse to resume a run started with other arguments."""
    recorded = {name: getattr(args, name) for name in RECORDED_ARGUMENTS}
    path = args.out / ARGUMENTS_FILE
    if path.exists():
        previous = json.loads(path.read_text(encoding="utf-8"))
        changed = {name: (previous.get(name), value) for name, value in recorded.items() if previous.get(name) != value}
        if changed:
            raise SystemExit(
                f"{args.out} holds a run started with other arguments ({changed}, as (then, now)); resume it with the "
                "same arguments, or pass a new --out."
            )
        return
    path.write_text(json.dumps(recorded, indent=1) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    record_arguments(args)
    started = time.monotonic()
    counts = dict(zip((1, 2, 3), (float(share) for share in args.object_counts.split(","))))
    scenes = generate_scenes(args.n_scenes, args.seed, counts)
    images, captions = scene_images(scenes), [scene.caption for scene in scenes]
    diffusion_stages = {stage.name: stage for stage in unet_stages(args)}
    every_stage = ("vae", "encode", *diffusion_stages, "clip", "blip", "export")
    stages = every_stage if args.stage == "all" else (args.stage,)
    for stage in stages:
        stage_started = time.monotonic()
        if args.stage == "all" and stage in STAGE_OUTPUTS and (args.out / STAGE_OUTPUTS[stage]).exists():
            print(f"[{stage}] already done ({args.out / STAGE_OUTPUTS[stage]})")
            continue
        if stage == "vae":
            train_vae(args.out, args.vae_steps, images, scene_images(generate_scenes(1024, VALIDATION_SEED)), args.seed)
        elif stage == "encode":
            encode_latents(args.out, images, min(args.n_latents, len(images)))
        elif stage in diffusion_stages:
            seed = args.seed + list(diffusion_stages).index(stage)  # the fine-tune draws other batches than the first stage
            train_unet(args.out, diffusion_stages[stage], scenes, seed, args.batch_size)
        elif stage == "clip":
            train_clip(args.out, args.clip_steps, images, captions, args.seed)
        elif stage == "blip":
            train_blip(args.out, args.blip_steps, images, captions, args.seed)
        else:
            export(args.out, args.weights_dir, list(diffusion_stages.values()))
        print(f"[{stage}] done in {(time.monotonic() - stage_started) / 60:.1f} min (total {(time.monotonic() - started) / 60:.1f} min)", flush=True)


if __name__ == "__main__":
    main()
