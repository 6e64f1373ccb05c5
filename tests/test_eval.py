"""sdlora.evaluate, sdlora eval, the demo's plumbing and the algorithm comparison, on the embedded default's
architecture with random weights (the figures of the trained default are checked by running the demo; here
the plumbing and the numbers' definitions)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from sdlora import evaluation as ev
from sdlora.toy import evaluate as tev
from sdlora.toy import world as tw
from sdlora.errors import ConfigError
from sdlora.models import open_model
from sdlora.networks.network import Network, NetworkConfig
from sdlora.toy.pretrain import write_untrained
from sdlora.inference.stack import AdapterStack


@pytest.fixture(scope="module")
def toy_folder(tmp_path_factory):
    return write_untrained(tmp_path_factory.mktemp("toy") / "default", seed=3, dtype=torch.float32)


@pytest.fixture(scope="module")
def toy_lora(toy_folder, tmp_path_factory):
    """A LoRA with non-zero up weights on the toy model (so it changes the output)."""
    from sdlora.adapters import save_adapter

    model = open_model(toy_folder, dtype=torch.float32)
    net = Network.create(model.components(), NetworkConfig(algo="lora", rank=4, alpha=4.0, preset="attn-mlp"))
    torch.manual_seed(5)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "up" in name:
                p.normal_(0, 0.2)
    path = tmp_path_factory.mktemp("lora") / "toy-lora.safetensors"
    save_adapter(net, path, family="sd1", metadata={"ss_steps": "7"})
    return path


@pytest.fixture
def toy_model(toy_folder):
    m = open_model(toy_folder, dtype=torch.float32)
    m.pipe.set_progress_bar_config(disable=True)
    return m


def test_is_toy_model(toy_model, tmp_path):
    from sdlora.models import BaseModel
    from tiny import tiny_pipeline

    assert tev.is_toy_model(toy_model)
    assert not tev.is_toy_model(BaseModel(tiny_pipeline("sd1"), "sd1"))


def test_validation_loss_matches_diffusers_by_hand(toy_model):
    """One image, two timesteps: our figure equals the MSE computed with diffusers' DDPMScheduler.add_noise."""
    from diffusers import DDPMScheduler

    img = tw.render(tw.Scene("red", "circle", "white", 16, 16, 9))
    vs = ev.ValidationSet.from_images(toy_model, "one", [img], ["a red circle on a white background"])
    got = vs.loss(toy_model, seed=3, timesteps=(100, 700))
    sched = DDPMScheduler.from_config({k: v for k, v in toy_model.base_scheduler.items() if not k.startswith("_")})
    pix = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    with torch.no_grad():
        lat = toy_model.vae.encode(pix).latent_dist.mean * toy_model.vae.config.scaling_factor
        ids = toy_model.tokenizers[0](["a red circle on a white background"], padding="max_length",
                                      max_length=77, return_tensors="pt").input_ids
        hidden = toy_model.text_encoders[0](ids)[0]
        want = []
        for t in (100, 700):
            noise = torch.randn(lat.shape, generator=torch.Generator().manual_seed(3 * 100003 + t))
            noisy = sched.add_noise(lat, noise, torch.tensor([t]))
            pred = toy_model.unet(noisy, torch.tensor([t]), hidden).sample
            want.append(float(((pred - noise) ** 2).mean()))
    assert got == pytest.approx(sum(want) / 2, rel=1e-5)
    assert vs.loss(toy_model, seed=3, timesteps=(100, 700)) == got  # deterministic
    assert vs.loss(toy_model, seed=4, timesteps=(100, 700)) != got  # the seed matters


def test_validation_loss_batch_invariant_and_adapter_sensitive(toy_model, toy_lora):
    concept, prior = tev.toy_sets(toy_model, n=5)
    assert len(concept.captions) == 5 and all("sks" in c for c in concept.captions)
    assert all("sks" not in c for c in prior.captions)
    base = concept.loss(toy_model)
    assert concept.loss(toy_model, batch=3) == pytest.approx(base, rel=1e-5)
    stack = AdapterStack(toy_model)
    stack.add(toy_lora, name="l", strength=0.0)
    assert concept.loss(toy_model) == pytest.approx(base, rel=1e-6)  # strength 0 is the base
    stack.set_strength("l", 1.0)
    assert abs(concept.loss(toy_model) - base) > 1e-4


