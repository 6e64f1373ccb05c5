"""The results table: one ``Row`` per figure (sdlora, peer, ratio, target, verdict), built from the
workloads' jobs, and its markdown rendering (``table``)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from measure import median
from runner import Job


@dataclass
class Row:
    workload: str
    figure: str
    sdlora: str
    peer: str
    ratio: str
    target: str = ""
    met: bool | None = None
    key: str = ""  # names the note that explains a miss
    pairs: list[float] = field(default_factory=list)  # per-repetition paired ratios, in the target's units
    band: tuple | None = None  # (name, lo, hi): a spread shown with the ratio, e.g. ("IQR", 0.9, 1.1)


def _f(v: float | None, unit: str = "", digits: int = 3) -> str:
    if v is None:
        return "—"
    if unit == "MiB":
        return f"{v / 2**20:,.0f} MiB"
    if unit == "GiB":
        return f"{v / 2**30:.2f} GiB"
    if unit == "ms":
        return f"{v * 1e3:.1f} ms"
    if unit == "×":
        return f"{v:.3f}×"
    return f"{v:.{digits}g}{(' ' + unit) if unit else ''}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _judge(value: float | None, op: str, limit: float) -> bool | None:
    if value is None:
        return None
    return value >= limit if op == ">=" else value <= limit


def train_rows(w: str, sd: Job, peer: Job, what: str, target_speed: tuple | None = None,
               target_mem: tuple | None = None, speed_as_time: bool = False) -> list[Row]:
    """Speed (steps/s, or step time), images/s, peak RSS (and VRAM), time to first step: sdlora vs peer."""
    rows = []
    s, p = sd.med("steps_per_s"), peer.med("steps_per_s")
    key, limit = target_speed if target_speed else ("", None)
    if speed_as_time:
        st, pt = (1 / s if s else None), (1 / p if p else None)
        r = _ratio(st, pt)
        rows.append(Row(w, f"{what}: step time", _f(st, "s"), _f(pt, "s"), _f(r, "×"),
                        f"≤ {limit}×" if limit else "", _judge(r, "<=", limit) if limit else None, key,
                        _pairs(sd, peer, "steps_per_s", invert=True)))
    else:
        r = _ratio(s, p)
        rows.append(Row(w, f"{what}: training steps/s", _f(s), _f(p), _f(r, "×"),
                        f"≥ {limit}×" if limit else "", _judge(r, ">=", limit) if limit else None, key,
                        _pairs(sd, peer, "steps_per_s")))
    si, pi = sd.med("images_per_s"), peer.med("images_per_s")
    rows.append(Row(w, f"{what}: images/s", _f(si), _f(pi), _f(_ratio(si, pi), "×")))
    sm, pm = sd.med("peak_rss"), peer.med("peak_rss")
    r = _ratio(sm, pm)
    key, limit = target_mem if target_mem else ("", None)
    rows.append(Row(w, f"{what}: peak RSS", _f(sm, "MiB"), _f(pm, "MiB"), _f(r, "×"),
                    f"≤ {limit}×" if limit else "", _judge(r, "<=", limit) if limit else None, key,
                    _pairs(sd, peer, "peak_rss")))
    if sd.med("peak_vram") is not None:
        sv, pv = sd.med("peak_vram"), peer.med("peak_vram")
        rows.append(Row(w, f"{what}: peak VRAM (allocated)", _f(sv, "MiB"), _f(pv, "MiB"), _f(_ratio(sv, pv), "×")))
    stf, ptf = sd.med("ttfs"), peer.med("ttfs")
    rows.append(Row(w, f"{what}: time to first step (process start → end of step 1)",
                    _f(stf, "s"), _f(ptf, "s"), _f(_ratio(stf, ptf), "×")))
    return rows


def build_rows(A: dict | None, B: dict | None, C: dict | None) -> list[Row]:
    rows: list[Row] = []
    if A:
        rows += a_training_rows(A)
        rows += a_unet_rows(A["unet"])
        rows += a_inference_rows(A["inference"])
        if A["bake"]:
            rows += bake_rows("a", A["bake"], A["toy"]["single_bytes"], judge_memory=False)
    if B:
        sd, peer = B["lora"]
        rows += train_rows("b", sd, peer, "LoRA, both encode every step", ("b_time", 1.0), ("b_mem", 1.05),
                           speed_as_time=True)
        share = peer.med("encode_share")
        if share is not None:
            rows.append(Row("b", "recipe: share of its step spent in VAE + text encoder", "—", f"{share:.1%}", "—"))
        if B.get("inference"):
            rows += unet_forward_rows("b", B["inference"], B["inf_params"])
        rows += bake_rows("b", B["bake"], B["single_bytes"], judge_memory=True)
    if C:
        sd, peer = C["lora"]
        rows += train_rows("c", sd, peer, "LoRA fp16, both encode every step", ("c_time", 1.0), ("c_mem", 1.05),
                           speed_as_time=True)
    return rows


def a_training_rows(A: dict) -> list[Row]:
    """(a)'s training rows: the interleaved (judged) ratios, then the separate-process figures."""
    sd_on, peer, sd_off = A["lora"]
    it, lit = A["inter"], A["lyco_inter"]
    rows = inter_rows("a", it, "sdlora_cache", "recipe", "LoRA, sdlora caching on vs recipe", ("cache", 2.0))
    rows += inter_rows("a", it, "sdlora_nocache", "recipe", "LoRA, sdlora caching off vs recipe", ("nocache", 1.0))
    for algo, name in (("loha", "LoHa"), ("lokr", "LoKr")):
        rows += inter_rows("a", lit, f"sdlora_{algo}", f"lycoris_{algo}", f"{name} (both cached) vs lycoris-lora",
                           (algo, 1.0), as_time=True)
    rows += train_rows("a", sd_on, peer, "LoRA, sdlora caching on vs recipe, separate processes")
    s, p = sd_off.med("steps_per_s"), peer.med("steps_per_s")
    rows.append(Row("a", "LoRA, sdlora caching off vs recipe, separate processes: training steps/s", _f(s), _f(p),
                    _f(_ratio(s, p), "×"), pairs=_pairs(sd_off, peer, "steps_per_s")))
    stf = sd_off.med("ttfs")
    rows.append(Row("a", "LoRA, sdlora caching off vs recipe, separate processes: time to first step",
                    _f(stf, "s"), _f(peer.med("ttfs"), "s"), _f(_ratio(stf, peer.med("ttfs")), "×")))
    share = peer.med("encode_share")
    if share is not None:
        rows.append(Row("a", "recipe: share of its step spent in VAE + text encoder (what caching can save)",
                        "—", f"{share:.1%}", f"ceiling {1 / (1 - share):.2f}×" if share < 1 else "—"))
    for algo, (sd, ly) in A["lyco"].items():
        name = {"loha": "LoHa", "lokr": "LoKr"}[algo]
        rows += train_rows("a", sd, ly, f"{name} vs lycoris-lora, separate processes", speed_as_time=True)[:1]
        same = (sd.med("adapted_layers"), sd.med("trainable_params")) == \
            (ly.med("adapted_layers"), ly.med("trainable_params"))
        rows.append(Row("a", f"{name}: adapted layers / trainable parameters",
                        f"{_int(sd.med('adapted_layers'))} / {_int(sd.med('trainable_params'))}",
                        f"{_int(ly.med('adapted_layers'))} / {_int(ly.med('trainable_params'))}",
                        "same" if same else "DIFFER"))
    return rows


