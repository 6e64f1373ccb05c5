"""Pretrain the embedded default model on the toy world (``sdlora.toy.world``).

    python -m sdlora.toy.pretrain --out sdlora/assets/default [--vae-steps N --unet-steps N --seed S]

The model is a standard SD 1.x-layout latent-diffusion pipeline built from diffusers/transformers classes:
AutoencoderKL (3 levels, 4 latent channels: 32 px images -> 8×8 latents), UNet2DConditionModel (channels
64/128, one layer per block, cross-attention in both blocks), CLIPTextModel (2 layers, 32 wide) with the
toy world's word-level CLIP tokenizer, and a DDIM scheduler with SD 1.x's noise schedule. It is saved as
a diffusers folder in fp16 and opens through the same loader as any SD 1.x model.

Stages (all CPU, deterministic given the seed): render a data set of scenes of the base shapes (never the
concept shapes), train the VAE (L2 + a small KL), set the latent scaling factor to 1/std of the latents,
encode the data set once, then train UNet and text encoder together on the latents (10% caption dropout
for classifier-free guidance). Finally sample and classify: the printed gate is the share of samples
with the prompted colour and shape.

The shipped model took about 55 min on two CPU cores (the defaults, then ``--continue-from`` with
``--unet-steps 1000 --lr 3e-4``; the stages and their times are in its PRETRAIN.json / PRETRAIN.log). The
run writes PRETRAIN.json (settings, time, gate) and PRETRAIN.log beside the weights.
"""
from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from sdlora.toy import world as tw


def build_models(vocab_size: int, bos: int, eos: int):
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=tw.SIZE, layers_per_block=1,
        block_out_channels=(32, 64, 64), norm_num_groups=16,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
    )
    unet = UNet2DConditionModel(
        sample_size=tw.SIZE // 4, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(64, 128), down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=32,
    )
    te = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        max_position_embeddings=77, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos, projection_dim=32,
    ))
    return vae, unet, te


SD1_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                    clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


def make_pipeline(vae, unet, te, tokenizer):
    """The StableDiffusionPipeline of the default model's parts with its DDIM scheduler."""

    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(**SD1_SCHEDULE), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_untrained(out: str | Path, seed: int = 0, dtype: torch.dtype = torch.float16) -> Path:
    """The default model's architecture with random weights, saved like the real one (for tests and
    benchmarks that need its shape, not its skills)."""

    out = Path(out)
    tokenizer = CLIPTokenizer.from_pretrained(str(tw.write_tokenizer(out / "tokenizer")))
    torch.manual_seed(seed)
    vae, unet, te = build_models(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    make_pipeline(vae, unet, te, tokenizer).to(dtype).save_pretrained(str(out))
    return out


def caption_for(scene: tw.Scene, rng: random.Random) -> str:
    u = rng.random()
    if u < 0.10:
        return ""
    if u < 0.30:
        return f"a {scene.colour} {scene.shape}"
    return scene.caption()


def render_dataset(n: int, seed: int, shapes=tw.BASE_SHAPES) -> tuple[torch.Tensor, list[tw.Scene]]:
    rng = random.Random(seed)
    scenes = [tw.sample_scene(rng, shapes=shapes) for _ in range(n)]
    arr = np.stack([np.asarray(tw.render(s), dtype=np.float32) for s in scenes])
    x = torch.from_numpy(arr).permute(0, 3, 1, 2) / 127.5 - 1.0
    return x, scenes


def train_vae(vae, images: torch.Tensor, steps: int, batch: int, seed: int, log) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=1e-4)
    vae.train()
    for step in range(steps):
        idx = torch.randint(0, len(images), (batch,), generator=g)
        x = images[idx]
        if torch.rand((), generator=g) < 0.5:
            x = x.flip(-1)
        post = vae.encode(x).latent_dist
        z = post.mean + post.std * torch.randn(post.mean.shape, generator=g)
        rec = vae.decode(z).sample
        kl = 0.5 * (post.mean ** 2 + post.var - 1.0 - post.logvar).mean()
        loss = F.mse_loss(rec, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"vae step {step:5d} loss {loss.item():.4f} kl {kl.item():.3f}")
    vae.eval()


