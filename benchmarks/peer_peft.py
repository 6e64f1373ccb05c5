"""The peer users take instead of sdlora: diffusers' LoRA training recipe with PEFT, and diffusers+PEFT
inference.

``train`` follows diffusers' ``examples/text_to_image/train_text_to_image_lora.py`` step for step, written
as a plain loop (no Accelerator wrapper: on one device it adds nothing):
  components loaded one by one with ``from_pretrained`` (DDPMScheduler, CLIPTokenizer, CLIPTextModel,
  AutoencoderKL, UNet2DConditionModel), all frozen and moved to the device in the weight dtype;
  ``unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
  target_modules=["to_k", "to_q", "to_v", "to_out.0"]))``; trainable params cast to fp32 under mixed
  precision; optional gradient checkpointing; AdamW (weight decay 1e-2, eps 1e-8); constant LR schedule;
  images kept encoded and decoded on every access (as the recipe's ``datasets`` Image column does), resized
  (bilinear) and centre-cropped to the resolution, optional random flip, to [-1, 1];
  captions tokenised to 77 tokens when a sample is fetched; a shuffling DataLoader (no workers).
  Every step: ``vae.encode(pixels).latent_dist.sample() * scaling_factor``, Gaussian noise, uniform
  timesteps, ``noise_scheduler.add_noise``, ``text_encoder(input_ids)[0]``, the UNet, MSE against the
  noise (epsilon), backward, clip the LoRA gradients to norm 1, AdamW step, LR step, zero_grad, a tqdm bar
  with the step loss. (The recipe passes a *generator* of parameters to both the optimiser and the
  clipping, so its clipping silently does nothing; here the list is clipped, as sdlora does.)
``adapter`` swaps the PEFT injection for another (``peer_lycoris``); ``cache`` precomputes latents and
text embeddings once (what kohya's scripts do with --cache_latents), for the LoHa/LoKr comparison.

``inference_setup``: StableDiffusionPipeline.from_pretrained, ``load_lora_weights`` (diffusers/PEFT file),
``set_adapters``, ``fuse_lora`` / ``unfuse_lora``, the pipeline call with Euler a.
"""
from __future__ import annotations

import io
import time
from pathlib import Path

from measure import StepClock, device, median, sync, timed

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")


# ------------------------------------------------------------------------------------------- data
class CaptionedFolder:
    """Images with .txt captions beside them, transformed as the recipe's ``train_transforms``."""

    def __init__(self, folder: str, resolution: int, flip: bool, tokenizer, seed: int):
        import random

        self.paths = sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTS)
        # The recipe's `datasets` Image column holds the encoded files and decodes one on every access.
        self.files = [p.read_bytes() for p in self.paths]
        self.captions = [p.with_suffix(".txt").read_text(encoding="utf-8").strip() for p in self.paths]
        self.resolution, self.flip, self.tokenizer = resolution, flip, tokenizer
        self.rng = random.Random(seed)

    def __len__(self) -> int:
        return len(self.paths)

    def pixels(self, i: int, flip: bool):
        import numpy as np
        import torch
        from PIL import Image

        img, r = Image.open(io.BytesIO(self.files[i])).convert("RGB"), self.resolution
        w, h = img.size
        scale = r / min(w, h)
        img = img.resize((max(r, round(w * scale)), max(r, round(h * scale))), Image.BILINEAR)  # Resize(r)
        w, h = img.size
        left, top = int(round((w - r) / 2.0)), int(round((h - r) / 2.0))
        img = img.crop((left, top, left + r, top + r))  # CenterCrop(r)
        if flip:
            img = img.transpose(Image.FLIP_LEFT_RIGHT)  # RandomHorizontalFlip
        x = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)  # ToTensor
        return (x - 0.5) / 0.5  # Normalize([0.5], [0.5])

    def input_ids(self, i: int):
        return self.tokenizer(self.captions[i], max_length=self.tokenizer.model_max_length, padding="max_length",
                              truncation=True, return_tensors="pt").input_ids[0]

    def __getitem__(self, i: int) -> dict:
        flip = self.flip and self.rng.random() < 0.5
        return {"pixel_values": self.pixels(i, flip), "input_ids": self.input_ids(i), "index": i}


def collate(examples: list[dict]) -> dict:
    import torch

    return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]).contiguous().float(),
            "input_ids": torch.stack([e["input_ids"] for e in examples]),
            "index": torch.tensor([e["index"] for e in examples])}


