"""Random-weight stand-ins of every paper component, with each real model's structure, where the paper loaders look.

``write_standins`` fills a Hugging Face cache (real repo ids, ``snapshots/<revision>`` + ``refs/main``) with CLIP
ViT-B/16 and ViT-B/32 (full size: open_clip fixes them by name), BLIP base, RT-DETR r101vd and roberta-base at reduced
widths, saves an SD v1.4-structure pipeline to a folder and writes a small COCO-format annotation set. The paper loaders
then load them offline, unchanged: a CPU rehearsal of the paper book, and tests. Every number they give is noise.
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import torch
from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import (
    BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor, CLIPTextConfig, CLIPTextModel,
    RobertaConfig, RobertaModel, RTDetrConfig, RTDetrForObjectDetection, RTDetrImageProcessor, RTDetrResNetConfig,
)

from fidelity_lib.clip import OPENAI_FILES, OPENAI_HF_REPOS
from fidelity_lib.components import CAPTIONERS
from fidelity_lib.datasets import COCO_CLASSES, PAPER_SET_NAMES, load_prompt_set
from fidelity_lib.layout.data import coco_examples, gpt_training_records
from fidelity_lib.layout.model import PAPER_ENCODER, train_bpe_tokenizer
from fidelity_lib.layout.synthetic import write_synthetic_coco
from fidelity_lib.metrics.blip_similarity import BLIP_REPO_ID, tiny_blip
from fidelity_lib.metrics.clip_score import CLIP_ARCH as METRIC_CLIP_ARCH
from fidelity_lib.metrics.detection import RTDETR_REPO_ID
from fidelity_lib.models import CLIP_VOCAB_SIZE, SD14_REPO_ID, clip_tokenizer, pndm_scheduler
from fidelity_lib.preflight import (
    BLIP_CAPTIONER, COCO_ANNOTATIONS, LOSS_CLIP, METRIC_CLIP, ROBERTA_ENCODER, RTDETR_DETECTOR, SD_WEIGHTS,
)
from fidelity_lib.spacetime import PAPER_CLIP_ARCH as LOSS_CLIP_ARCH

STANDIN_REVISION = "5" * 40  # the snapshot every stand-in repo's refs/main names; a real download has another
STANDIN_MARKER = "STANDIN.txt"  # in the SD folder: says what it is, and lets write_standins overwrite it
SD14_MODEL_INDEX_EXTRAS = {  # listed in CompVis/stable-diffusion-v1-4's model_index.json, never loaded by the book
    "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
    "feature_extractor": ["transformers", "CLIPImageProcessor"],
}
COCO_STANDIN_IMAGES = 200
SD_DIFFERENCES = (
    "SD v1.4 block layout (UNet: 3 cross-attention levels + 1, 2 layers per block, 8 heads, 64x64 latent; 4-level VAE; "
    "12-layer 77-token CLIP text encoder with the real tokenizer; PNDM), random weights, 32 channels (real: UNet 320-1280, "
    "VAE 128-512) and a 48-wide text encoder (real: 768)"
)
CLIP_DIFFERENCES = "full-size open_clip {arch} (open_clip fixes it by name), random weights, in fp16 (the real file: fp32)"
BLIP_DIFFERENCES = (
    "BLIP base layer counts (12 vision + 12 text layers, 12 heads, 384 px, 16 px patches), random weights, 48 wide "
    "(real: 768), a BERT vocabulary of the prompt sets' words only (real: 30,524 tokens)"
)
RTDETR_DIFFERENCES = (
    "RT-DETR r101vd layout (ResNet-vd bottlenecks 3-4-23-3, 1 encoder + 6 decoder layers, 8 heads, 300 queries, 80 COCO "
    "labels) at 1/8 width (backbone 32-256, encoder 48, d_model 32; real 256-2048, 384, 256), random weights, a class "
    "prior of 0.4 so that random boxes pass the 0.4 and 0.5 thresholds (real: 0.01)"
)
ROBERTA_DIFFERENCES = (
    "roberta-base layer counts (12 layers, 12 heads, 514 positions), random weights, 48 wide (real: 768), a byte-level "
    "BPE trained on the stand-in captions, the prompt sets and the layout training sentences (real: 50,265 tokens)"
)
COCO_DIFFERENCES = (
    f"{COCO_STANDIN_IMAGES} synthetic images in COCO 2017's schema (split 'synthetic', 12 thing + 2 stuff categories, "
    "spatial captions), no pixels (real: 118k train images, 80 + 91 categories, split train2017)"
)


def snapshot_folder(hub: Path, repo_id: str) -> Path:
    """An empty stand-in snapshot of ``repo_id`` under ``hub`` (refs/main names it); refuses to touch a real download."""
    repo = hub / f"models--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / "main"
    if ref.exists() and ref.read_text().strip() != STANDIN_REVISION:
        raise FileExistsError(
            f"{repo} holds a real download of {repo_id} (refs/main = {ref.read_text().strip()}): stand-ins go into a "
            f"Hugging Face cache of their own. Pass another hf_home."
        )
    snapshot = repo / "snapshots" / STANDIN_REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(STANDIN_REVISION)
    return snapshot


def sd14_structure_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """SD v1.4's block layout with 32 channels and random weights (SD_DIFFERENCES); the real CLIP tokenizer."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=64, block_out_channels=(32, 32, 32, 32), layers_per_block=2, cross_attention_dim=48,
        attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    vae = AutoencoderKL(
        block_out_channels=(32, 32, 32, 32), layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, sample_size=512,
    )
    text = CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, hidden_size=48, intermediate_size=192, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, projection_dim=48, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407,
        pad_token_id=49407,
    )
    return StableDiffusionPipeline(
        vae=vae, text_encoder=CLIPTextModel(text), tokenizer=clip_tokenizer(), unet=unet, scheduler=pndm_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def write_sd14_folder(folder: Path) -> None:
    """Save sd14_structure_pipeline() as CompVis/stable-diffusion-v1-4 is laid out, its optional parts listed, not saved."""
    if (folder / "model_index.json").exists() and not (folder / STANDIN_MARKER).exists():
        raise FileExistsError(f"{folder} holds Stable Diffusion weights that are not a stand-in: pass another weights_dir.")
    sd14_structure_pipeline().save_pretrained(folder)
    index_file = folder / "model_index.json"
    index_file.write_text(json.dumps(json.loads(index_file.read_text()) | SD14_MODEL_INDEX_EXTRAS, indent=2))
    marker = f"A random-weight stand-in of {SD14_REPO_ID} (fidelity_lib.standins): {SD_DIFFERENCES}.\n"
    (folder / STANDIN_MARKER).write_text(marker)


def write_openai_clip(hub: Path, arch: str, seed: int = 0) -> Path:
    """A random full-size open_clip ``arch`` in fp16 safetensors where the HF cache keeps the OpenAI weights."""
    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=None, force_quick_gelu=True)
    checkpoint = snapshot_folder(hub, OPENAI_HF_REPOS[arch]) / OPENAI_FILES[0]
    save_file({key: value.half().contiguous() for key, value in model.state_dict().items()}, checkpoint)
    return checkpoint


