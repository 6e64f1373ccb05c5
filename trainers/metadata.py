"""What a trained adapter file says about its training: kohya's ``ss_*`` keys (read by A1111, Forge,
ComfyUI and civitai), the trigger words, and the resolved config (``sdlora_config``), on top of the
network and model keys that ``sdlora.adapters.build_metadata`` writes."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from sdlora import adapters
from sdlora.networks import Network
from sdlora.trainers.config import TrainConfig, to_dict
from sdlora.trainers.data import Dataset
from sdlora.trainers.optim import learning_rates


@dataclass
class Progress:
    """Where the training stands when a file is written."""

    step: int
    epochs: int  # epochs begun
    total_steps: int
    global_batch: int
    started_at: float
    finished: bool
    latents_cached: bool


def training_keys(cfg: TrainConfig, ds: Dataset, p: Progress) -> dict:
    t = cfg.training
    lrs = learning_rates(t)
    return {
        "ss_num_train_images": str(sum(ds.subsets[ds.items[i].subset].repeats for i in ds.train_items())),
        "ss_num_reg_images": str(len(ds.reg_items())),
        "ss_num_epochs": str(p.epochs),
        "ss_steps": str(p.step),
        "ss_max_train_steps": str(p.total_steps),
        "ss_learning_rate": str(t.learning_rate),
        "ss_unet_lr": str(lrs["unet"]),
        "ss_text_encoder_lr": str(lrs["te1"] if t.train_text_encoder else 0),
        "ss_batch_size_per_device": str(t.batch_size),
        "ss_total_batch_size": str(p.global_batch * t.gradient_accumulation),
        "ss_gradient_accumulation_steps": str(t.gradient_accumulation),
        "ss_optimizer": cfg.optimizer.name,
        "ss_lr_scheduler": cfg.optimizer.scheduler,
        "ss_lr_warmup_steps": str(cfg.optimizer.warmup_steps),
        "ss_mixed_precision": t.mixed_precision,
        "ss_max_grad_norm": str(t.max_grad_norm),
        "ss_noise_offset": str(cfg.noise.offset),
        "ss_multires_noise_iterations": str(cfg.noise.multires_iterations),
        "ss_min_snr_gamma": str(cfg.noise.min_snr_gamma),
        "ss_clip_skip": str(cfg.model.clip_skip),
        "ss_prior_loss_weight": str(cfg.dataset.prior_loss_weight),
        "ss_cache_latents": str(p.latents_cached),
        "ss_enable_bucket": str(cfg.dataset.buckets),
        "ss_flip_aug": str(cfg.dataset.flip),
        "ss_shuffle_caption": str(cfg.dataset.shuffle_captions),
        "ss_keep_tokens": str(cfg.dataset.keep_tokens),
        "ss_caption_dropout_rate": str(cfg.dataset.caption_dropout),
        "ss_seed": str(t.seed),
        "ss_training_comment": cfg.output.comment,
        "ss_tag_frequency": ds.tag_frequency(),
        "ss_dataset_dirs": ds.dataset_dirs(),
        "ss_training_started_at": str(p.started_at),
        "ss_training_finished_at": str(time.time()) if p.finished else "",
        "ss_sd_model_name": Path(cfg.model.path).name,
    }


def adapter_metadata(network: Network, family: str, prediction_type: str, cfg: TrainConfig, ds: Dataset,
                     p: Progress) -> dict[str, str]:
    """Every metadata string of a trained adapter file."""
    triggers = sorted({s.trigger for s in ds.subsets if s.trigger})
    return adapters.build_metadata(network, family, v_prediction=prediction_type == "v_prediction",
                                   name=cfg.output.name, trigger_words=triggers, config=to_dict(cfg),
                                   training=training_keys(cfg, ds, p), resolution=cfg.resolution)
