"""The toy world's models: SD-architecture VAE, UNet and CLIP text encoder, a small open_clip CLIP, and their weights."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from functools import lru_cache
from itertools import product
from pathlib import Path

import open_clip
import torch
from PIL import Image
from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from open_clip.tokenizer import SimpleTokenizer
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel

from fidelity_lib.clip import ClipModel
from fidelity_lib.models import CLIP_VOCAB_SIZE, clip_tokenizer, pndm_scheduler
from fidelity_lib.toyworld.scenes import COLOURS, IMAGE_SIZE, RELATION_FORMS, RELATIONS, SHAPES

WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "data" / "toyworld"
TOKENIZER_MAX_LENGTH = 16  # the longest toy caption is 14 tokens with <sot> and <eot>
TEXT_HIDDEN = 128
WEIGHT_FILES = ("config.json", "vae.safetensors", "unet.safetensors", "text_encoder.safetensors")
CLIP_FILES = ("clip_config.json", "clip.safetensors")
BLIP_FILES = ("blip_config.json", "blip.safetensors")
CLIP_CONTEXT_LENGTH = 16
CLIP_EMBED_DIM = 64
CLIP_VISION = {"image_size": IMAGE_SIZE, "patch_size": 4, "width": 96, "layers": 3, "head_width": 32, "mlp_ratio": 4.0}
CLIP_TEXT = {"context_length": CLIP_CONTEXT_LENGTH, "vocab_size": CLIP_VOCAB_SIZE, "width": 96, "heads": 3, "layers": 3}


def vae_config() -> dict:
    """AutoencoderKL: one downsampling, 32x32 RGB -> 4x16x16 latent."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "block_out_channels": [32, 64],
        "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"],
        "layers_per_block": 1,
        "latent_channels": 4,
        "norm_num_groups": 16,
        "sample_size": IMAGE_SIZE,
    }


def unet_config() -> dict:
    """UNet2DConditionModel on the 16x16 latent: cross-attention at 16x16, 8x8 and the 8x8 mid block."""
    return {
        "sample_size": IMAGE_SIZE // 2,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": [32, 64],
        "layers_per_block": 1,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
        "cross_attention_dim": TEXT_HIDDEN,
        "attention_head_dim": 4,
        "norm_num_groups": 16,
    }


def text_encoder_config() -> dict:
    """CLIPTextModel: 3 layers of width 128 over the full CLIP vocabulary, 16 positions."""
    return {
        "vocab_size": CLIP_VOCAB_SIZE,
        "hidden_size": TEXT_HIDDEN,
        "intermediate_size": 4 * TEXT_HIDDEN,
        "num_hidden_layers": 3,
        "num_attention_heads": 4,
        "max_position_embeddings": TOKENIZER_MAX_LENGTH,
        "bos_token_id": 49406,
        "eos_token_id": 49407,
        "pad_token_id": 49407,
        "projection_dim": TEXT_HIDDEN,
    }


def build_vae(scaling_factor: float = 1.0) -> AutoencoderKL:
    return AutoencoderKL(**vae_config(), scaling_factor=scaling_factor)


def build_unet() -> UNet2DConditionModel:
    return UNet2DConditionModel(**unet_config())


def build_text_encoder(compact_vocabulary: bool = False) -> CLIPTextModel:
    """The text encoder; ``compact_vocabulary`` keeps only the toy tokens' rows (training; ids via ``compact_ids``)."""
    config = text_encoder_config()
    if compact_vocabulary:
        eos = len(used_token_ids()) - 1
        config |= {"vocab_size": eos + 1, "bos_token_id": eos - 1, "eos_token_id": eos, "pad_token_id": eos}
    return CLIPTextModel(CLIPTextConfig(**config))


def build_clip(compact_vocabulary: bool = False) -> CLIP:
    """A small open_clip CLIP (ViT on 4x4 patches of 32x32 images, causal text transformer)."""
    text = CLIP_TEXT | ({"vocab_size": len(used_token_ids())} if compact_vocabulary else {})
    return CLIP(CLIP_EMBED_DIM, CLIPVisionCfg(**CLIP_VISION), CLIPTextCfg(**text))


def compact_ids(token_ids: torch.Tensor) -> torch.Tensor:
    """Map CLIP BPE ids to rows of the compact vocabulary (order kept, so <eot> stays the largest id)."""
    used = torch.tensor(used_token_ids())
    lookup = torch.full((CLIP_VOCAB_SIZE,), -1, dtype=torch.long)
    lookup[used] = torch.arange(len(used))
    compact = lookup[token_ids]
    if (compact < 0).any():
        raise ValueError("a caption uses a token outside the toy vocabulary (see toy_words())")
    return compact


