"""The training configuration: typed sections read from TOML, validated at load.

``load_config(path, overrides)`` reads a TOML file, applies ``section.key=value`` overrides, and checks
every key against the dataclasses below: an unknown key, a value of the wrong type or out of range raises
a ``ConfigError`` naming the key, the value and what is allowed. Relative paths are resolved against the
config file's folder. ``to_dict`` / ``dump_toml`` give the resolved config back (saved beside the outputs
and in the adapter's metadata).

Sections: [model] [network] [dataset] (+ [[dataset.subsets]]) [training] [optimizer] [noise] [sample] [output].
"""
from __future__ import annotations

import dataclasses
import difflib
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sdlora.errors import ConfigError
from sdlora.trainers.config_toml import dump_toml, save_config, to_dict
from sdlora.trainers.config_values import apply_override, build_section, parse_override, show_value

__all__ = ["TrainConfig", "load_config", "config_from_dict", "check", "to_dict", "dump_toml", "save_config",
           "parse_override", "apply_override"]


def _opt(default: Any = None, *, choices: tuple | None = None, min: float | None = None,
         max: float | None = None, factory=None, doc: str = "") -> Any:
    """A config field with its allowed values, kept in the dataclass field metadata."""
    meta = {"choices": choices, "min": min, "max": max, "doc": doc}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ------------------------------------------------------------------------------------------ sections
@dataclass
class ModelSection:
    path: str = _opt("", doc="diffusers model folder or single checkpoint file")
    prediction_type: str = _opt("", choices=("", "epsilon", "v_prediction"), doc="empty: from the model")
    tokenizer: str = _opt("", doc="tokenizer folder for a single file without one (empty: shipped/embedded)")
    config: str = _opt("", doc="single files: a shipped config name (sd15, sd21, sd2-base, sdxl) or a folder")
    clip_skip: int = _opt(1, min=1, max=12)
    attention: str = _opt("sdpa", choices=("sdpa", "xformers"))
    vae_dtype: str = _opt("fp32", choices=("fp32", "fp16", "bf16"))


@dataclass
class NetworkSection:
    algo: str = _opt("lora", choices=("lora", "locon", "loha", "lokr"))
    rank: int = _opt(8, min=1, max=4096)
    alpha: float | None = _opt(None, min=0, doc="empty: alpha = rank")
    conv_rank: int | None = _opt(None, min=0, max=4096, doc="rank of k×k convs; 0 skips them; empty: rank")
    conv_alpha: float | None = _opt(None, min=0)
    preset: str = _opt("", choices=("", "attn", "attn-mlp", "full", "all"),
                       doc="empty: attn-mlp for lora, full for locon/loha/lokr")
    dora: bool = _opt(False)
    tucker: bool = _opt(False)
    factor: int = _opt(-1, min=-1)
    decompose_both: bool = _opt(False)
    rs_lora: bool = _opt(False)
    dropout: float = _opt(0.0, min=0, max=0.99)
    rank_dropout: float = _opt(0.0, min=0, max=0.99)
    module_dropout: float = _opt(0.0, min=0, max=0.99)
    include: list[str] = _opt(factory=list, doc="regexes over 'component.module.path' added to the preset")
    exclude: list[str] = _opt(factory=list)


_CROPS = ("center", "random")
_ALPHA = ("background", "mask")


@dataclass
class SubsetSection:
    """One image folder with its own settings; empty values inherit the [dataset] ones."""

    path: str = _opt("")
    is_reg: bool = _opt(False, doc="regularisation (class) images for prior preservation")
    repeats: int | None = _opt(None, min=1, max=10000)
    trigger: str | None = _opt(None)
    class_token: str | None = _opt(None)
    caption_extension: str | None = _opt(None)
    fallback_caption: str | None = _opt(None)
    loss_weight: float | None = _opt(None, min=0)
    flip: bool | None = _opt(None)
    crop: str | None = _opt(None, choices=(None,) + _CROPS)
    alpha_mode: str | None = _opt(None, choices=(None,) + _ALPHA)
    shuffle_captions: bool | None = _opt(None)
    keep_tokens: int | None = _opt(None, min=0)
    caption_dropout: float | None = _opt(None, min=0, max=1)
    tag_dropout: float | None = _opt(None, min=0, max=1)


