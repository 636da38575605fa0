"""The layout model: a RoBERTa encoder, a learned object vector at head-noun tokens, a 5-Gaussian mixture per token.

Official: LT/model/Model.py, bbox_head.py; LT/trainer/loss.py. Deviation: the mixture means go through a sigmoid, so
every predicted centre lies in [0, 1]^2 (the original's means are unbounded and can leave the image).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from transformers import RobertaConfig, RobertaModel, RobertaTokenizerFast

from fidelity_lib.detections import RELATION_AXES

PAPER_ENCODER = "roberta-base"
COMPONENTS = ("sample", "argmax")  # the mixture component an object's centre is the mean of: drawn from pi, or the likeliest


@dataclass
class LayoutConfig:
    encoder: dict = field(default_factory=dict)  # RobertaConfig dict; Model.py L1022: roberta-base, 12 x 768, 12 heads
    components: int = 5  # GMM_head: 5 bivariate Gaussians (bbox_head.py L46-137)
    rho_limit: float = 0.95  # rho = tanh clamped to +-0.95 (bbox_head.py L46-137)
    max_length: int = 128  # padded to 128 (inference_coco.py L488-505 fails past it); cut, as COCODataset.py L338 does
    categories: tuple[str, ...] = ()  # names the extractor looks for; empty = COCO things + stuff (category_dict.pkl)
    profile: str = "smoke"
    weights: str = "random"  # where the encoder started: "roberta-base" or "random"
    # None: the profile's, "sample" in paper (bbox_head.py L154 draws it with multinomial(pi)), "argmax" otherwise
    component: str | None = None
    # None: the profile's; paper keeps dropout on when predicting layouts, as inference_coco.py does (it never calls
    # model.eval()), with the masks drawn from the prediction's seed; smoke predicts in eval mode
    inference_dropout: bool | None = None

    def __post_init__(self):
        """Resolve the profile's component and dropout rules (also for files saved before they existed) and reject
        unknown components."""
        if self.component is None:
            self.component = "sample" if self.profile == "paper" else "argmax"
        if self.inference_dropout is None:
            self.inference_dropout = self.profile == "paper"
        check_component(self.component)

    def to_json(self) -> dict:
        return {**asdict(self), "categories": list(self.categories)}

    @classmethod
    def from_json(cls, data: dict) -> "LayoutConfig":
        return cls(**{**data, "categories": tuple(data.get("categories", ()))})


def check_component(component: str) -> str:
    """``component`` if it is one of COMPONENTS, else a ValueError naming them."""
    if component not in COMPONENTS:
        raise ValueError(f"Unknown layout component {component!r}: choose one of {', '.join(COMPONENTS)}.")
    return component


class RobertaMissingError(FileNotFoundError):
    pass


def tiny_encoder_config(vocab_size: int, hidden_size: int = 64, layers: int = 2, max_length: int = 128) -> dict:
    """A tiny random RoBERTa for smoke runs and tests (2 layers of width 64, 4 heads)."""
    config = RobertaConfig(
        vocab_size=vocab_size, hidden_size=hidden_size, num_hidden_layers=layers, num_attention_heads=hidden_size // 16,
        intermediate_size=2 * hidden_size,
        max_position_embeddings=max_length + 2, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )
    return config.to_dict()


def train_bpe_tokenizer(texts: list[str], vocab_size: int = 2000) -> RobertaTokenizerFast:
    """A byte-level BPE tokenizer with RoBERTa's special tokens, trained offline on ``texts`` (smoke/tests)."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing

    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # roberta-base's ids 0..3 and its mask token
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(sorted(set(texts)), vocab_size=vocab_size, min_frequency=1, special_tokens=specials, show_progress=False)
    bpe.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True)
    return RobertaTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>")


def load_roberta_base(source: str = PAPER_ENCODER) -> tuple[RobertaModel, RobertaTokenizerFast]:
    """Pretrained roberta-base (or a local folder) from disk only; a clear error says what to download."""
    try:
        tokenizer = RobertaTokenizerFast.from_pretrained(source, local_files_only=True)
        encoder = RobertaModel.from_pretrained(source, local_files_only=True, add_pooling_layer=False)
    except OSError as error:
        raise RobertaMissingError(
            f"{source!r} is not in the local Hugging Face cache (nothing is downloaded). On a machine with internet run "
            f"`huggingface-cli download {PAPER_ENCODER}` (fills ~/.cache/huggingface) or "
            f"`huggingface-cli download {PAPER_ENCODER} --local-dir ~/weights/roberta-base` and pass that folder."
        ) from error
    return encoder, tokenizer