def test_validation_folder_skips_bad_images_and_reports(toy_model, tmp_path):
    tw.render(tw.Scene("blue", "square", "gray", 16, 16, 10)).save(tmp_path / "a.png")
    (tmp_path / "a.txt").write_text("a blue square on a gray background\n")
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    vs = ev.ValidationSet.from_folder(toy_model, tmp_path)
    assert vs.captions == ["a blue square on a gray background"]
    assert [n for n, _ in vs.skipped] == ["broken.png"]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no readable image"):
        ev.ValidationSet.from_folder(toy_model, empty)
    with pytest.raises(ConfigError, match="does not exist"):
        ev.ValidationSet.from_folder(toy_model, tmp_path / "missing")


def test_sample_batch_equals_one_at_a_time_and_generate(toy_model):
    from sdlora.inference.generate import generate

    caps = ["a red sks on a white background", "a blue circle on a black background", "a green sks"]
    together = tev.sample_batch(toy_model, caps, [11, 12, 13], steps=4, batch=8)
    single = [tev.sample_batch(toy_model, [c], [s], steps=4)[0] for c, s in zip(caps, (11, 12, 13))]
    for a, b in zip(together, single):
        assert a.shape == (tw.SIZE, tw.SIZE, 3)
        np.testing.assert_allclose(a, b, atol=2e-4)
    g = generate(toy_model, caps[1], seed=12, steps=4, cfg=3.0, sampler="ddim", progress=False)[0]
    np.testing.assert_allclose(g.array, single[1], atol=2e-4)


def test_diversity_definition():
    a = np.zeros((2, 2, 3), np.float32)
    b = np.full((2, 2, 3), 0.5, np.float32)
    assert tev._diversity([a, b, a, a], 2) == pytest.approx(0.25)  # pairs (a,b): 0.5 and (a,a): 0
    assert tev._diversity([a, b], 1) is None


def test_toy_figures_counts_with_a_stub_classifier(toy_model, monkeypatch):
    """The rates are the shares the classifier reports: with a classifier that always reads 'a red star',
    the concept rate is 100%, the concept colour right for the red quarter of the prompts, prior 0%."""
    monkeypatch.setattr(tw, "classify", lambda img, shapes=tw.SHAPES: tw.Reading("red", "star", "white", 1.0))
    fig = tev.toy_figures(toy_model, per_prompt=1, steps=2)
    assert fig["concept_rate"] == 1.0
    assert fig["concept_colour"] == pytest.approx(1 / len(tw.COLOURS))
    assert fig["prior_accuracy"] == 0.0 and fig["prior_shows_concept"] == 1.0
    assert fig["samples_concept"] == len(tw.COLOURS) * len(tw.BACKGROUNDS)
    assert fig["samples_prior"] == len(tw.COLOURS) * len(tw.BACKGROUNDS) * len(tw.BASE_SHAPES)


def test_evaluate_rows_table_plot(toy_model, toy_lora, tmp_path):
    concept, prior = tev.toy_sets(toy_model, n=3)
    rows = tev.evaluate(toy_model, [toy_lora], strengths=(0.0, 1.0), sets=[concept, prior], toy=True,
                       per_prompt=2, steps=2, prior_at=(1.0,), log=lambda m: None)
    assert [(r.adapter, r.strength) for r in rows] == [("base", 0.0), (toy_lora.name, 0.0), (toy_lora.name, 1.0)]
    assert rows[1].step == 7  # from ss_steps
    assert rows[1].figures["loss_concept"] == pytest.approx(rows[0].figures["loss_concept"], rel=1e-6)
    assert rows[1].figures["concept_rate"] == rows[0].figures["concept_rate"]
    assert "prior_accuracy" not in rows[1].figures and "prior_accuracy" in rows[2].figures
    assert rows[2].figures["loss_concept"] != rows[0].figures["loss_concept"]
    assert toy_model.stack is not None and len(toy_model.stack) == 0  # the adapter is removed afterwards
    paths = ev.write_outputs(rows, tmp_path / "ev")
    data = json.loads(paths["json"].read_text())
    assert len(data["rows"]) == 3 and data["rows"][2]["strength"] == 1.0
    table = paths["table"].read_text().splitlines()
    assert table[0].split()[:4] == ["adapter", "step", "strength", "loss_concept"] and len(table) == 5
    with Image.open(paths["plot"]) as im:
        assert im.format == "PNG" and im.size[0] >= 800
        colours = im.convert("RGB").getcolors(1 << 20)
        assert len(colours) > 4  # lines were drawn, not a blank canvas


