"""Models: the offline CLIP tokenizer, the tiny random Stable Diffusion, and loading real weights.

The profiles (``fidelity_lib.components`` maps each to its components):
- ``tiny``: random-weight SD-architecture components, built from configs (unit tests).
- ``toy``: the toy world trained on coloured shapes (``fidelity_lib.toyworld``), shipped in ``data/toyworld/``.
- ``smoke``: the book's CPU default: ``toy`` when its weights are present, otherwise ``tiny``.
- ``paper``: Stable Diffusion v1.4 (or 2.1-base) from a local folder or the local Hugging Face cache.
"""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

PROFILES = ("smoke", "tiny", "toy", "paper")
SD14_REPO_ID = "CompVis/stable-diffusion-v1-4"
SD21_BASE_REPO_ID = "stabilityai/stable-diffusion-2-1-base"
PAPER_REPO_IDS = (SD14_REPO_ID, SD21_BASE_REPO_ID)
CLIP_VOCAB_SIZE = 49408  # 2 x 256 byte symbols + 48,894 BPE merges + <sot> + <eot>, as in SD's CLIP tokenizer
START_OF_TEXT, END_OF_TEXT = "<|startoftext|>", "<|endoftext|>"


def cache_dir() -> Path:
    """Where fidelity_lib keeps files it derives offline (the CLIP tokenizer files); FIDELITY_CACHE overrides it."""
    root = os.environ.get("FIDELITY_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fidelity_lib"
    return Path(root)


def _clip_bpe_path() -> Path:
    import open_clip.tokenizer

    return Path(open_clip.tokenizer.__file__).with_name("bpe_simple_vocab_16e6.txt.gz")


def _write_clip_tokenizer_files(folder: Path) -> None:
    """Write the CLIP BPE vocabulary shipped with open_clip as vocab.json + merges.txt (the HF layout)."""
    from open_clip.tokenizer import bytes_to_unicode

    lines = gzip.open(_clip_bpe_path()).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]  # the slice open_clip's SimpleTokenizer uses
    byte_symbols = list(bytes_to_unicode().values())
    vocab = byte_symbols + [symbol + "</w>" for symbol in byte_symbols]
    vocab += ["".join(merge.split()) for merge in merges]
    vocab += [START_OF_TEXT, END_OF_TEXT]
    assert len(vocab) == CLIP_VOCAB_SIZE, len(vocab)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".clip_tokenizer."))
    (staging / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}), encoding="utf-8")
    (staging / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    try:
        staging.rename(folder)
    except OSError:  # another process wrote it first: keep theirs
        for file in staging.iterdir():
            file.unlink()
        staging.rmdir()


def clip_tokenizer(model_max_length: int = 77) -> CLIPTokenizer:
    """The real CLIP BPE tokenizer of SD 1.x, built offline from open_clip's vocabulary file."""
    folder = cache_dir() / "clip_tokenizer"
    if not (folder / "merges.txt").exists():
        _write_clip_tokenizer_files(folder)
    return CLIPTokenizer.from_pretrained(
        folder,
        model_max_length=model_max_length,
        bos_token=START_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        unk_token=END_OF_TEXT,
    )


def pndm_scheduler() -> PNDMScheduler:
    """The PLMS sampler both papers use, with SD v1.4's scheduler_config.json values."""
    return PNDMScheduler(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        skip_prk_steps=True,
        steps_offset=1,
        set_alpha_to_one=False,
    )


def tiny_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A random-weight SD-architecture pipeline: 64x64 images, a 32x32 latent, cross-attention at 32x32 and 16x16."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=32,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=(2, 4),
        norm_num_groups=16,
    )
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=16,
        sample_size=64,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=CLIP_VOCAB_SIZE,
            hidden_size=32,
            intermediate_size=37,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=49406,
            eos_token_id=49407,
            pad_token_id=49407,
            projection_dim=32,
        )
    )
    pipe = StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=clip_tokenizer(),
        unet=unet.eval(),
        scheduler=pndm_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.weights_id = f"tiny-random(seed={seed})"
    return pipe


class WeightsNotFoundError(FileNotFoundError):
    """Real weights are missing; the message says what to download and where to put it."""


def _missing_weights_message(repo_id: str, weights: str | os.PathLike | None, reason: str) -> str:
    where = f"the folder {weights}" if weights is not None else "the local Hugging Face cache"
    return (
        f"Stable Diffusion weights '{repo_id}' were not found in {where} ({reason}).\n"
        f"This book never downloads weights itself. Download them once, on a machine with internet access:\n"
        f"    huggingface-cli download {repo_id} --local-dir ~/weights/{repo_id.split('/')[-1]}\n"
        f"then run with weights=~/weights/{repo_id.split('/')[-1]} (a folder holding model_index.json, unet/, vae/,\n"
        f"text_encoder/, tokenizer/, scheduler/), or drop --local-dir to fill the Hugging Face cache\n"
        f"(HF_HOME, default ~/.cache/huggingface) and pass weights='{repo_id}'."
    )


OPTIONAL_COMPONENTS = ("safety_checker", "feature_extractor", "image_encoder")  # the book loads SD without them


def _missing_components(folder: Path) -> list[str]:
    """Component folders model_index.json lists that the weights folder lacks (e.g. an interrupted download)."""
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        return [f"a readable model_index.json ({type(error).__name__})"]
    return [
        f"{name}/"
        for name, value in index.items()
        if not name.startswith("_") and name not in OPTIONAL_COMPONENTS
        and isinstance(value, list) and value[0] is not None and not (folder / name).is_dir()
    ]


def paper_pipeline(weights: str | os.PathLike | None, dtype: torch.dtype) -> StableDiffusionPipeline:
    """SD v1.4 (or 2.1-base) from a folder or a repo id in the local cache, never downloaded, with the PNDM scheduler."""
    repo_id = SD14_REPO_ID
    source: str | os.PathLike = repo_id
    if weights is not None and str(weights) in PAPER_REPO_IDS:
        repo_id = source = str(weights)
    elif weights is not None:
        folder = Path(weights).expanduser()
        if not (folder / "model_index.json").is_file():
            raise WeightsNotFoundError(_missing_weights_message(repo_id, folder, "no model_index.json there"))
        missing = _missing_components(folder)
        if missing:
            reason = f"the folder is incomplete, it lacks {', '.join(missing)}"
            raise WeightsNotFoundError(_missing_weights_message(repo_id, folder, reason))
        source = folder
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            source,
            dtype=dtype,
            **{name: None for name in OPTIONAL_COMPONENTS},  # not loaded, so a folder may lack them
            requires_safety_checker=False,
            local_files_only=True,
        )
    except (OSError, EnvironmentError, ValueError) as error:
        raise WeightsNotFoundError(_missing_weights_message(repo_id, weights, f"{type(error).__name__}: {error}")) from error
    pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config)
    pipe.weights_id = str(source)
    return pipe


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