@dataclass
class DatasetSection:
    path: str = _opt("", doc="image folder; kohya N_name sub-folders become subsets with N repeats")
    trigger: str = _opt("", doc="instance token put first in every training caption")
    class_token: str = _opt("", doc="class word: caption of caption-less images and of regularisation images")
    caption_extension: str = _opt(".txt")
    fallback_caption: str = _opt("", doc="caption of images with no caption file (after trigger/class)")
    resolution: int | list[int] = _opt(512, min=8, max=8192, doc="side, or [width, height]")
    repeats: int = _opt(1, min=1, max=10000)
    reg_path: str = _opt("", doc="regularisation (class) image folder")
    reg_repeats: int = _opt(1, min=1, max=10000)
    prior_loss_weight: float = _opt(1.0, min=0)
    min_image_side: int = _opt(64, min=1, doc="images whose shorter side is below this are skipped")
    alpha_mode: str = _opt("background", choices=_ALPHA, doc="RGBA: composite on background, or use as loss mask")
    background: str = _opt("white", doc="a colour name or #rrggbb for compositing transparent images")
    buckets: bool = _opt(True, doc="aspect-ratio bucketing")
    bucket_min_side: int = _opt(256, min=8)
    bucket_max_side: int = _opt(1024, min=8)
    bucket_step: int | None = _opt(None, min=8, doc="bucket sides are multiples of this (a multiple of 8); "
                                   "empty: 64, or less for a small resolution")
    bucket_no_upscale: bool = _opt(False)
    crop: str = _opt("center", choices=_CROPS)
    flip: bool = _opt(False)
    shuffle_captions: bool = _opt(False)
    keep_tokens: int = _opt(0, min=0, doc="tags kept in place at the front when shuffling")
    caption_separator: str = _opt(",")
    caption_dropout: float = _opt(0.0, min=0, max=1, doc="probability that a caption is replaced by ''")
    tag_dropout: float = _opt(0.0, min=0, max=1, doc="probability that each tag is dropped")
    subsets: list[SubsetSection] = _opt(factory=list)


@dataclass
class TrainingSection:
    max_steps: int = _opt(1000, min=1)
    max_epochs: int = _opt(0, min=0, doc="0: no epoch limit")
    batch_size: int = _opt(1, min=1, doc="per device")
    gradient_accumulation: int = _opt(1, min=1)
    learning_rate: float = _opt(1e-4, min=0)
    unet_lr: float | None = _opt(None, min=0, doc="empty: learning_rate")
    te1_lr: float | None = _opt(None, min=0, doc="empty: learning_rate")
    te2_lr: float | None = _opt(None, min=0, doc="empty: te1_lr")
    train_text_encoder: bool = _opt(False)
    te_stop_step: int = _opt(0, min=0, doc="text encoders stop learning after this step; 0: never")
    seed: int = _opt(42, min=0, max=2**63 - 1)
    mixed_precision: str = _opt("no", choices=("no", "fp16", "bf16"))
    gradient_checkpointing: bool = _opt(False)
    compile: bool = _opt(False, doc="torch.compile the UNet with the adapters attached (see trainers/speed.py)")
    compile_backend: str = _opt("inductor", choices=("inductor", "aot_eager", "eager"))
    channels_last: bool = _opt(False, doc="the UNet's convolutions in channels-last memory format")
    cache_latents: bool = _opt(True)
    cache_text_outputs: bool = _opt(True)
    cache_to_disk: bool = _opt(False)
    cache_dir: str = _opt("", doc="empty: <output.dir>/cache")
    save_every_steps: int = _opt(0, min=0)
    save_every_epochs: int = _opt(0, min=0)
    keep_last: int = _opt(3, min=1, doc="periodic adapters and states kept")
    max_grad_norm: float = _opt(1.0, min=0, doc="0: no clipping")
    max_bad_steps: int = _opt(5, min=1, doc="consecutive non-finite steps before training stops")
    min_timestep: int = _opt(0, min=0, max=999)
    max_timestep: int = _opt(1000, min=1, max=1000)


