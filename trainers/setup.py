"""Setting a training up: the network config from the trainer's config, the base model frozen and moved,
the caches made and filled, and the process-wide pieces (seeds, accelerate's state, Ctrl+C between steps)."""
from __future__ import annotations

import contextlib
import dataclasses
import random
import signal
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from accelerate.state import AcceleratorState
from diffusers import DDPMScheduler

from sdlora.errors import ConfigError
from sdlora.memory import keep_freed_memory
from sdlora.files.images import crop_box
from sdlora.models import BaseModel
from sdlora.models.encode import encode_pixels, vae_factor
from sdlora.networks import NetworkConfig
from sdlora.trainers.cache import LatentCache, Store, TextCache, module_identity, tokenizer_identity
from sdlora.trainers.captions import varies
from sdlora.trainers.config import TrainConfig
from sdlora.trainers.data import Dataset, full_caption

DTYPES = {"no": torch.float32, "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def network_config(cfg: TrainConfig, family: str) -> NetworkConfig:
    """The networks' NetworkConfig from the [network] section. The section is the TOML schema (ranges and
    help texts for validation and the studio's form); its fields carry NetworkConfig's names, so they are
    passed by name, and only what the trainer decides is added: the preset's default and the components."""
    n, t = cfg.network, cfg.training
    values = {f.name: getattr(n, f.name) for f in dataclasses.fields(n)}
    values["preset"] = n.preset or ("attn-mlp" if n.algo == "lora" else "full")
    values["include"], values["exclude"] = list(n.include), list(n.exclude)
    values["components"] = ("unet", "te1", "te2") if t.train_text_encoder else ("unet",)
    try:
        return NetworkConfig(**values)
    except ValueError as exc:
        raise ConfigError(f"[network]: {exc}") from None


def prepare_model(m: BaseModel, cfg: TrainConfig, device: torch.device, weight_dtype: torch.dtype,
                  log: Callable[[str], None]) -> None:
    """Freeze the base model, move it to ``device`` in the training dtypes, set checkpointing/attention."""
    m.vae.requires_grad_(False).eval()
    move(m.vae, device, DTYPES[cfg.model.vae_dtype])
    m.unet.requires_grad_(False)
    move(m.unet, device, weight_dtype)
    for te in m.text_encoders:
        te.requires_grad_(False)
        move(te, device, weight_dtype)
    checkpointing = cfg.training.gradient_checkpointing
    if checkpointing:
        m.unet.enable_gradient_checkpointing()
        if cfg.training.train_text_encoder:
            for te in m.text_encoders:
                if hasattr(te, "activation_checkpointing_enable"):  # transformers 5
                    te.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
                else:
                    te.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    # Base dropouts are 0 in SD models; train() only lets checkpointing run in transformers.
    m.unet.train(checkpointing)
    for te in m.text_encoders:
        te.train(checkpointing and cfg.training.train_text_encoder)
    if cfg.model.attention == "xformers":
        try:
            m.unet.enable_xformers_memory_efficient_attention()
        except Exception as exc:  # not installed, or no CUDA build
            log(f"xformers is not usable here ({type(exc).__name__}: {exc}); using PyTorch SDPA attention")


@dataclass
class Caches:
    latent: LatentCache | None
    text: TextCache | None
    cached_subsets: set[int]  # subsets whose latents are cached (centre crop)
    stats: dict[str, int]


def build_caches(cfg: TrainConfig, model: BaseModel, dataset: Dataset, device: torch.device, trains_te: bool,
                 encode_captions: Callable, log: Callable[[str], None], owned: bool = False) -> Caches:
    """Make and fill the latent and text-output caches the config asks for, noting what is not cached. With
    ``owned`` (the trainer opened the model itself) encoders the caches made unnecessary are released."""
    t = cfg.training
    folder = None
    if t.cache_to_disk:
        folder = Path(t.cache_dir) if t.cache_dir else cfg.output_dir / "cache"
    latent_cache = text_cache = None
    notes = []
    cached_subsets: set[int] = set()
    if t.cache_latents:
        cached_subsets = {i for i, s in enumerate(dataset.subsets) if s.crop == "center"}
        if len(cached_subsets) < len(dataset.subsets):
            notes.append("latents of subsets with random crop are not cached (each step crops anew)")
        if cached_subsets:
            vae = model.vae
            latent_cache = LatentCache(
                Store(folder / "latents" if folder else None),
                lambda px: encode_pixels(vae, px.to(device), model.latent_scale),
                module_identity(vae), vae_factor(vae), cfg.dataset.background)
    if t.cache_text_outputs:
        if trains_te:
            notes.append("text-encoder outputs are not cached: the text encoders are trained")
        elif any(varies(s) for s in dataset.subsets):
            notes.append("text-encoder outputs are not cached: caption shuffling / tag dropout make every "
                         "caption new")
        else:
            text_id = "|".join([module_identity(te) for te in model.text_encoders] +
                               [tokenizer_identity(tok) for tok in model.tokenizers] +
                               [str(cfg.model.clip_skip), model.family])
            text_cache = TextCache(Store(folder / "text" if folder else None), encode_captions, text_id)
    for note in notes:
        log(f"cache: {note}")
    caches = Caches(latent_cache, text_cache, cached_subsets, {})
    caches.stats = fill_caches(caches, dataset)
    for index in dataset.lost:
        log(dataset.lost_line(index))
    released = release_unused(caches, cfg, model, dataset) if owned else []
    if released:
        log(f"cache: {' and '.join(released)} released from memory (the caches hold all they would make and no "
            "samples are drawn)")
    else:
        offload_unused(caches, cfg, model, dataset, device)
    if caches.stats:
        log("cache: " + ", ".join(f"{k} {v}" for k, v in caches.stats.items()))
    return caches


def fill_caches(caches: Caches, dataset: Dataset) -> dict[str, int]:
    """Encode what the caches lack (or reuse it from disk); the counts of encoded and reused entries."""
    stats = {}
    latent_cache, text_cache, cached_subsets = caches.latent, caches.text, caches.cached_subsets
    items, subsets = dataset.items, dataset.subsets
    if latent_cache is not None:
        latent_cache.fill([it for it in items if it.subset in cached_subsets], subsets,
                          on_bad=lambda it, why: dataset.lose(items.index(it), why))  # gone since the scan
        store = latent_cache.store
        stats.update({"latents encoded": store.encoded, "latents reused": store.reused})
    if text_cache is not None:
        captions = [full_caption(it) for it in items]
        if any(s.caption_dropout for s in subsets):
            captions.append("")
        text_cache.fill(captions)
        store = text_cache.store
        stats.update({"text encoded": store.encoded, "text reused": store.reused})
    return stats


def _unneeded(caches: Caches, cfg: TrainConfig, model: BaseModel, dataset: Dataset) -> dict[str, list]:
    """The encoders nothing will call again in this run: {"the VAE": [vae], "the text encoder": [...]}."""
    if cfg.sample.prompts:  # samples decode with the VAE and encode their prompts
        return {}
    out: dict[str, list] = {}
    if caches.latent is not None and len(caches.cached_subsets) == len(dataset.subsets):
        out["the VAE"] = [model.vae]
    if caches.text is not None:
        encoders = model.text_encoders
        out["the text encoder" + ("s" if len(encoders) > 1 else "")] = encoders
    return out


def release_unused(caches: Caches, cfg: TrainConfig, model: BaseModel, dataset: Dataset) -> list[str]:
    """Free the weights of the encoders the filled caches replace (moved to the meta device: shapes and
    configs stay, the memory goes), so the steps run with the UNet alone in memory, as kohya's scripts do
    after caching. Only for a model the trainer opened itself. Returns what was released."""
    released = []
    for what, modules in _unneeded(caches, cfg, model, dataset).items():
        for m in modules:
            m.to("meta")
        released.append(what)
    if released and torch.cuda.is_available():
        torch.cuda.empty_cache()
    return released


def offload_unused(caches: Caches, cfg: TrainConfig, model: BaseModel, dataset: Dataset,
                   device: torch.device) -> None:
    """On an accelerator, move the VAE / text encoders to the CPU when caches hold all they would make
    and no samples are drawn (SDXL's encoders hold gigabytes)."""
    if device.type == "cpu":
        return
    for modules in _unneeded(caches, cfg, model, dataset).values():
        for m in modules:
            m.to("cpu")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def crop_after_flip(item, flip: bool) -> tuple[int, int]:
    (nw, _), (left, top) = crop_box(item.size, item.bucket, "center", None)
    return (top, nw - item.bucket[0] - left if flip else left)


@contextlib.contextmanager
def finish_step_on_interrupt():
    """Hold a first Ctrl+C until the block (one optimiser step and its counters) is done, then raise
    KeyboardInterrupt, so a saved state is always between two steps. A second Ctrl+C interrupts at once."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        yield
        return
    pending = []

    def hold(signum, frame):
        pending.append(signum)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if pending:
        raise KeyboardInterrupt


def prepare_process(mixed_precision: str) -> None:
    """Process-wide settings a training needs: freed host memory kept for reuse (sdlora.memory: no page
    faults on every step's activations), accelerate's state for this mixed precision."""
    keep_freed_memory()
    reset_accelerator_if(mixed_precision)


def reset_accelerator_if(mixed_precision: str) -> None:
    """accelerate keeps one process-wide state; a later training in the same process with another mixed
    precision resets it (the process group, if any, is kept)."""
    if AcceleratorState._shared_state and AcceleratorState().mixed_precision != mixed_precision:
        AcceleratorState._reset_state()


def move(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> None:
    """Move to ``device``; cast only when the dtype changes (diffusers warns on every cast)."""
    param = next(module.parameters())
    if param.dtype != dtype:
        module.to(device, dtype)
    elif param.device != device:
        module.to(device)


def training_scheduler(model: BaseModel):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DDPMScheduler.from_config(model.pipe.scheduler.config)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)