def test_eval_command(toy_folder, toy_lora, tmp_path, capsys):
    from sdlora.cli import main

    rc = main(["eval", str(toy_lora), "--model", str(toy_folder), "--strengths", "0,1", "--per-prompt", "1",
               "--out", str(tmp_path / "e")])
    assert rc == 0
    out = capsys.readouterr().out
    assert "concept_rate" in out and "eval.png" in out
    rows = json.loads((tmp_path / "e" / "eval.json").read_text())["rows"]
    assert [r["strength"] for r in rows] == [0.0, 0.0, 1.0]
    assert {"loss_concept", "loss_prior", "concept_rate", "prior_accuracy", "diversity"} <= set(rows[0])
    assert main(["eval", "--model", str(toy_folder), "--strengths", "x"]) != 0
    assert "--strengths 'x'" in capsys.readouterr().err
    assert main(["eval", "--model", str(toy_folder), "--no-toy", "--out", str(tmp_path / "n")]) != 0
    assert "nothing to measure" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nope.safetensors"), "--model", str(toy_folder)]) != 0
    assert "does not exist" in capsys.readouterr().err


def test_demo_end_to_end_on_random_weights(toy_folder, tmp_path):
    from sdlora.toy.demo import STRENGTHS, run_demo

    lines: list[str] = []
    report = run_demo(tmp_path / "demo", steps=3, per_prompt=1, model_path=toy_folder, sample_steps=2,
                      log=lines.append)
    saved = json.loads((tmp_path / "demo" / "report.json").read_text())
    assert saved == report
    for key in ("adapter", "grid", "baked", "eval_plot", "eval_table"):
        assert (tmp_path / "demo").resolve() in __import__("pathlib").Path(report[key]).parents
        assert __import__("pathlib").Path(report[key]).is_file(), key
    assert list(report["concept_rate"]) == [f"{s:g}" for s in STRENGTHS]
    assert report["concept_rate"]["0"] == report["concept_rate_base"]
    assert 0.0 <= report["prior_accuracy_base"] <= 1.0 and 0.0 <= report["prior_accuracy_adapter"] <= 1.0
    assert report["train_steps"] == 3 and report["seconds"] > 0
    assert report["targets"]["concept_rate_at_0_equals_base"] is True
    assert any("targets:" in line for line in lines) and any(str(report["grid"]) in line for line in lines)
    with Image.open(report["grid"]) as g:
        assert g.width > 6 * tw.SIZE  # six strengths side by side


def test_compare_two_algorithms(toy_folder, tmp_path):
    from sdlora.toy.compare import compare

    res = compare(tmp_path / "cmp", ["lora", "loha"], steps=4, check_every=2, per_prompt=1, model_path=toy_folder,
                  sample_steps=2, log=lambda m: None)
    rows = res["algorithms"]
    assert set(rows) == {"lora", "loha"}
    for name, r in rows.items():
        assert set(r["curve"]) == {2, 4}
        assert r["file_bytes"] == (tmp_path / "cmp" / name / f"{name}.safetensors").stat().st_size
        assert r["parameters"] > 0 and r["layers"] > 0
    assert rows["loha"]["layers"] > rows["lora"]["layers"]  # LoHa's preset adds the ResNet convs
    md = (tmp_path / "cmp" / "compare.md").read_text().splitlines()
    assert md[0].startswith("| algorithm") and len(md) == 4
    with pytest.raises(ConfigError, match="unknown algorithm"):
        compare(tmp_path / "x", ["dylora"], model_path=toy_folder)


def test_pretrain_default_runs_saves_and_continues(tmp_path):
    """The pretraining script end to end at toy sizes: a folder that opens as an SD 1.x model of the toy
    world, PRETRAIN.json with the gate, and --continue-from adding steps to the saved work state."""
    from sdlora.toy.pretrain import main

    out, work = tmp_path / "m", tmp_path / "work"
    args = ["--out", str(out), "--work", str(work), "--images", "16", "--vae-steps", "2", "--vae-batch", "4",
            "--unet-batch", "4", "--gate-steps", "1", "--threads", "1"]
    assert main(args + ["--unet-steps", "3"]) == 0
    info = json.loads((out / "PRETRAIN.json").read_text())
    assert info["unet_steps"] == 3 and info["gate_fp32"]["samples"] == 36
    assert 0.0 <= info["gate_fp32"]["colour_accuracy"] <= 1.0
    model = open_model(out)
    assert model.family == "sd1" and tev.is_toy_model(model)
    from safetensors import safe_open

    with safe_open(str(out / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}  # shipped in fp16
    assert torch.load(work / "unet_te.pt", weights_only=True)["step"] == 3
    assert main(args + ["--unet-steps", "2", "--continue-from", str(work)]) == 0
    info = json.loads((out / "PRETRAIN.json").read_text())
    assert info["unet_steps"] == 5 and info["continued_from_step"] == 3
    log = (out / "PRETRAIN.log").read_text()
    assert "vae step" in log and "continuing from" in log  # the first run's log is kept