@dataclass
class OptimizerSection:
    name: str = _opt("adamw", choices=("adamw", "adamw8bit", "lion", "adafactor", "prodigy"),
                     doc="prodigy adapts its own step size: use learning_rate = 1.0 with it")
    weight_decay: float = _opt(0.01, min=0)
    betas: list[float] = _opt(factory=lambda: [0.9, 0.999])
    eps: float = _opt(1e-8, min=0)
    fused: bool = _opt(True, doc="adamw: torch's fused kernel (one kernel for all parameters) where the parameters' "
                                 "device has it (CPU, CUDA, ...); false: torch's per-parameter loop")
    scheduler: str = _opt("constant", choices=("constant", "cosine", "linear", "cosine_with_restarts"))
    warmup_steps: int = _opt(0, min=0)
    cycles: int = _opt(1, min=1, doc="restarts of cosine_with_restarts")


@dataclass
class NoiseSection:
    """Noise and loss."""

    offset: float = _opt(0.0, min=0, max=1)
    multires_iterations: int = _opt(0, min=0, max=10)
    multires_discount: float = _opt(0.3, min=0, max=1)
    min_snr_gamma: float = _opt(0.0, min=0, doc="0: off")
    loss: str = _opt("l2", choices=("l2", "l1", "huber"))
    huber_c: float = _opt(0.1, min=0)


@dataclass
class SampleSection:
    prompts: str = _opt("", doc="prompt file (kohya syntax: prompt --n neg --w --h --d seed --l cfg --s steps)")
    every_steps: int = _opt(0, min=0)
    every_epochs: int = _opt(0, min=0)
    at_start: bool = _opt(False)
    steps: int = _opt(20, min=1, max=1000)
    cfg_scale: float = _opt(7.0, min=0)
    width: int = _opt(0, min=0, doc="0: the training resolution")
    height: int = _opt(0, min=0)
    seed: int = _opt(0, min=0)
    negative: str = _opt("")
    sampler: str = _opt("euler a", doc="a sampler name of sdlora generate")


@dataclass
class OutputSection:
    dir: str = _opt("output")
    name: str = _opt("adapter")
    save_dtype: str = _opt("fp16", choices=("fp16", "bf16", "fp32"))
    tensorboard: bool = _opt(True)
    comment: str = _opt("")


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    network: NetworkSection = field(default_factory=NetworkSection)
    dataset: DatasetSection = field(default_factory=DatasetSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    optimizer: OptimizerSection = field(default_factory=OptimizerSection)
    noise: NoiseSection = field(default_factory=NoiseSection)
    sample: SampleSection = field(default_factory=SampleSection)
    output: OutputSection = field(default_factory=OutputSection)

    @property
    def resolution(self) -> tuple[int, int]:
        """(width, height) of the training resolution."""
        r = self.dataset.resolution
        return (r, r) if isinstance(r, int) else (int(r[0]), int(r[1]))

    @property
    def output_dir(self) -> Path:
        return Path(self.output.dir)

    @property
    def adapter_path(self) -> Path:
        return self.output_dir / f"{self.output.name}.safetensors"


# --------------------------------------------------------------------------------------- validation
def config_from_dict(raw: dict, base_dir: str | Path | None = None) -> TrainConfig:
    """A validated TrainConfig from plain data (a parsed TOML document)."""
    hints = typing.get_type_hints(TrainConfig)
    sections = [f.name for f in dataclasses.fields(TrainConfig)]
    values = {}
    for name, body in raw.items():
        if name not in sections:
            near = difflib.get_close_matches(str(name), sections, n=1)
            hint = f"; did you mean [{near[0]}]?" if near else ""
            raise ConfigError(f"[{name}] is not a config section (use {', '.join(f'[{s}]' for s in sections)}){hint}")
        if not isinstance(body, dict):
            raise ConfigError(f"{name} = {show_value(body)} is not allowed: [{name}] must be a table")
        values[name] = build_section(hints[name], body, name)
    cfg = TrainConfig(**values)
    if base_dir is not None:
        _absolute_paths(cfg, Path(base_dir))
    check(cfg)
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                raw: dict | None = None) -> TrainConfig:
    """Read ``path`` (TOML), apply ``overrides`` (``section.key=value``) and validate."""
    base_dir = None
    if raw is None:
        raw = {}
        if path is not None:
            path = Path(path)
            if not path.is_file():
                raise ConfigError(f"{path}: no such config file; copy one from configs/ to start")
            try:
                raw = tomllib.loads(path.read_text(encoding="utf-8"))
            except tomllib.TOMLDecodeError as exc:
                raise ConfigError(f"{path}: not valid TOML ({exc}); fix the line it names") from None
            except UnicodeDecodeError:
                raise ConfigError(f"{path}: not a UTF-8 text file; save the config as UTF-8") from None
            base_dir = path.resolve().parent
    for text in overrides or []:
        parts, value = parse_override(text)
        apply_override(raw, parts, value)
    try:
        return config_from_dict(raw, base_dir if base_dir is not None else Path.cwd())
    except ConfigError as exc:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{exc}") from None


