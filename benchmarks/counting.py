"""Counting helpers shared by the meta-device memory arithmetic of ``bench_spacetime.py`` (SD v1.4) and
``bench_sdxl_attend_excite.py`` (SDXL).

- ``storage_key``: one id per storage, also on the meta device (views of a tensor share it);
- ``SavedBytes``: the bytes autograd saves inside a context, each storage once, the frozen weights the graph keeps
  a reference to left out (they take no new memory), split into square self-attention maps and the rest;
- ``attention_path``: every attention layer of some diffusers modules on the math path (``AttnProcessor``: explicit
  softmax maps in the modules' dtype, unless a layer upcasts its softmax) or on SDPA's memory-efficient kernel
  (its meta implementation saves what it saves on a GPU: q, k, v, output, logsumexp; no maps).

The scripts import this module as a sibling (``from counting import ...``): run as ``python benchmarks/<script>.py``,
``benchmarks/`` is the first entry of ``sys.path``.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager, nullcontext
from unittest import mock

import torch
import torch.nn.functional as F

VARIANTS = ("math", "SDPA")  # the two attention paths of ``attention_path``
SQUARE_MAP_SIDE = 1024  # a saved tensor [.., P, P] with P >= this is counted as a self-attention map


def storage_key(tensor: torch.Tensor) -> int:
    return tensor.untyped_storage()._cdata  # one id per storage, also on the meta device (views share it)


def is_square_map(shape: tuple[int, ...]) -> bool:
    """A self-attention map [.., P, P] over at least ``SQUARE_MAP_SIDE`` positions."""
    return len(shape) >= 2 and shape[-1] == shape[-2] >= SQUARE_MAP_SIDE


def _efficient_sdpa(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
    """``F.scaled_dot_product_attention`` through the memory-efficient kernel (its meta implementation)."""
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    kernel = torch.ops.aten._scaled_dot_product_efficient_attention
    return kernel(query, key, value, attn_mask, needs_grad, dropout_p, is_causal, scale=scale)[0]


@contextmanager
def attention_path(variant: str, *modules: torch.nn.Module):
    """Every attention layer of ``modules`` on the math path (``AttnProcessor``) or on SDPA's efficient kernel."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    if variant not in VARIANTS:
        raise ValueError(f"attention path {variant!r}, not one of {VARIANTS}")
    for module in modules:
        module.set_attn_processor(AttnProcessor() if variant == "math" else AttnProcessor2_0())
    patch = mock.patch.object(F, "scaled_dot_product_attention", _efficient_sdpa) if variant == "SDPA" else nullcontext()
    with patch:
        yield


class SavedBytes:
    """Storages autograd saves inside the context (each once; the frozen weights it references are left out)."""

    def __init__(self, parameters: Iterable[torch.Tensor]) -> None:
        self.weights = {storage_key(p) for p in parameters}
        self.saved: dict[int, tuple[int, tuple[int, ...], torch.dtype]] = {}  # storage -> (bytes, shape, dtype)
        self.weight_refs: dict[int, int] = {}  # frozen weights the graph keeps a reference to (no new memory)

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key, size = storage_key(tensor), tensor.untyped_storage().nbytes()
        if key in self.weights:
            self.weight_refs[key] = size
        else:
            self.saved[key] = (size, tuple(tensor.shape), tensor.dtype)
        return tensor

    def __enter__(self) -> SavedBytes:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    def map_dtypes(self) -> set[torch.dtype]:
        """The dtypes of the saved square self-attention maps."""
        return {dtype for _, shape, dtype in self.saved.values() if is_square_map(shape)}

    def split(self, marked: Iterable[torch.Tensor] = (), label: str = "marked maps") -> dict[str, int]:
        """Bytes in the storages of ``marked`` (under ``label``), in square self-attention maps [.., P, P]
        (P >= ``SQUARE_MAP_SIDE``), and in the rest; ``total`` is their sum. ``weights``: the frozen weights the
        graph references, not part of ``total``."""
        keys = {storage_key(t) for t in marked}
        parts = {"total": 0, label: 0, "self-attention maps": 0, "rest": 0, "weights": sum(self.weight_refs.values())}
        for key, (size, shape, _) in self.saved.items():
            parts[label if key in keys else "self-attention maps" if is_square_map(shape) else "rest"] += size
            parts["total"] += size
        return parts