def write_blip(hub: Path, seed: int = 0) -> Path:
    """BLIP base's structure (12+12 layers, 12 heads, 384 px, 16 px patches) 48 wide, the tiny BLIP's vocabulary."""
    tokenizer = tiny_blip(seed, device="cpu").processor.tokenizer  # BERT special tokens + the prompt sets' words
    ids = tokenizer.convert_tokens_to_ids
    widths = {"hidden_size": 48, "intermediate_size": 192, "num_hidden_layers": 12, "num_attention_heads": 12}
    text = widths | {
        "vocab_size": len(tokenizer), "max_position_embeddings": 512,
        "bos_token_id": ids("[DEC]"), "sep_token_id": ids("[SEP]"), "eos_token_id": ids("[SEP]"),
        "pad_token_id": ids("[PAD]"),
    }
    vision = widths | {"image_size": 384, "patch_size": 16}
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(BlipConfig(text_config=text, vision_config=vision, projection_dim=48))
    snapshot = snapshot_folder(hub, BLIP_REPO_ID)
    model.save_pretrained(snapshot)
    BlipProcessor(BlipImageProcessor(), tokenizer).save_pretrained(snapshot)  # 384 px, the OpenAI CLIP mean and std
    return snapshot


def write_rtdetr(hub: Path, seed: int = 0) -> Path:
    """RT-DETR r101vd's layout at 1/8 of its widths, random weights (RTDETR_DIFFERENCES), and its image processor."""
    backbone = RTDetrResNetConfig(
        embedding_size=16, hidden_sizes=[32, 64, 128, 256], depths=[3, 4, 23, 3], layer_type="bottleneck",
        out_features=["stage2", "stage3", "stage4"], out_indices=[2, 3, 4],
    )
    config = RTDetrConfig(
        backbone_config=backbone, encoder_in_channels=[64, 128, 256], encoder_hidden_dim=48, d_model=32,
        decoder_in_channels=[48, 48, 48], encoder_ffn_dim=256, decoder_ffn_dim=128, encoder_layers=1, decoder_layers=6,
        encoder_attention_heads=8, decoder_attention_heads=8, num_queries=300, id2label=dict(enumerate(COCO_CLASSES)),
        initializer_bias_prior_prob=0.4,
    )
    torch.manual_seed(seed)
    snapshot = snapshot_folder(hub, RTDETR_REPO_ID)
    RTDetrForObjectDetection(config).save_pretrained(snapshot)
    RTDetrImageProcessor().save_pretrained(snapshot)  # 640x640, rescaled, not normalised, as the real one
    return snapshot


