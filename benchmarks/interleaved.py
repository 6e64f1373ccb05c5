"""Comparisons run inside ONE process, the two sides interleaved call by call.

On a shared machine the speed of a process drifts with what else runs; figures taken in separate
processes minutes apart carry that drift into their ratio. Where peak memory is not the point, holding
both sides in one process and alternating them call by call (the order reversed every other round) puts
the same background load on both, so the ratio is much steadier.

- ``inference``: sdlora (``sdlora_side.inference_setup``) and diffusers + PEFT (``peer_peft.inference_setup``),
  four cases each (base, bypass 1 LoRA, bypass 4 LoRAs, fused 4 LoRAs): 8 models, one image per case per
  round. Plus a diagnostic: one UNet forward of the base model and of sdlora's fused model (``fuse()`` takes
  the bypass hooks off, so the two should run at the same speed).
- ``train``: whole training runs — sdlora's ``Trainer`` and the peer's loop, each in a thread of its own,
  taking turns one optimiser step at a time (a baton passed in ``Trainer.on_step`` and in the peer loop's
  per-step hook). Each side's step time is measured from the moment it gets the turn back to the end of its
  next step, so it is its own work only, and neighbouring steps of the two sides see the same load.
  (Peak memory and time to first step need processes of their own: run.py measures those apart.)
- ``unet_forward``: the full-size SD 1.5 UNet's forward alone (workload b's inference figure): base, bypass
  with one LoRA, the LoRA fused — one model switched between the three outside the timed calls. On the toy
  model a LoRA's per-layer work is a large share of a tiny layer's; here it is a small share of large
  matmuls, which is where "bypass ≤ 1.10× base" and "fused ≤ 1.02× base" are judged.
- ``unet``: one forward + backward of the toy UNet (the training step without data, optimiser or
  trainer), per adapter implementation, on the layers the training runs use: sdlora LoRA vs PEFT LoRA
  (to_q/k/v/out.0), sdlora LoHa / LoKr vs lycoris-lora's (preset all = full). Plus sdlora's own LoRA
  modules behind a minimal hook (``out + up(down(x)) * scale``) — a diagnostic that shows how much of a
  LoRA gap is the bypass code path rather than the adapter math.
"""
from __future__ import annotations

import threading
import time

from measure import median, sync


def _rounds(cases: dict, rounds: int, call) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {k: [] for k in cases}
    names = list(cases)
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            sync()
            t = time.perf_counter()
            call(cases[name], r)
            sync()
            times[name].append(time.perf_counter() - t)
    return times


def inference(p: dict) -> dict:
    import peer_peft
    import sdlora_side

    sd_cases, sd_ops = sdlora_side.inference_setup(p)
    pe_cases, pe_ops = peer_peft.inference_setup(p)
    cases = {f"sdlora.{k}": v for k, v in sd_cases.items()} | {f"peer.{k}": v for k, v in pe_cases.items()}
    for fn in cases.values():  # warm-up
        fn(10_000)
    times = _rounds(cases, p["rounds"], lambda fn, r: fn(r))
    out = {f"{k}.s_per_image": median(v) for k, v in times.items()}
    out |= {f"sdlora.{k}": v for k, v in sd_ops.items()} | {f"peer.{k}": v for k, v in pe_ops.items()}
    for tool in ("sdlora", "peer"):  # each case over the base image of the same round (adjacent in time)
        base = times[f"{tool}.base"]
        for case in ("bypass1", "bypass4", "fused4"):
            ratios = sorted(a / b for a, b in zip(times[f"{tool}.{case}"], base))
            out[f"{tool}.{case}_over_base"] = median(ratios)
            out[f"{tool}.{case}_over_base_iqr"] = [ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]]
    out |= fused_hooks(p)
    out["samples"] = times
    return out


def fused_hooks(p: dict) -> dict:
    """Diagnostic: one UNet forward (batch 2, as with CFG) of the base model and of sdlora's model with the 4
    LoRAs fused (no hooks left on its layers)."""
    import torch

    from sdlora.models import open_model
    from sdlora.inference.stack import AdapterStack

    def fused_model():
        m = open_model(p["model"], dtype="fp32")
        stack = AdapterStack(m)
        for i, f in enumerate(p["loras"]):
            stack.add(f, name=f"a{i}", strength=p["strength"])
        stack.fuse()
        return m.unet

    unets = {"base": open_model(p["model"], dtype="fp32").unet, "fused": fused_model()}
    u = unets["base"]
    side = int(u.config.sample_size)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, u.config.in_channels, side, side, generator=g)
    h = torch.randn(2, 77, u.config.cross_attention_dim, generator=g)
    t = torch.tensor([500, 500])

    def call(unet, r):
        with torch.no_grad():
            unet(x, t, h)

    for unet in unets.values():
        call(unet, 0)
    times = _rounds(unets, p["rounds"] * 8, call)
    return {f"sdlora.unet_forward.{k}_s": median(v) for k, v in times.items()}


