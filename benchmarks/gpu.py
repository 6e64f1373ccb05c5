"""GPU training benchmark, one command (fits in ~8 minutes on one GPU): sdlora against the diffusers+PEFT
recipe, LoRA rank 16 on the attention projections, bf16 autocast, AdamW, random weights of the real
architectures built from the configs shipped in sdlora/assets/configs (nothing is downloaded):

    python benchmarks/gpu.py                    # SD 1.5 at 512 px and SDXL at 1024 px, batch 1 and 4
    python benchmarks/gpu.py --smoke            # shrunken models and sizes; runs on the CPU end to end
    python benchmarks/gpu.py --json out.json --steps 10

Per (model, batch) and side it measures the median optimiser-step time over ``--steps`` steps after
``--warmup`` (device synchronised around each step), the peak VRAM of that side (reset before it),
samples/s, and the share of the GPU's dense bf16 peak the step reaches.

The sides:
- recipe: diffusers' train_text_to_image_lora.py step: VAE encode of the pixels and the text encoder(s)
  every step (no caching), PEFT LoRA (``unet.add_adapter``) on to_q/to_k/to_v/to_out.0, the frozen model
  in bf16, LoRA weights in fp32, autocast bf16.
- sdlora: ``Network.create`` on the same layers (preset ``attn``), latents and text embeddings cached once
  before the steps (what ``sdlora train`` does with caches on: the cache fill is timed separately),
  autocast bf16, and the trainer's one host read per step (``trainers.speed.read_step``).
- sdlora+compile: the same with ``torch.compile`` of the UNet (``training.compile = true``, inductor; with
  ``--smoke`` aot_eager unless ``--compile-backend`` says otherwise); its compile time is reported apart
  from the step time.

FLOPs per step are counted, not estimated: ``torch.utils.flop_counter.FlopCounterMode`` over one UNet
forward+backward of the sdlora side (matmuls, convolutions and attention, forward and backward, as aten
ops count them); the VAE/text-encoder FLOPs of the recipe are not in the count, so its share is the UNet's
work per its (longer) step. The peak is the vendor's dense bf16 figure for the device name (table below)
or ``--peak-tflops``; unknown devices show no share. On the CPU (``--smoke``) no share is shown.
"""
from __future__ import annotations

import argparse
import copy
import gc
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CONFIGS = REPO / "sdlora" / "assets" / "configs"
sys.path.insert(0, str(HERE))

DENSE_BF16_TFLOPS = {"H200": 989.4, "H100 SXM": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0, "H100": 756.0,
                     "A100": 312.0, "L40S": 362.0, "L4": 121.0, "A10G": 70.0, "A10": 125.0, "RTX 4090": 165.2,
                     "RTX 3090": 71.0}
TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


def peak_tflops(name: str, given: float) -> float | None:
    if given:
        return given
    for key, value in DENSE_BF16_TFLOPS.items():  # longest names first in the table order
        if key in name:
            return value
    return None


def read_config(model: str, part: str) -> dict:
    return json.loads((CONFIGS / model / part / "config.json").read_text())


def shrink(cfg: dict, part: str) -> dict:
    """A small model of the same architecture for --smoke (CPU): fewer channels and layers."""
    cfg = copy.deepcopy(cfg)
    if part == "unet":
        n = len(cfg["block_out_channels"])
        cfg.update(block_out_channels=[32 * (i + 1) for i in range(n)], layers_per_block=1,
                   attention_head_dim=[2] * n if isinstance(cfg.get("attention_head_dim"), list) else 2)
        cfg["cross_attention_dim"] = 32 if cfg.get("addition_embed_type") is None else 64
        if isinstance(cfg.get("transformer_layers_per_block"), list):
            cfg["transformer_layers_per_block"] = [1] * n
        if cfg.get("addition_embed_type") == "text_time":
            cfg.update(addition_time_embed_dim=8, projection_class_embeddings_input_dim=8 * 6 + 32)
    elif part == "vae":
        cfg.update(block_out_channels=[8, 16, 16, 16], layers_per_block=1, norm_num_groups=8)
    else:  # text encoders
        cfg.update(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                   projection_dim=32)
    return cfg


