"""Memory and time arithmetic of Attend-and-Excite on SDXL base 1.0 at 1024x1024 in fp16, counted on the meta device.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sdxl_attend_excite.py

Nothing here runs on a GPU and no weights exist: the UNet, VAE and both text encoders are built on the meta device
from the configs of ``stabilityai/stable-diffusion-xl-base-1.0`` (written out below), so every tensor has a shape and
a dtype but no memory, and nothing is downloaded. On those modules the script counts

- parameters and weight bytes;
- the bytes autograd saves in A&E's guided forward (a full UNet forward, and one that stops right after the last
  cross-attention layer A&E reads), with ``saved_tensors_hooks``, each storage once, frozen weights left out;
- the peak of live activation bytes (a dispatch mode that adds each new storage and subtracts it when it is freed)
  of the guided forward + backward, of the CFG forward and of the VAE decode;
- matmul / convolution / attention FLOPs with ``torch.utils.flop_counter.FlopCounterMode``;

each with two attention paths: "math" (diffusers' ``AttnProcessor``: explicit fp16 softmax maps) and "SDPA" (the
memory-efficient kernel, whose meta implementation saves what it saves on a GPU: q, k, v, output, logsumexp). It
writes the ``bench_sdxl_attend_excite`` section of reports/benchmarks.md. Everything takes about a minute on one thread.
"""

from __future__ import annotations

import platform
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves
from torch.utils.flop_counter import FlopCounterMode

from counting import VARIANTS, SavedBytes, attention_path, storage_key  # benchmarks/counting.py, a sibling
from fidelity_lib.report import write_benchmark_section

SECTION = "bench_sdxl_attend_excite"
REPO = "stabilityai/stable-diffusion-xl-base-1.0"
LATENT, TOKENS, AE_SIDE = 128, 77, 32  # 1024 / 8; CLIP context; A&E's map side on SDXL (a quarter of the latent)
AE_BLOCKS = ("down_blocks.2.", "mid_block.", "up_blocks.0.")  # the 1280-channel level, at 32x32
STEPS, GUIDED_STEPS, REFINEMENT_STEPS, MAX_REFINEMENT = 50, 25, (0, 10, 20), 20  # A&E config.py RunConfig defaults
ASSUMED_TFLOPS = 400.0  # an assumption, not a measurement: sustained fp16 matmul throughput of one large GPU


def sdxl_modules() -> dict[str, torch.nn.Module]:
    """SDXL base 1.0's UNet (fp16), VAE (fp32: ``force_upcast``), CLIP ViT-L/14 and OpenCLIP bigG text encoders
    (fp16), on the meta device, with all parameters frozen."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        unet = UNet2DConditionModel(  # stabilityai/stable-diffusion-xl-base-1.0, unet/config.json
            sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            mid_block_type="UNetMidBlock2DCrossAttn", transformer_layers_per_block=(1, 2, 10),
            attention_head_dim=(5, 10, 20),  # diffusers reads it as the number of heads (head size 64)
            cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, norm_num_groups=32, norm_eps=1e-5,
        ).half()
        vae = AutoencoderKL(  # stabilityai/stable-diffusion-xl-base-1.0, vae/config.json
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, norm_num_groups=32,
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            sample_size=1024, scaling_factor=0.13025, force_upcast=True,
        )  # fp32: the pipeline upcasts it to decode, since SDXL's VAE overflows in fp16
        text_encoder = CLIPTextModel(CLIPTextConfig(  # stabilityai/stable-diffusion-xl-base-1.0, text_encoder/config.json
            vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
        )).half()
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(  # ..., text_encoder_2/config.json
            vocab_size=49408, hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
            max_position_embeddings=77, hidden_act="gelu", projection_dim=1280,
        )).half()
    modules = {"unet": unet, "vae": vae, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2}
    return {name: module.requires_grad_(False).eval() for name, module in modules.items()}


def ae_layers(unet: torch.nn.Module) -> list[str]:
    """Names of the cross-attention modules A&E reads (``attn2`` in the 32x32 blocks), in execution order."""
    names = [name for name, _ in unet.named_modules() if name.endswith(".attn2") and name.startswith(AE_BLOCKS)]
    return sorted(names, key=lambda name: AE_BLOCKS.index(next(b for b in AE_BLOCKS if name.startswith(b))))


class MapProcessor:
    """A&E's processor for one cross-attention layer: explicit softmax probabilities, kept with their graph."""

    def __init__(self, store: list[torch.Tensor]) -> None:
        self.store = store

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        key = attn.head_to_batch_dim(attn.to_k(encoder_hidden_states))
        value = attn.head_to_batch_dim(attn.to_v(encoder_hidden_states))
        probs = attn.get_attention_scores(query, key, attention_mask)  # [batch x heads, pixels, tokens]
        assert probs.shape[1:] == (AE_SIDE * AE_SIDE, TOKENS), probs.shape
        self.store.append(probs)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        return attn.to_out[1](attn.to_out[0](hidden_states))