def _absolute_against(base: Path, value: str) -> str:
    if not value:
        return value
    p = Path(value).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def _absolute_paths(cfg: TrainConfig, base: Path) -> None:
    cfg.model.path = _absolute_against(base, cfg.model.path)
    cfg.model.tokenizer = _absolute_against(base, cfg.model.tokenizer)
    if cfg.model.config and ("/" in cfg.model.config or "\\" in cfg.model.config):
        cfg.model.config = _absolute_against(base, cfg.model.config)
    cfg.dataset.path = _absolute_against(base, cfg.dataset.path)
    cfg.dataset.reg_path = _absolute_against(base, cfg.dataset.reg_path)
    for s in cfg.dataset.subsets:
        s.path = _absolute_against(base, s.path)
    cfg.training.cache_dir = _absolute_against(base, cfg.training.cache_dir)
    cfg.sample.prompts = _absolute_against(base, cfg.sample.prompts)
    cfg.output.dir = _absolute_against(base, cfg.output.dir)


def check(cfg: TrainConfig) -> None:
    """Rules that involve more than one key."""
    d, t = cfg.dataset, cfg.training
    if not cfg.model.path:
        raise ConfigError("model.path is empty: name a diffusers model folder or a checkpoint file")
    if not d.path and not d.subsets:
        raise ConfigError("dataset.path is empty and there is no [[dataset.subsets]]: name an image folder")
    for i, s in enumerate(d.subsets):
        if not s.path:
            raise ConfigError(f"dataset.subsets[{i}].path is empty: name an image folder")
    if isinstance(d.resolution, list) and len(d.resolution) != 2:
        raise ConfigError(f"dataset.resolution = {show_value(d.resolution)} is not allowed: use one side or "
                          "[width, height]")
    sides = [d.resolution] if isinstance(d.resolution, int) else d.resolution
    if any(side % 8 for side in sides):
        raise ConfigError(f"dataset.resolution = {show_value(d.resolution)} is not allowed: sides must be multiples of 8 "
                          "(the VAE works in 8-pixel cells), e.g. 512 or [768, 512]")
    for where, ext in [("dataset.caption_extension", d.caption_extension)] + [
            (f"dataset.subsets[{i}].caption_extension", s.caption_extension) for i, s in enumerate(d.subsets)]:
        if ext is not None and not ext.startswith("."):
            raise ConfigError(f"{where} = {show_value(ext)} is not allowed: write it with its dot, e.g. \".txt\"")
    if d.bucket_step is not None and d.bucket_step % 8:
        raise ConfigError(f"dataset.bucket_step = {d.bucket_step} is not allowed: use a multiple of 8")
    if d.bucket_min_side > d.bucket_max_side:
        raise ConfigError(f"dataset.bucket_min_side = {d.bucket_min_side} is larger than dataset.bucket_max_side "
                          f"= {d.bucket_max_side}")
    from PIL import ImageColor

    try:
        ImageColor.getrgb(d.background)
    except ValueError:
        raise ConfigError(f"dataset.background = {show_value(d.background)} is not a colour: use a name such as "
                          "\"white\" or a hex value such as \"#808080\"") from None
    if t.min_timestep >= t.max_timestep:
        raise ConfigError(f"training.min_timestep = {t.min_timestep} must be below training.max_timestep = "
                          f"{t.max_timestep}")
    if len(cfg.optimizer.betas) != 2 or not all(0 <= b < 1 for b in cfg.optimizer.betas):
        raise ConfigError(f"optimizer.betas = {show_value(cfg.optimizer.betas)} is not allowed: use two numbers in "
                          "[0, 1), e.g. [0.9, 0.999]")
    if not cfg.output.name or any(c in cfg.output.name for c in "/\\"):
        raise ConfigError(f"output.name = {show_value(cfg.output.name)} is not allowed: use a file name without "
                          "folders (the adapter is written to <output.dir>/<output.name>.safetensors)")
