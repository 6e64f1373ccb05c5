"""The inputs every side of a benchmark reads: model folders, single files, data sets and adapter files.

Everything is built offline, once, under a work folder (default ``$TMPDIR/sdlora-bench``) and reused by
later runs (``--fresh`` rebuilds). Speed does not depend on the weights' values, so where trained weights
are not at hand the models hold random weights of the real architecture, and RESULTS.md says which.

- ``toy``: the embedded default model's architecture (``sdlora.toy.pretrain.build_models``: 4.1M-param
  UNet on 8×8 latents, 32 px images, the toy world's word-level tokenizer). ``sdlora/assets/default`` is
  used when it exists; otherwise the same architecture with random weights is saved as a diffusers folder
  in fp16, as the embedded model is.
- ``sd15``: the full-size SD 1.5 pipeline from the configs shipped in ``sdlora/assets/configs/sd15``
  (UNet 860M, VAE 84M, CLIP-L text encoder 123M; random weights; the toy tokenizer, since the CLIP
  vocabulary is not available offline: the encoder still reads 77 tokens), a diffusers folder in fp16 and
  the same as one original-layout single file (fp16).
- ``demo``: ``datasets/demo`` (20 captioned 32 px images); ``demo<N>``: the same images upscaled to N px.
- LoRA files (rank 16, attn-mlp preset, UNet + text encoder, small random values): sdlora's own (kohya)
  format for sdlora, and the diffusers/PEFT format (sdlora's ``peft`` dialect) for the diffusers peer.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EMBEDDED_DEFAULT = REPO / "sdlora" / "assets" / "default"
DEMO = REPO / "datasets" / "demo"
SD15_CONFIGS = REPO / "sdlora" / "assets" / "configs" / "sd15"
STAMP = "fixtures-v1"
LORA_RANK = 16


def _ready(folder: Path) -> bool:
    return (folder / ".done").is_file() and (folder / ".done").read_text() == STAMP


def _mark(folder: Path) -> None:
    (folder / ".done").write_text(STAMP)


def _fresh(folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    return folder


# ------------------------------------------------------------------------------------------- toy
def toy_model(work: Path) -> tuple[Path, str]:
    """(diffusers folder, what it is) of the embedded default model's architecture."""
    if (EMBEDDED_DEFAULT / "model_index.json").is_file():
        return EMBEDDED_DEFAULT, "sdlora/assets/default (the embedded default model, trained weights)"
    folder = work / "toy-model"
    if not _ready(folder):
        from sdlora.toy.pretrain import write_untrained

        _fresh(folder)
        write_untrained(folder, seed=0)
        _mark(folder)
    return folder, ("random weights, the embedded default model's architecture (sdlora.toy.pretrain."
                    "build_models + toyworld tokenizer; sdlora/assets/default did not exist yet), fp16 diffusers folder")


def _toy_tag() -> str:
    """Fixtures derived from the toy model are kept apart per source (embedded weights or random)."""
    return "embedded" if (EMBEDDED_DEFAULT / "model_index.json").is_file() else "random"


def toy_single_file(work: Path) -> Path:
    """The toy model as one original-layout .safetensors file (fp16), written by sdlora."""
    folder, _ = toy_model(work)
    out = work / f"toy-single-{_toy_tag()}" / "toy.safetensors"
    if not _ready(out.parent):
        from sdlora.models import open_model, save_model

        _fresh(out.parent)
        save_model(open_model(folder), out, dtype="fp16")
        _mark(out.parent)
    return out


def _random_lora(models: dict, family: str, folder: Path, name: str, seed: int, peft_too: bool) -> dict[str, str]:
    """One LoRA (rank 16, attn-mlp, UNet + text encoder) with small random values, saved by sdlora."""
    import torch

    from sdlora import adapters
    from sdlora.networks import Network, NetworkConfig

    torch.manual_seed(seed)
    net = Network.create(models, NetworkConfig(algo="lora", rank=LORA_RANK, alpha=LORA_RANK / 2, preset="attn-mlp",
                                               components=("unet", "te1")))
    with torch.no_grad():
        for pname, p in net.named_parameters():
            if "lora_up" in pname:
                p.normal_(0.0, 1e-3)
    out = {"kohya": str(folder / f"{name}.safetensors"), "modules": len(net)}
    adapters.save_adapter(net, out["kohya"], family, dtype="fp16")
    if peft_too:
        out["peft"] = str(folder / f"{name}-peft.safetensors")
        adapters.save_adapter(net, out["peft"], family, dtype="fp16", dialect="peft")
    return out