# ------------------------------------------------------------------------------------------ model
def load_components(folder: str):
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    noise_scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    tokenizer = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet")
    return noise_scheduler, tokenizer, text_encoder, vae, unet


def peft_lora(unet, p: dict) -> list:
    """The recipe's injection: PEFT LoRA on to_q/to_k/to_v/to_out.0; returns the trainable parameters."""
    from peft import LoraConfig

    unet.add_adapter(LoraConfig(r=p["rank"], lora_alpha=p["rank"], init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    return [q for q in unet.parameters() if q.requires_grad]


def count_peft_layers(unet) -> int:
    from peft.tuners.lora import LoraLayer

    return sum(isinstance(m, LoraLayer) for m in unet.modules())


_DTYPES = {"no": "float32", "fp16": "float16", "bf16": "bfloat16"}


def _frozen_components(p: dict, dev, weight_dtype) -> tuple:
    """The model's scheduler, tokenizer, text encoder, VAE and UNet, frozen, on ``dev`` in ``weight_dtype``."""
    noise_scheduler, tokenizer, text_encoder, vae, unet = load_components(p["model"])
    unet.requires_grad_(False)
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    unet.to(dev, dtype=weight_dtype)
    vae.to(dev, dtype=weight_dtype)
    text_encoder.to(dev, dtype=weight_dtype)
    return noise_scheduler, tokenizer, text_encoder, vae, unet


def _cache_all(dataset, vae, text_encoder, dev, weight_dtype) -> list:
    """Kohya-style caching: (latents (4, h/8, w/8), text hidden states (77, dim)) of every image, once."""
    import torch

    with torch.no_grad():
        cached = []
        for i in range(len(dataset)):
            px = dataset.pixels(i, False)[None].to(dev, weight_dtype)
            lat = vae.encode(px).latent_dist.sample()[0] * vae.config.scaling_factor
            hid = text_encoder(dataset.input_ids(i)[None].to(dev), return_dict=False)[0][0]
            cached.append((lat, hid))
    return cached


def _encode(batch: dict, vae, text_encoder, dev, weight_dtype, cached: list | None, encode_s: list) -> tuple:
    """A batch's latents (B, 4, h/8, w/8) and text hidden states (B, 77, dim): from the cache, or encoded now
    (then the encoding time is appended to ``encode_s``)."""
    import torch

    if cached is not None:
        return (torch.stack([cached[i][0] for i in batch["index"].tolist()]),
                torch.stack([cached[i][1] for i in batch["index"].tolist()]))
    t_enc = time.perf_counter()  # timed to tell how much of a step caching could save
    latents = vae.encode(batch["pixel_values"].to(dev, dtype=weight_dtype)).latent_dist.sample()
    latents = latents * vae.config.scaling_factor
    encoder_hidden_states = text_encoder(batch["input_ids"].to(dev), return_dict=False)[0]
    sync()
    encode_s.append(time.perf_counter() - t_enc)
    return latents, encoder_hidden_states


def _optimiser_step(loss, scaler, optimizer, lr_scheduler, params: list) -> None:
    """Backward, unscale, clip the gradient norm to 1.0, step, schedule, clear."""
    import torch

    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    scaler.step(optimizer)
    scaler.update()
    lr_scheduler.step()
    optimizer.zero_grad()


def train(p: dict, adapter=None, count_layers=count_peft_layers, on_step=None) -> dict:
    """The recipe's loop (see the module docstring); ``on_step()`` is called after every optimiser step."""
    import torch
    import torch.nn.functional as F
    from diffusers.optimization import get_scheduler
    from tqdm.auto import tqdm

    dev = torch.device(device())
    weight_dtype = getattr(torch, _DTYPES[p["precision"]])
    torch.manual_seed(p["seed"])
    noise_scheduler, tokenizer, text_encoder, vae, unet = _frozen_components(p, dev, weight_dtype)
    params = (adapter or peft_lora)(unet, p)
    for q in params:  # cast_training_params: trainable parameters in fp32 under mixed precision
        q.data = q.data.to(dev, torch.float32)
    if p["checkpointing"]:
        unet.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(params, lr=p["lr"], betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    lr_scheduler = get_scheduler("constant", optimizer=optimizer, num_warmup_steps=0, num_training_steps=p["steps"])
    dataset = CaptionedFolder(p["data"], p["resolution"], bool(p.get("flip", False)), tokenizer, p["seed"])
    loader = torch.utils.data.DataLoader(dataset, shuffle=True, collate_fn=collate, batch_size=p["batch"],
                                         num_workers=0, generator=torch.Generator().manual_seed(p["seed"]))
    cached = _cache_all(dataset, vae, text_encoder, dev, weight_dtype) if p.get("cache") else None
    autocast = torch.autocast(dev.type, dtype=weight_dtype, enabled=p["precision"] != "no")
    scaler = torch.amp.GradScaler(dev.type, enabled=p["precision"] == "fp16")
    clock = StepClock()
    bar = tqdm(total=p["steps"], desc="Steps")
    losses, encode_s, step = [], [], 0
    unet.train()
    while step < p["steps"]:
        for batch in loader:
            latents, encoder_hidden_states = _encode(batch, vae, text_encoder, dev, weight_dtype, cached, encode_s)
            noise = torch.randn_like(latents)
            bsz = latents.shape[0]
            timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (bsz,), device=latents.device).long()
            noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)
            target = noise
            with autocast:
                model_pred = unet(noisy_latents, timesteps, encoder_hidden_states, return_dict=False)[0]
            loss = F.mse_loss(model_pred.float(), target.float(), reduction="mean")
            _optimiser_step(loss, scaler, optimizer, lr_scheduler, params)
            bar.update(1)
            step += 1
            losses.append(loss.detach().item())
            bar.set_postfix(step_loss=losses[-1], lr=lr_scheduler.get_last_lr()[0])
            clock.tick()
            if on_step is not None:
                on_step()
            if step >= p["steps"]:
                break
    bar.close()
    return _summary(clock, p, encode_s, params, count_layers(unet), losses)


def _summary(clock, p: dict, encode_s: list, params: list, adapted_layers: int, losses: list) -> dict:
    """The run's figures: the clock's speeds, the encoding share, parameter and layer counts, the losses."""
    out = clock.summary(p["warmup"], p["batch"])
    if encode_s:  # share of the measured steps' time spent in the VAE and text encoder
        span = clock.stamps[-1] - clock.stamps[p["warmup"] - 1]
        out["encode_share"] = sum(encode_s[p["warmup"]:]) / span
    out.update(trainable_params=sum(q.numel() for q in params), adapted_layers=adapted_layers,
               final_loss=losses[-1], losses_finite=all(map(lambda v: v == v and abs(v) != float("inf"), losses)))
    return out


# -------------------------------------------------------------------------------------- inference
def inference_setup(p: dict) -> tuple[dict, dict]:
    """The same cases and timings as ``sdlora_side.inference_setup``, with diffusers + PEFT."""
    import torch
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    files, strength = p["loras_peft"], p["strength"]

    def fresh():
        pipe = StableDiffusionPipeline.from_pretrained(p["model"], torch_dtype=torch.float32, safety_checker=None,
                                                       requires_safety_checker=False, local_files_only=True)
        pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(pipe.scheduler.config)
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(device())

    warm = fresh()
    warm.load_lora_weights(files[0], adapter_name="warm")
    warm.fuse_lora()
    warm.unfuse_lora()
    base, one, four, fused = fresh(), fresh(), fresh(), fresh()
    one.load_lora_weights(files[0], adapter_name="a0")
    one.set_adapters(["a0"], [strength])
    names = [f"a{i}" for i in range(len(files))]
    load_s = []
    for name, f in zip(names, files):
        load_s.append(timed(four.load_lora_weights, f, adapter_name=name)[0])
        load_s.append(timed(fused.load_lora_weights, f, adapter_name=name)[0])
    four.set_adapters(names, [strength] * len(names))
    fused.set_adapters(names, [strength] * len(names))
    fuse_s, unfuse_s = [], []
    for _ in range(p["fuse_reps"]):
        fuse_s.append(timed(fused.fuse_lora, adapter_names=names)[0])
        unfuse_s.append(timed(fused.unfuse_lora)[0])
    fused.fuse_lora(adapter_names=names)

    def case(pipe):
        def run(seed: int):  # one image, its own CPU generator, as sdlora's generate does
            g = torch.Generator("cpu").manual_seed(int(seed))
            return pipe(p["prompt"], num_inference_steps=p["steps"], guidance_scale=7.0, width=p["size"],
                        height=p["size"], generator=g, output_type="np")
        return run

    cases = {"base": case(base), "bypass1": case(one), "bypass4": case(four), "fused4": case(fused)}
    ops = {"load_apply_s": median(load_s), "fuse_s": median(fuse_s), "unfuse_s": median(unfuse_s)}
    return cases, ops
