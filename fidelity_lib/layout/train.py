"""Training: hinge loss on GPT relations + 0.1 x COCO-centre NLL, two Adams, a checkpoint per epoch (Pretrain.py)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
import torch
from tqdm.auto import tqdm

from fidelity_lib.layout.data import LayoutExample, encode_batch
from fidelity_lib.layout.model import mixture_nll, relation_hinge
from fidelity_lib.layout.predictor import LayoutPredictor

LATEST_FILE, STATE_FILE = "latest.json", "trainer_state.pt"


@dataclass
class TrainConfig:
    epochs: int = 100  # EPOCHS: 100 (coco_seq2seq_v9_ablation_4.yaml)
    batch_size: int = 64  # BATCH_SIZE: 64 (coco_seq2seq_v9_ablation_4.yaml)
    encoder_lr: float = 1e-6  # encoder MAX_LR 1e-6, linear decay to 1e-8 (scheduler.py); smoke uses a larger value
    head_lr: float = 4e-5  # box head MAX_LR 4e-5, 0.5 % warm-up, 0.1 % hold, linear decay (scheduler.py L86-130)
    weight_decay: float = 0.01  # Adam weight_decay 0.01 (Pretrain.py L33-42)
    gmm_weight: float = 0.1  # total = hinge_sum + 0.1 * gmm_nll_sum (Pretrain.py L263)
    margin: float = 0.2  # hinge floor -0.2 (loss.py L315-333)
    coco_per_epoch: int | None = 2000  # per epoch 2000 random COCO + the 2000 GPT items (COCODataset.py); None = all
    seed: int = 0


def _encoder_factor(step: int, total: int, max_lr: float) -> float:
    """BertScheduler, encoder: no warm-up, linear decay over all steps, floor 1e-8 (scheduler.py)."""
    return max(1 - step / total, 1e-8 / max_lr)


def _head_factor(step: int, total: int, max_lr: float) -> float:
    """BertScheduler (scheduler.py), head: warm-up 0.5 % from max/10, hold 0.1 %, slope max/(0.9 total), floor 1e-8."""
    warmup, hold = 0.005 * total, 0.001 * total
    if step < warmup:
        return 0.1 + 0.9 * step / warmup
    if step < warmup + hold:
        return 1.0
    return max(1 - (step - warmup - hold) / (0.9 * total), 1e-8 / max_lr)


def batch_loss(predictor: LayoutPredictor, examples: list[LayoutExample], margin: float = 0.2, gmm_weight: float = 0.1) -> torch.Tensor:
    """hinge_sum + gmm_weight * nll_sum over the batch (summed, not averaged, as the original)."""
    batch = encode_batch(predictor.tokenizer, [e.sentence for e in examples], [e.objects for e in examples], predictor.config.max_length)
    params = predictor.model(batch.input_ids, batch.attention_mask, batch.object_mask)
    rows, tokens, targets, relations = [], [], [], []
    for row, (example, positions) in enumerate(zip(examples, batch.positions)):
        for position, centre in zip(positions, example.centres or ()):
            if position is not None:
                rows.append(row), tokens.append(position), targets.append(centre)
        for subject, obj, word in example.relations:
            if positions[subject] is not None and positions[obj] is not None:
                relations.append((row, positions[subject], positions[obj], word))
    loss = params["mu"].sum() * 0.0
    if rows:
        gathered = {k: v[rows, tokens] for k, v in params.items()}
        loss = loss + gmm_weight * mixture_nll(gathered, torch.tensor(targets)).sum()
    if relations:
        r_rows, subjects, objects, words = zip(*relations)
        mu = params["mu"]
        loss = loss + relation_hinge(mu[list(r_rows), list(subjects)], mu[list(r_rows), list(objects)], list(words), margin).sum()
    return loss


def _epoch_examples(examples: list[LayoutExample], config: TrainConfig, generator: torch.Generator) -> list[LayoutExample]:
    """All GPT items plus ``coco_per_epoch`` random COCO items, shuffled."""
    coco = [e for e in examples if e.centres is not None]
    other = [e for e in examples if e.centres is None]
    if config.coco_per_epoch is not None and len(coco) > config.coco_per_epoch:
        coco = [coco[i] for i in torch.randperm(len(coco), generator=generator)[: config.coco_per_epoch].tolist()]
    pool = other + coco
    return [pool[i] for i in torch.randperm(len(pool), generator=generator).tolist()]


def _steps_per_epoch(examples: list[LayoutExample], config: TrainConfig) -> int:
    coco = sum(e.centres is not None for e in examples)
    n = len(examples) - coco + (coco if config.coco_per_epoch is None else min(coco, config.coco_per_epoch))
    return -(-n // config.batch_size)


def _optimisers(predictor: LayoutPredictor, config: TrainConfig, total: int):
    model = predictor.model
    encoder_params = [*model.encoder.parameters(), model.object_embedding]
    head_params = [*model.decoder.parameters(), *model.gmm.parameters()]
    encoder_opt = torch.optim.Adam(encoder_params, lr=config.encoder_lr, weight_decay=config.weight_decay)
    head_opt = torch.optim.Adam(head_params, lr=config.head_lr, weight_decay=config.weight_decay)
    schedulers = [
        torch.optim.lr_scheduler.LambdaLR(encoder_opt, lambda s: _encoder_factor(s, total, config.encoder_lr)),
        torch.optim.lr_scheduler.LambdaLR(head_opt, lambda s: _head_factor(s, total, config.head_lr)),
    ]
    return [encoder_opt, head_opt], schedulers


def save_checkpoint(folder: Path, predictor: LayoutPredictor, optimisers, schedulers, epoch: int, history: list[dict], config: TrainConfig) -> Path:
    """Write ``epoch_NNNN/`` through a temporary folder, then point latest.json at it (atomic replace); keep two."""
    final = folder / f"epoch_{epoch:04d}"
    staging = folder / f".epoch_{epoch:04d}.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    predictor.save(staging)
    state = {"epoch": epoch, "history": history, "config": asdict(config),
             "optimisers": [o.state_dict() for o in optimisers], "schedulers": [s.state_dict() for s in schedulers]}
    torch.save(state, staging / STATE_FILE)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging, final)
    pointer = folder / f".{LATEST_FILE}.tmp"
    pointer.write_text(json.dumps({"checkpoint": final.name, "epoch": epoch}), encoding="utf-8")
    os.replace(pointer, folder / LATEST_FILE)
    for old in sorted(folder.glob("epoch_*"))[:-2]:
        shutil.rmtree(old)
    return final


def latest_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint folder latest.json points to, if any."""
    pointer = Path(folder) / LATEST_FILE
    if not pointer.is_file():
        return None
    return Path(folder) / json.loads(pointer.read_text(encoding="utf-8"))["checkpoint"]


