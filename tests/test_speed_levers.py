"""The trainer's speed levers (trainers/speed.py) give the same training: one host read per optimiser step
(bitwise the same losses), channels-last memory format and torch.compile of the UNet (within float32
summation-order tolerance of eager), each on the tiny SD1 model for two or three steps."""
from __future__ import annotations

import pytest
import torch

from sdlora.trainers import Trainer, load_config, speed
from trainkit import config, one_thread, quiet  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def _run(raw: dict) -> tuple[Trainer, dict[int, float], dict[str, torch.Tensor]]:
    tr = Trainer(load_config(raw=raw), log=quiet)
    result = tr.run()
    return tr, result.losses, {k: v.detach().clone() for k, v in tr.network.state_dict().items()}


def _assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float) -> None:
    """Adapter weights equal within ``atol``: Adam moves each weight by up to lr per step whatever the gradient's
    size, so a summation-order difference in a near-zero gradient shows as a few 1e-6; 2e-5 is 1% of the
    2 steps × lr 1e-3 a weight can move."""
    assert a.keys() == b.keys() and a
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=atol), (k, (a[k] - b[k]).abs().max())


def test_one_host_read_per_step_and_the_same_losses(tmp_path, monkeypatch):
    raw = config(tmp_path, "sd1", training={"max_steps": 3, "gradient_accumulation": 2})
    micro_losses: list[float] = []
    reads: list[int] = []
    real_micro, real_read = Trainer._micro, speed.read_step

    def micro(self, *a):
        loss = real_micro(self, *a)
        if loss is not None:
            micro_losses.append(loss.detach().double().item())
        return loss

    def read(stats, norm=None):
        reads.append(1)
        return real_read(stats, norm)

    monkeypatch.setattr(Trainer, "_micro", micro)
    monkeypatch.setattr(speed, "read_step", read)
    _, losses, _ = _run(raw)
    assert len(reads) == 3  # one device->host read per optimiser step (not one per micro-batch)
    assert len(micro_losses) == 6
    for step in (1, 2, 3):
        assert losses[step] == micro_losses[2 * step - 2] + micro_losses[2 * step - 1]  # bitwise


def test_read_step_reports_non_finite_and_norm():
    stats = speed.loss_stats(torch.tensor(0.25)) + speed.loss_stats(torch.tensor(float("nan")))
    loss, bad, norm = speed.read_step(stats, torch.tensor(2.0))
    assert bad and norm == 2.0 and loss != loss  # NaN sum
    loss, bad, norm = speed.read_step(speed.loss_stats(torch.tensor(0.5)))
    assert (loss, bad, norm) == (0.5, False, None)


def test_channels_last_trains_the_same_within_tolerance(tmp_path):
    _, plain_losses, plain = _run(config(tmp_path / "a", "sd1", training={"max_steps": 2}))
    tr, cl_losses, cl = _run(config(tmp_path / "b", "sd1", training={"max_steps": 2, "channels_last": True}))
    conv = tr.model.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert cl_losses.keys() == plain_losses.keys()
    for step in plain_losses:
        assert cl_losses[step] == pytest.approx(plain_losses[step], rel=1e-5)
    _assert_close(plain, cl, atol=2e-5)


def test_compiled_unet_trains_like_eager(tmp_path):
    # The slow test of this file (~35 s on 2 shared cores): dynamo traces the whole tiny UNet with its adapter
    # hooks once. Backend "eager" runs the traced graph with eager kernels, so no C++ compiler is needed;
    # inductor is the same trace plus generated kernels (benchmarks/gpu.py times it on a GPU).
    _, eager_losses, eager = _run(config(tmp_path / "a", "sd1", training={"max_steps": 2}))
    tr, comp_losses, comp = _run(config(tmp_path / "b", "sd1", training={"max_steps": 2, "compile": True,
                                                                          "compile_backend": "eager"}))
    assert tr.model.unet._compiled_call_impl is not None  # nn.Module.compile took effect
    for step in eager_losses:
        assert comp_losses[step] == pytest.approx(eager_losses[step], rel=1e-5)
    _assert_close(eager, comp, atol=2e-5)


def test_speed_keys_are_validated(tmp_path):
    from sdlora.errors import ConfigError

    with pytest.raises(ConfigError, match="compile_backend"):
        load_config(raw=config(tmp_path, "sd1", training={"compile_backend": "tvm"}))


