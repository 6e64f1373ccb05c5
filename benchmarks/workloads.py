"""The three workloads' plans: which jobs run, with which parameters and how many repetitions.

Each ``workload_*`` runs its jobs through a ``Runner`` and returns a dict of the jobs and settings that
rows.py, notes.py and report.py read."""
from __future__ import annotations

from pathlib import Path

import fixtures
from runner import Job, Runner, alternate

PROMPT = "a red sks on a white background"


def toy_train_params(model: str, quick: bool, out: Path) -> dict:
    return {"model": model, "data": str(fixtures.DEMO), "resolution": 32, "batch": 4, "rank": 8, "alpha": 8,
            "lr": 1e-4, "algo": "lora", "preset": "attn", "precision": "no", "checkpointing": False, "seed": 0,
            "flip": False, "steps": 40 if quick else 120, "warmup": 5, "cache": True, "out": str(out)}


def lyco_params(base: dict, algo: str, quick: bool, out: Path) -> dict:
    extra = {"loha": dict(rank=8, alpha=4, conv_rank=4, conv_alpha=2),  # configs/sd15-loha.toml
             "lokr": dict(rank=16, alpha=8, conv_rank=16, conv_alpha=8, factor=8)}[algo]  # configs/sd15-lokr.toml
    return dict(base, algo=algo, preset="all", steps=25 if quick else 60, **extra, out=str(out))


def workload_a(runner: Runner, args, work: Path, toy: dict) -> dict:
    reps = args.reps or (2 if args.quick else 5)
    lyco_reps = args.reps or (1 if args.quick else 3)
    inter_reps = args.reps or (1 if args.quick else 2)
    out = work / "runs"
    base = toy_train_params(toy["folder"], args.quick, out / "a-lora")
    nocache = dict(base, cache=False, out=str(out / "a-nocache"))
    sides = [{"label": "sdlora_cache", "kind": "sdlora", "params": base},
             {"label": "recipe", "kind": "peft", "params": dict(base, cache=False)},
             {"label": "sdlora_nocache", "kind": "sdlora", "params": nocache}]
    inter = Job("a.lora.interleaved", "sdlora (caching on, off) and the recipe, step by step in one process",
                "interleaved.train", {"sides": sides})
    print(f"(a) LoRA training interleaved step by step in one process, {inter_reps} process(es)", flush=True)
    alternate(runner, [inter], inter_reps)
    lyco = {algo: lyco_params(base, algo, args.quick, out / f"a-{algo}") for algo in ("loha", "lokr")}
    sides = [{"label": f"{who}_{algo}", "kind": kind, "params": lyco[algo]}
             for algo in ("loha", "lokr") for who, kind in (("sdlora", "sdlora"), ("lycoris", "lycoris"))]
    lyco_inter = Job("a.lyco.interleaved", "sdlora and lycoris-lora LoHa and LoKr, step by step in one process",
                     "interleaved.train", {"sides": sides})
    print(f"(a) LoHa/LoKr training interleaved step by step in one process, {inter_reps} process(es)", flush=True)
    alternate(runner, [lyco_inter], inter_reps)
    lora = [Job("a.lora", "sdlora, caching on", "sdlora.train", base),
            Job("a.lora", "diffusers+PEFT recipe", "peft.train", dict(base, cache=False)),
            Job("a.lora", "sdlora, caching off", "sdlora.train", nocache)]
    print(f"(a) LoRA training, separate processes (memory, time to first step), {reps} repetitions", flush=True)
    alternate(runner, lora, reps)
    lyco_jobs = {}
    for algo in ("loha", "lokr"):
        lyco_jobs[algo] = [Job(f"a.{algo}", f"sdlora {algo}, caching on", "sdlora.train", lyco[algo]),
                           Job(f"a.{algo}", f"lycoris-lora {algo}, cached", "lycoris.train", lyco[algo])]
        print(f"(a) {algo} training, separate processes, {lyco_reps} repetition(s)", flush=True)
        alternate(runner, lyco_jobs[algo], lyco_reps)
    lyco = lyco_jobs
    inf_reps = args.reps or (1 if args.quick else 2)
    ip = {"model": toy["folder"], "loras": [f["kohya"] for f in toy["loras"]],
          "loras_peft": [f["peft"] for f in toy["loras"]], "strength": 0.8, "fuse_reps": 5, "steps": 20, "size": 32,
          "rounds": 14 if args.quick else 24, "prompt": PROMPT}
    inf = Job("a.inference", "sdlora and diffusers+PEFT in one process", "interleaved.inference", ip)
    print(f"(a) inference, {inf_reps} process(es) of {ip['rounds']} interleaved rounds", flush=True)
    alternate(runner, [inf], inf_reps)
    up = {"model": toy["folder"], "batch": base["batch"], "latent": base["resolution"] // 4, "rank": base["rank"],
          "rounds": 10 if args.quick else 30,
          "lycoris": {a: {k: lyco[a][0].params.get(k) for k in ("rank", "alpha", "conv_rank", "conv_alpha", "factor")}
                      for a in lyco}}
    unet = Job("a.unet", "UNet forward+backward per adapter implementation, one process", "interleaved.unet", up)
    print(f"(a) UNet forward+backward, {up['rounds']} interleaved rounds", flush=True)
    runner.run(unet)
    bake = None
    if not (args.quick and "b" in args.workloads):  # quick runs judge baking on the full-size file only
        bake = bake_jobs("a", toy["single"], toy["loras"][0]["kohya"], work)
        print(f"(a) bake, {reps} repetitions", flush=True)
        alternate(runner, bake, args.reps or (2 if args.quick else 3))
    return {"lora": lora, "lyco": lyco, "inter": inter, "lyco_inter": lyco_inter, "inference": inf, "unet": unet,
            "bake": bake, "reps": reps, "lyco_reps": lyco_reps, "inter_reps": inter_reps, "inf_reps": inf_reps,
            "train": base, "inf_params": ip, "unet_params": up, "toy": toy}


