"""benchmarks/RESULTS.md: machine and versions, the table, the missed-target notes, the settings of each
workload, the per-repetition figures; and the table copied into benchmarks/README.md."""
from __future__ import annotations

import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

from rows import Row, _int, _list, paired, table
from runner import HERE, REPO, Job
from sdlora_side import trainer_config


def machine_info(threads: int) -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "cores": os.cpu_count(),
            "torch threads per job": threads}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["ram"] = f"{int(line.split()[1]) / 2**20:.1f} GiB"
    except OSError:
        pass
    return info


def versions() -> dict:
    code = ("import json, platform, torch, diffusers, transformers, peft, accelerate, safetensors, lycoris, sdlora\n"
            "v = {m.__name__: getattr(m, '__version__', '?') for m in (torch, diffusers, transformers, peft, accelerate,"
            " safetensors, sdlora)}\n"
            "from importlib.metadata import version\n"
            "v['lycoris-lora'] = version('lycoris-lora')\n"
            "v['cuda'] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None\n"
            "print(json.dumps(v))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(REPO))
    v = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else {"error": out.stderr[-300:]}
    try:
        head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                              cwd=str(REPO)).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "sdlora", "networks", "trainers"],
                               capture_output=True, text=True, cwd=str(REPO)).stdout.split("\n")
        paths = [line[3:] for line in dirty if line.strip()]
        v["sdlora git"] = head + (f" (working tree also had uncommitted: {', '.join(paths[:6])}"
                                  f"{' …' if len(paths) > 6 else ''})" if paths else "")
    except OSError:
        v["sdlora git"] = "?"
    return v


def toml_text(cfg: dict) -> str:
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        return repr(v)
    lines = []
    for section, body in cfg.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {val(v)}" for k, v in body.items()]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ report
def per_rep_lines(groups: list[list[Job]]) -> list[str]:
    lines = []
    for jobs in groups:
        key = None
        for j in jobs:
            for e in j.errors:
                lines.append(f"- {j.group} · {j.label}: FAILED: {e}")
            if not j.results:
                continue
            key = next((k for k in ("steps_per_s", "seconds") if k in j.results[0]), None)
            if key:
                vals = ", ".join(f"{r[key]:.4g}" for r in j.results)
                mem = ", ".join(f"{r['peak_rss'] / 2**20:,.0f}" for r in j.results)
                ttfs = ", ".join(f"{r['ttfs']:.1f}" for r in j.results if r.get("ttfs") is not None)
                lines.append(f"- {j.group} · {j.label}: {key} [{vals}]; peak RSS MiB [{mem}]"
                             + (f"; time to first step s [{ttfs}]" if ttfs else ""))
            elif "labels" in j.results[0]:
                for label in j.results[0]["labels"]:
                    v = [x for r in j.results for x in r.get(f"{label}.step_samples", [])]
                    lines.append(f"- {j.group} · {label}: step seconds [{', '.join(f'{x:.3f}' for x in v)}]")
            elif "samples" in j.results[0]:
                for case in j.results[0]["samples"]:
                    v = [x for r in j.results for x in r["samples"][case]]
                    lines.append(f"- {j.group} · {case}: seconds per call [{', '.join(f'{x:.3f}' for x in v)}]")
        if key and len(jobs) >= 2:
            ref = jobs[1]
            for other in [jobs[0]] + jobs[2:]:
                pr = paired(other, ref, key)
                if pr:
                    lines.append(f"- {other.group}: paired ratios {other.label} / {ref.label} ({key}) {_list(pr)}")
    return lines


def write_report(path: Path, args, rows: list[Row], notes: list[str], A, B, C, c_note: str, started: float,
                 machine: dict, vers: dict, load: tuple) -> str:
    """Writes RESULTS.md at ``path`` and returns its text."""
    parts = report_head(args, rows, started, machine, vers, load)
    if c_note:
        parts += [f"(c) {c_note}", ""]
    if notes:
        parts += ["## Missed targets: why, and what would close them", "", *[f"- {n}" for n in notes], ""]
    parts += ["## Settings", ""]
    if A:
        parts += settings_a(A)
    if B:
        parts += settings_b(B)
    if C:
        parts += settings_c(C)
    parts += METHOD
    parts += per_rep_lines(rep_groups(A, B, C))
    text = "\n".join(parts) + "\n"
    path.write_text(text)
    return text


def command_line() -> str:
    """The command this run was started with, its --note shown as "…" (the note is printed in the report)."""
    argv, shown = sys.argv[1:], []
    for i, a in enumerate(argv):
        shown.append('"…"' if i and argv[i - 1] == "--note" else (shlex.quote(a) if not a.startswith("--note=") else
                                                                 '--note="…"'))
    return " ".join(["python benchmarks/run.py", *shown])


