"""Prompt utilities shared by the methods and the generator: checks, tokens, token indices, subject words.

Subject indices count CLIP BPE tokens with <|startoftext|> at 0, as Attend-and-Excite's ``run.py --token_indices``.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

from fidelity_lib.datasets import AE_SETS, load_prompt_set


class EmptyPromptError(ValueError):
    """The prompt has no text."""


class TokenIndexError(ValueError):
    """A subject token index does not point at a word of the prompt."""


class PromptTooLongError(ValueError):
    """The prompt has more tokens than the text encoder reads; the rest would be cut silently."""


def check_prompt(prompt: str) -> None:
    """Raise EmptyPromptError for a prompt that is empty or only whitespace."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise EmptyPromptError(f"The prompt is empty ({prompt!r}): write what the image should show.")


def check_prompt_length(tokenizer, prompt: str) -> None:
    """Raise PromptTooLongError when the prompt does not fit the tokenizer's window with <sot> and <eot>."""
    count = len(tokenizer(prompt).input_ids)
    if count > tokenizer.model_max_length:
        raise PromptTooLongError(
            f"The prompt has {count - 2} tokens; the text encoder reads {tokenizer.model_max_length - 2} and would cut "
            f"the rest silently: shorten it ({prompt[:60]!r}...)."
        )


def eot_index(tokenizer, prompt: str) -> int:
    """Position of <|endoftext|> in the encoded prompt (the last real token is just before it)."""
    return min(len(tokenizer(prompt).input_ids), tokenizer.model_max_length) - 1


def prompt_tokens(tokenizer, prompt: str) -> list[str]:
    """The tokens of the encoded prompt, <|startoftext|> and <|endoftext|> included."""
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    return tokenizer.convert_ids_to_tokens(ids)


def check_token_indices(tokenizer, prompt: str, token_indices) -> tuple[int, ...]:
    """Raise TokenIndexError unless every index points at a real prompt token (not <sot>, <eot> or padding)."""
    check_prompt(prompt)
    indices = tuple(token_indices)
    if not indices:
        raise TokenIndexError(f"No subject token index given for {prompt!r}.")
    end = eot_index(tokenizer, prompt)
    listing = ", ".join(f"{i}={token}" for i, token in enumerate(prompt_tokens(tokenizer, prompt)))
    for index in indices:
        if not isinstance(index, (int, np.integer)) or isinstance(index, bool):
            raise TokenIndexError(f"Token index {index!r} is not an integer.")
        if index < 0 or index >= tokenizer.model_max_length:
            problem = f"is out of range (0..{tokenizer.model_max_length - 1})"
        elif index == 0:
            problem = "points at <|startoftext|>"
        elif index == end:
            problem = "points at <|endoftext|>"
        elif index > end:
            problem = "points at padding after the prompt"
        else:
            continue
        raise TokenIndexError(f"Token index {index} {problem} for {prompt!r}; the prompt's tokens are: {listing}.")
    return tuple(int(index) for index in indices)


@lru_cache(maxsize=1)
def _paper_token_indices() -> dict[str, tuple[int, ...]]:
    return {record.prompt: record.subject_token_indices for name in AE_SETS for record in load_prompt_set(name)}


NON_SUBJECT_WORDS = frozenset(
    "a an the this that these those some two three many and or with without of on in at to into onto by for from "
    "near next under over above below behind beside between left right top front back side is are its their his "
    "her sitting standing holding lying wearing".split()
)


def subject_token_indices(tokenizer, prompt: str) -> tuple[int, ...]:
    """The subjects to excite: the paper sets' published indices, else the head noun of each phrase (a heuristic).

    A head noun is a word that ends a phrase: it is followed by a function word ("and", "with", "of", "on", ...)
    or ends the prompt, and is not a function word itself. Its last BPE token is used.
    """
    check_prompt(prompt)
    if prompt in _paper_token_indices():
        return _paper_token_indices()[prompt]
    tokens = prompt_tokens(tokenizer, prompt)[1:-1]
    words: list[tuple[str, int]] = []  # (word, position of its last token)
    current = ""
    for position, token in enumerate(tokens, start=1):
        current += token.removesuffix("</w>")
        if token.endswith("</w>"):
            words.append((current, position))
            current = ""
    words = [(word, position) for word, position in words if re.fullmatch(r"[\w'-]+", word)]
    chosen = []
    for k, (word, position) in enumerate(words):
        following = words[k + 1][0] if k + 1 < len(words) else None
        if word not in NON_SUBJECT_WORDS and (following is None or following in NON_SUBJECT_WORDS):
            chosen.append(position)
    if not chosen:
        raise TokenIndexError(f"Found no subject word in {prompt!r}; pass token_indices explicitly.")
    return tuple(chosen)


def uses_sd2_tokenizer(tokenizer) -> bool:
    """SD 2.x pads with "!" (id 0) instead of <|endoftext|>: the official code's sd_2_1 switch."""
    return tokenizer.pad_token_id != tokenizer.eos_token_id
