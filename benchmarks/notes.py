"""Why each missed target was missed and what would close it, written from the run's own figures."""
from __future__ import annotations

from measure import median
from rows import Row, _f, _iqr_of, _list, _ratio, _samples, paired
from runner import Job


def B_share(B: dict | None) -> str:
    """' (on SD 1.5 at 256 px it is N%)' from workload b, or ''."""
    share = B["lora"][1].med("encode_share") if B else None
    return f" (on SD 1.5 at 256 px, workload b, it is {share:.0%})" if share is not None else ""


def unet_forward_notes(missed: set[str], A: dict | None, job: Job) -> list[str]:
    """Notes on the inference targets, judged on the full-size UNet forward of workload (b)."""
    notes = []
    if not job.results:
        return notes
    res = job.results[0]
    base = job.med("sdlora.unet.base_s")
    n = res.get("adapted_unet_layers")
    samples = sorted(x for r in job.results for x in r["samples"]["base"])
    q1, q3 = _iqr_of(samples) if samples else (0.0, 0.0)
    noise = f"One base call varies by ±{(q3 - q1) / 2 / median(samples):.0%} (IQR) on this machine." if samples else ""
    for case, limit in (("bypass", 1.10), ("fused", 1.02)):
        if f"b_{case}" not in missed:
            continue
        r = job.med(f"sdlora.unet.{case}_over_base")
        band = [x[f"sdlora.unet.{case}_over_base_iqr"] for x in job.results]
        spread = f" (IQR {min(v[0] for v in band):.2f}–{max(v[1] for v in band):.2f})" if band else ""
        if case == "bypass":
            per = f" (about {(r - 1) * base / n * 1e3:.1f} ms per layer here)" if base and n and r > 1 else ""
            toy = ""
            if A:
                inf = A["inference"]
                toy = (f" On (a)'s toy model, where that work is a large share of each tiny layer's, the same kind of "
                       f"LoRA costs sdlora {inf.med('sdlora.bypass1_over_base'):.2f}× base and diffusers+PEFT "
                       f"{inf.med('peer.bypass1_over_base'):.2f}×.")
            notes.append(
                f"**bypass 1 LoRA ≤ {limit:.2f}× base (b)** — missed: {r:.3f}×{spread}. The rank-16 LoRA on {n} UNet "
                f"layers adds two matmuls with an inner size of 16 and one addition per layer{per}; at 32×32 "
                f"latents it weighs most on the 320-channel layers (2·16/320 = 10% of a square layer's FLOPs, in "
                f"memory-bound shapes).{toy} {noise} What would close it: confirm with more rounds; for many images "
                f"at fixed strengths, fuse (see the fused row).")
        else:
            hooks = res.get("hooks", {}).get("fused")
            notes.append(
                f"**fused ≤ {limit:.2f}× base (b)** — missed: {r:.3f}×{spread}. fuse() takes the bypass hooks off "
                f"(forward hooks on the UNet's modules when fused: {hooks}), so a fused forward runs the base "
                f"layers' own code on weights of the same shapes. {noise} What would close it: more rounds.")
    return notes


def miss_notes(rows: list[Row], A: dict | None, B: dict | None) -> list[str]:
    """Why each missed target was missed and what would close it, from this run's own figures."""
    notes = []
    missed = {r.key for r in rows if r.met is False}
    if A:
        notes += a_training_notes(missed, A, B)
        notes += lyco_notes(missed, A)
    if B and B.get("inference"):
        notes += unet_forward_notes(missed, A, B["inference"])
    for w, D in (("a", A), ("b", B)):
        if D and D.get("bake") and f"{w}_bake_time" in missed:
            notes += bake_notes(missed, w, D)
    if B:
        notes += b_training_notes(missed, A, B)
    return notes


def lora_path_note(u: Job) -> tuple[str, bool]:
    """What the toy-UNet diagnostic says about sdlora's LoRA bypass path, and whether it shows a cost."""
    r_lora = _ratio(u.med("sdlora.lora.fwd_bwd_s"), u.med("peer.lora.fwd_bwd_s"))
    r_min = _ratio(u.med("sdlora.lora_minimal_hook.fwd_bwd_s"), u.med("peer.lora.fwd_bwd_s"))
    lora_path = ""
    bypass_cost = r_lora is not None and r_min is not None and r_lora > 1.03 and r_lora - r_min > 0.03
    if r_lora is not None and r_min is not None:
        lora_path = (f"In one process, interleaved, sdlora's toy-UNet forward+backward with its LoRA is {r_lora:.2f}× "
                     f"PEFT's; the same sdlora modules behind a minimal hook (out + up(down(x))·γm) run at "
                     f"{r_min:.2f}×. ")
        if bypass_cost:
            lora_path += ("So part of the gap is sdlora's bypass code path, not the LoRA math: beyond the minimal "
                          "hook, each adapted layer runs AdapterModule._hook's checks (merged, enabled, module "
                          "dropout) and LoRAModule.bypass's (DoRA, bias delta, dropout, input dtype) before the "
                          "same two matmuls. ")
    return lora_path, bypass_cost