def a_unet_rows(u: Job) -> list[Row]:
    """(a)'s toy UNet forward+backward per adapter implementation (diagnostic rows)."""
    rows = []
    for algo, name, peer_name in (("lora", "LoRA (attn, r8)", "PEFT"), ("loha", "LoHa", "lycoris-lora"),
                                  ("lokr", "LoKr", "lycoris-lora")):
        s, p = u.med(f"sdlora.{algo}.fwd_bwd_s"), u.med(f"peer.{algo}.fwd_bwd_s")
        rows.append(Row("a", f"{name}: toy UNet forward+backward only, vs {peer_name}, interleaved in one process",
                        _f(s, "ms"), _f(p, "ms"), _f(_ratio(s, p), "×")))
    s = u.med("sdlora.lora_minimal_hook.fwd_bwd_s")
    rows.append(Row("a", "LoRA: the same, sdlora's modules behind a minimal hook out + up(down(x))·γm (diagnostic)",
                    _f(s, "ms"), _f(u.med("peer.lora.fwd_bwd_s"), "ms"),
                    _f(_ratio(s, u.med("peer.lora.fwd_bwd_s")), "×")))
    return rows


def a_inference_rows(inf: Job) -> list[Row]:
    """(a)'s inference rows: s/image per case, within-tool ratios to base, load/apply and fuse/unfuse times."""
    rows = []
    for case, name in (("base", "base"), ("bypass1", "bypass, 1 LoRA"), ("bypass4", "bypass, 4 LoRAs"),
                       ("fused4", "fused, 4 LoRAs")):
        s, p = inf.med(f"sdlora.{case}.s_per_image"), inf.med(f"peer.{case}.s_per_image")
        rows.append(Row("a", f"inference s/image (20 steps Euler a, CFG 7, 32 px): {name}", _f(s, "s"),
                        _f(p, "s"), _f(_ratio(s, p), "×")))
    for case, name, limit in (("fused4", "fused (4 LoRAs) / base, same tool", 1.02),
                              ("bypass1", "bypass (1 LoRA r16 attn-mlp) / base, same tool", 1.10),
                              ("bypass4", "bypass (4 LoRAs) / base, same tool", None)):
        s, p = inf.med(f"sdlora.{case}_over_base"), inf.med(f"peer.{case}_over_base")
        iqr = [r[f"sdlora.{case}_over_base_iqr"] for r in inf.results if f"sdlora.{case}_over_base_iqr" in r]
        band = ("sdlora IQR", min(v[0] for v in iqr), max(v[1] for v in iqr)) if iqr else None
        # judged on (b): on this toy model a LoRA's per-layer work is a large share of each tiny layer's
        rows.append(Row("a", f"inference {name} (median of per-round ratios; IQR)", _f(s, "×"),
                        _f(p, "×") + _iqr(inf, f"peer.{case}_over_base_iqr"), "—",
                        f"(≤ {limit}×, judged on b)" if limit else "", band=band))
    for key, name in (("load_apply_s", "LoRA load + apply (one file onto a model)"), ("fuse_s", "fuse 4 LoRAs"),
                      ("unfuse_s", "unfuse 4 LoRAs")):
        s, p = inf.med(f"sdlora.{key}"), inf.med(f"peer.{key}")
        rows.append(Row("a", name, _f(s, "ms"), _f(p, "ms"), _f(_ratio(s, p), "×")))
    return rows