def build(model: str, smoke: bool, dev: torch.device) -> dict:
    """UNet, VAE and text encoder(s) with random weights, frozen, bf16 on ``dev`` (fp32 on the CPU)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    tes = ["text_encoder"] + (["text_encoder_2"] if model == "sdxl" else [])
    cfg = {p: read_config(model, p) for p in ["unet", "vae"] + tes}
    if smoke:
        cfg = {p: shrink(c, p) for p, c in cfg.items()}
    with torch.device(dev):
        torch.manual_seed(0)
        parts = {"unet": UNet2DConditionModel.from_config(cfg["unet"]),
                 "vae": AutoencoderKL.from_config(cfg["vae"])}
        for p in tes:
            klass = CLIPTextModelWithProjection if p == "text_encoder_2" else CLIPTextModel
            parts[p] = klass(CLIPTextConfig(**{k: v for k, v in cfg[p].items() if not k.startswith("_")}))
    for m in parts.values():
        m.requires_grad_(False).to(dtype)
    return parts


def step_inputs(parts: dict, batch: int, side: int, dev: torch.device, gen: torch.Generator) -> dict:
    """Pixels (b, 3, side, side), token ids (b, 77) and SDXL's size conditioning for one step."""
    vocab = parts["text_encoder"].config.vocab_size
    return {"pixels": torch.rand(batch, 3, side, side, generator=gen).mul(2).sub(1).to(dev),
            "ids": torch.randint(0, vocab, (batch, 77), generator=gen).to(dev),
            "time_ids": torch.tensor([[side, side, 0, 0, side, side]] * batch, dtype=torch.float32, device=dev)}


def encode(parts: dict, inp: dict) -> tuple[torch.Tensor, torch.Tensor, dict | None]:
    """(latents (b, 4, h, w), hidden (b, 77, D), added_cond_kwargs) as the recipe computes them each step."""
    vae = parts["vae"]
    with torch.no_grad():
        latents = vae.encode(inp["pixels"].to(vae.dtype)).latent_dist.sample() * vae.config.scaling_factor
        if "text_encoder_2" not in parts:
            return latents, parts["text_encoder"](inp["ids"])[0], None
        out1 = parts["text_encoder"](inp["ids"], output_hidden_states=True)
        out2 = parts["text_encoder_2"](inp["ids"], output_hidden_states=True)
        hidden = torch.cat([out1.hidden_states[-2], out2.hidden_states[-2]], dim=-1)
        return latents, hidden, {"text_embeds": out2.text_embeds, "time_ids": inp["time_ids"]}


def attach_peft(unet, rank: int) -> list[torch.nn.Parameter]:
    from peft import LoraConfig

    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian", target_modules=TARGETS))
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    return params


def attach_sdlora(unet, rank: int) -> tuple[object, list[torch.nn.Parameter]]:
    from sdlora.networks import Network, NetworkConfig

    net = Network.create({"unet": unet}, NetworkConfig(rank=rank, alpha=rank, preset="attn", components=("unet",)))
    net.freeze_bases()
    net.to(unet.device, torch.float32)
    net.attach()
    net.train()
    return net, [p for p in net.parameters() if p.requires_grad]