def training_noise_scheduler() -> DDPMScheduler:
    """The noise schedule of SD's training, matching ``pndm_scheduler()`` at sampling time."""
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def toy_words() -> list[str]:
    """Every word and punctuation mark the toy captions use."""
    relation_words = [word for relation in RELATIONS for word in relation.split()]
    return sorted(set(["a", "the", "is", "and", "with", ","] + list(COLOURS) + list(SHAPES) + relation_words))


@lru_cache(maxsize=1)
def used_token_ids() -> tuple[int, ...]:
    """CLIP BPE ids of the toy vocabulary, <sot>/<eot> and open_clip's pad id 0: the only embedding rows trained and shipped."""
    tokenizer = clip_tokenizer(TOKENIZER_MAX_LENGTH)
    ids = {token for word in toy_words() for token in tokenizer(word)["input_ids"]}
    ids |= {token for word in toy_words() for token in SimpleTokenizer().encode(word)}
    return tuple(sorted(ids | {0, 49406, 49407}))


def compact_state(state: dict[str, torch.Tensor], embedding_key: str) -> dict[str, torch.Tensor]:
    """Keep only the used rows of a token embedding (``token_ids`` stores which), everything in fp16."""
    ids = torch.tensor(used_token_ids())
    compact = {key: value.half().contiguous() for key, value in state.items() if key != embedding_key}
    embedding = state[embedding_key]
    rows = embedding if len(embedding) == len(ids) else embedding[ids]
    compact[embedding_key + ".rows"] = rows.half().contiguous()
    compact[embedding_key + ".token_ids"] = ids
    return compact


def expand_state(compact: dict[str, torch.Tensor], embedding_key: str, vocab_size: int) -> dict[str, torch.Tensor]:
    """Undo ``compact_state``: fp32, with zero rows for tokens the toy world never saw."""
    state = {key: value.float() for key, value in compact.items() if not key.startswith(embedding_key + ".")}
    rows = compact[embedding_key + ".rows"].float()
    embedding = torch.zeros(vocab_size, rows.shape[1])
    embedding[compact[embedding_key + ".token_ids"].long()] = rows
    state[embedding_key] = embedding
    return state


TEXT_EMBEDDING_KEY = "embeddings.token_embedding.weight"
CLIP_EMBEDDING_KEY = "token_embedding.weight"