def step_median(job: Job, label: str) -> float | None:
    """The median step time of one side of an interleaved training job, over all its processes."""
    v = [x for run in _samples(job, label) for x in run]
    return median(v) if v else None


def a_training_notes(missed: set[str], A: dict, B: dict | None) -> list[str]:
    """Notes on (a)'s LoRA training targets (with and without caching)."""
    notes = []
    share = A["lora"][1].med("encode_share")  # the recipe's
    lora_path, bypass_cost = lora_path_note(A["unet"])
    it = A["inter"]
    t_on, t_off, t_rec = (step_median(it, label) for label in ("sdlora_cache", "sdlora_nocache", "recipe"))
    if "cache" in missed and share is not None:
        own = _ratio(t_off, t_on)
        notes.append(
            f"**LoRA with caching ≥ 2× the recipe (a)** — missed. Caching removes only the recipe's VAE and "
            f"text-encoder work, which is {share:.0%} of its step on this model, so caching alone can make any "
            f"trainer at most {1 / (1 - share):.2f}× faster than the recipe here: the 4.1M-parameter UNet's "
            f"forward+backward dominates the step, while the toy VAE and 2-layer text encoder are cheap. Caching "
            f"makes sdlora {own:.2f}× faster than itself uncached (same process, steps interleaved). "
            f"{lora_path}What would close it: on this model, nothing in the caching — 2× needs encoding to be at "
            f"least half of the recipe's step{B_share(B)}; the target fits a model whose VAE and text encoder are "
            f"a large share of a step.")
    if "nocache" in missed:
        notes.append(
            f"**LoRA without caching ≥ 1.0× the recipe (a)** — missed: a median step of {_f(t_off, 'ms')} "
            f"against {_f(t_rec, 'ms')} with the steps interleaved in one process. Both sides do the same work "
            f"per step (VAE, text encoder, UNet with LoRA on the same 56 layers, AdamW, clipping). {lora_path}"
            f"Outside the UNet, sdlora's step also does its own per-step work (Trainer._batch: reading and "
            f"cropping each image, tokenising and encoding; the accelerate optimiser wrapper). What would close it: "
            f"a profile of Trainer._batch against the recipe's data loader"
            f"{', and a profile of LoRAModule.bypass against the minimal hook' if bypass_cost else ''}.")
    return notes


def lyco_notes(missed: set[str], A: dict) -> list[str]:
    """Notes on (a)'s LoHa and LoKr step-time targets."""
    notes = []
    u, lit = A["unet"], A["lyco_inter"]
    for algo in ("loha", "lokr"):
        if algo not in missed:
            continue
        name = {"loha": "LoHa", "lokr": "LoKr"}[algo]
        r = _ratio(u.med(f"sdlora.{algo}.fwd_bwd_s"), u.med(f"peer.{algo}.fwd_bwd_s"))
        rt = _ratio(step_median(lit, f"sdlora_{algo}"), step_median(lit, f"lycoris_{algo}"))
        if r is not None and r > 1.03:
            why = (f"In one process, interleaved, sdlora's {name} UNet forward+backward alone is {r:.2f}× "
                   f"lycoris-lora's on the same 119 layers, so the adapter computation itself is slower (both "
                   f"run the base op plus a second op with the rebuilt ΔW; sdlora's rebuild/bypass path does more "
                   f"separate tensor operations per layer). What would close it: profile networks/{algo}.py "
                   f"delta()/delta_forward against lycoris's get_weight and fold the scale and multiplier into one "
                   f"multiply.")
        else:
            why = (f"The adapter computation is not the cause: the UNet forward+backward alone is {r:.2f}× "
                   f"lycoris-lora's (same process, interleaved), while whole training steps are {rt:.2f}×. The "
                   f"difference is per-step work around the UNet in sdlora's Trainer (batch assembly from the "
                   f"cache, loss weighting, the accelerate optimiser wrapper, gradient clipping over 119 modules' "
                   f"parameters). What would close it: profile Trainer.train_step with this adapter.")
        notes.append(f"**{name} step time ≤ lycoris-lora (a)** — missed. {why}")
    return notes