def train(
    predictor: LayoutPredictor,
    examples: list[LayoutExample],
    config: TrainConfig | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool = True,
) -> tuple[LayoutPredictor, pd.DataFrame]:
    """Train (or resume from ``checkpoint_dir``'s latest epoch); return the predictor and the per-epoch loss table."""
    config = config or TrainConfig()
    folder = Path(checkpoint_dir) if checkpoint_dir is not None else None
    checkpoint = latest_checkpoint(folder) if folder is not None and resume else None
    if checkpoint is not None:
        predictor = LayoutPredictor.load(checkpoint)
    steps = _steps_per_epoch(examples, config)
    optimisers, schedulers = _optimisers(predictor, config, steps * config.epochs)
    history, first_epoch = [], 1
    if checkpoint is not None:
        state = torch.load(checkpoint / STATE_FILE, weights_only=False)
        for holder, saved in zip([*optimisers, *schedulers], [*state["optimisers"], *state["schedulers"]]):
            holder.load_state_dict(saved)
        history, first_epoch = state["history"], state["epoch"] + 1
    for epoch in range(first_epoch, config.epochs + 1):
        torch.manual_seed(config.seed * 100_003 + epoch)  # dropout: the same stream whether resumed or not
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        ordered = _epoch_examples(examples, config, generator)
        predictor.model.train()
        total, bar = 0.0, tqdm(range(0, len(ordered), config.batch_size), desc=f"epoch {epoch}/{config.epochs}", disable=not progress, leave=False)
        for start in bar:
            loss = batch_loss(predictor, ordered[start : start + config.batch_size], config.margin, config.gmm_weight)
            for optimiser in optimisers:
                optimiser.zero_grad()
            loss.backward()
            for optimiser, scheduler in zip(optimisers, schedulers):
                optimiser.step()
                scheduler.step()
            total += loss.item()
            bar.set_postfix(loss=f"{loss.item():.3f}")
        history.append({"epoch": epoch, "loss": total / len(ordered), "lr_head": schedulers[1].get_last_lr()[0]})
        if folder is not None:
            save_checkpoint(folder, predictor, optimisers, schedulers, epoch, history, config)
    predictor.model.eval()
    return predictor, pd.DataFrame(history)