def save_weights(vae: AutoencoderKL, unet: UNet2DConditionModel, text_encoder: CLIPTextModel, folder: Path) -> None:
    """Write the diffusion weights (fp16 safetensors, compact text embedding) and config.json into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.half().contiguous() for k, v in vae.state_dict().items()}, folder / "vae.safetensors")
    save_file({k: v.half().contiguous() for k, v in unet.state_dict().items()}, folder / "unet.safetensors")
    save_file(compact_state(text_encoder.state_dict(), TEXT_EMBEDDING_KEY), folder / "text_encoder.safetensors")
    config = {
        "vae": vae_config() | {"scaling_factor": vae.config.scaling_factor},
        "unet": unet_config(),
        "text_encoder": text_encoder_config(),
        "tokenizer_max_length": TOKENIZER_MAX_LENGTH,
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def save_clip(model: CLIP, folder: Path) -> None:
    """Write the toy CLIP (fp16 safetensors, compact text embedding) and clip_config.json into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file(compact_state(model.state_dict(), CLIP_EMBEDDING_KEY), folder / "clip.safetensors")
    config = {"embed_dim": CLIP_EMBED_DIM, "vision_cfg": CLIP_VISION, "text_cfg": CLIP_TEXT}
    (folder / "clip_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def write_checksums(folder: Path = WEIGHTS_DIR) -> Path:
    """Write SHA256SUMS (sha256sum format) for every shipped file in ``folder``."""
    names = [name for name in WEIGHT_FILES + CLIP_FILES + BLIP_FILES if (folder / name).exists()]
    lines = [f"{sha256_of(folder / name)}  {name}" for name in names]
    (folder / "SHA256SUMS").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder / "SHA256SUMS"


def weights_available(folder: Path = WEIGHTS_DIR) -> bool:
    """Whether the toy world's diffusion weights and their checksum file are shipped in ``folder``."""
    return all((folder / name).is_file() for name in WEIGHT_FILES + ("SHA256SUMS",))


def weights_id(folder: Path = WEIGHTS_DIR) -> str:
    """"toyworld@" plus 12 hex digits hashing the checksums of what makes the images: the diffusion weights and the
    toy CLIP (the spatial-temporal loss). The toy BLIP, a metric model only, is named by ``captioner.toy_blip``."""
    generative = set(WEIGHT_FILES + CLIP_FILES)
    lines = [line for line in (folder / "SHA256SUMS").read_text(encoding="utf-8").splitlines() if line.split()[-1] in generative]
    return "toyworld@" + hashlib.sha256(("\n".join(lines) + "\n").encode()).hexdigest()[:12]


def load_components(folder: Path = WEIGHTS_DIR) -> tuple[AutoencoderKL, UNet2DConditionModel, CLIPTextModel]:
    """The VAE, UNet and text encoder from ``folder``, in eval mode."""
    if not weights_available(folder):
        raise FileNotFoundError(
            f"Toy-world weights are missing from {folder} (need {', '.join(WEIGHT_FILES)} and SHA256SUMS). "
            "Train them with: python -m fidelity_lib.toyworld.train --stage all"
        )
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    vae = AutoencoderKL(**config["vae"])
    vae.load_state_dict({k: v.float() for k, v in load_file(folder / "vae.safetensors").items()})
    unet = UNet2DConditionModel(**config["unet"])
    unet.load_state_dict({k: v.float() for k, v in load_file(folder / "unet.safetensors").items()})
    text_encoder = CLIPTextModel(CLIPTextConfig(**config["text_encoder"]))
    text_state = expand_state(load_file(folder / "text_encoder.safetensors"), TEXT_EMBEDDING_KEY, CLIP_VOCAB_SIZE)
    text_encoder.load_state_dict(text_state, strict=False)
    return vae.eval(), unet.eval(), text_encoder.eval()


def toy_pipeline(folder: str | Path = WEIGHTS_DIR) -> StableDiffusionPipeline:
    """The toy world as a StableDiffusionPipeline (32x32 images, PNDM sampler, CLIP tokenizer of length 16)."""
    folder = Path(folder)
    vae, unet, text_encoder = load_components(folder)
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(model_max_length=TOKENIZER_MAX_LENGTH),
        unet=unet,
        scheduler=pndm_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.weights_id = weights_id(folder)
    return pipe


def clip_preprocess() -> Callable[[Image.Image], torch.Tensor]:
    """The eval transform of open_clip at 32x32 with OpenAI's mean and std."""
    return open_clip.transform.image_transform(IMAGE_SIZE, is_train=False)


def clip_text_tokenizer() -> SimpleTokenizer:
    """open_clip's real BPE tokenizer with the toy CLIP's context length."""
    return SimpleTokenizer(context_length=CLIP_CONTEXT_LENGTH)


def toy_clip(folder: str | Path = WEIGHTS_DIR) -> ClipModel:
    """The toy CLIP, with the same interface as open_clip's ViT-B models."""
    folder = Path(folder)
    if not all((folder / name).is_file() for name in CLIP_FILES):
        raise FileNotFoundError(
            f"The toy CLIP is missing from {folder} (need {', '.join(CLIP_FILES)}). "
            "Train it with: python -m fidelity_lib.toyworld.train --stage clip"
        )
    model = build_clip()
    state = expand_state(load_file(folder / "clip.safetensors"), CLIP_EMBEDDING_KEY, CLIP_VOCAB_SIZE)
    model.load_state_dict(state)
    return ClipModel(model.eval(), clip_preprocess(), clip_text_tokenizer(), "toyworld-clip")


def all_toy_captions() -> list[str]:
    """Every one- and two-object caption form of the toy grammar, and three-object lists (to check the tokenizer covers them)."""
    coloured = [f"{colour} {shape}" for colour, shape in product(COLOURS, SHAPES)]
    names = [f"a {name}" for name in coloured + list(SHAPES)]
    pairs = [f"{a} {joiner} {b}" for a, b in product(names, names) for joiner in ("and", "with") if a != b]
    relations = [
        form.format(a=f"a {a}", b=f"a {b}", the_a=f"the {a}", the_b=f"the {b}", relation=relation)
        for a, b in product(coloured, coloured) if a != b for relation in RELATIONS for form in RELATION_FORMS
    ]
    lists = [f"a {a}, a {b} and a {c}" for a, b, c in product(coloured[:6], coloured[6:], coloured[3:9])]
    return names + pairs + relations + lists
