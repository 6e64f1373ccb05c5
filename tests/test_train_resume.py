"""Exact resume and data parallelism.

- k steps + resume + (n−k) steps gives bitwise the same adapter and optimiser state as n steps straight,
  across several resumes, with continuous step numbering (augmentations, dropout, accumulation on).
- A two-process CPU data-parallel run (``accelerate launch``, gloo) gives the same adapter as one
  process with the doubled batch.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch

from sdlora.files.tensors import read_tensors
from sdlora.trainers import Trainer, load_config
from sdlora.trainers.state import StateError, find_state
from trainkit import config, draw, make_images, one_thread, quiet, write_toml  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")


def _stress(tmp_path, out: str) -> dict:
    """A run that uses every source of randomness and every piece of state."""
    data = tmp_path / "data"
    if not data.exists():
        make_images(data, 4)
        draw((48, 32), 5).save(data / "wide.png")  # a second bucket, and an odd batch count
        (data / "wide.txt").write_text("a wide one, red, blue")
    return config(
        tmp_path, "sd1", data=data,
        network={"algo": "lora", "rank": 2, "dropout": 0.1, "module_dropout": 0.1},
        dataset={"flip": True, "crop": "random", "shuffle_captions": True, "caption_dropout": 0.2,
                 "bucket_min_side": 16, "resolution": 32, "min_image_side": 16},
        training={"max_steps": 6, "batch_size": 2, "gradient_accumulation": 2, "train_text_encoder": True,
                  "te_stop_step": 4, "keep_last": 5},
        noise={"offset": 0.05, "multires_iterations": 2},
        optimizer={"scheduler": "cosine", "warmup_steps": 2},
        output={"dir": str(tmp_path / out)})


def _stop_at(step: int):
    def callback(trainer, s):
        if s == step:
            raise KeyboardInterrupt
    return callback


def _assert_same_tensors(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_is_bitwise_exact_across_several_resumes(tmp_path):
    straight = Trainer(load_config(raw=_stress(tmp_path, "straight")), log=quiet).run()
    assert straight.step == 6 and sorted(straight.losses) == [1, 2, 3, 4, 5, 6]

    raw = _stress(tmp_path, "pieces")
    first = Trainer(load_config(raw=raw), log=quiet)
    first.on_step.append(_stop_at(2))
    r1 = first.run()
    assert r1.interrupted and r1.step == 2
    second = Trainer(load_config(raw=raw), resume=tmp_path / "pieces", log=quiet)
    assert (second.step, second.epoch, second.position) == (2, 1, 0)  # 3 batches an epoch, 2 per step
    second.on_step.append(_stop_at(4))
    r2 = second.run()
    assert r2.interrupted and sorted(r2.losses) == [3, 4]
    r3 = Trainer(load_config(raw=raw), resume=tmp_path / "pieces" / "state-4", log=quiet).run()
    assert not r3.interrupted and r3.step == 6 and sorted(r3.losses) == [5, 6]
    for s in (3, 4, 5, 6):
        losses = {**r2.losses, **r3.losses}
        assert losses[s] == straight.losses[s], s  # bitwise equal floats

    a, _ = read_tensors(straight.adapter)
    b, _ = read_tensors(r3.adapter)
    _assert_same_tensors(a, b)
    for name in ("adapter.safetensors", "optimizer.safetensors"):
        _assert_same_tensors(read_tensors(tmp_path / "straight" / "state-6" / name, check_finite=False)[0],
                             read_tensors(tmp_path / "pieces" / "state-6" / name, check_finite=False)[0])
    assert any(k.startswith("te1/") for k in a) or any("lora_te" in k for k in a)
    assert sorted(p.name for p in (tmp_path / "pieces").glob("state-*")) == ["state-2", "state-4", "state-6"]


def test_resume_from_the_command_line_without_a_config(tmp_path):
    from sdlora.cli import main

    raw = config(tmp_path, "sd1", training={"max_steps": 4, "save_every_steps": 2})
    toml = write_toml(tmp_path / "c.toml", raw)
    assert main(["train", str(toml), "--set", "training.max_steps=2"]) == 0
    out = tmp_path / "out"
    assert find_state(out) == out / "state-2"
    # continue the same training for 2 more steps: the saved config is used, overrides still apply
    assert main(["train", "--resume", str(out), "--set", "training.max_steps=4"]) == 0
    assert find_state(out) == out / "state-4"
    straight = tmp_path / "straight"
    assert main(["train", str(toml), "--set", f"output.dir={str(straight)!r}"]) == 0
    _assert_same_tensors(read_tensors(straight / "tiny.safetensors")[0], read_tensors(out / "tiny.safetensors")[0])


def test_resume_errors_name_the_problem(tmp_path):
    raw = config(tmp_path, "sd1", training={"max_steps": 2})
    with pytest.raises(StateError, match="no such folder"):
        Trainer(load_config(raw=raw), resume=tmp_path / "missing", log=quiet)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StateError, match="no state-N folder in it"):
        Trainer(load_config(raw=raw), resume=tmp_path / "empty", log=quiet)
    Trainer(load_config(raw=raw), log=quiet).run()
    raw["network"]["rank"] = 3
    with pytest.raises(StateError, match=r"network.rank \(4 in the state, 3 now\) cannot change on resume"):
        Trainer(load_config(raw=raw), resume=tmp_path / "out", log=quiet)
    (tmp_path / "out" / "state-2" / "optimizer.json").write_text("{broken")
    raw["network"]["rank"] = 4
    with pytest.raises(StateError, match="incomplete or damaged"):
        Trainer(load_config(raw=raw), resume=tmp_path / "out", log=quiet)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_data_parallel_matches_one_process_with_double_batch(tmp_path):
    """accelerate launch starts two gloo CPU processes (--multi_gpu with ACCELERATE_USE_CPU: accelerate's
    --cpu launcher needs MPI for more than one process). Per-device batch 1 × 2 processes must equal one
    process with batch 2: same global batches, same noise rows, gradients summed over processes."""
    raw = config(tmp_path, "sd1", training={"max_steps": 2, "batch_size": 1}, network={"rank": 2},
                 dataset={"flip": True})
    toml = write_toml(tmp_path / "c.toml", raw)
    env = dict(os.environ, ACCELERATE_USE_CPU="1", OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", str(_free_port()), "-m", "sdlora.cli", "train", str(toml),
           "--set", f"output.dir={str(tmp_path / 'ddp')!r}"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "global batch 2" in proc.stdout

    single = load_config(raw=raw, overrides=["training.batch_size=2", f"output.dir={str(tmp_path / 'one')!r}"])
    one = Trainer(single, log=quiet).run()
    a, _ = read_tensors(tmp_path / "ddp" / "tiny.safetensors")
    b, _ = read_tensors(one.adapter)
    assert a.keys() == b.keys()
    for k in a:  # Adam divides by √v: fp32 rounding of tiny gradients shows up as ~1e-6 in weights of ~1e-3
        assert torch.allclose(a[k], b[k], rtol=1e-4, atol=1e-5), k
        assert float((a[k] - b[k]).norm()) <= 1e-3 * float(b[k].norm()) + 1e-7, k
    assert any(float(b[k].abs().max()) > 0 for k in b if "lora_up" in k)  # it did learn