def write_roberta(hub: Path, texts: list[str], seed: int = 0) -> Path:
    """roberta-base's structure (12 layers, 12 heads, 514 positions) 48 wide, a byte-level BPE trained on ``texts``."""
    tokenizer = train_bpe_tokenizer(texts)
    config = RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=48, num_hidden_layers=12, num_attention_heads=12, intermediate_size=192,
        max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )
    torch.manual_seed(seed)
    snapshot = snapshot_folder(hub, PAPER_ENCODER)
    RobertaModel(config).save_pretrained(snapshot)
    tokenizer.save_pretrained(snapshot)
    return snapshot


def write_standins(hf_home: Path, weights_dir: Path, coco_dir: Path, captioner: str = "transformers") -> dict[str, str]:
    """Fill hf_home/hub, weights_dir and coco_dir with stand-ins; return component -> what was written, how it differs.

    The same files for either captioner: LAVIS ("lavis") runs in .venv-lavis from its own caches and has no stand-in.
    """
    if captioner not in CAPTIONERS:
        raise ValueError(f"Unknown captioner {captioner!r}: choose one of {', '.join(CAPTIONERS)}.")
    hub, weights_dir, coco_dir = Path(hf_home) / "hub", Path(weights_dir), Path(coco_dir)
    write_sd14_folder(weights_dir)
    clips = {arch: write_openai_clip(hub, arch) for arch in (METRIC_CLIP_ARCH, LOSS_CLIP_ARCH)}
    blip = write_blip(hub)
    detector = write_rtdetr(hub)
    write_synthetic_coco(coco_dir, n_images=COCO_STANDIN_IMAGES, seed=0)
    captions = [example.sentence for example in coco_examples(coco_dir)[0]]
    prompts = [record.prompt for name in PAPER_SET_NAMES for record in load_prompt_set(name)]
    training = [example.sentence for example in gpt_training_records()]  # chapter 1's GPT-style training sentences
    roberta = write_roberta(hub, captions + prompts + training)
    return {
        SD_WEIGHTS: f"{weights_dir}: {SD_DIFFERENCES}",
        METRIC_CLIP: f"{clips[METRIC_CLIP_ARCH]}: {CLIP_DIFFERENCES.format(arch=METRIC_CLIP_ARCH)}",
        LOSS_CLIP: f"{clips[LOSS_CLIP_ARCH]}: {CLIP_DIFFERENCES.format(arch=LOSS_CLIP_ARCH)}",
        BLIP_CAPTIONER: f"{blip}: {BLIP_DIFFERENCES}",
        RTDETR_DETECTOR: f"{detector}: {RTDETR_DIFFERENCES}",
        ROBERTA_ENCODER: f"{roberta}: {ROBERTA_DIFFERENCES}",
        COCO_ANNOTATIONS: f"{coco_dir}: {COCO_DIFFERENCES}",
    }