def bake_jobs(group: str, single: str, lora: str, work: Path) -> list[Job]:
    return [Job(f"{group}.bake", "sdlora bake", "sdlora.bake",
                {"model": single, "lora": lora, "strength": 0.8, "out": str(work / f"{group}-baked.safetensors")}),
            Job(f"{group}.bake", "plain load+save", "plain.load_save",
                {"model": single, "out": str(work / f"{group}-plain.safetensors")})]


def sd15_train_params(sd15: dict, data: Path, side: int, precision: str, quick: bool, out: Path) -> dict:
    return {"model": sd15["folder"], "data": str(data), "resolution": side, "batch": 1, "rank": 8, "alpha": 8,
            "lr": 1e-4, "algo": "lora", "preset": "attn", "precision": precision, "checkpointing": True, "seed": 0,
            "flip": False, "steps": 3 if quick else 5, "warmup": 1, "cache": False, "out": str(out)}


def workload_b(runner: Runner, args, work: Path, sd15: dict) -> dict:
    reps = args.reps or (2 if args.quick else 3)
    p = sd15_train_params(sd15, fixtures.demo_dataset(work, 256), 256, "no", args.quick, work / "runs" / "b")
    jobs = [Job("b.lora", "sdlora, caching off", "sdlora.train", p),
            Job("b.lora", "diffusers+PEFT recipe", "peft.train", p)]
    print(f"(b) SD 1.5 LoRA training at 256 px, {reps} repetitions", flush=True)
    alternate(runner, jobs, reps)
    ip = {"model": sd15["folder"], "lora": sd15["lora"], "strength": 0.8, "batch": 1, "latent": 32,
          "rounds": 3 if args.quick else 8}
    inf = Job("b.inference", "sdlora UNet forward: base, bypass, fused, one process", "interleaved.unet_forward", ip)
    print(f"(b) SD 1.5 UNet forward (base, bypass, fused), {ip['rounds']} interleaved rounds", flush=True)
    runner.run(inf)
    bake = bake_jobs("b", sd15["single"], sd15["lora"], work)
    print(f"(b) SD 1.5 bake, {reps} repetitions", flush=True)
    alternate(runner, bake, reps)
    return {"lora": jobs, "inference": inf, "inf_params": ip, "bake": bake, "reps": reps, "train": p}


def workload_c(runner: Runner, args, work: Path, sd15: dict) -> dict:
    reps = args.reps or (2 if args.quick else 3)
    p = sd15_train_params(sd15, fixtures.demo_dataset(work, 512), 512, "fp16", args.quick, work / "runs" / "c")
    p.update(steps=6 if args.quick else 12, warmup=2, vae_dtype="fp16")  # the recipe runs its VAE in fp16 too
    jobs = [Job("c.lora", "sdlora, caching off", "sdlora.train", p),
            Job("c.lora", "diffusers+PEFT recipe", "peft.train", p)]
    print(f"(c) SD 1.5 LoRA training at 512 px on the GPU, {reps} repetitions", flush=True)
    alternate(runner, jobs, reps)
    return {"lora": jobs, "reps": reps, "train": p}

