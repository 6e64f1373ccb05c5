"""`sdlora convert FILE --to kohya|lycoris|peft [--unet-names sgm|diffusers] --out OUT`."""
from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("convert", help="convert an adapter between key formats (kohya, lycoris, peft, comfy), losslessly",
                       description="Rename keys into another format; every tensor is carried unchanged. A target "
                       "that cannot hold the content (e.g. LoHa to peft) is refused and nothing is written.")
    p.add_argument("file", help="adapter file (.safetensors)")
    p.add_argument("--to", required=True, choices=("kohya", "lycoris", "peft", "comfy"),
                   help="target format (comfy: ComfyUI's own names, the UNet in its LDM layout)")
    p.add_argument("--unet-names", choices=("sgm", "diffusers"),
                   help="kohya UNet names: sgm (input_blocks_…) or diffusers (down_blocks_…); default: the input's")
    p.add_argument("--model", help="base model folder (only needed for files of non-standard models)")
    p.add_argument("--family", choices=("sd1", "sd2", "sdxl"), help="model family when the file does not say")
    p.add_argument("--dora-columns", action="store_true",
                   help="write DoRA magnitudes column-shaped, the form A1111 applies on the right axis (approximate: "
                   "the fit is printed; needs --model)")
    p.add_argument("--out", required=True, help="output adapter file")
    p.set_defaults(func="sdlora.commands.actions.convert:run")