@torch.no_grad()
def vae_check(vae, n: int = 240, seed: int = 99) -> dict:
    """Share of VAE reconstructions of fresh scenes (every shape, the concept shapes too) that the
    classifier reads as the scene's shape and colour: the image codec must be able to show a concept
    before any adapter can teach the UNet to make it."""
    images, scenes = render_dataset(n, seed, shapes=tw.SHAPES)
    rec = torch.cat([vae.decode(vae.encode(images[i:i + 60]).latent_dist.mean).sample for i in range(0, n, 60)])
    arr = ((rec.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    out: dict = {}
    for shape in tw.SHAPES:
        idx = [i for i, sc in enumerate(scenes) if sc.shape == shape]
        reads = [tw.classify(Image.fromarray(arr[i])) for i in idx]
        out[shape] = {"shape": sum(r.shape == shape for r in reads) / max(len(idx), 1),
                      "colour": sum(r.colour == scenes[i].colour for r, i in zip(reads, idx)) / max(len(idx), 1)}
    return out


@torch.no_grad()
def encode_all(vae, images: torch.Tensor, batch: int = 128) -> torch.Tensor:
    return torch.cat([vae.encode(images[i:i + batch]).latent_dist.mean for i in range(0, len(images), batch)])


def train_unet(unet, te, tokenizer, latents: torch.Tensor, scenes, scheduler, steps: int, batch: int, lr: float,
               seed: int, log, save=None, save_every: int = 250) -> None:
    g = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=1e-2)
    warm = max(1, min(200, steps // 10))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(s, steps) / steps))))
    unet.train(), te.train()
    n_t = scheduler.config.num_train_timesteps
    for step in range(steps):
        idx = torch.randint(0, len(latents), (batch,), generator=g)
        z0 = latents[idx]
        flip = torch.rand(batch, generator=g) < 0.5
        z0 = torch.where(flip[:, None, None, None], z0.flip(-1), z0)  # a flipped shape is the same shape
        caps = [caption_for(scenes[i], rng) for i in idx.tolist()]
        ids = tokenizer(caps, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, n_t, (batch,), generator=g)
        zt = scheduler.add_noise(z0, noise, t)
        pred = unet(zt, t, te(ids)[0]).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps - 1:
            log(f"unet step {step:5d} loss {loss.item():.4f} lr {sched.get_last_lr()[0]:.2e}")
        if save is not None and (step + 1) % save_every == 0:
            save(step + 1)
    unet.eval(), te.eval()


def gate(pipe, n_per: int = 1, seed: int = 1234, steps: int = 30, cfg: float = 3.0) -> dict:
    """Sample every (colour, shape, background) prompt ``n_per`` times; classify; return the accuracies."""
    prompts = [tw.Scene(c, s, b, 0, 0, 0) for c in tw.COLOURS for s in tw.BASE_SHAPES for b in tw.BACKGROUNDS]
    g = torch.Generator().manual_seed(seed)
    ok_c = ok_s = total = 0
    for sc in prompts:
        out = pipe([sc.caption()] * n_per, num_inference_steps=steps, guidance_scale=cfg, generator=g,
                   height=tw.SIZE, width=tw.SIZE).images
        for img in out:
            r = tw.classify(img, shapes=tw.BASE_SHAPES)
            ok_c += r.colour == sc.colour
            ok_s += r.shape == sc.shape
            total += 1
    return {"samples": total, "colour_accuracy": ok_c / total, "shape_accuracy": ok_s / total}


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="sdlora/assets/default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--images", type=int, default=6000)
    ap.add_argument("--vae-steps", type=int, default=2000)
    ap.add_argument("--vae-batch", type=int, default=16)
    ap.add_argument("--unet-steps", type=int, default=2400)
    ap.add_argument("--unet-batch", type=int, default=48)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--gate-steps", type=int, default=30, help="DDIM steps of the gate's samples")
    ap.add_argument("--work", default="runs/pretrain_default",
                    help="folder for the run's working state (fp32 VAE, UNet + text encoder every 250 steps, log)")
    ap.add_argument("--vae-from", default=None,
                    help="a vae.pt of an earlier run's work folder: reuse that VAE, train UNet + text encoder afresh")
    ap.add_argument("--continue-from", default=None,
                    help="the work folder of an earlier run: reuse its VAE and continue UNet + text "
                         "encoder training from its last saved step for --unet-steps more steps")
    return ap


def _start_log(args: argparse.Namespace, work: Path) -> None:
    """Begin the work folder's log.txt: an earlier run's log when continuing it, the VAE lines of the run
    that made a reused VAE, else empty."""
    if args.continue_from and Path(args.continue_from).resolve() != work.resolve():
        earlier = Path(args.continue_from) / "log.txt"
        (work / "log.txt").write_text(earlier.read_text() if earlier.is_file() else "")
    elif not args.continue_from:
        earlier = Path(args.vae_from).parent / "log.txt" if args.vae_from else None
        keep = earlier.read_text().split("[", 1)[0] + "".join(  # the VAE lines of the run that made it
            line + "\n" for line in earlier.read_text().splitlines() if " vae " in line or "rendered" in line
        ) if earlier is not None and earlier.is_file() and earlier.resolve() != (work / "log.txt").resolve() else ""
        (work / "log.txt").write_text(keep)


def _vae_and_start(args: argparse.Namespace, vae, unet, te, work: Path, log) -> int:
    """Load or train the VAE (and, when continuing, the UNet + text encoder); the UNet steps done before."""
    prev = Path(args.continue_from) if args.continue_from else None
    if prev is not None:
        vae.load_state_dict(torch.load(prev / "vae.pt", weights_only=True))
        vae.eval()
        state = torch.load(prev / "unet_te.pt", weights_only=True)
        unet.load_state_dict(state["unet"])
        te.load_state_dict(state["te"])
        log(f"continuing from {prev} (UNet step {state['step']})")
        if prev.resolve() != work.resolve():
            torch.save(vae.state_dict(), work / "vae.pt")
        return int(state["step"])
    if args.vae_from:
        vae.load_state_dict(torch.load(args.vae_from, weights_only=True))
        vae.eval()
        torch.save(vae.state_dict(), work / "vae.pt")
        log(f"VAE from {args.vae_from}")
        return 0
    vae_images, _ = render_dataset(args.images, args.seed + 1, shapes=tw.SHAPES)
    log(f"rendered {len(vae_images)} images of every shape for the VAE")
    train_vae(vae, vae_images, args.vae_steps, args.vae_batch, args.seed, log)
    torch.save(vae.state_dict(), work / "vae.pt")
    return 0


def _write_record(args: argparse.Namespace, out: Path, work: Path, done_before: int, seconds: float,
                  result: dict) -> None:
    (out / "PRETRAIN.json").write_text(json.dumps({
        "seed": args.seed, "images": args.images, "vae_steps": args.vae_steps, "vae_from": args.vae_from, "vae_batch": args.vae_batch,
        "unet_steps": done_before + args.unet_steps, "continued_from_step": done_before, "unet_batch": args.unet_batch, "lr": args.lr,
        "seconds": round(seconds, 1), "torch_threads": torch.get_num_threads(), "gate_fp32": result,
        "shapes": list(tw.BASE_SHAPES), "colours": list(tw.COLOURS), "backgrounds": list(tw.BACKGROUNDS),
    }, indent=2))
    (out / "PRETRAIN.log").write_text((work / "log.txt").read_text())


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out, work = Path(args.out), Path(args.work)
    t0 = time.time()

    def log(msg: str) -> None:
        line = f"[{time.time() - t0:7.1f}s] {msg}"
        print(line, flush=True)
        with open(work / "log.txt", "a") as f:
            f.write(line + "\n")

    work.mkdir(parents=True, exist_ok=True)
    _start_log(args, work)
    tok_dir = out / "tokenizer"
    tw.write_tokenizer(tok_dir)
    tokenizer = CLIPTokenizer.from_pretrained(str(tok_dir))
    vae, unet, te = build_models(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id)
    log(f"params: vae {sum(p.numel() for p in vae.parameters()):,} unet {sum(p.numel() for p in unet.parameters()):,} "
        f"text encoder {sum(p.numel() for p in te.parameters()):,}")
    images, scenes = render_dataset(args.images, args.seed)
    log(f"rendered {len(images)} images")
    done_before = _vae_and_start(args, vae, unet, te, work, log)
    log(f"vae reconstructions read correctly: {json.dumps(vae_check(vae))}")
    latents = encode_all(vae, images)
    scale = float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scale)
    log(f"latents {tuple(latents.shape)} std {latents.std().item():.4f} -> scaling_factor {scale:.5f}")
    train_sched = DDPMScheduler(**{k: v for k, v in SD1_SCHEDULE.items() if k not in ("set_alpha_to_one", "steps_offset")})

    def save_work(step: int) -> None:
        torch.save({"unet": unet.state_dict(), "te": te.state_dict(), "step": done_before + step},
                   work / "unet_te.pt")
        log(f"saved work state at UNet step {done_before + step}")

    train_unet(unet, te, tokenizer, latents * scale, scenes, train_sched, args.unet_steps, args.unet_batch, args.lr,
               args.seed + done_before, log, save=save_work)
    save_work(args.unet_steps)
    pipe = make_pipeline(vae, unet, te, tokenizer)
    result = gate(pipe, steps=args.gate_steps)
    log(f"gate: {json.dumps(result)}")
    pipe.to(torch.float16).save_pretrained(str(out))
    _write_record(args, out, work, done_before, time.time() - t0, result)
    log(f"saved {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
