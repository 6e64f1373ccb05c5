"""One measured job in a fresh process (so peaks do not mix):

    python benchmarks/job.py SPEC.json RESULT.json

SPEC holds ``kind`` (which function), ``params``, ``threads`` and optionally ``preimport`` (default true:
torch, transformers and diffusers' pipeline classes are imported before the job, so both sides of a
comparison start from the same imports; false: each side imports only what it imports itself, as a user's
process does — whole.py). RESULT gets the function's figures plus
the process's peak resident set (VmHWM), its resident set after the common imports (``baseline_rss``),
the peak VRAM on a GPU, the device and ``started_at`` (wall clock when this file started running).
"""
from __future__ import annotations

import time

STARTED_AT = time.time()

import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from measure import device, peak_rss_bytes, peak_vram_bytes, rss_bytes, set_threads  # noqa: E402


def _fixture_toy(p: dict) -> dict:
    from pathlib import Path

    import fixtures

    work = Path(p["work"])
    folder, note = fixtures.toy_model(work)
    single = fixtures.toy_single_file(work)
    return {"folder": str(folder), "note": note, "single": str(single), "single_bytes": fixtures.file_size(single),
            "loras": fixtures.toy_loras(work, p.get("loras", 4))}


def _fixture_sd15(p: dict) -> dict:
    from pathlib import Path

    import fixtures

    work = Path(p["work"])
    if not fixtures.sd15_ready(work):
        fixtures.build_sd15(work)
    paths = fixtures.sd15_paths(work)
    return {"folder": str(paths["folder"]), "single": str(paths["single"]), "lora": str(paths["lora"]),
            "single_bytes": fixtures.file_size(paths["single"])}


def _kinds():
    import interleaved
    import peer_lycoris
    import peer_peft
    import sdlora_side

    return {
        "sdlora.train": sdlora_side.train,
        "peft.train": peer_peft.train,
        "lycoris.train": peer_lycoris.train,
        "interleaved.inference": interleaved.inference,
        "interleaved.unet": interleaved.unet,
        "interleaved.unet_forward": interleaved.unet_forward,
        "interleaved.train": interleaved.train,
        "sdlora.bake": sdlora_side.bake,
        "plain.load_save": sdlora_side.plain_load_save,
        "fixture.toy": _fixture_toy,
        "fixture.sd15": _fixture_sd15,
    }


def main(argv: list[str]) -> int:
    spec_path, result_path = argv
    with open(spec_path) as f:
        spec = json.load(f)
    set_threads(int(spec.get("threads", 1)))
    import torch  # noqa: F401

    if spec.get("preimport", True):  # the imports every job pays, before the baseline is read
        import transformers  # noqa: F401
        from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel  # noqa: F401

    baseline = rss_bytes()
    fn = _kinds()[spec["kind"]]
    out = fn(spec["params"])
    out.update(peak_rss=peak_rss_bytes(), baseline_rss=baseline, peak_vram=peak_vram_bytes(), device=device(),
               started_at=STARTED_AT, torch_threads=torch.get_num_threads())
    with open(result_path, "w") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