def unet_loss(unet, latents: torch.Tensor, hidden: torch.Tensor, added: dict | None, gen_seed: int) -> torch.Tensor:
    """Noise, uniform timesteps, add_noise (DDPM alphas), the UNet under bf16 autocast, MSE to the noise."""
    g = torch.Generator(device=latents.device).manual_seed(gen_seed)
    noise = torch.randn(latents.shape, generator=g, device=latents.device, dtype=latents.dtype)
    t = torch.randint(0, 1000, (latents.shape[0],), generator=g, device=latents.device)
    ac = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, device=latents.device).pow(2)
    ac = torch.cumprod(1 - ac, 0)[t].view(-1, 1, 1, 1)
    noisy = ac.sqrt() * latents + (1 - ac).sqrt() * noise
    with torch.autocast(latents.device.type, dtype=torch.bfloat16, enabled=latents.device.type == "cuda"):
        pred = unet(noisy.to(unet.dtype), t, hidden.to(unet.dtype), added_cond_kwargs=added, return_dict=False)[0]
    return torch.nn.functional.mse_loss(pred.float(), noise.float())


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def count_flops(unet, latents: torch.Tensor, hidden: torch.Tensor, added: dict | None) -> int:
    """FLOPs of one UNet forward+backward (FlopCounterMode: aten matmul/conv/attention ops)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        unet_loss(unet, latents, hidden, added, 0).backward()
    return int(counter.get_total_flops())


def timed_steps(step, n: int, warmup: int, dev: torch.device) -> list[float]:
    times = []
    for i in range(warmup + n):
        sync(dev)
        t = time.perf_counter()
        step(i)
        sync(dev)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return times


def run_side(side: str, parts: dict, inputs: list[dict], args, dev: torch.device) -> dict:
    """One side's steps on a fresh UNet copy: {'step_s', 'peak_vram', 'flops', 'setup_s', ...}."""
    from sdlora.trainers.speed import loss_stats, read_step

    unet = parts["unet"]
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    if side == "recipe":
        params = attach_peft(unet, args.rank)
        cached = None
    else:
        net, params = attach_sdlora(unet, args.rank)
        cached = [encode(parts, inp) for inp in inputs]  # the cache fill, once
    sync(dev)
    setup_s = time.perf_counter() - t0
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-2)
    flops = count_flops(unet, *(cached[0] if cached else encode(parts, inputs[0])))
    opt.zero_grad(set_to_none=True)
    compile_s = None
    if side == "sdlora+compile":
        t0 = time.perf_counter()
        unet.compile(backend=args.compile_backend, dynamic=False)
        unet_loss(unet, *cached[0], 0).backward()  # the first call compiles (forward and backward)
        opt.zero_grad(set_to_none=True)
        sync(dev)
        compile_s = time.perf_counter() - t0

    def step(i: int) -> None:
        lat, hid, added = cached[i % len(cached)] if cached else encode(parts, inputs[i % len(inputs)])
        loss = unet_loss(unet, lat, hid, added, i)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if side == "recipe":
            float(loss.detach())  # the recipe's progress bar reads the loss every step
        else:
            read_step(loss_stats(loss), norm)
    times = timed_steps(step, args.steps, args.warmup, dev)
    out = {"step_s": sorted(times)[len(times) // 2], "steps": times, "flops": flops, "setup_s": setup_s,
           "compile_s": compile_s, "adapted": len(params) // 2,
           "peak_vram": torch.cuda.max_memory_allocated(dev) if dev.type == "cuda" else None}
    return out


def fresh_unet(parts: dict, keep: dict) -> None:
    """Put back a pristine copy of the UNet (PEFT and compile change the module in place)."""
    parts["unet"] = copy.deepcopy(keep["unet"])


def case(model: str, side_px: int, batch: int, args, dev: torch.device, parts: dict) -> list[dict]:
    gen = torch.Generator().manual_seed(1)
    inputs = [step_inputs(parts, batch, side_px, dev, gen) for _ in range(2)]
    keep = {"unet": parts["unet"]}
    rows = []
    for side in args.sides:
        fresh_unet(parts, keep)
        r = run_side(side, parts, inputs, args, dev)
        r.update(model=model, px=side_px, batch=batch, side=side)
        rows.append(r)
        parts["unet"] = None
        gc.collect()
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        print(f"  {model} {side_px}px b{batch} {side}: {r['step_s'] * 1e3:.1f} ms/step", flush=True)
    parts["unet"] = keep["unet"]
    return rows


def table(rows: list[dict], peak: float | None) -> str:
    lines = ["| model | px | batch | side | step time | samples/s | peak VRAM | UNet GFLOP/step | share of bf16 peak "
             "| vs recipe |", "|---|---|---|---|---|---|---|---|---|---|"]
    recipe = {(r["model"], r["batch"]): r["step_s"] for r in rows if r["side"] == "recipe"}
    for r in rows:
        achieved = r["flops"] / r["step_s"] / 1e12
        share = f"{achieved / peak:.1%}" if peak else "—"
        vram = f"{r['peak_vram'] / 2**30:.2f} GiB" if r["peak_vram"] is not None else "—"
        ref = recipe.get((r["model"], r["batch"]))
        ratio = f"{ref / r['step_s']:.2f}x" if ref else "—"
        lines.append(f"| {r['model']} | {r['px']} | {r['batch']} | {r['side']} | {r['step_s'] * 1e3:.1f} ms "
                     f"| {r['batch'] / r['step_s']:.2f} | {vram} | {r['flops'] / 1e9:.1f} | {share} | {ratio} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny models and sizes (CPU-friendly end-to-end check)")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--batches", default="1,4")
    ap.add_argument("--models", default="sd15,sdxl")
    ap.add_argument("--sides", default="recipe,sdlora,sdlora+compile")
    ap.add_argument("--peak-tflops", type=float, default=0.0, help="the device's dense bf16 peak (default: table)")
    ap.add_argument("--compile-backend", default="", help="torch.compile backend (default inductor; "
                    "aot_eager with --smoke: inductor's C++ build of a UNet takes many minutes on a small CPU)")
    ap.add_argument("--json", default="")
    args = ap.parse_args(argv)
    args.compile_backend = args.compile_backend or ("aot_eager" if args.smoke else "inductor")
    args.sides = args.sides.split(",")
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type != "cuda" and not args.smoke:
        ap.error("no CUDA device is visible: run with --smoke for the CPU end-to-end check")
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else "CPU"
    peak = peak_tflops(name, args.peak_tflops) if dev.type == "cuda" else None
    sizes = {"sd15": 64 if args.smoke else 512, "sdxl": 64 if args.smoke else 1024}
    rows = []
    started = time.time()
    for model in args.models.split(","):
        parts = build(model, args.smoke, dev)
        for batch in [int(b) for b in args.batches.split(",")]:
            rows.extend(case(model, sizes[model], batch, args, dev, parts))
        del parts
        gc.collect()
    print(f"\ndevice: {name}; bf16 peak {peak or 'unknown'} TFLOP/s; torch {torch.__version__}; "
          f"{time.time() - started:.0f} s{' (smoke: shrunken models, not a measurement)' if args.smoke else ''}")
    print(table(rows, peak))
    if args.json:
        Path(args.json).write_text(json.dumps({"device": name, "peak_tflops": peak, "smoke": args.smoke,
                                               "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