def unet_forward_rows(w: str, job: Job, ip: dict) -> list[Row]:
    """The full-size UNet forward: seconds per call of each case, and the judged ratios to base."""
    what = f"inference: UNet forward at {ip['latent'] * 8} px ({ip['latent']}×{ip['latent']} latents), batch {ip['batch']}"
    rows = [Row(w, f"{what}: {name}, s/call", _f(job.med(f"sdlora.unet.{case}_s"), "s"), "—", "—")
            for case, name in (("base", "base"), ("bypass", "bypass, 1 LoRA"), ("fused", "fused"))]
    for case, name, limit in (("bypass", "bypass (1 LoRA r16 attn-mlp) / base", 1.10),
                              ("fused", "fused / base", 1.02)):
        s = job.med(f"sdlora.unet.{case}_over_base")
        iqr = [r[f"sdlora.unet.{case}_over_base_iqr"] for r in job.results if f"sdlora.unet.{case}_over_base_iqr" in r]
        band = ("sdlora IQR", min(v[0] for v in iqr), max(v[1] for v in iqr)) if iqr else None
        rows.append(Row(w, f"{what}: {name} (median of per-round ratios; IQR)", _f(s, "×"), "—", "—",
                        f"sdlora ≤ {limit}×", _judge(s, "<=", limit), f"{w}_{case}", band=band))
    return rows


def _iqr(job: Job, key: str) -> str:
    vals = [r[key] for r in job.results if key in r]
    if not vals:
        return ""
    lo, hi = min(v[0] for v in vals), max(v[1] for v in vals)
    return f" ({lo:.2f}–{hi:.2f})"


def _pairs(a: Job, b: Job, key: str, invert: bool = False) -> list[float]:
    """Per-repetition paired ratios a/b (b/a with ``invert``: a time ratio from speeds)."""
    return paired(b, a, key) if invert else paired(a, b, key)


def _samples(job: Job, label: str) -> list[list[float]]:
    return [r[f"{label}.step_samples"] for r in job.results if f"{label}.step_samples" in r]


