"""Models: the offline CLIP tokenizer, the tiny random Stable Diffusion, and loading real weights.

The profiles (``fidelity_lib.components`` maps each to its components):
- ``tiny``: random-weight SD-architecture components, built from configs (unit tests).
- ``toy``: the toy world trained on coloured shapes (``fidelity_lib.toyworld``), shipped in ``data/toyworld/``.
- ``smoke``: the book's CPU default: ``toy`` when its weights are present, otherwise ``tiny``.
- ``paper``: Stable Diffusion v1.4 by default, or any SD 1.x, 2.x or SDXL folder or cached repo, recognised by its
  ``model_index.json`` (``docs/models.md``).
"""

from __future__ import annotations

import gzip
import inspect
import json
import os
import tempfile
from pathlib import Path

import torch
from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from huggingface_hub import try_to_load_from_cache
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from fidelity_lib.conditioning import FAMILIES, Pipeline, model_family

PROFILES = ("smoke", "tiny", "toy", "paper")
SD14_REPO_ID = FAMILIES["sd1"].repo_id
PIPELINE_CLASSES = {cls.__name__: cls for cls in (StableDiffusionPipeline, StableDiffusionXLPipeline)}
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
        f"text_encoder/, tokenizer/, scheduler/, and for SDXL text_encoder_2/, tokenizer_2/), or drop --local-dir to\n"
        f"fill the Hugging Face cache (HF_HOME, default ~/.cache/huggingface) and pass weights='{repo_id}'.\n"
        f"Other models: {', '.join(family.repo_id for family in FAMILIES.values())}."
    )


OPTIONAL_COMPONENTS = ("safety_checker", "feature_extractor", "image_encoder")  # the book loads SD without them


def _missing_components(folder: Path, index: dict) -> list[str]:
    """Component folders model_index.json lists that the weights folder lacks (e.g. an interrupted download)."""
    return [
        f"{name}/"
        for name, value in index.items()
        if not name.startswith("_") and name not in OPTIONAL_COMPONENTS
        and isinstance(value, list) and value[0] is not None and not (folder / name).is_dir()
    ]


class UnsupportedModelError(ValueError):
    """The weights are a diffusers pipeline of a kind the methods do not run on."""


def is_repo_id(weights: str | os.PathLike) -> bool:
    """A string that names no existing path and is a valid Hugging Face repo id ("owner/name")."""
    if not isinstance(weights, str) or Path(weights).expanduser().exists() or weights.count("/") != 1:
        return False
    try:
        validate_repo_id(weights)
    except HFValidationError:  # e.g. "./weights": a folder that does not exist
        return False
    return True


def _reference_repo(index: dict) -> str:
    """The repo the download hint names for a folder: SDXL base for an SDXL index, else SD v1.4."""
    return FAMILIES["sdxl"].repo_id if index.get("_class_name") == StableDiffusionXLPipeline.__name__ else SD14_REPO_ID


def _model_index(weights: str | os.PathLike | None) -> tuple[str | Path, str, dict]:
    """(what from_pretrained loads, the repo id the error messages name, the parsed model_index.json)."""
    if weights is None or is_repo_id(weights):
        repo_id = SD14_REPO_ID if weights is None else str(weights)
        index_file = try_to_load_from_cache(repo_id, "model_index.json")
        if not isinstance(index_file, str):
            reason = "no model_index.json for it in the cache" + ("" if weights is None else ", and no folder of that name")
            raise WeightsNotFoundError(_missing_weights_message(repo_id, None, reason))
        return repo_id, repo_id, json.loads(Path(index_file).read_text())
    folder = Path(weights).expanduser()
    if not (folder / "model_index.json").is_file():
        raise WeightsNotFoundError(_missing_weights_message(SD14_REPO_ID, folder, "no model_index.json there"))
    try:
        index = json.loads((folder / "model_index.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        index, missing = {}, [f"a readable model_index.json ({type(error).__name__})"]
    else:
        missing = _missing_components(folder, index)
    if missing:
        reason = f"the folder is incomplete, it lacks {', '.join(missing)}"
        raise WeightsNotFoundError(_missing_weights_message(_reference_repo(index), folder, reason))
    return folder, _reference_repo(index), index


def paper_pipeline(weights: str | os.PathLike | None, dtype: torch.dtype) -> Pipeline:
    """SD 1.x, 2.x or SDXL, by its model_index.json, from a folder or a repo id in the local cache; never downloaded.

    Every family samples with PLMS (the PNDM scheduler with the folder's betas and prediction type), both papers'
    sampler; ``weights_id`` names the source and the family.
    """
    source, repo_id, index = _model_index(weights)
    pipeline_class = PIPELINE_CLASSES.get(index.get("_class_name"))
    if pipeline_class is None:
        raise UnsupportedModelError(
            f"{source} is a {index.get('_class_name')!r}; the methods run on {', '.join(PIPELINE_CLASSES)} "
            f"(Stable Diffusion 1.x, 2.x and SDXL base). Point weights= at one of those."
        )
    parameters = inspect.signature(pipeline_class.__init__).parameters
    options = {name: None for name in OPTIONAL_COMPONENTS if name in parameters}  # not loaded: a folder may lack them
    options.update({"requires_safety_checker": False} if "requires_safety_checker" in parameters else {"add_watermarker": False})
    try:
        pipe = pipeline_class.from_pretrained(source, dtype=dtype, local_files_only=True, **options)
    except (OSError, EnvironmentError, ValueError) as error:
        raise WeightsNotFoundError(_missing_weights_message(repo_id, weights, f"{type(error).__name__}: {error}")) from error
    pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True)
    pipe.weights_id = f"{source} [{model_family(pipe).label}]"
    return pipe


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