def toy_loras(work: Path, n: int = 4) -> list[dict[str, str]]:
    """``n`` LoRA files for the toy model, each in sdlora's (kohya) and the diffusers/PEFT format."""
    folder = work / f"toy-loras-{_toy_tag()}"
    index = folder / "index.json"
    if not _ready(folder):
        from sdlora.models import open_model

        _fresh(folder)
        model = open_model(toy_model(work)[0])
        files = [_random_lora(model.components(), "sd1", folder, f"lora{i}", 100 + i, True) for i in range(n)]
        index.write_text(json.dumps(files))
        _mark(folder)
    return json.loads(index.read_text())


# ------------------------------------------------------------------------------------------ data
def demo_dataset(work: Path, side: int = 32) -> Path:
    """datasets/demo, or its images resized to ``side`` px (bicubic) with the same captions."""
    if side == 32:
        return DEMO
    folder = work / f"demo{side}"
    if not _ready(folder):
        from PIL import Image

        _fresh(folder)
        for png in sorted(DEMO.glob("*.png")):
            Image.open(png).convert("RGB").resize((side, side), Image.BICUBIC).save(folder / png.name)
            shutil.copy(png.with_suffix(".txt"), folder / png.with_suffix(".txt").name)
        _mark(folder)
    return folder


# ------------------------------------------------------------------------------------------ SD 1.5
def sd15_paths(work: Path) -> dict[str, Path]:
    base = work / "sd15"
    return {"folder": base / "model", "single": base / "single" / "sd15-random.safetensors",
            "lora": base / "single" / "lora-sd15.safetensors", "done": base}


def sd15_ready(work: Path) -> bool:
    return _ready(sd15_paths(work)["done"])


def build_sd15(work: Path) -> dict[str, str]:
    """The full-size SD 1.5 fixtures (run in a job process of its own: it holds the model once, ~4.3 GB)."""
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from sdlora.toy import world as toyworld
    from sdlora.models import from_pipeline, save_model

    p = sd15_paths(work)
    _fresh(p["done"])
    p["single"].parent.mkdir(parents=True)
    torch.manual_seed(0)
    read = lambda name: json.loads((SD15_CONFIGS / name / "config.json").read_text())  # noqa: E731
    unet = UNet2DConditionModel.from_config(read("unet")).to(torch.float16)
    vae = AutoencoderKL.from_config(read("vae")).to(torch.float16)
    te_cfg = {k: v for k, v in read("text_encoder").items() if k != "architectures"}
    te = CLIPTextModel(CLIPTextConfig.from_dict(te_cfg)).to(torch.float16)
    tokenizer = CLIPTokenizer.from_pretrained(str(toyworld.write_tokenizer(p["done"] / "tokenizer")))
    sched_cfg = json.loads((SD15_CONFIGS / "scheduler" / "scheduler_config.json").read_text())
    sched = DDIMScheduler.from_config({k: v for k, v in sched_cfg.items() if not k.startswith("_")})
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tokenizer, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(str(p["folder"]))
    model = from_pipeline(pipe, family="sd1", prediction_type="epsilon")
    save_model(model, p["single"], dtype="fp16")
    lora = _random_lora(model.components(), "sd1", p["single"].parent, "lora-sd15", 7, False)
    _mark(p["done"])
    return {"folder": str(p["folder"]), "single": str(p["single"]), "lora": lora["kohya"],
            "lora_modules": lora["modules"]}


def file_size(path: Path) -> int:
    path = Path(path)
    if path.is_dir():
        return sum(f.stat().st_size for f in path.rglob("*.safetensors"))
    return path.stat().st_size
