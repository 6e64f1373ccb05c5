"""`sdlora generate --model M --prompt P [--lora FILE[:S[:TE]]]... --out DIR`: images with adapters, or a
strength sweep grid (`--sweep 0,0.5,1`)."""
from __future__ import annotations

from sdlora.inference import samplers


def add_model_args(p) -> None:
    """--model and the options that say how to open it (shared with `bake`)."""
    p.add_argument("--model", required=True, help="base model: a diffusers folder or a single .safetensors file")
    p.add_argument("--tokenizer", metavar="DIR", help="CLIP tokenizer folder (vocab.json + merges.txt) or a "
                   "diffusers folder with tokenizer/; overrides the CLIP tokenizer shipped in the package")
    p.add_argument("--family", choices=("sd1", "sd2", "sdxl"), help="override the detected model family")
    p.add_argument("--prediction-type", choices=("epsilon", "v_prediction", "v"),
                   help="override the detected prediction type (SD2 768-v models are v_prediction)")
    p.add_argument("--config", metavar="NAME|DIR", help="configs for a single file: sd15, sd21, sd2-base, sdxl or a "
                   "diffusers-layout config folder (default: embedded or detected)")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH[:TE_STRENGTH]][:lbw=W]",
                   help="adapter with its strength, optional text-encoder strength and block weights "
                   "(17/26 values for SD1/SD2, 12/20 for SDXL, or a preset such as OUTD); repeatable")
    p.add_argument("--no-strict", action="store_true", help="apply adapters that partly fit (unmatched keys warn)")


def register(sub) -> None:
    p = sub.add_parser("generate", help="generate images with a base model and stacked adapters",
                       description="Text-to-image with adapters. A1111 prompt syntax <lora:NAME:0.8> loads NAME "
                       "from --lora-dir. PNGs carry A1111 'parameters' text (prompt, settings, adapter strengths "
                       "and hashes). --sweep renders a labelled grid: strengths across, seeds down.")
    add_model_args(p)
    p.add_argument("--prompt", help="the prompt, with A1111 syntax: (word:1.3), (word), [word], \\( \\), BREAK, "
                   "<lora:NAME:0.8>, embedding:NAME (required unless --from-png)")
    p.add_argument("--negative-prompt", default="")
    p.add_argument("--lora-dir", metavar="DIR", help="folder where <lora:NAME> prompt tags are looked up")
    p.add_argument("--seed", type=int, default=-1, help="first seed; image i uses seed+i (-1: random)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--cfg", type=float, default=7.0, help="classifier-free guidance scale")
    p.add_argument("--sampler", default="euler a", help=f"one of: {', '.join(samplers.sampler_names())}")
    p.add_argument("--width", type=int, help="default: the model's native size")
    p.add_argument("--height", type=int)
    p.add_argument("--count", type=int, default=1, help="images (sweep: rows of seeds)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs")
    p.add_argument("--sweep", metavar="S1,S2,...", help="render a grid over these adapter strengths")
    p.add_argument("--sweep-lora", metavar="NAME", help="sweep only this adapter (default: all)")
    p.add_argument("--mode", choices=("bypass", "fused"), default="bypass",
                   help="bypass: adapters run beside the weights; fused: folded in (base speed)")
    p.add_argument("--dtype", default="auto", choices=("auto", "fp32", "fp16", "bf16"),
                   help="auto: fp16 on CUDA, fp32 on CPU")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--batch-size", type=int, default=1, help="images per pipeline pass (image i is the same "
                   "picture at any batch size)")
    p.add_argument("--clip-skip", type=int, metavar="N", help="text-encoder layer from the end, A1111 numbering "
                   "(1: last, 2: penultimate); default: the adapters' ss_clip_skip when they agree, else 1")
    p.add_argument("--plain-prompts", action="store_true", help="pass prompts to diffusers as plain text (no "
                   "A1111 emphasis, BREAK or 75-token chunks: cut at 77 tokens)")
    p.add_argument("--vae", metavar="FILE|DIR", help="replace the model's VAE (.safetensors file or diffusers folder)")
    p.add_argument("--init-image", metavar="IMAGE", help="img2img: start from this image (resized to the size)")
    p.add_argument("--denoise", type=float, metavar="S", help="img2img / inpaint strength in (0, 1] (default 0.75)")
    p.add_argument("--mask", metavar="IMAGE", help="inpaint: white repaints, black keeps (the init image's size)")
    p.add_argument("--embedding", action="append", default=[], metavar="FILE",
                   help="textual-inversion embedding, used in prompts by its file name; repeatable")
    p.add_argument("--embeddings-dir", metavar="DIR", help="folder of embeddings named in prompts as "
                   "embedding:NAME or by bare name")
    p.add_argument("--allow-pickle", action="store_true", help="read pickled .pt/.bin embeddings (weights only)")
    p.add_argument("--from-png", metavar="IMAGE", help="re-render from an image's A1111 parameters (prompt, "
                   "negative, steps, sampler, CFG, seed, size, clip skip, <lora:...> found in --lora-dir by hash)")
    p.set_defaults(func="sdlora.commands.actions.generate:run")