class LayoutModel(nn.Module):
    """Rel2Bbox (Model.py L1017-1034): encoder + object vector, Linear(h, h) -> Linear(h, 6K) mixture per token."""

    def __init__(self, config: LayoutConfig, encoder: RobertaModel | None = None):
        super().__init__()
        self.config = config
        self.encoder = encoder or RobertaModel(RobertaConfig.from_dict(config.encoder), add_pooling_layer=False)
        hidden = self.encoder.config.hidden_size
        self.object_embedding = nn.Parameter(torch.empty(1, hidden))
        nn.init.kaiming_normal_(self.object_embedding)  # Kaiming-normal init (Model.py L73-74)
        self.decoder = nn.Linear(hidden, hidden)  # PDFDecoder's Linear(768, 768) (bbox_head.py L227-266)
        self.gmm = nn.Linear(hidden, 6 * config.components)  # GMM_head's Linear(768, 30) (bbox_head.py L46-137)
        self._object_mask: torch.Tensor | None = None
        self.encoder.embeddings.register_forward_hook(self._add_object_vector)

    def _add_object_vector(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        """Add the object vector after the embedding LayerNorm and dropout, at flagged positions (Model.py L222-227)."""
        return output + self._object_mask[..., None].to(output.dtype) * self.object_embedding

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, object_mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mixture parameters for every token: pi_logits [B,T,K], mu [B,T,K,2] in [0,1], sigma [B,T,K,2], rho [B,T,K]."""
        self._object_mask = object_mask
        try:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        finally:
            self._object_mask = None
        raw = self.gmm(self.decoder(hidden)).unflatten(-1, (6, self.config.components))
        limit = self.config.rho_limit
        return {
            "pi_logits": raw[..., 0, :],
            "mu": torch.sigmoid(raw[..., 1:3, :]).transpose(-1, -2),
            "sigma": torch.exp(raw[..., 3:5, :]).transpose(-1, -2),
            "rho": torch.tanh(raw[..., 5, :]).clamp(-limit, limit),
        }


def mixture_nll(params: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    """-log(sum_k pi_k N(target; mu_k, Sigma_k) + 1e-5) per row (loss.py L336-452); params already gathered."""
    log_pi = torch.log_softmax(params["pi_logits"], dim=-1)
    delta = (targets[:, None, :] - params["mu"]) / params["sigma"]
    rho = params["rho"]
    one_minus = 1 - rho**2
    z = delta[..., 0] ** 2 + delta[..., 1] ** 2 - 2 * rho * delta[..., 0] * delta[..., 1]
    log_norm = -math.log(2 * math.pi) - params["sigma"].log().sum(-1) - 0.5 * one_minus.log()
    log_density = torch.logsumexp(log_pi + log_norm - z / (2 * one_minus), dim=-1)
    return -torch.logaddexp(log_density, torch.full_like(log_density, math.log(1e-5)))


def relation_hinge(mu_subject: torch.Tensor, mu_object: torch.Tensor, relations: list[str], margin: float) -> torch.Tensor:
    """Customized_Hinge_Loss (loss.py L315-333): left of: max_k mu_x(A) - min_k mu_x(B), floored at -margin; per row."""
    axes = torch.tensor([RELATION_AXES[r][0] for r in relations], device=mu_subject.device)
    signs = torch.tensor([RELATION_AXES[r][1] for r in relations], device=mu_subject.device)
    rows = torch.arange(len(relations), device=mu_subject.device)
    a = mu_subject[rows, :, axes]  # [R, K]
    b = mu_object[rows, :, axes]
    first, second = torch.where(signs[:, None] > 0, a, b), torch.where(signs[:, None] > 0, b, a)
    return (first.max(-1).values - second.min(-1).values).clamp(min=-margin)


def component_means(params: dict[str, torch.Tensor], sample: bool = False, generator: torch.Generator | None = None) -> torch.Tensor:
    """One centre per row: mean of the most likely component, or of one drawn from pi (bbox_head.py L139-177)."""
    if sample:
        index = torch.multinomial(torch.softmax(params["pi_logits"], -1), 1, generator=generator)[:, 0]
    else:
        index = params["pi_logits"].argmax(-1)
    return params["mu"][torch.arange(len(index)), index]