class LivePeak(TorchDispatchMode):
    """Peak bytes of live storages made by ops inside the context; outputs that alias an input are not new."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, list[int]] = {}  # storage -> [bytes, live tensors on it]
        self.now = self.peak = self.largest = 0

    def _release(self, key: int) -> None:
        entry = self.live[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.now -= entry[0]
            del self.live[key]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {storage_key(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in (t for t in tree_leaves(out) if isinstance(t, torch.Tensor)):
            key = storage_key(tensor)
            if key not in self.live:
                if key in inputs:
                    continue  # a view of, or an in-place op on, a tensor made outside the context
                size = tensor.untyped_storage().nbytes()
                self.live[key] = [size, 0]
                self.now, self.largest = self.now + size, max(self.largest, size)
                self.peak = max(self.peak, self.now)
            self.live[key][1] += 1
            weakref.finalize(tensor, self._release, key)
        return out


class _ForwardComplete(Exception):
    pass


def _unet_inputs(batch: int, requires_grad: bool) -> tuple[torch.Tensor, dict]:
    half = dict(device="meta", dtype=torch.float16)
    latent = torch.randn(batch, 4, LATENT, LATENT, **half).requires_grad_(requires_grad)
    conditioning = {
        "timestep": torch.tensor(981),
        "encoder_hidden_states": torch.randn(batch, TOKENS, 2048, **half),  # both encoders' penultimate states
        "added_cond_kwargs": {"text_embeds": torch.randn(batch, 1280, **half), "time_ids": torch.randn(batch, 6, **half)},
    }
    return latent, conditioning


def guided_step(unet, variant: str, truncate: bool) -> dict:
    """One A&E gradient step (conditional batch of 1): saved bytes, live peak, forward and backward FLOPs."""
    maps: list[torch.Tensor] = []
    layers = ae_layers(unet)
    latent, conditioning = _unet_inputs(1, requires_grad=True)
    with attention_path(variant, unet):
        unet.set_attn_processor({**unet.attn_processors, **{f"{n}.processor": MapProcessor(maps) for n in layers}})

        def stop(*_):
            raise _ForwardComplete

        hook = unet.get_submodule(layers[-1]).register_forward_hook(stop) if truncate else None
        with LivePeak() as live:
            with SavedBytes(unet.parameters()) as saved, FlopCounterMode(display=False) as forward:
                try:
                    unet(latent, **conditioning)
                except _ForwardComplete:
                    pass
            loss = sum(m.float().mean() for m in maps)  # stands in for A&E's loss: the same graph into every map
            with FlopCounterMode(display=False) as backward:
                torch.autograd.grad(loss, latent)
        if hook is not None:
            hook.remove()
    assert len(maps) == len(layers), (len(maps), len(layers))  # every A&E layer ran and kept its map
    return {"saved": saved.split(maps, "A&E maps"), "live_peak": live.peak,
            "forward_flops": forward.get_total_flops(), "backward_flops": backward.get_total_flops()}


def inference(module_call, variant: str, *modules) -> dict:
    """Live peak, largest activation and FLOPs of a call without gradients."""
    with attention_path(variant, *modules), torch.no_grad(), LivePeak() as live, FlopCounterMode(display=False) as flops:
        module_call()
    return {"live_peak": live.peak, "largest": live.largest, "flops": flops.get_total_flops()}


def sdxl_arithmetic() -> dict:
    """Every count the section reports, for both attention paths."""
    modules = sdxl_modules()
    unet, vae = modules["unet"], modules["vae"]
    latent, conditioning = _unet_inputs(2, requires_grad=False)
    z = torch.randn(1, 4, LATENT, LATENT, device="meta")
    result = {
        "parameters": {name: sum(p.numel() for p in m.parameters()) for name, m in modules.items()},
        "vae_decoder": sum(p.numel() for p in [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]),
        "ae_layers": len(ae_layers(unet)),
        "ae_heads": unet.get_submodule(ae_layers(unet)[0]).heads,
    }
    for variant in VARIANTS:
        result[variant] = {
            "full": guided_step(unet, variant, truncate=False),
            "truncated": guided_step(unet, variant, truncate=True),
            "cfg": inference(lambda: unet(latent, **conditioning), variant, unet),
            "decode": inference(lambda: vae.decode(z), variant, vae),
        }
    return result


def _gb(value: float) -> str:
    return f"{value / 1e9:.2f} GB"


def _tf(value: float) -> str:
    return f"{value / 1e12:.1f} TFLOP"


def _weights(a: dict) -> dict[str, int]:
    """Resident weight bytes while denoising (everything fp16) and while decoding (the VAE upcast to fp32)."""
    p = a["parameters"]
    denoise = 2 * sum(p.values())
    return {"denoise": denoise, "decode": denoise + 2 * p["vae"]}


def _module_lines(a: dict) -> list[str]:
    p, w = a["parameters"], _weights(a)
    rows = [("UNet", "unet", "fp16"), ("text encoder (CLIP ViT-L/14)", "text_encoder", "fp16"),
            ("text encoder 2 (OpenCLIP bigG, with projection)", "text_encoder_2", "fp16")]
    lines = ["| module | parameters | dtype | weight bytes |", "|---|---|---|---|"]
    lines += [f"| {label} | {p[key] / 1e6:.1f} M | {dtype} | {_gb(2 * p[key])} |" for label, key, dtype in rows]
    lines += [
        f"| VAE (decoder: {a['vae_decoder'] / 1e6:.1f} M) | {p['vae'] / 1e6:.1f} M | fp16, fp32 to decode | "
        f"{_gb(2 * p['vae'])}, {_gb(4 * p['vae'])} |",
        f"| all, while denoising / while decoding | {sum(p.values()) / 1e6:.1f} M | | {_gb(w['denoise'])} / "
        f"{_gb(w['decode'])} |",
    ]
    return lines


def _memory_lines(a: dict) -> list[str]:
    def row(label: str, value) -> str:
        return f"| {label} | " + " | ".join(value(a[variant]) for variant in VARIANTS) + " |"

    lines = ["| per call | " + " | ".join(f"{v} attention" for v in VARIANTS) + " |", "|---|---|---|"]
    for call, label in (("full", "full UNet"), ("truncated", "stopped after the last A&E layer")):
        lines += [
            row(f"guided forward, {label}: saved by autograd", lambda r: _gb(r[call]["saved"]["total"])),
            row("- of which square self-attention maps", lambda r: _gb(r[call]["saved"]["self-attention maps"])),
            row("- of which A&E's cross-attention maps", lambda r: _gb(r[call]["saved"]["A&E maps"])),
            row("- of which everything else", lambda r: _gb(r[call]["saved"]["rest"])),
            row(f"guided forward + backward, {label}: live peak", lambda r: _gb(r[call]["live_peak"])),
        ]
    return lines + [
        row("CFG forward (batch 2, no grad): live peak", lambda r: _gb(r["cfg"]["live_peak"])),
        row("VAE decode 1024x1024 in fp32 (no grad): live peak", lambda r: _gb(r["decode"]["live_peak"])),
        row("VAE decode: largest single activation", lambda r: _gb(r["decode"]["largest"])),
    ]


def _flop_lines(a: dict) -> list[str]:
    sdpa, math = a["SDPA"], a["math"]
    cfg, forward = sdpa["cfg"]["flops"], sdpa["truncated"]["forward_flops"]
    guided, guided_2x = forward + sdpa["truncated"]["backward_flops"], 3 * forward
    plain = STEPS * cfg
    calls = {"no refinement": GUIDED_STEPS, "refinement at its maximum": GUIDED_STEPS + len(REFINEMENT_STEPS) * MAX_REFINEMENT}
    lines = [
        f"- one CFG UNet call (batch 2): {_tf(cfg)}; one A&E forward (batch 1): {_tf(sdpa['full']['forward_flops'])} "
        f"for the full UNet, {_tf(forward)} stopped after the last A&E layer "
        f"({forward / sdpa['full']['forward_flops']:.0%});",
        f"- its backward to the latent, counted: {_tf(sdpa['truncated']['backward_flops'])} with SDPA (the kernel "
        f"recomputes the scores), {_tf(math['truncated']['backward_flops'])} on the math path, "
        f"{sdpa['truncated']['backward_flops'] / forward:.2f}x the forward rather than 2x: the weights are frozen, so "
        "no weight gradients are computed, only those of the activations;",
        f"- plain SDXL, {STEPS} CFG calls: {_tf(plain)}; A&E adds {GUIDED_STEPS} guided steps (steps 0..{GUIDED_STEPS - 1}) "
        f"and at most {MAX_REFINEMENT} refinement iterations at each of steps {', '.join(map(str, REFINEMENT_STEPS))}, "
        f"each one truncated forward + backward = {_tf(guided)} ({_tf(guided_2x)} with the 2x-backward convention);",
    ]
    for label, n in calls.items():
        lines.append(
            f"- A&E, {label} ({n} guided calls): {_tf(plain + n * guided)}, **{(plain + n * guided) / plain:.2f}x plain** "
            f"({(plain + n * guided_2x) / plain:.2f}x with backward = 2x forward);"
        )
    seconds = {label: (plain + n * guided) / (ASSUMED_TFLOPS * 1e12) for label, n in calls.items()}
    lines += [
        f"- the VAE decode, once in both: {_tf(sdpa['decode']['flops'])} (fp32, so at a lower rate than the UNet's fp16);",
        f"- **assumed** sustained {ASSUMED_TFLOPS:.0f} TFLOP/s fp16 (an assumption, optimistic for one GPU; not "
        f"measured): plain {plain / (ASSUMED_TFLOPS * 1e12):.1f} s of UNet, A&E "
        + ", ".join(f"{s:.1f} s ({label})" for label, s in seconds.items()) + ".",
    ]
    return lines


def _peak_lines(a: dict) -> list[str]:
    w = _weights(a)
    lines = []
    for variant in VARIANTS:
        r = a[variant]
        guided, cfg = r["truncated"]["saved"]["total"], r["cfg"]["live_peak"]
        denoise = w["denoise"] + max(guided, cfg)
        decode = w["decode"] + r["decode"]["live_peak"]
        lines.append(
            f"- {variant} attention: weights {_gb(w['denoise'])} + max(guided forward saved {_gb(guided)} (A&E maps "
            f"included), CFG forward {_gb(cfg)}) = **{_gb(denoise)}** while denoising (live-peak count: "
            f"{_gb(w['denoise'] + max(r['truncated']['live_peak'], cfg))}; without truncation "
            f"{_gb(w['denoise'] + max(r['full']['live_peak'], cfg))}); decoding: weights with the fp32 VAE "
            f"{_gb(w['decode'])} + decode {_gb(r['decode']['live_peak'])} = {_gb(decode)}; peak "
            f"**{_gb(max(denoise, decode))}**;"
        )
    return lines


def markdown(a: dict) -> str:
    import diffusers
    import transformers

    sdpa = a["SDPA"]["truncated"]
    formula = a["ae_layers"] * a["ae_heads"] * AE_SIDE * AE_SIDE * TOKENS * 2
    lines = [
        "## Attend-and-Excite on SDXL base 1.0, 1024x1024, fp16: memory and time arithmetic",
        "",
        f"**Counted, not run on a GPU**: arithmetic from the configs of `{REPO}` (unet, vae, text_encoder, "
        "text_encoder_2 `config.json`), with the modules built on the meta device: no weights, no memory, nothing "
        f"downloaded or run on a GPU. {platform.machine()}, torch {torch.__version__}, diffusers {diffusers.__version__}, "
        f"transformers {transformers.__version__}, one CPU thread (`benchmarks/bench_sdxl_attend_excite.py`).",
        "",
        *_module_lines(a),
        "",
        "A&E's guided forward is the conditional batch of 1: latent [1, 4, 128, 128] with gradient, text states "
        "[1, 77, 2048], `text_embeds` [1, 1280], `time_ids` [1, 6]. A&E reads the cross-attention maps at 32x32 "
        f"(down_blocks.2, mid_block, up_blocks.0; counted from the module tree: {a['ae_layers']} `attn2` layers x "
        f"{a['ae_heads']} heads) and its forward can stop right after the last of them (inside up_blocks.0: its "
        "last feed-forward, `proj_out` and upsampler are skipped too), since nothing after reaches the loss. Bytes "
        "autograd saves are counted with `saved_tensors_hooks`, each storage once; frozen weights the graph keeps a "
        f"reference to ({_gb(sdpa['saved']['weights'])} in the truncated forward) take no new memory and are not counted. "
        "Live peak: the largest sum of live activation storages during the call (transients included, weights "
        "excluded, allocator overhead not modelled). Math attention = diffusers' `AttnProcessor` (explicit fp16 "
        "maps); SDPA = its memory-efficient kernel, which keeps no maps (only q, k, v, output, logsumexp). In both, "
        "the A&E layers compute explicit probabilities, which A&E must keep with their graph: "
        f"{a['ae_layers']} x {a['ae_heads']} x {AE_SIDE * AE_SIDE} x {TOKENS} x 2 bytes = {_gb(formula)} "
        f"(counted: {_gb(sdpa['saved']['A&E maps'])}).",
        "",
        *_memory_lines(a),
        "",
        "SDXL's VAE overflows in fp16 (`force_upcast: true`): the pipeline upcasts it to fp32 for the single decode, "
        "which A&E runs once without gradients, like plain SDXL.",
        "",
        "Time as arithmetic (`FlopCounterMode` on the meta tensors; it counts matmuls, convolutions and attention, "
        "not norms or elementwise ops). Steps from A&E's `config.py` RunConfig: "
        f"{STEPS} steps, latent updated on steps 0..{GUIDED_STEPS - 1}; plain SDXL = {STEPS} CFG calls:",
        "",
        *_flop_lines(a),
        "",
        "Peak GPU memory estimate for A&E at 1024x1024 in fp16 = weights + max(guided forward saved bytes, CFG "
        "forward live peak), truncated forward; then the decode with the VAE in fp32:",
        "",
        *_peak_lines(a),
        "- not modelled: the CUDA context, the allocator's caching and fragmentation, cuDNN / GEMM workspaces.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    """Count everything on the meta device and write the section of reports/benchmarks.md."""
    torch.set_num_threads(1)
    start = time.perf_counter()
    section = markdown(sdxl_arithmetic())
    write_benchmark_section(SECTION, section)
    print(section)
    print(f"counted in {time.perf_counter() - start:.1f} s", flush=True)


if __name__ == "__main__":
    main()