def report_head(args, rows: list[Row], started: float, machine: dict, vers: dict, load: tuple) -> list[str]:
    """The title line (when, command, duration, load, targets met), machine, versions and the results table."""
    when = datetime.datetime.fromtimestamp(started).strftime("%Y-%m-%d %H:%M")
    cmd = command_line()
    met = [r for r in rows if r.met is not None]
    return [
        "# sdlora benchmarks: results",
        "",
        f"Measured {when} with `{cmd}` in {(time.time() - started) / 60:.1f} min. "
        + (args.note.strip() + " " if args.note else "")
        + f"Load average at start / end: {load[0]:.2f} / {load[1]:.2f}. "
        f"Targets met: {sum(bool(r.met) for r in met)} of {len(met)}.",
        "",
        "## Machine",
        "",
        *[f"- {k}: {v}" for k, v in machine.items()],
        "",
        "## Versions",
        "",
        *[f"- {k}: {v}" for k, v in vers.items()],
        "",
        "## Results",
        "",
        "Medians over the repetitions; ratios are sdlora / peer from this run. Speeds: higher is better; "
        "times and memory: lower is better. Peer: the diffusers + PEFT LoRA recipe for LoRA training and "
        "inference, lycoris-lora for LoHa/LoKr, safetensors load_file + save_file for baking.",
        "",
        table(rows),
        "",
    ]


def settings_a(A: dict) -> list[str]:
    """The settings of workload (a)."""
    t, ip = A["train"], A["inf_params"]
    parts = [
        "### (a) the embedded default model's architecture",
        "",
        f"- Model: {A['toy']['note']}.",
        f"- LoRA training: datasets/demo (20 images, 32 px, no flip), resolution {t['resolution']}, batch "
        f"{t['batch']}, rank {t['rank']}, alpha {t['alpha']}, LoRA on to_q/to_k/to_v/to_out.0 of the UNet (sdlora "
        f"preset \"attn\", PEFT target_modules), AdamW lr {t['lr']} (wd 0.01), constant schedule, grad-norm clip "
        f"1.0, fp32, no gradient checkpointing, {t['steps']} steps of which the first {t['warmup']} are warm-up "
        f"(steps/s is timed over the rest).",
        f"- Judged training ratios come from whole training runs interleaved step by step in one process "
        f"(benchmarks/interleaved.py: sdlora's Trainer and the peer loop in threads taking turns per optimiser "
        f"step, set-up included; each step timed from getting the turn to its end; {A['inter_reps']} such "
        f"process(es) per comparison). Steps/s, peak RSS and time to first step are also measured in separate "
        f"processes: {A['reps']} repetitions per side for LoRA, {A['lyco_reps']} for LoHa/LoKr, alternating.",
        "- sdlora caching on = cache_latents and cache_text_outputs true (in memory); caching off = both false. "
        "The recipe encodes images with the VAE (latent_dist.sample) and captions with the text encoder every "
        "step.",
        f"- LoHa: rank 8, alpha 4, conv rank 4, conv alpha 2 (configs/sd15-loha.toml); LoKr: rank 16, alpha 8, "
        f"factor 8, conv rank 16, conv alpha 8 (configs/sd15-lokr.toml); sdlora preset \"all\" = lycoris preset "
        f"\"full\" (checked: same layers and parameter counts in the table); both with latents and text "
        f"embeddings cached before training (lycoris in the recipe loop with kohya-style caching); "
        f"{lyco_steps(A)} steps.",
        f"- Inference: 4 LoRA files, rank 16, alpha 8, preset attn-mlp on UNet + text encoder (96 layers each), "
        f"strength {ip['strength']}; prompt \"{ip['prompt']}\", {ip['steps']} steps Euler a, CFG 7, {ip['size']} px, "
        f"fp32. sdlora: open_model + AdapterStack.add (bypass) / fuse() + generate(); peer: StableDiffusionPipeline "
        f"+ load_lora_weights (the same LoRAs saved in the diffusers/PEFT format) + set_adapters / fuse_lora. "
        f"One process holds all eight models (4 cases × 2 tools) and times one image per model per round, "
        f"{ip['rounds']} rounds, the order reversed every other round ({A['inf_reps']} such process(es)), so "
        f"both tools see the same background load. Load+apply: one file onto a model, median of 8; "
        f"fuse/unfuse of the 4 LoRAs: median of {ip['fuse_reps']}.",
        f"- UNet forward+backward (diagnostic): the toy UNet on random latents (batch {A['unet_params']['batch']}, "
        f"{A['unet_params']['latent']}×{A['unet_params']['latent']}) and context, loss = mean(out²), backward, "
        f"gradients cleared; one model per adapter implementation in one process, "
        f"{A['unet_params']['rounds']} interleaved rounds after 2 warm-up calls each; the layers and ranks of "
        f"the training runs.",
        "",
        "sdlora config of the LoRA run (caching on):",
        "",
        "```toml",
        toml_text(trainer_config(t)),
        "```",
        "",
    ]
    if A["bake"]:
        parts += [f"- Bake (a): 1 LoRA (rank 16) at 0.8 into the toy single file "
                  f"({A['toy']['single_bytes'] / 2**20:.1f} MiB, fp16), output fp16 single file.", ""]
    return parts


