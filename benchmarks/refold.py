"""Fused-mode strength changes and the fused/bypass forward against the base, in one process:

    python benchmarks/refold.py [--rounds 40] [--loras 4]

On the embedded default model with ``--loras`` LoRA files (rank 16, attn-mlp, UNet + text encoder; built
by fixtures.toy_loras) stacked and fused, it alternates, round by round (order reversed every other
round): ``set_strength`` of ONE adapter (which refolds only the layers that adapter touches) and a full
re-fuse of the stack (``unfuse()`` + ``fuse()``, what a tool without per-adapter refolds does). Then the
UNet forward (batch 1, 8×8 latents) base / bypass with 1 LoRA / fused 1 LoRA on one model, interleaved
per round. Prints medians, the per-round paired ratios' median and interquartile range, as JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import fixtures  # noqa: E402
from measure import median  # noqa: E402
from whole import quartiles  # noqa: E402


def _t(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def strength_change(model_path: str, files: list[str], rounds: int) -> dict:
    from sdlora.inference.stack import AdapterStack
    from sdlora.models import open_model

    stack = AdapterStack(open_model(model_path, dtype="fp32"))
    for i, f in enumerate(files):
        stack.add(f, name=f"a{i}", strength=0.8)
    stack.fuse()
    one, full = [], []
    for r in range(rounds):
        s = 0.5 if r % 2 else 0.9
        cases = [("one", lambda: stack.set_strength("a0", s)), ("full", lambda: (stack.unfuse(), stack.fuse()))]
        for name, fn in (cases if r % 2 == 0 else cases[::-1]):
            (one if name == "one" else full).append(_t(fn))
    ratios = [a / b for a, b in zip(one, full)]
    return {"set_strength_s": median(one), "full_refuse_s": median(full), "ratio": median(ratios),
            "iqr": quartiles(ratios), "adapters": len(files),
            "layers_of_a0": len({id(m.base) for m in stack["a0"].modules()}),
            "layers_of_stack": len(stack._layers)}


def forward(model_path: str, lora: str, rounds: int) -> dict:
    import torch

    from sdlora.inference.stack import AdapterStack
    from sdlora.models import open_model

    model = open_model(model_path, dtype="fp32")
    stack = AdapterStack(model)
    stack.add(lora, name="l", strength=0.8)
    unet = model.unet
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1, unet.config.in_channels, 8, 8, generator=g)
    ctx = torch.randn(1, 77, unet.config.cross_attention_dim, generator=g)
    t = torch.tensor([500])
    modes = {"base": lambda: stack.set_strength("l", 0.0), "bypass": lambda: stack.set_strength("l", 0.8),
             "fused": lambda: (stack.set_strength("l", 0.8), stack.fuse())}
    times: dict[str, list[float]] = {m: [] for m in modes}
    with torch.no_grad():
        for r in range(rounds + 1):
            order = list(modes) if r % 2 == 0 else list(modes)[::-1]
            for m in order:
                stack.unfuse()
                modes[m]()
                dt = _t(lambda: unet(x, t, ctx))
                if r:  # round 0 warms up
                    times[m].append(dt)
    out = {}
    for m in ("bypass", "fused"):
        ratios = [a / b for a, b in zip(times[m], times["base"])]
        out[m] = {"s": median(times[m]), "ratio_to_base": median(ratios), "iqr": quartiles(ratios)}
    out["base_s"] = median(times["base"])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=40)
    ap.add_argument("--loras", type=int, default=4)
    args = ap.parse_args(argv)
    work = Path(tempfile.gettempdir()) / "sdlora-bench"
    model, _ = fixtures.toy_model(work)
    files = [f["kohya"] for f in fixtures.toy_loras(work, args.loras)]
    out = {"strength_change": strength_change(str(model), files, args.rounds),
           "forward": forward(str(model), files[0], args.rounds)}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