def unet_forward(p: dict) -> dict:
    """Seconds of one UNet forward (no scheduler, VAE or text encoder) of the model at ``p["model"]`` with the
    LoRA ``p["lora"]`` at ``p["strength"]``: base, bypass and fused, on ONE model switched between the cases
    outside the timed calls (base = the LoRA at strength 0, which leaves no hook on any layer; fused =
    ``fuse()``, which takes the hooks off; the hook counts are recorded). A warm-up call per case (whose
    outputs are compared), then ``p["rounds"]`` rounds of one call per case, the order reversed every other
    round; the ratios to base are the medians of the per-round ratios, with their interquartile range."""
    import torch

    from sdlora.models import open_model
    from sdlora.inference.stack import AdapterStack

    model = open_model(p["model"], dtype="fp32")
    unet_ = model.unet.eval()
    stack = AdapterStack(model)
    adapter = stack.add(p["lora"], name="lora", strength=p["strength"])

    def switch(case: str) -> None:
        if case == "fused":
            stack.set_strength("lora", p["strength"])
            stack.fuse()
        else:
            stack.unfuse()
            stack.set_strength("lora", p["strength"] if case == "bypass" else 0.0)

    g = torch.Generator().manual_seed(0)
    b, side = p["batch"], p["latent"]
    x = torch.randn(b, unet_.config.in_channels, side, side, generator=g)
    h = torch.randn(b, 77, unet_.config.cross_attention_dim, generator=g)
    t = torch.full((b,), 500)
    cases = ("base", "bypass", "fused")
    outs, hooks = {}, {}
    for case in cases:
        switch(case)
        hooks[case] = sum(len(m._forward_hooks) for m in unet_.modules())
        with torch.no_grad():
            outs[case] = unet_(x, t, h).sample
    times: dict[str, list[float]] = {c: [] for c in cases}
    for r in range(p["rounds"]):
        for case in (cases if r % 2 == 0 else cases[::-1]):
            switch(case)
            sync()
            start = time.perf_counter()
            with torch.no_grad():
                unet_(x, t, h)
            sync()
            times[case].append(time.perf_counter() - start)
    out: dict = {f"sdlora.unet.{c}_s": median(v) for c, v in times.items()}
    for case in ("bypass", "fused"):
        ratios = sorted(a / b for a, b in zip(times[case], times["base"]))
        out[f"sdlora.unet.{case}_over_base"] = median(ratios)
        out[f"sdlora.unet.{case}_over_base_iqr"] = [ratios[len(ratios) // 4], ratios[(3 * len(ratios)) // 4]]
    peak = outs["base"].abs().max().item()
    out["lora_change"] = (outs["bypass"] - outs["base"]).abs().max().item() / peak  # relative to max |base|
    out["bypass_vs_fused"] = (outs["bypass"] - outs["fused"]).abs().max().item() / peak
    out["hooks"] = hooks
    out["adapted_unet_layers"] = sum(1 for c, _, _ in adapter.network.items_by_module() if c == "unet")
    out["samples"] = times
    return out


def _sdlora_unet(unet0, cfg: dict, lean: bool = False) -> tuple:
    """A copy of ``unet0`` with sdlora's adapter of ``cfg`` attached for training: (unet, trainable params).
    ``lean``: the same modules behind the shortest correct LoRA hook out + up(down(x))·scale."""
    import copy

    from sdlora.networks import Network, NetworkConfig

    u = copy.deepcopy(unet0)
    net = Network.create({"unet": u}, NetworkConfig(components=("unet",), **cfg))
    net.freeze_bases()
    net.attach()
    net.train()
    if lean:
        for m in net.values():
            m.detach()
            m.base.register_forward_hook(
                lambda mod, args, out, m=m: out + m.lora_up(m.lora_down(args[0])) * (m.scale * m.multiplier))
    return u, [q for q in net.parameters() if q.requires_grad]


def _peft_unet(unet0, rank: int) -> tuple:
    """A copy of ``unet0`` with a PEFT LoRA on the attention projections: (unet, trainable params)."""
    import copy

    from peft import LoraConfig

    u = copy.deepcopy(unet0)
    u.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                             target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    return u, [q for q in u.parameters() if q.requires_grad]


def _lycoris_unet(unet0, algo: str, cfg: dict) -> tuple:
    """A copy of ``unet0`` with lycoris-lora's ``algo`` network (preset full) applied: (unet, its params)."""
    import copy

    from lycoris import create_lycoris

    u = copy.deepcopy(unet0)
    kw = {"conv_dim": cfg["conv_rank"], "conv_alpha": cfg["conv_alpha"]}
    if cfg.get("factor") is not None:
        kw["factor"] = cfg["factor"]
    net = create_lycoris(u, 1.0, linear_dim=cfg["rank"], linear_alpha=cfg["alpha"], algo=algo, preset="full", **kw)
    net.apply_to()
    net.train()
    return u, list(net.parameters())


def unet(p: dict) -> dict:
    """Median seconds of one toy-UNet forward+backward per adapter implementation (interleaved)."""
    import logging

    import torch
    from diffusers import UNet2DConditionModel

    logging.getLogger("LyCORIS").setLevel(logging.ERROR)
    unet0 = UNet2DConditionModel.from_pretrained(p["model"], subfolder="unet").float()
    unet0.requires_grad_(False)
    g = torch.Generator().manual_seed(0)
    b, side = p["batch"], p["latent"]
    x = torch.randn(b, unet0.config.in_channels, side, side, generator=g)
    t = torch.randint(0, 1000, (b,), generator=g)
    h = torch.randn(b, 77, unet0.config.cross_attention_dim, generator=g)
    lora = {"algo": "lora", "rank": p["rank"], "alpha": p["rank"], "preset": "attn"}
    cases = {"sdlora.lora": _sdlora_unet(unet0, lora), "peer.lora": _peft_unet(unet0, p["rank"]),
             "sdlora.lora_minimal_hook": _sdlora_unet(unet0, lora, True)}
    for algo, cfg in p["lycoris"].items():
        sd_cfg = {k: v for k, v in cfg.items() if v is not None}
        cases[f"sdlora.{algo}"] = _sdlora_unet(unet0, dict(sd_cfg, algo=algo, preset="all"))
        cases[f"peer.{algo}"] = _lycoris_unet(unet0, algo, cfg)

    def step(case, r):
        u, params = case
        out = u(x, t, h).sample
        out.float().pow(2).mean().backward()
        for q in params:
            q.grad = None

    for case in cases.values():  # warm-up
        step(case, 0)
        step(case, 0)
    times = _rounds(cases, p["rounds"], step)
    out = {f"{k}.fwd_bwd_s": median(v) for k, v in times.items()}
    out["params"] = {k: sum(q.numel() for q in c[1]) for k, c in cases.items()}
    out["samples"] = times
    return out


class Baton:
    """Round-robin turns among ``n`` threads: a thread that ends a step hands the turn to the next thread
    that has not finished, and waits until the turn comes back. Set-up (model loading, caching) runs under
    the turn too: loading uses process-wide state (meta-device initialisation) that must not overlap."""

    def __init__(self, n: int):
        self.cond = threading.Condition()
        self.turn, self.n = 0, n
        self.finished = [False] * n
        self.done_at: list[list[float]] = [[] for _ in range(n)]
        self.resumed_at: list[list[float]] = [[] for _ in range(n)]

    def _next(self, i: int) -> int:
        for k in range(1, self.n + 1):
            j = (i + k) % self.n
            if not self.finished[j]:
                return j
        return i

    def wait_turn(self, i: int) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.turn == i)

    def step_done(self, i: int) -> None:
        sync()
        t = time.perf_counter()
        with self.cond:
            self.done_at[i].append(t)
            self.turn = self._next(i)
            self.cond.notify_all()
            self.cond.wait_for(lambda: self.turn == i)
        self.resumed_at[i].append(time.perf_counter())

    def finish(self, i: int) -> None:
        with self.cond:
            self.finished[i] = True
            if self.turn == i:
                self.turn = self._next(i)
            self.cond.notify_all()

    def step_times(self, i: int, warmup: int) -> list[float]:
        """Seconds of each step after the first ``warmup``: from getting the turn back to the step's end."""
        done, resumed = self.done_at[i], self.resumed_at[i]
        return [done[k] - resumed[k - 1] for k in range(max(1, warmup), len(done))]


def train(p: dict) -> dict:
    """``p["sides"]``: [{"label", "kind": sdlora | peft | lycoris, "params"}]; all train at once, in turns."""
    import peer_lycoris
    import peer_peft
    import sdlora_side

    runners = {"sdlora": sdlora_side.train, "peft": peer_peft.train, "lycoris": peer_lycoris.train}
    sides = p["sides"]
    baton = Baton(len(sides))
    results: list[dict | None] = [None] * len(sides)
    errors: list[str] = []

    def work(i: int, side: dict) -> None:
        try:
            baton.wait_turn(i)
            results[i] = runners[side["kind"]](side["params"], on_step=lambda: baton.step_done(i))
        except BaseException as exc:  # reported, and the turn is never held by a dead thread
            errors.append(f"{side['label']}: {type(exc).__name__}: {exc}")
        finally:
            baton.finish(i)

    threads = [threading.Thread(target=work, args=(i, side), name=side["label"]) for i, side in enumerate(sides)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError("; ".join(errors))
    out: dict = {"labels": [s["label"] for s in sides]}
    for i, side in enumerate(sides):
        times = baton.step_times(i, side["params"]["warmup"])
        out[f"{side['label']}.step_s"] = median(times)
        out[f"{side['label']}.step_samples"] = times
        out[f"{side['label']}.adapted_layers"] = results[i].get("adapted_layers")
        out[f"{side['label']}.trainable_params"] = results[i].get("trainable_params")
    return out