def settings_b(B: dict) -> list[str]:
    """The settings of workload (b)."""
    t = B["train"]
    return [
        "### (b) full-size SD 1.5 architecture on the CPU",
        "",
        "- Model: UNet2DConditionModel / AutoencoderKL / CLIPTextModel from sdlora/assets/configs/sd15 with "
        "random weights (860M + 84M + 123M parameters), saved once as a diffusers folder in fp16 and loaded by "
        "both sides (cast to fp32); tokenizer: the toy world's (no CLIP vocabulary offline; 77 tokens either way).",
        f"- LoRA training: datasets/demo upscaled to {t['resolution']} px, batch {t['batch']}, rank {t['rank']}, "
        f"alpha {t['alpha']}, to_q/to_k/to_v/to_out.0 (128 layers), AdamW, fp32, gradient checkpointing on, "
        f"both sides encode with the VAE and text encoder every step (sdlora caching off), {t['steps']} steps of "
        f"which {t['warmup']} warm-up, {B['reps']} repetitions per side.",
        *([f"- Inference: the UNet's forward alone (no scheduler, VAE or text encoder), fp32, random latents "
           f"{B['inf_params']['batch']}×4×{B['inf_params']['latent']}×{B['inf_params']['latent']} "
           f"({B['inf_params']['latent'] * 8} px), t = 500, random 77-token context; the bake's LoRA (rank 16, "
           f"alpha 8, attn-mlp: {_int(B['inference'].med('adapted_unet_layers'))} UNet layers) at "
           f"{B['inf_params']['strength']}. One process, ONE model switched between the cases outside the timed "
           f"calls: base = the LoRA at strength 0 (the stack then leaves no hook on any layer), bypass, fused "
           f"(fuse() folds the LoRA in and takes the hooks off); a warm-up call per case, then "
           f"{B['inf_params']['rounds']} rounds of one call per case, the order reversed every other round; "
           f"ratios are medians of the per-round ratios to base. sdlora only (no peer in this figure)."]
          if B.get("inference") else []),
        f"- Bake: 1 LoRA (rank 16, attn-mlp, UNet + text encoder) at 0.8 into the "
        f"{B['single_bytes'] / 2**30:.2f} GiB fp16 single file, output fp16 single file, "
        f"{B['reps']} repetitions per side. Peak RSS counts the input file's pages that the process maps "
        "(both sides read through mmap).",
        "",
    ]


def settings_c(C: dict) -> list[str]:
    """The settings of workload (c)."""
    t = C["train"]
    return ["### (c) full-size SD 1.5 on the GPU", "",
              f"- As (b) at {t['resolution']} px with fp16 mixed precision (frozen weights fp16, LoRA fp32), "
              f"{t['steps']} steps of which {t['warmup']} warm-up, {C['reps']} repetitions per side.", ""]


def rep_groups(A: dict | None, B: dict | None, C: dict | None) -> list[list[Job]]:
    """The jobs whose per-repetition figures the report lists, grouped as compared."""
    groups = []
    if A:
        groups += [[A["inter"]], [A["lyco_inter"]], A["lora"], A["lyco"]["loha"], A["lyco"]["lokr"], [A["unet"]],
                   [A["inference"]]] + \
            ([A["bake"]] if A["bake"] else [])
    if B:
        groups += [B["lora"]] + ([[B["inference"]]] if B.get("inference") else []) + [B["bake"]]
    if C:
        groups += [C["lora"]]
    return groups


METHOD = [
    "### How it is measured",
    "",
    "- Every job is a fresh process (benchmarks/job.py) with one torch thread; jobs of the two sides "
    "alternate, the order reversed every other repetition. Peak RSS is the process's VmHWM at its end; peak "
    "VRAM is torch.cuda.max_memory_allocated. Rows marked \"interleaved in one process\" hold both sides in "
    "one such process and alternate them step by step / call by call (benchmarks/interleaved.py), so both "
    "see the same background load.",
    "- sdlora is driven through its public API: trainers.config.config_from_dict + trainers.loop.Trainer, "
    "with one Trainer.on_step callback stamping the end of each optimiser step (so steps/s excludes startup "
    "without subtracting runs). Time to first step runs from the moment the runner starts the process to the "
    "end of the first optimiser step: interpreter, imports, model loading, data scan and caching included.",
    "- The peer recipe is benchmarks/peer_peft.py (diffusers' train_text_to_image_lora.py as a plain loop); "
    "LoHa/LoKr peer benchmarks/peer_lycoris.py.",
    "",
    "## Per-repetition figures",
    "",
]



def lyco_steps(A: dict) -> int:
    return A["lyco"]["loha"][0].params["steps"]


def update_readme(rows: list[Row], results_name: str) -> None:
    readme = HERE / "README.md"
    if not readme.is_file():
        return
    text = readme.read_text()
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    if start not in text or end not in text:
        return
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    block = f"{start}\n(from {results_name}; see it for the machine, versions, settings and notes)\n\n{table(rows)}\n{end}"
    readme.write_text(head + block + tail)