def bake_notes(missed: set[str], w: str, D: dict) -> list[str]:
    """Notes on a workload's missed bake targets (time, and memory)."""
    notes = []
    sd, plain = D["bake"]
    parts = {k: sd.med(k) or 0.0 for k in ("fsync_s", "writeback_s", "fold_s")}
    pf = plain.med("fsync_s")
    fs = "" if pf is None else (
        f" An fsync of the plain baseline's output right after it takes {pf:.2f} s more (not in its time): "
        f"the bake is {sd.med('seconds') / (plain.med('seconds') + pf):.2f}× plain load+save+fsync.")
    notes.append(
        f"**bake time ≤ 2× plain load+save ({w})** — missed: {sd.med('seconds'):.2f} s against "
        f"{plain.med('seconds'):.2f} s. The plain baseline is safetensors' load_file + save_file: one read and "
        f"one buffered write from Rust into the page cache, no fsync, so the disk has not stored its output "
        f"when its clock stops. sdlora's bake streams tensor by tensor (so memory stays near one copy) and "
        f"makes its output durable before the atomic rename, as the design asks: it starts the disk writing "
        f"every 16 MiB ({parts['writeback_s']:.2f} s in those calls, which block while the disk queue is "
        f"full) and fsyncs at the end ({parts['fsync_s']:.2f} s), so the time the disk needs for the whole "
        f"file is paid inside the bake. It also folds the adapted layers in float32 "
        f"({parts['fold_s']:.2f} s; bit-for-bit what fuse() computes, so the order of float operations is "
        f"fixed), and opens the file through model skeletons on the meta device (the key layout).{fs} What "
        f"would close it: nothing that keeps the durability — judge the bake against plain load+save plus its "
        f"fsync, or offer a no-fsync option for scratch outputs.")
    if f"{w}_bake_mem" in missed:
        notes.append(f"**bake peak memory ≤ 1.5× the model size ({w})** — missed; see the per-repetition figures.")
    return notes


def b_training_notes(missed: set[str], A: dict | None, B: dict) -> list[str]:
    """Notes on (b)'s SD 1.5 training targets."""
    notes = []
    sd, peer = B["lora"]
    if "b_time" in missed:
        pr = paired(peer, sd, "steps_per_s")  # sdlora step time / recipe step time, per repetition
        every = " — sdlora's step was the slower in every repetition" if pr and all(x > 1 for x in pr) else ""
        steps = sd.params["steps"] - sd.params["warmup"]
        diag = ""
        if A:
            u = A["unet"]
            r_lora = _ratio(u.med("sdlora.lora.fwd_bwd_s"), u.med("peer.lora.fwd_bwd_s"))
            r_min = _ratio(u.med("sdlora.lora_minimal_hook.fwd_bwd_s"), u.med("peer.lora.fwd_bwd_s"))
            if r_lora is not None and r_min is not None and r_lora > 1.03 and r_lora - r_min > 0.03:
                diag = (f" One candidate this run measures is sdlora's LoRA bypass path: on the toy model its "
                        f"UNet forward+backward is {r_lora:.2f}× PEFT's and {r_min:.2f}× with a minimal hook on "
                        f"the same modules, and under gradient checkpointing that path runs twice (forward and "
                        f"recomputation).")
            elif r_lora is not None:
                diag = (f" This run does not locate it: on the toy model sdlora's LoRA UNet forward+backward is "
                        f"{r_lora:.2f}× PEFT's, so the adapter path shows no cost there.")
        notes.append(
            f"**SD 1.5 step time ≤ 1.0× the recipe (b)** — missed. Both sides run the same VAE encode, text "
            f"encoder and checkpointed UNet with LoRA on the same 128 layers. Paired step-time ratios per "
            f"repetition (sdlora/recipe, runs back to back): {_list(pr)}{every}. Each run times {steps} step(s) "
            f"of about {1 / sd.med('steps_per_s'):.0f} s on one shared CPU thread, so a gap of a few percent is "
            f"near this run's resolution.{diag} What would close it: first confirm the gap with "
            f"`python benchmarks/run.py --workloads b --reps 5`; if it stays, profile one SD 1.5 step of both "
            f"sides (sdlora's LoRA bypass path and Trainer._batch are the places where their work differs).")
    if "b_mem" in missed:
        notes.append("**SD 1.5 peak memory ≤ 1.05× the recipe (b)** — missed; see the per-repetition figures.")
    return notes
