"""Train the toy world on a CPU: VAE, then UNet + text encoder on VAE latents, then a small CLIP; resumable, time-budgeted.

    python -m fidelity_lib.toyworld.train --stage all
    python -m fidelity_lib.toyworld.train --stage unet --minutes 10   # resumes from ~/.cache/fidelity_lib/toyworld_run

Each stage trains until its wall-clock budget is spent (the learning rate follows a cosine over that budget),
checkpoints every few minutes (atomic writes) and resumes from its checkpoint. ``export`` writes the shipped
weights into data/toyworld/ with SHA256SUMS.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from tqdm import tqdm

from fidelity_lib.models import clip_tokenizer
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
from fidelity_lib.toyworld.scenes import BACKGROUND, generate_scenes

CHECKPOINT_SECONDS = 180
CAPTION_DROPOUT = 0.1
KL_WEIGHT = 1e-4
OBJECT_WEIGHT = 5.0  # without it the VAE sits on an all-grey plateau for ~100 steps
VAE_BATCH = 32  # more, smaller steps: the VAE leaves its all-grey plateau after a number of steps, not of samples
DEFAULT_RUN_DIR = Path.home() / ".cache" / "fidelity_lib" / "toyworld_run"
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


def scene_data(n_scenes: int, seed: int) -> tuple[torch.Tensor, list[str]]:
    """Images as a uint8 tensor (N, 3, 32, 32) and their captions."""
    scenes = generate_scenes(n_scenes, seed)
    images = torch.from_numpy(np.stack([scene.image for scene in scenes])).permute(0, 3, 1, 2).contiguous()
    return images, [scene.caption for scene in scenes]


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float [-1, 1]."""
    return images.float() / 127.5 - 1


