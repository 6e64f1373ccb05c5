"""The training loop: from a validated config to an adapter file.

``Trainer(cfg).run()`` opens the model, scans the data, creates the Network on the UNet (and the text
encoders when they are trained), fills the caches, and runs ``training.max_steps`` optimiser steps:

  for each step: up to ``gradient_accumulation`` global batches (per-device batch × processes, one bucket
  each); this process takes its rows; latents (cached or encoded now), text conditioning (cached or
  encoded, with gradients when the encoders learn), SDXL size conditioning; noise and timesteps from a
  generator seeded by (seed, step, micro-batch); the loss (see noise.py) summed over the rows and divided by
  the global batch size, so the gradients summed over processes (one all-reduce) equal one process's.

A non-finite loss or gradient skips the step (reported); ``training.max_bad_steps`` in a row stop the run
with the last good adapter saved. Ctrl+C saves a resumable state and the current adapter. Everything random
comes from (seed, epoch, ...) or the state, so ``--resume`` continues exactly (bitwise on CPU).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator

from sdlora import adapters
from sdlora.errors import ConfigError, SdloraError
from sdlora.models import BaseModel, open_model
from sdlora.networks import Network
from sdlora.files.images import BadImage
from sdlora.files.tensors import display_path
from sdlora.trainers import buckets, resume as resumes, safety, speed, state as states
from sdlora.trainers.batches import epoch_batches, local_slice, rng_for
from sdlora.trainers.cache import fit
from sdlora.trainers.captions import augment
from sdlora.trainers.config import TrainConfig, save_config, to_dict
from sdlora.trainers.safety import TrainingStopped
from sdlora.trainers.data import Dataset, full_caption, scan
from sdlora.models.encode import encode_pixels, encode_text, time_ids, vae_factor
from sdlora.trainers.metadata import Progress, adapter_metadata
from sdlora.trainers.control import Control
from sdlora.trainers.events import NO_EVENTS, EventLog
from sdlora.trainers.monitor import Monitor
from sdlora.models.noise import add_noise, fixed_noise, snr_weight, target
from sdlora.trainers.noise import draw, per_sample_loss
from sdlora.trainers.optim import learning_rates, make_optimizer, make_scheduler, param_groups
from sdlora.trainers.samples import generate as generate_samples, read_prompts
from sdlora.trainers.setup import (DTYPES, build_caches, crop_after_flip, finish_step_on_interrupt, network_config,
                                   prepare_model, prepare_process, seed_everything, training_scheduler)

@dataclass
class TrainResult:
    adapter: Path | None  # the file written last (final, interrupted or last good)
    step: int  # optimiser steps done, counting earlier runs of a resumed training
    losses: dict[int, float] = field(default_factory=dict)  # step -> loss, this run's steps
    skipped: list[int] = field(default_factory=list)  # steps skipped for non-finite values
    cache: dict[str, int] = field(default_factory=dict)
    interrupted: bool = False
    state: Path | None = None  # the last state written


@dataclass
class Batch:
    latents: torch.Tensor  # (b, 4, h, w)
    mask: torch.Tensor | None  # (b, 1, h, w)
    hidden: torch.Tensor  # (b, 77, D)
    pooled: torch.Tensor | None
    time_ids: torch.Tensor | None  # (b, 6)
    weights: torch.Tensor  # (b,)
    kept: list[int] | None = None  # the rows asked for that are here, when an image was lost (else all)


class Trainer:
    """One training run. ``log`` receives the reports printed before and after training."""
    events: EventLog = NO_EVENTS  # <output.dir>/events.jsonl while run() runs (main process)

    def __init__(self, cfg: TrainConfig, resume: str | Path | None = None, log: Callable[[str], None] = print,
                 model: BaseModel | None = None):
        self.cfg = cfg
        prepare_process(cfg.training.mixed_precision)
        self.accelerator = Accelerator(mixed_precision=cfg.training.mixed_precision)
        self.main = self.accelerator.is_main_process
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.device = self.accelerator.device
        self._log = log
        self.on_step: list[Callable[["Trainer", int], None]] = []  # called after every optimiser step
        self.resume_from = states.load_state(resume) if resume else None
        t = cfg.training
        seed_everything(t.seed)

        # data
        self.dataset: Dataset = scan(cfg.dataset)
        buckets.assign(self.dataset, cfg.dataset, cfg.resolution)
        self.log("dataset:\n" + self.dataset.report.format())
        self.log("buckets:\n" + buckets.report(self.dataset))
        self.prompts = []
        if cfg.sample.prompts:
            self.prompts = read_prompts(cfg.sample, cfg.resolution)
        elif cfg.sample.every_steps or cfg.sample.every_epochs or cfg.sample.at_start:
            raise ConfigError("sample.every_steps/every_epochs/at_start is set but sample.prompts names no file")

        # model and network
        self.model = model or open_model(cfg.model.path, prediction_type=cfg.model.prediction_type or None,
                                         tokenizer=cfg.model.tokenizer or None, config=cfg.model.config or None)
        self.family, self.prediction_type = self.model.family, self.model.prediction_type
        self.weight_dtype = DTYPES[t.mixed_precision]
        prepare_model(self.model, cfg, self.device, self.weight_dtype, self.log)
        self.network = Network.create(self.model.components(), network_config(cfg, self.family))
        if not len(self.network):
            raise ConfigError("[network] selects no layer of the model: check network.preset, include and exclude")
        self.network.freeze_bases()
        self.network.to(self.device, torch.float32)
        self.network.attach()
        self.network.train()
        speed.apply_memory_format(self.model.unet, t.channels_last)
        speed.compile_unet(self.model.unet, t.compile, t.compile_backend)
        self.log("network:\n" + self.network.format_report())
        self.params = [p for p in self.network.parameters() if p.requires_grad]
        self.trains_te = any(c in ("te1", "te2") for c in self.network.components())

        self._build_schedule()

        # caches
        caches = build_caches(cfg, self.model, self.dataset, self.device, self.trains_te, self._encode_text, self.log,
                              owned=model is None)
        self.latent_cache, self.text_cache = caches.latent, caches.text
        self.cached_subsets, self.cache_stats = caches.cached_subsets, caches.stats

        # position
        self.step, self.epoch, self.position, self.bad_in_row = 0, 0, 0, 0
        self.started_at = time.time()
        if self.resume_from is not None:
            resumes.restore(self, self.resume_from)
        elif cfg.output_dir.is_dir() and any(cfg.output_dir.glob("state-*/trainer.json")):
            self.log(f"note: {cfg.output_dir} holds states of an earlier run; this run starts at step 0 and "
                     f"moves them aside when it starts (to continue that run instead: --resume {cfg.output_dir})")
        self.first_step = self.step

    # ------------------------------------------------------------------------------------ setup
    def _build_schedule(self) -> None:
        """Steps per epoch and in all, the optimiser and LR scheduler, the noise schedule's alphas."""
        cfg, t = self.cfg, self.cfg.training
        self.global_batch = t.batch_size * self.world
        self.batches_per_epoch = len(epoch_batches(self.dataset, t.seed, 0, self.global_batch))
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / t.gradient_accumulation)
        self.total_steps = t.max_steps
        if t.max_epochs:
            self.total_steps = min(self.total_steps, t.max_epochs * self.steps_per_epoch)
        optimizer = make_optimizer(cfg.optimizer, param_groups(self.network, learning_rates(t)))
        if cfg.optimizer.name == "prodigy" and t.learning_rate < 0.1:
            self.log(f"note: Prodigy scales its own steps and expects training.learning_rate = 1.0, not {t.learning_rate:g}")
        self.optimizer = self.accelerator.prepare(optimizer)
        self.scheduler = make_scheduler(optimizer, cfg.optimizer, self.total_steps, t.te_stop_step)
        noise_scheduler = training_scheduler(self.model)
        self.alphas_cumprod = noise_scheduler.alphas_cumprod.float()
        self.max_t = min(t.max_timestep, int(noise_scheduler.config.num_train_timesteps))


    def log(self, text: str) -> None:
        if self.main and text:
            self._log(display_path(text))  # a file name that is not UTF-8 prints as \xNN

    def _encode_text(self, captions: list[str]):
        hidden, pooled = encode_text(self.model, captions, self.cfg.model.clip_skip)
        return hidden.to(self.device), (pooled.to(self.device) if pooled is not None else None)

    # ------------------------------------------------------------------------------- one step
    def _fit(self, index: int, subset, flip: bool, crop: str, rng):
        """Item ``index`` decoded and fitted to its bucket; None (and a line saying so) when it cannot be read
        any more: it is left out from then on, as a bad image is at scan time."""
        if index in self.dataset.lost:
            return None
        try:
            return fit(self.dataset.items[index], subset, flip, crop, rng, self.cfg.dataset.background)
        except BadImage as exc:
            self.log(self.dataset.lose(index, str(exc)))
            return None

    def _batch(self, indices: list[int], epoch: int, batch_index: int, offset: int, augmented: bool = True
               ) -> Batch | None:
        """This process's rows ``indices`` (global positions from ``offset``) of a global batch; without
        ``augmented`` the images are centre-cropped, unflipped, with their full captions. Rows whose image
        became unreadable are dropped (``Batch.kept``); None when no row is left."""
        ds, cfg = self.dataset, self.cfg
        items = [ds.items[i] for i in indices]
        subs = [ds.subsets[it.subset] for it in items]
        rngs = [rng_for(cfg.training.seed, 3, epoch, batch_index, offset + k) for k in range(len(items))]
        if augmented:
            flips = [bool(s.flip and r.random() < 0.5) for s, r in zip(subs, rngs)]
            captions = [augment(it, s, r, cfg.dataset.caption_separator) for it, s, r in zip(items, subs, rngs)]
        else:
            flips, captions, rngs = [False] * len(items), [full_caption(it) for it in items], [None] * len(items)
        latents: list = [None] * len(items)
        masks: list = [None] * len(items)
        crops: list = [None] * len(items)
        cached = [k for k, it in enumerate(items) if self.latent_cache is not None and it.subset in self.cached_subsets
                  and indices[k] not in ds.lost]
        if cached:
            entries = self.latent_cache.get([items[k] for k in cached], ds.subsets, [flips[k] for k in cached])
            for k, e in zip(cached, entries):
                latents[k], masks[k] = e["latents"], e.get("mask")
                crops[k] = crop_after_flip(items[k], flips[k])
        fitted = {k: self._fit(indices[k], subs[k], flips[k], subs[k].crop if augmented else "center", rngs[k])
                  for k in range(len(items)) if latents[k] is None}
        kept = [k for k in range(len(items)) if latents[k] is not None or fitted[k] is not None]
        if not kept:
            return None
        if len(kept) < len(items):
            items, subs, captions, latents, masks, crops = ([x[k] for k in kept] for x in
                                                            (items, subs, captions, latents, masks, crops))
            fitted = {n: fitted[k] for n, k in enumerate(kept) if k in fitted}
        fresh = sorted(fitted)
        if fresh:
            samples = [fitted[k] for k in fresh]
            encoded = encode_pixels(self.model.vae, torch.stack([s.pixels for s in samples]).to(self.device),
                                    self.model.latent_scale)
            for k, s, lat in zip(fresh, samples, encoded):
                latents[k], crops[k] = lat, s.crop_top_left
                if s.mask is not None:
                    masks[k] = torch.nn.functional.interpolate(s.mask[None], size=lat.shape[-2:], mode="area")[0]
        lat = torch.stack([x.to(self.device) for x in latents])
        mask = None
        if any(m is not None for m in masks):
            ones = torch.ones_like(lat[:, :1])
            mask = torch.stack([m.to(self.device) if m is not None else ones[0] for m in masks])
        if self.text_cache is not None:
            entries = self.text_cache.get(captions)
            hidden = torch.stack([e["hidden"] for e in entries]).to(self.device)
            pooled = torch.stack([e["pooled"] for e in entries]).to(self.device) if "pooled" in entries[0] else None
        else:
            with torch.set_grad_enabled(self.trains_te), self.accelerator.autocast():
                hidden, pooled = self._encode_text(captions)
        tids = None
        if self.family == "sdxl":
            bw, bh = items[0].bucket
            tids = time_ids([(it.size[1], it.size[0]) for it in items], crops, (bh, bw)).to(self.device)
        weights = torch.tensor([s.loss_weight for s in subs], dtype=torch.float32, device=self.device)
        return Batch(lat, mask, hidden, pooled, tids, weights, kept if len(kept) < len(indices) else None)

    def _loss(self, batch: Batch, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """Per-sample weighted losses (b,) of ``batch`` with the given noise and timesteps."""
        cfg, dtype = self.cfg, self.weight_dtype
        noise, timesteps = noise.to(self.device), timesteps.to(self.device)
        noisy = add_noise(batch.latents, noise, timesteps, self.alphas_cumprod)
        added = None
        if batch.pooled is not None:
            added = {"text_embeds": batch.pooled.to(dtype), "time_ids": batch.time_ids.to(dtype)}
        with self.accelerator.autocast():
            pred = self.model.unet(noisy.to(dtype), timesteps, batch.hidden.to(dtype),
                                   added_cond_kwargs=added, return_dict=False)[0]
        tgt = target(batch.latents, noise, timesteps, self.alphas_cumprod, self.prediction_type)
        loss = per_sample_loss(pred, tgt, cfg.noise.loss, cfg.noise.huber_c, batch.mask)
        return loss * snr_weight(timesteps, self.alphas_cumprod, cfg.noise.min_snr_gamma, self.prediction_type) * batch.weights

    def _micro(self, global_batch: list[int], epoch: int, batch_index: int, step: int, micro: int, count: int
               ) -> torch.Tensor | None:
        """This process's share of the loss of one global batch (already scaled), or None if it has no rows."""
        gen = torch.Generator().manual_seed(int(rng_for(self.cfg.training.seed, 4, step, micro).integers(2 ** 62)))
        start, stop = local_slice(global_batch, self.rank, self.world)
        bucket = self.dataset.items[global_batch[0]].bucket
        f = vae_factor(self.model.vae)
        shape = (len(global_batch), self.model.unet.config.in_channels, bucket[1] // f, bucket[0] // f)
        d = draw(shape, gen, self.cfg.noise, self.cfg.training.min_timestep, self.max_t).rows(start, stop)
        if stop == start:
            return None
        batch = self._batch(global_batch[start:stop], epoch, batch_index, start)
        if batch is None:
            return None
        rows = batch.kept if batch.kept is not None else slice(None)
        return self._loss(batch, d.noise[rows], d.timesteps[rows]).sum() / (len(global_batch) * count)

    def _sync_gradients(self) -> None:
        """Sum adapter gradients over processes (one flat all-reduce)."""
        if self.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = self.accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="sum")
        offset = 0
        for p, g in zip(self.params, grads):
            n = g.numel()
            p.grad = flat[offset:offset + n].view_as(p).clone()
            offset += n

    def train_step(self, group: list[list[int]], epoch: int, first_batch: int) -> tuple[float | None, float | None]:
        """One optimiser step over the global batches ``group``; returns (loss, grad norm), None when skipped."""
        # One host sync per step (speed.py): the losses and the finite check stay on the device until the
        # gradient norm is known; a micro-batch with a non-finite loss is still backpropagated (the step is
        # skipped and its gradients dropped either way, as before).
        stats = torch.zeros(2, dtype=torch.float64, device=self.device)  # (loss sum, non-finite count)
        for m, global_batch in enumerate(group):
            loss = self._micro(global_batch, epoch, first_batch + m, self.step, m, len(group))
            if loss is None:
                continue
            self.accelerator.backward(loss)
            stats = stats + speed.loss_stats(loss.detach())
        if self.world > 1:
            stats = self.accelerator.reduce(stats, reduction="sum")
        self._sync_gradients()
        max_norm = self.cfg.training.max_grad_norm or float("inf")
        taken = self.accelerator.scaler is None or not speed.read_step(stats)[1]  # fp16: unscale taken steps only
        total_norm = self.accelerator.clip_grad_norm_(self.params, max_norm) if taken else None
        loss_value, bad, norm = speed.read_step(stats, total_norm)
        if not bad:
            if not math.isfinite(norm):
                if self.cfg.training.mixed_precision == "fp16":
                    self.optimizer.step()  # the loss scaler skips the update and lowers its scale
                    self.optimizer.zero_grad(set_to_none=True)
                    self.scheduler.step()
                    return loss_value, None
                bad = True
        if bad:
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            return None, None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        return loss_value, norm

    # ----------------------------------------------------------------------------------- saving
    def save_adapter(self, path: Path, finished: bool = False) -> Path:
        if self.main:
            progress = Progress(self.step, self.epoch + (1 if self.position else 0), self.total_steps,
                                self.global_batch, self.started_at, finished, self.latent_cache is not None)
            meta = adapter_metadata(self.network, self.family, self.prediction_type, self.cfg, self.dataset, progress)
            adapters.save_adapter(self.network, path, self.family, dtype=self.cfg.output.save_dtype, metadata=meta)
            self.events.save(self.step, path)
        return path

    def save_state(self) -> Path:
        """Write state-<step> (every process adds its RNG state); keeps the last training.keep_last."""
        out = self.cfg.output_dir
        trainer = {"step": self.step, "epoch": self.epoch, "position": self.position, "bad_in_row": self.bad_in_row,
                   "global_batch": self.global_batch, "world_size": self.world, "started_at": self.started_at,
                   "config": to_dict(self.cfg)}
        scaler = self.accelerator.scaler.state_dict() if self.accelerator.scaler is not None else None
        folder = states.state_dir(out, self.step)
        if self.main:
            folder = states.save_state(out, self.step, self.network, self.optimizer, self.scheduler, trainer, scaler)
        self.accelerator.wait_for_everyone()
        if not self.main:
            states.save_rng(folder, self.rank)
        self.accelerator.wait_for_everyone()
        if self.main:
            states.prune(out, self.cfg.training.keep_last)
        return folder

    def _periodic_save(self) -> None:
        name = self.cfg.output.name
        path = self.cfg.output_dir / f"{name}-step{self.step:06d}.safetensors"
        self.save_adapter(path)
        self.save_state()
        if self.main:
            kept = sorted(self.cfg.output_dir.glob(f"{name}-step[0-9]*.safetensors"))
            for old in kept[:-self.cfg.training.keep_last]:
                old.unlink(missing_ok=True)
        self.log(f"saved {path.name} and state-{self.step}")

    def _params_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.network.parameters())

    # ---------------------------------------------------------------------------------- samples
    def sample(self, monitor: Monitor | None = None) -> list:
        if not self.prompts or not self.main:
            return []
        out = generate_samples(self.model, self.network, self.prompts, self.cfg.output_dir / "samples",
                       f"step{self.step:06d}")
        if monitor is not None:
            monitor.images(self.step, out)
        self.events.sample(self.step, [p for p, _ in out])
        return out

    def measure_loss(self, seed: int = 0, timesteps: tuple[int, ...] = (100, 300, 500, 700, 900)) -> float:
        """The mean loss over every training image at fixed timesteps and fixed noise (no augmentation,
        adapters in eval mode): a deterministic figure to compare before and after training."""
        ds, total, count = self.dataset, 0.0, 0
        was = self.network.training
        self.network.eval()
        try:
            with torch.no_grad():
                for n, i in enumerate(ds.train_items()):
                    b = self._batch([i], 0, n, 0, augmented=False)
                    if b is None:
                        continue
                    b.weights = torch.ones_like(b.weights)
                    for t in timesteps:
                        noise = fixed_noise(tuple(b.latents.shape), seed, n, t)
                        total += float(self._loss(b, noise, torch.tensor([t])).sum())
                        count += 1
        finally:
            self.network.train(was)
        return total / max(count, 1)

    # ------------------------------------------------------------------------------------- run
    def run(self) -> TrainResult:
        cfg, t, out = self.cfg, self.cfg.training, self.cfg.output_dir
        if self.main:
            safety.prepare_output(out, cfg.output.name, self.resume_from is None, self.log)
            save_config(cfg, out / "config.toml")
        self.accelerator.wait_for_everyone()
        result = TrainResult(adapter=None, step=self.step, cache=dict(self.cache_stats))
        self.log(f"training {self.total_steps} steps ({self.steps_per_epoch} per epoch, global batch "
                 f"{self.global_batch} × {t.gradient_accumulation} accumulation) on {self.device}"
                 + (f", resuming at step {self.step}" if self.step else ""))
        monitor = Monitor(self.total_steps, self.step, out / "logs" if cfg.output.tensorboard else None, self.main)
        self.events = EventLog(out, self.total_steps, self.step) if self.main else NO_EVENTS
        control = Control(out, enabled=self.world == 1)  # "sample now" / "save now" requests (control.py)
        try:
            if cfg.sample.at_start and self.step == 0:
                self.sample(monitor)
            order: tuple[int, list] = (-1, [])
            while self.step < self.total_steps:
                if order[0] != self.epoch:
                    order = (self.epoch, epoch_batches(self.dataset, t.seed, self.epoch, self.global_batch))
                batches = order[1]
                group = batches[self.position:self.position + t.gradient_accumulation]
                with finish_step_on_interrupt():  # Ctrl+C lands between steps, never inside one
                    loss, norm = self.train_step(group, self.epoch, self.position)
                    self.step += 1
                    self.position += len(group)
                    epoch_done = self.position >= len(batches)
                    if epoch_done:
                        self.epoch, self.position = self.epoch + 1, 0
                self._record(result, monitor, loss, norm)
                self._cadence(monitor, epoch_done)
                if epoch_done and t.max_epochs and self.epoch >= t.max_epochs:
                    break
                for callback in self.on_step:
                    callback(self, self.step)
                control.handle(self, monitor)
        except KeyboardInterrupt:
            monitor.close()
            path = self.save_adapter(out / f"{cfg.output.name}-step{self.step:06d}.safetensors")
            result.state = self.save_state()
            result.adapter, result.step, result.interrupted = path, self.step, True
            self.events.close(self.step, "interrupted")
            self.log(f"interrupted at step {self.step}: saved {path} and {result.state}; continue with "
                     f"sdlora train {out / 'config.toml'} --resume {out}")
            return result
        except TrainingStopped:
            raise
        except (SdloraError, OSError) as exc:  # an image gone, a full disk, ...: save what there is first
            monitor.close()
            raise safety.emergency_stop(self, exc) from None
        monitor.close()
        result.adapter = self.save_adapter(cfg.adapter_path, finished=True)
        result.state = self.save_state()
        result.step = self.step
        self.events.close(self.step, "done")
        self.log(f"done: {self.step} steps; adapter {result.adapter}; state {result.state}")
        return result

    def _record(self, result: TrainResult, monitor: Monitor, loss: float | None, norm: float | None) -> None:
        """Log one finished step; a skipped (non-finite) one counts towards training.max_bad_steps."""
        lrs = {g.get("name", str(i)): g["lr"] for i, g in enumerate(self.optimizer.param_groups)}
        if loss is None:
            self.bad_in_row += 1
            result.skipped.append(self.step)
            monitor.write(f"step {self.step}: non-finite loss or gradients; the step was skipped "
                          f"({self.bad_in_row} in a row)")
            if self.bad_in_row >= self.cfg.training.max_bad_steps:
                monitor.close()
                self._stop_bad()
        else:
            self.bad_in_row = 0
            result.losses[self.step] = loss
        monitor.step(self.step, loss, lrs, norm)
        self.events.step(self.step, loss, lrs, norm)

    def _cadence(self, monitor: Monitor, epoch_done: bool) -> None:
        """The saves and samples due after this step (by step count, and by epoch when one just ended)."""
        cfg, t = self.cfg, self.cfg.training
        if t.save_every_steps and self.step % t.save_every_steps == 0 and self.step < self.total_steps:
            self._periodic_save()
        if cfg.sample.every_steps and self.step % cfg.sample.every_steps == 0:
            self.sample(monitor)
        if epoch_done:
            if t.save_every_epochs and self.epoch % t.save_every_epochs == 0 and self.step < self.total_steps:
                self._periodic_save()
            if cfg.sample.every_epochs and self.epoch % cfg.sample.every_epochs == 0:
                self.sample(monitor)

    def _stop_bad(self) -> None:
        out, name = self.cfg.output_dir, self.cfg.output.name
        path = out / f"{name}-last-good.safetensors"
        if self._params_finite():
            self.save_adapter(path)
            saved = f"the adapter as of the last good step is saved as {path}"
        else:
            saved = "the adapter itself holds non-finite values, so nothing new was saved; use the last state-N"
        raise TrainingStopped(
            f"training stopped at step {self.step}: {self.bad_in_row} steps in a row had a non-finite loss or "
            f"gradients ({saved}). Lower training.learning_rate, set training.max_grad_norm, or use bf16 instead "
            "of fp16")


def train(cfg: TrainConfig, resume: str | Path | None = None, log: Callable[[str], None] = print) -> TrainResult:
    """Run a training from a validated config (see ``config.load_config``)."""
    return Trainer(cfg, resume=resume, log=log).run()