def _iqr_of(values: list[float]) -> tuple[float, float]:
    v = sorted(values)
    return v[len(v) // 4], v[(3 * len(v)) // 4]


def inter_rows(w: str, job: Job, sd: str, peer: str, what: str, target: tuple, as_time: bool = False) -> list[Row]:
    """The judged training row from an interleaved run: median step times of both sides (all processes), and
    the interquartile range of the per-step paired ratios (step k of one side next to step k of the other)."""
    a, b = _samples(job, sd), _samples(job, peer)
    ta = median([x for run in a for x in run]) if a else None
    tb = median([x for run in b for x in run]) if b else None
    key, limit = target
    if as_time:  # step time ratio, lower is better
        pr = [x / y for ra, rb in zip(a, b) for x, y in zip(ra, rb)]
        r = _ratio(ta, tb)
        return [Row(w, f"{what}: step time, steps interleaved in one process", _f(ta, "s"), _f(tb, "s"), _f(r, "×"),
                    f"≤ {limit}×", _judge(r, "<=", limit), key, band=("IQR", *_iqr_of(pr)) if pr else None)]
    pr = [y / x for ra, rb in zip(a, b) for x, y in zip(ra, rb)]  # speed ratio = peer time / sdlora time
    r = _ratio(tb, ta)
    return [Row(w, f"{what}: training steps/s, steps interleaved in one process", _f(1 / ta if ta else None),
                _f(1 / tb if tb else None), _f(r, "×"), f"≥ {limit}×", _judge(r, ">=", limit), key,
                band=("IQR", *_iqr_of(pr)) if pr else None)]


def _int(v: float | None) -> str:
    return "—" if v is None else f"{int(v):,}"


def bake_rows(w: str, jobs: list[Job], size: int, judge_memory: bool) -> list[Row]:
    sd, plain = jobs
    s, p = sd.med("seconds"), plain.med("seconds")
    r = _ratio(s, p)
    rows = [Row(w, f"bake 1 LoRA into the {size / 2**20:,.0f} MiB single file vs plain load+save: time", _f(s, "s"),
                _f(p, "s"), _f(r, "×"), "≤ 2.0×", _judge(r, "<=", 2.0), f"{w}_bake_time", _pairs(sd, plain, "seconds"))]
    sm, pm = sd.med("peak_rss"), plain.med("peak_rss")
    sb = median([x["peak_rss"] - x["baseline_rss"] for x in sd.results]) if sd.results else None
    pb = median([x["peak_rss"] - x["baseline_rss"] for x in plain.results]) if plain.results else None
    rs = _ratio(sm, size)
    rows.append(Row(w, "bake: peak RSS / model file size (whole process)", _f(rs, "×"), _f(_ratio(pm, size), "×"), "—",
                    "sdlora ≤ 1.5×" if judge_memory else "(judged on b)", _judge(rs, "<=", 1.5) if judge_memory else None,
                    f"{w}_bake_mem"))
    rows.append(Row(w, "bake: peak RSS above the process after imports / model file size", _f(_ratio(sb, size), "×"),
                    _f(_ratio(pb, size), "×"), "—"))
    rows.append(Row(w, "bake: peak RSS", _f(sm, "MiB"), _f(pm, "MiB"), _f(_ratio(sm, pm), "×")))
    return rows


def table(rows: list[Row]) -> str:
    """The markdown table. A ratio shows its spread (the range of the per-repetition paired ratios, or the
    interquartile range of per-step / per-round paired ratios); where a judged ratio's spread straddles the
    target, the verdict says so (this run alone cannot tell)."""
    lines = ["| wl | figure | sdlora | peer | ratio sdlora/peer | target | met? |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio, sd, met = r.ratio, r.sdlora, "" if r.met is None else ("yes" if r.met else "**NO**")
        band = r.band or (("pairs", min(r.pairs), max(r.pairs)) if len(r.pairs) >= 2 else None)
        if band:
            name, lo, hi = band
            if ratio == "—":  # a within-tool ratio: its spread goes with the sdlora figure
                sd += f" ({name.replace('sdlora ', '')} {lo:.2f}–{hi:.2f})"
            else:
                ratio += f" ({name} {lo:.2f}–{hi:.2f})"
            m = re.search(r"(\d+(?:\.\d+)?)×", r.target)
            if r.met is not None and m and lo <= float(m.group(1)) <= hi:
                met += f" ({name} {'straddle' if name == 'pairs' else 'straddles'} the target)"
        lines.append(f"| {r.workload} | {r.figure} | {sd} | {r.peer} | {ratio} | {r.target} | {met} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ notes
def paired(a: Job, b: Job, key: str) -> list[float]:
    """a/b per repetition: the two runs of a repetition ran back to back, under the same background load."""
    return [x[key] / y[key] for x, y in zip(a.results, b.results) if x.get(key) and y.get(key)]


def _list(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.2f}" for v in values) + "]"