def learning_rate(base: float, step: int, fraction: float, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then a cosine over the time budget down to 10% of ``base``."""
    cosine = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(fraction, 1.0)))
    return base * min(1.0, (step + 1) / warmup) * cosine


def train_loop(
    name: str,
    modules: dict[str, torch.nn.Module],
    step_fn: Callable[[torch.Generator], torch.Tensor],
    out: Path,
    minutes: float,
    base_lr: float,
    warmup: int,
    seed: int,
) -> dict:
    """Run ``step_fn`` until ``minutes`` of training time are spent; resumable from out/<name>.ckpt; returns its log."""
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
        state = saved["state"]
        print(f"[{name}] resumed at step {state['step']} after {state['elapsed'] / 60:.1f} min")
    budget = state["elapsed"] + minutes * 60
    for module in modules.values():
        module.train()

    def save() -> None:
        snapshot = {
            "modules": {key: module.state_dict() for key, module in modules.items()},
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "state": state,
        }
        atomic_save(snapshot, checkpoint_path)

    progress = tqdm(total=round(minutes * 60), desc=name, unit="s", mininterval=10, bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s{postfix}")
    last_checkpoint = time.monotonic()
    window: list[float] = []
    while state["elapsed"] < budget:
        started = time.monotonic()
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(base_lr, state["step"], state["elapsed"] / budget, warmup)
        loss = step_fn(generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        seconds = time.monotonic() - started
        state["step"] += 1
        state["elapsed"] += seconds
        window.append(loss.item())
        progress.update(min(seconds, progress.total - progress.n))
        if len(window) == 50:
            state["losses"].append({"step": state["step"], "minutes": round(state["elapsed"] / 60, 2), "loss": sum(window) / 50})
            progress.set_postfix(step=state["step"], loss=f"{sum(window) / 50:.4f}")
            print(f"[{name}] step {state['step']} {state['elapsed'] / 60:.1f} min loss {sum(window) / 50:.4f}", flush=True)
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


def train_vae(out: Path, minutes: float, images: torch.Tensor, seed: int) -> None:
    """AutoencoderKL on the scenes: object-weighted L1 + MSE + a small KL; then scaling_factor = 1 / latent std."""
    seed_everything(seed)
    vae = build_vae()

    def step(generator: torch.Generator) -> torch.Tensor:
        batch = to_unit_range(images[torch.randint(len(images), (VAE_BATCH,), generator=generator)])
        posterior = vae.encode(batch).latent_dist
        reconstruction = vae.decode(posterior.sample()).sample
        kl = posterior.kl().mean() / posterior.mean[0].numel()
        error = (reconstruction - batch).abs()
        return (object_weights(batch) * (error + error**2)).mean() + KL_WEIGHT * kl

    state = train_loop("vae", {"vae": vae}, step, out, minutes, 1e-3, 20, seed)
    with torch.no_grad():
        latents = vae.encode(to_unit_range(images[:2048])).latent_dist.sample()
        reconstruction = vae.decode(vae.encode(to_unit_range(images[-1024:])).latent_dist.mode()).sample
    scaling = float(1 / latents.std())
    held_out_mse = float(F.mse_loss(reconstruction, to_unit_range(images[-1024:])))
    atomic_save({"vae": vae.state_dict(), "scaling_factor": scaling, "log": state, "reconstruction_mse": held_out_mse}, out / "vae_final.pt")
    print(f"[vae] scaling_factor {scaling:.4f}, reconstruction MSE (last 1024 scenes, [-1,1]) {held_out_mse:.5f}")


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


def train_unet(out: Path, minutes: float, captions: list[str], seed: int, batch_size: int) -> None:
    """UNet2DConditionModel + CLIPTextModel, epsilon prediction, 10% caption dropout for classifier-free guidance."""
    seed_everything(seed)
    latents = torch.load(out / "latents.pt")
    scaling = load_vae(out).config.scaling_factor
    ids, empty_ids = caption_ids(captions[: len(latents["mean"])])
    unet, text_encoder = build_unet(), build_text_encoder(compact_vocabulary=True)
    noise_scheduler = training_noise_scheduler()

    def step(generator: torch.Generator) -> torch.Tensor:
        rows = torch.randint(len(ids), (batch_size,), generator=generator)
        clean = latents["mean"][rows].float() * scaling
        noise = torch.randn(clean.shape, generator=generator)
        timesteps = torch.randint(noise_scheduler.config.num_train_timesteps, (batch_size,), generator=generator)
        dropped = torch.rand(batch_size, generator=generator) < CAPTION_DROPOUT
        tokens = torch.where(dropped[:, None], empty_ids[None], ids[rows])
        text = text_encoder(tokens).last_hidden_state
        prediction = unet(noise_scheduler.add_noise(clean, noise, timesteps), timesteps, text).sample
        return F.mse_loss(prediction, noise)

    state = train_loop("unet", {"unet": unet, "text_encoder": text_encoder}, step, out, minutes, 1e-3, 100, seed)
    atomic_save({"unet": unet.state_dict(), "text_encoder": text_encoder.state_dict(), "log": state}, out / "unet_final.pt")


def train_clip(out: Path, minutes: float, images: torch.Tensor, captions: list[str], seed: int) -> None:
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
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2

    state = train_loop("clip", {"clip": model}, step, out, minutes, 5e-4, 50, seed)
    atomic_save({"clip": model.state_dict(), "log": state}, out / "clip_final.pt")


def export(out: Path, weights_dir: Path) -> None:
    """Write the trained weights (and the toy CLIP when trained) into ``weights_dir`` with SHA256SUMS and training.json."""
    vae = load_vae(out)
    saved = torch.load(out / "unet_final.pt", weights_only=False)
    unet, text_encoder = build_unet(), build_text_encoder(compact_vocabulary=True)
    unet.load_state_dict(saved["unet"])
    text_encoder.load_state_dict(saved["text_encoder"])
    save_weights(vae, unet, text_encoder, weights_dir)
    logs = {"vae": torch.load(out / "vae_final.pt", weights_only=False)["log"], "unet": saved["log"]}
    if (out / "clip_final.pt").exists():
        clip_saved = torch.load(out / "clip_final.pt", weights_only=False)
        model = build_clip(compact_vocabulary=True)
        model.load_state_dict(clip_saved["clip"])
        save_clip(model, weights_dir)
        logs["clip"] = clip_saved["log"]
    (weights_dir / "training.json").write_text(json.dumps(logs, indent=1) + "\n", encoding="utf-8")
    write_checksums(weights_dir)
    print(f"[export] wrote {weights_dir}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=("vae", "encode", "unet", "clip", "export", "all"), default="all")
    parser.add_argument("--minutes", type=float, help="time budget of a single stage (overrides the per-stage default)")
    parser.add_argument("--vae-minutes", type=float, default=6.0)
    parser.add_argument("--unet-minutes", type=float, default=26.0)
    parser.add_argument("--clip-minutes", type=float, default=4.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_RUN_DIR, help="checkpoint folder")
    parser.add_argument("--weights-dir", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--n-scenes", type=int, default=60000)
    parser.add_argument("--n-latents", type=int, default=32000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch threads; 1 is ~5x faster when other jobs load the cores")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    images, captions = scene_data(args.n_scenes, args.seed)
    stages = ("vae", "encode", "unet", "clip", "export") if args.stage == "all" else (args.stage,)
    for stage in stages:
        stage_started = time.monotonic()
        if stage == "vae":
            train_vae(args.out, args.minutes or args.vae_minutes, images, args.seed)
        elif stage == "encode":
            encode_latents(args.out, images, min(args.n_latents, len(images)))
        elif stage == "unet":
            train_unet(args.out, args.minutes or args.unet_minutes, captions, args.seed, args.batch_size)
            if args.stage == "all":  # ship the diffusion weights before the CLIP stage starts
                export(args.out, args.weights_dir)
        elif stage == "clip":
            train_clip(args.out, args.minutes or args.clip_minutes, images, captions, args.seed)
        else:
            export(args.out, args.weights_dir)
        print(f"[{stage}] done in {(time.monotonic() - stage_started) / 60:.1f} min (total {(time.monotonic() - started) / 60:.1f} min)", flush=True)


if __name__ == "__main__":
    main()