def test_fused_adamw_is_the_default_and_trains_like_the_loop(tmp_path):
    # optimizer.fused (default true): torch's fused AdamW kernel, the same update as its per-parameter loop up to
    # float32 rounding (the fused kernel computes the bias corrections in a different order).
    tr_loop, loop_losses, loop = _run(config(tmp_path / "a", "sd1", training={"max_steps": 3},
                                             optimizer={"fused": False}))
    tr_fused, fused_losses, fused = _run(config(tmp_path / "b", "sd1", training={"max_steps": 3}))
    assert tr_fused.optimizer.defaults.get("fused") is True
    assert not tr_loop.optimizer.defaults.get("fused")
    assert fused_losses.keys() == loop_losses.keys() == {1, 2, 3}
    assert fused_losses[1] == loop_losses[1]  # the first loss comes before any update: bitwise
    for step in (2, 3):
        assert fused_losses[step] == pytest.approx(loop_losses[step], rel=1e-5)
    _assert_close(loop, fused, atol=2e-5)


def _on_meta(module: torch.nn.Module) -> bool:
    return all(p.device.type == "meta" for p in module.parameters())


def test_encoders_the_caches_replace_are_released_and_training_is_unchanged(tmp_path):
    # Every latent and caption cached, no samples: the trainer frees the VAE's and text encoder's weights (peak
    # memory, benchmarks/sd15.py) and trains exactly as with them in memory (a model passed in is never touched).
    lines: list[str] = []
    raw = config(tmp_path / "a", "sd1", training={"max_steps": 2})
    tr = Trainer(load_config(raw=raw), log=lines.append)
    assert _on_meta(tr.model.vae) and all(_on_meta(te) for te in tr.model.text_encoders)
    assert not _on_meta(tr.model.unet)
    assert any("the VAE and the text encoder released from memory" in line for line in lines), lines
    released = tr.run()
    from sdlora.models import open_model

    model = open_model(raw["model"]["path"])
    kept = Trainer(load_config(raw=config(tmp_path / "b", "sd1", training={"max_steps": 2})), log=quiet, model=model)
    assert not _on_meta(model.vae) and not any(_on_meta(te) for te in model.text_encoders)
    assert kept.run().losses == released.losses  # bitwise: the same caches, the same steps
    assert tr.measure_loss(timesteps=(500,)) == kept.measure_loss(timesteps=(500,))  # from the caches alone


def test_encoders_stay_where_samples_or_uncached_images_need_them(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("sks --s 1\n")
    tr = Trainer(load_config(raw=config(tmp_path / "a", "sd1", training={"max_steps": 1},
                                        sample={"prompts": str(prompts)})), log=quiet)
    assert not _on_meta(tr.model.vae) and not _on_meta(tr.model.text_encoders[0])
    tr = Trainer(load_config(raw=config(tmp_path / "b", "sd1", training={"max_steps": 1},
                                        dataset={"crop": "random"})), log=quiet)
    assert not _on_meta(tr.model.vae) and _on_meta(tr.model.text_encoders[0])  # latents uncached, text cached
    assert len(tr.run().losses) == 1


def test_latent_cache_fills_within_a_pixel_budget_per_vae_call(tmp_path):
    from sdlora.trainers import buckets
    from sdlora.trainers.cache import PIXELS_PER_ENCODE, LatentCache, Store
    from sdlora.trainers.config import DatasetSection
    from sdlora.trainers.data import scan
    from PIL import Image

    for i in range(10):  # ten different images (equal contents would share one cache entry)
        Image.new("RGB", (32, 32), (20 * i, 255 - 20 * i, 7 * i)).save(tmp_path / f"im{i}.png")
    section = DatasetSection(path=str(tmp_path), bucket_step=8, min_image_side=8)
    ds = scan(section)
    buckets.assign(ds, section, (32, 32))
    calls: list[int] = []

    def encode(px):
        calls.append(px.shape[0])
        return px[:, :1]
    cache = LatentCache(Store(), encode, "vae", 1, "white")
    cache.fill(ds.items, ds.subsets)
    assert calls == [8, 2]  # 32×32 images: the batch size caps the call
    calls.clear()
    cache = LatentCache(Store(), encode, "vae", 1, "white")
    cache.fill(ds.items, ds.subsets, pixels=3 * 32 * 32)
    assert calls == [3, 3, 3, 1]
    calls.clear()
    cache = LatentCache(Store(), encode, "vae", 1, "white")
    cache.fill(ds.items[:2], ds.subsets, pixels=100)  # an image over the budget still gets a call of its own
    assert calls == [1, 1] and PIXELS_PER_ENCODE == 256 * 256
