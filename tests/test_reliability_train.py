"""Reliability of training and saving (issue #17, training half).

- states: a damaged latest state (truncated rng-0.json, trainer.json without ``step`` or holding a list, a
  truncated adapter, no completion marker, NaN values) is passed over with a message naming the file, or
  refused when named directly; never a traceback.
- ``--resume --set``: changeable keys are applied and printed, the others refused with a sentence.
- a fresh run into a folder of an earlier, longer run sets the old states aside; ``--resume OUT`` then
  continues the new run.
- data: an image gone after the scan is skipped and named, the batch trains on; non-UTF-8 file names print.
- saving: a folder under a regular file, a read-only and a full file system end in ``sdlora: error:`` naming
  the path and cause, previous output intact, no temporary file; an error mid-training saves first.
- atomic saves under SIGKILL, a swap killed between its renames, stale temporary files cleaned up.
- the bucket step default follows a small resolution.
"""
from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from sdlora.cli import main
from sdlora.files import streaming
from sdlora.files import tensors as files
from sdlora.files.tensors import SaveError, read_tensors
from sdlora.trainers import Trainer, load_config
from sdlora.trainers import state as states
from sdlora.trainers.state import StateError, load_state
from trainkit import config, make_images, one_thread, quiet, write_toml  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_thread")
REPO = Path(__file__).resolve().parent.parent


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------------------ states
def _two_states(tmp_path: Path) -> Path:
    raw = config(tmp_path, "sd1", training={"max_steps": 4, "save_every_steps": 2})
    Trainer(load_config(raw=raw), log=quiet).run()
    out = tmp_path / "out"
    assert sorted(p.name for p in out.glob("state-*")) == ["state-2", "state-4"]
    return out


def _damage_cases():
    def truncate(name, keep=20):
        def do(folder):
            p = folder / name
            p.write_bytes(p.read_bytes()[:keep])
        return do

    def trainer_json(value):
        def do(folder):
            (folder / "trainer.json").write_text(json.dumps(value))
        return do

    def without_step(folder):
        t = json.loads((folder / "trainer.json").read_text())
        del t["step"]
        (folder / "trainer.json").write_text(json.dumps(t))

    return [
        ("rng-0.json", truncate("rng-0.json"), "rng-0.json is not valid JSON"),
        ("no step", without_step, "trainer.json: 'step' is missing"),
        ("list", trainer_json([1, 2, 3]), "trainer.json holds a list, not a dict"),
        ("adapter", truncate("adapter.safetensors", 200), "adapter.safetensors: truncated"),
        ("marker", lambda f: (f / states.MARKER).unlink(), "complete.json is missing, so its save never finished"),
        ("optimizer", truncate("optimizer.safetensors", 4), "optimizer.safetensors"),
    ]


def test_damaged_latest_state_falls_back_or_is_refused(tmp_path):
    out = _two_states(tmp_path)
    pristine = tmp_path / "pristine-state-4"
    shutil.copytree(out / "state-4", pristine)
    for label, damage, why in _damage_cases():
        shutil.rmtree(out / "state-4")
        shutil.copytree(pristine, out / "state-4")
        damage(out / "state-4")
        st = load_state(out)
        assert st.folder == out / "state-2" and st.step == 2, label
        assert len(st.notes) == 1 and "state-4" in st.notes[0] and why in st.notes[0], (label, st.notes)
        with pytest.raises(StateError, match="state-4: the state is incomplete or damaged") as info:
            load_state(out / "state-4")
        assert why in str(info.value), label
    # every state damaged: one sentence naming each
    (out / "state-2" / "rng-0.json").write_text("[")
    with pytest.raises(StateError, match="every state in it is incomplete or damaged") as info:
        load_state(out)
    assert "state-2: rng-0.json" in str(info.value) and "state-4:" in str(info.value)


def test_resume_from_a_damaged_latest_state_says_so_and_continues(tmp_path, capsys):
    out = _two_states(tmp_path)
    (out / "state-4" / "rng-0.json").write_text('{"numpy": [')
    assert main(["train", "--resume", str(out), "--set", "training.max_steps=5"]) == 0
    printed = capsys.readouterr().out
    assert "state-4: rng-0.json is not valid JSON" in printed and "resuming from state-2" in printed
    assert "resumed from" in printed and "at step 2" in printed
    assert load_state(out / "state-5").step == 5


def test_nan_state_is_passed_over_and_never_resumed(tmp_path):
    out = _two_states(tmp_path)
    folder = out / "state-4"
    adapter, _ = read_tensors(folder / "adapter.safetensors")
    first = sorted(adapter)[0]
    adapter[first] = torch.full_like(adapter[first], float("nan"))
    files.write_tensors(folder / "adapter.safetensors", adapter, hashes=False)
    (folder / states.MARKER).unlink()
    states._write_marker(folder, 4)  # a consistent state whose values are NaN, as a diverged run writes it
    st = load_state(out)
    assert st.step == 2 and "NaN or Inf" in st.notes[0]
    with pytest.raises(StateError, match="NaN or Inf"):
        load_state(folder)


def test_a_save_cut_before_its_marker_leaves_no_state(tmp_path, monkeypatch):
    out = _two_states(tmp_path)
    before = sorted(p.name for p in out.iterdir())

    def killed(folder, step):
        raise KeyboardInterrupt

    monkeypatch.setattr(states, "_write_marker", killed)
    st = load_state(out)
    tr = Trainer(load_config(raw=config(tmp_path, "sd1", training={"max_steps": 6})), resume=out, log=quiet)
    assert tr.step == st.step == 4
    with pytest.raises(KeyboardInterrupt):
        tr.save_state()
    assert sorted(p.name for p in out.iterdir()) == before  # no state-4 replaced, no temporary folder


# ------------------------------------------------------------------------------------ resume --set
def test_resume_set_applies_changeable_keys_and_refuses_the_others(tmp_path, capsys):
    toml = write_toml(tmp_path / "c.toml", config(tmp_path, "sd1", training={"max_steps": 2}))
    assert main(["train", str(toml)]) == 0
    out = tmp_path / "out"
    capsys.readouterr()
    for key, value in (("training.seed", "5"), ("network.rank", "2"), ("dataset.flip", "true"),
                       ("training.batch_size", "1")):
        assert main(["train", "--resume", str(out), "--set", f"{key}={value}"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("sdlora: error: ") and f"{key}" in err and "cannot change on resume" in err, err
        assert "Traceback" not in err
    assert sorted(p.name for p in out.glob("state-*")) == ["state-2"]
    rc = main(["train", "--resume", str(out), "--set", "training.max_steps=4", "--set", "training.learning_rate=0.01"])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "resume: training.learning_rate 0.001 -> 0.01" in printed and "training.max_steps 2 -> 4" in printed
    st = load_state(out)
    assert st.step == 4 and st.scheduler["base_lrs"] == [0.01]
    assert all(g["lr"] == 0.01 for g in st.optimizer["param_groups"])
    # the override changed the training: not the adapter of the run that kept 0.001
    straight = tmp_path / "straight"
    assert main(["train", str(toml), "--set", "training.max_steps=4", "--set", f"output.dir={str(straight)!r}"]) == 0
    assert not _same(read_tensors(straight / "tiny.safetensors")[0], read_tensors(out / "tiny.safetensors")[0])


# --------------------------------------------------------------------------- a second run, same folder
def test_fresh_run_sets_an_earlier_longer_run_aside(tmp_path, capsys):
    toml = write_toml(tmp_path / "c.toml", config(tmp_path, "sd1", training={
        "max_steps": 6, "save_every_steps": 2, "keep_last": 2}))
    out = tmp_path / "out"
    assert main(["train", str(toml)]) == 0
    assert sorted(p.name for p in out.glob("state-*")) == ["state-4", "state-6"]
    capsys.readouterr()
    raw = config(tmp_path, "sd1", training={"max_steps": 4, "save_every_steps": 2, "keep_last": 2})
    tr = Trainer(load_config(raw=raw))

    def stop(trainer, step):
        if step == 3:
            raise KeyboardInterrupt

    tr.on_step.append(stop)
    assert tr.run().interrupted
    printed = capsys.readouterr().out
    aside = sorted(out.glob("earlier-run-*"))
    assert len(aside) == 1 and f"moved the states of an earlier run to {aside[0]}" in printed
    assert sorted(p.name for p in aside[0].glob("state-*")) == ["state-4", "state-6"]
    assert sorted(p.name for p in aside[0].glob("tiny-step*")) == ["tiny-step000002.safetensors",
                                                                   "tiny-step000004.safetensors"]
    assert sorted(p.name for p in out.glob("state-*")) == ["state-2", "state-3"]
    assert (aside[0] / "config.toml").is_file() and f"--resume {out}" in printed
    # the suggested command continues the NEW run
    assert main(["train", "--resume", str(out)]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert load_state(out).step == 4
    straight = tmp_path / "straight"
    Trainer(load_config(raw=dict(raw, output=dict(raw["output"], dir=str(straight)))), log=quiet).run()
    assert _same(read_tensors(straight / "tiny.safetensors")[0], read_tensors(out / "tiny.safetensors")[0])


# ------------------------------------------------------------------------------------------- data
def test_image_gone_after_the_scan_is_skipped_and_named(tmp_path):
    data = make_images(tmp_path / "data", 4, size=(16, 16))
    raw = config(tmp_path, "sd1", data=data, dataset={"crop": "random"}, training={"max_steps": 4})
    lines: list[str] = []
    tr = Trainer(load_config(raw=raw), log=lines.append)
    (data / "img1.png").unlink()
    (data / "img2.png").write_bytes(b"not a png any more")
    result = tr.run()
    assert result.step == 4 and sorted(result.losses) == [1, 2, 3, 4]
    text = "\n".join(lines)
    assert f"skipped {data / 'img1.png'}" in text and "after the scan" in text
    assert f"skipped {data / 'img2.png'}" in text and "corrupt or truncated" in text or "not an image" in text
    assert text.count(f"skipped {data / 'img1.png'}") == 1  # named once, not every epoch
    assert all(torch.isfinite(t).all() for t in read_tensors(result.adapter)[0].values())


def test_every_image_gone_stops_with_an_emergency_save(tmp_path):
    data = make_images(tmp_path / "data", 2, size=(16, 16))
    raw = config(tmp_path, "sd1", data=data, training={"max_steps": 6, "batch_size": 1, "cache_latents": False})
    tr = Trainer(load_config(raw=raw), log=quiet)

    def vanish(trainer, step):
        if step == 2:
            for p in data.glob("*.png"):
                p.unlink()

    tr.on_step.append(vanish)
    with pytest.raises(Exception) as info:
        tr.run()
    from sdlora.errors import SdloraError

    assert isinstance(info.value, SdloraError)
    message = str(info.value)
    assert "training stopped at step 2" in message and "no training image is left" in message
    out = tmp_path / "out"
    assert "tiny-step000002.safetensors" in message and f"--resume {out}" in message
    assert load_state(out).step == 2 and (out / "tiny-step000002.safetensors").is_file()


def test_non_utf8_file_names_print_under_strict_utf8(tmp_path):
    data = make_images(tmp_path / "data", 2, size=(16, 16))
    bad = os.fsdecode(bytes(data) + b"/caf\xe9.png")
    Path(bad).write_bytes(b"\x89PNG broken")
    shutil.copy(data / "img0.png", os.fsdecode(bytes(data) + b"/na\xefve.png"))
    stream = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    raw = config(tmp_path, "sd1", data=data, training={"max_steps": 1})

    def log(text: str) -> None:
        print(text, file=stream)

    Trainer(load_config(raw=raw), log=log).run()
    stream.flush()
    printed = stream.buffer.getvalue().decode("utf-8")
    assert "caf\\xe9.png: not an image" in printed  # the broken one named, the good one trained on
    assert "(x1): 3 images" in printed and "na\\xefve.png" in printed


def test_bucket_step_default_follows_a_small_resolution(tmp_path):
    raw = config(tmp_path, "sd1")
    del raw["dataset"]["bucket_step"]
    raw["dataset"].update(resolution=32, min_image_side=8)
    lines: list[str] = []
    tr = Trainer(load_config(raw=raw), log=lines.append)
    report = "\n".join(lines)
    assert "bucket step 8 (dataset.bucket_step not set: derived from the resolution 32x32)" in report
    assert {it.bucket for it in tr.dataset.items} == {(32, 32)}
    raw["dataset"]["bucket_step"] = 64
    from sdlora.errors import ConfigError

    with pytest.raises(ConfigError, match="dataset.bucket_step = 64 is larger than the resolution 32x32"):
        Trainer(load_config(raw=raw), log=quiet)


# -------------------------------------------------------------------------------------- save errors
def _fault_on_fsync(monkeypatch, code: int = errno.ENOSPC):
    def fsync(fd):
        raise OSError(code, os.strerror(code))
    monkeypatch.setattr(files.os, "fsync", fsync)


def test_full_disk_by_fault_injection_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "a.safetensors"
    files.write_tensors(target, {"w": torch.ones(4)})
    before = target.read_bytes()
    _fault_on_fsync(monkeypatch)
    with pytest.raises(SaveError, match=f"cannot write {target}: No space left on device; the disk is full"):
        files.write_tensors(target, {"w": torch.zeros(4)})
    with pytest.raises(SaveError, match="No space left on device"):
        streaming.write_streamed(target, [streaming.Item("w", torch.float32, (4,), lambda: torch.zeros(4))])
    with pytest.raises(SaveError, match="No space left"):
        with streaming.atomic_folder(tmp_path / "folder") as tmp:
            files.write_tensors(tmp / "x.safetensors", {"w": torch.ones(2)})
    assert target.read_bytes() == before and _hidden(tmp_path) == []
    assert not (tmp_path / "folder").exists()


def test_training_on_a_full_disk_ends_with_a_sentence(tmp_path, monkeypatch, capsys):
    toml = write_toml(tmp_path / "c.toml", config(tmp_path, "sd1", training={"max_steps": 4, "save_every_steps": 2}))
    calls = {"n": 0}

    def fsync(fd):
        calls["n"] += 1
        if calls["n"] > 3:  # config.toml and part of the first save succeed
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return os.fstat(fd)

    monkeypatch.setattr(files.os, "fsync", fsync)
    rc = main(["train", str(toml)])
    err = capsys.readouterr().err
    assert rc == 2 and "\nsdlora: error: training stopped at step 2: cannot write " in err
    assert "No space left on device; the disk is full" in err
    assert "the emergency save failed too" in err
    out = tmp_path / "out"
    assert _hidden(out) == [] and not list(out.glob("state-*"))


@contextlib.contextmanager
def _tmpfs(folder: Path, options: str):
    folder.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the fault-injection tests cover it")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_train_and_bake_on_a_small_tmpfs(tmp_path, capsys):
    from fake_adapters import make_adapter
    from sdlora import models
    from tiny import tiny_pipeline

    disk = tmp_path / "disk"
    with _tmpfs(disk, "size=64k"):
        toml = write_toml(tmp_path / "c.toml", config(tmp_path, "sd1", training={"max_steps": 2},
                                                      output={"dir": str(disk / "out")}))
        rc = main(["train", str(toml)])
        err = capsys.readouterr().err
        assert rc == 2 and "sdlora: error: " in err and "No space left on device" in err and str(disk) in err
        assert _hidden(disk / "out") == []
        model = models.from_pipeline(tiny_pipeline("sd1"))
        base = models.save_model(model, tmp_path / "base.safetensors")
        make_adapter(model, tmp_path / "a.safetensors", algo="lora", preset="attn", seed=1)
        (disk / "baked.safetensors").write_bytes(b"previous")
        rc = main(["bake", "--model", str(base), "--lora", str(tmp_path / "a.safetensors"),
                   "--out", str(disk / "baked.safetensors"), "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2 and f"sdlora: error: cannot write {disk / 'baked.safetensors'}: No space left" in err
        assert (disk / "baked.safetensors").read_bytes() == b"previous" and _hidden(disk) == []


def test_read_only_file_system_and_a_file_in_the_way(tmp_path, capsys):
    from fake_adapters import make_adapter, tokenizer_dir
    from sdlora import models
    from tiny import tiny_pipeline

    model = models.from_pipeline(tiny_pipeline("sd1"))
    base = models.save_model(model, tmp_path / "base.safetensors")
    make_adapter(model, tmp_path / "a.safetensors", algo="lora", preset="attn", seed=1)
    tok = str(tokenizer_dir(tmp_path))
    (tmp_path / "file").write_text("a regular file")
    blocked = tmp_path / "file" / "out"
    toml = write_toml(tmp_path / "c.toml", config(tmp_path, "sd1", training={"max_steps": 1},
                                                  output={"dir": str(blocked)}))
    assert main(["train", str(toml)]) == 2
    err = capsys.readouterr().err
    assert f"sdlora: error: cannot write {blocked}: Not a directory" in err and "is a file, not a folder" in err
    for fmt, out in (("single-file", blocked / "m.safetensors"), ("diffusers", blocked / "folder")):
        rc = main(["bake", "--model", str(base), "--lora", str(tmp_path / "a.safetensors"), "--out", str(out),
                   "--format", fmt, "--tokenizer", tok, "--quiet"])
        err = capsys.readouterr().err
        assert rc == 2 and "sdlora: error: cannot write" in err and "Not a directory" in err, err
    ro = tmp_path / "ro"
    with _tmpfs(ro, "size=1m,ro"):
        toml = write_toml(tmp_path / "c.toml", config(tmp_path, "sd1", training={"max_steps": 1},
                                                      output={"dir": str(ro / "out")}))
        assert main(["train", str(toml)]) == 2
        err = capsys.readouterr().err
        assert f"cannot write {ro / 'out'}: Read-only file system; the file system is read-only" in err
        rc = main(["bake", "--model", str(base), "--lora", str(tmp_path / "a.safetensors"),
                   "--out", str(ro / "m.safetensors"), "--quiet"])
        assert rc == 2 and "Read-only file system" in capsys.readouterr().err


# ------------------------------------------------------------------------------ kills and leftovers
_KILLED_WRITE = textwrap.dedent('''
    import os, sys, time, torch
    from sdlora.files import tensors as files
    target = sys.argv[1]
    def hang(fd):
        print("writing", flush=True)
        time.sleep(60)
    files.os.fsync = hang
    files.write_tensors(target, {"w": torch.zeros(1 << 16)})
''')

_KILLED_SWAP = textwrap.dedent('''
    import os, sys, time
    from pathlib import Path
    from sdlora.files import streaming
    real = os.replace
    def replace(a, b):
        real(a, b)
        if ".old-" in str(b):
            print("between", flush=True)
            time.sleep(60)
    streaming.os.replace = replace
    streaming.replace_folder(Path(sys.argv[1]), Path(sys.argv[2]))
''')


def _run_until(script: str, word: str, *args: str) -> int:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == word
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return proc.pid


def test_sigkill_mid_save_keeps_the_previous_file_and_the_next_run_tidies(tmp_path):
    target = tmp_path / "adapter.safetensors"
    files.write_tensors(target, {"w": torch.ones(8)})
    pid = _run_until(_KILLED_WRITE, "writing", str(target))
    assert _same(read_tensors(target)[0], {"w": torch.ones(8)})
    left = _hidden(tmp_path)
    assert len(left) == 1 and left[0].startswith(f".adapter.safetensors.{pid}.")
    done = streaming.clean_stale(tmp_path)
    assert done == [f"removed {tmp_path / left[0]}: the temporary file of a killed save (process {pid}, no "
                    "longer running)"]
    assert _hidden(tmp_path) == []


def test_swap_killed_between_its_renames_is_put_back(tmp_path):
    target, new = tmp_path / "model", tmp_path / ".model.new"
    target.mkdir()
    (target / "w.txt").write_text("old")
    new.mkdir()
    (new / "w.txt").write_text("new")
    pid = _run_until(_KILLED_SWAP, "between", str(new), str(target))
    assert not target.exists() and (tmp_path / f".model.old-{pid}").is_dir()
    done = streaming.clean_stale(tmp_path, lambda name: name == "model")
    assert done == [f"restored {target} from {tmp_path / f'.model.old-{pid}'}: a save by process {pid} was killed "
                    "between its two renames"]
    assert (target / "w.txt").read_text() == "old"


def test_training_and_bake_clean_stale_temporaries_and_say_so(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    dead = _dead_pid()
    (out / f".tiny.safetensors.{dead}.abc123.tmp").write_bytes(b"half")
    (out / f".state-8.tmp-{dead}").mkdir()
    (out / f".state-4.old-{dead}").mkdir()  # swap cut short: state-4 missing, old copy hidden
    alive = out / f".tiny.safetensors.{os.getpid()}.zzz.tmp"
    alive.write_bytes(b"being written by a live process")
    toml = write_toml(tmp_path / "c.toml", config(tmp_path, "sd1", training={"max_steps": 1}))
    assert main(["train", str(toml)]) == 0
    printed = capsys.readouterr().out
    assert printed.count("the temporary file of a killed save") == 2 and "restored" in printed
    assert _hidden(out) == [alive.name]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_image_gone_before_the_cache_fill_is_skipped_and_named(tmp_path, monkeypatch):
    from sdlora.trainers import loop

    data = make_images(tmp_path / "data", 4, size=(16, 16))
    real = loop.scan

    def scan_then_delete(section):
        found = real(section)
        (data / "img3.png").unlink()  # between the scan and the latent cache
        return found

    monkeypatch.setattr(loop, "scan", scan_then_delete)
    lines: list[str] = []
    tr = Trainer(load_config(raw=config(tmp_path, "sd1", data=data, training={"max_steps": 3})), log=lines.append)
    assert f"skipped {data / 'img3.png'}: cannot be read" in "\n".join(lines)
    result = tr.run()
    assert result.step == 3 and sorted(result.losses) == [1, 2, 3]


def test_bake_tidies_what_a_killed_bake_left(tmp_path, capsys):
    from fake_adapters import make_adapter
    from sdlora import models
    from tiny import tiny_pipeline

    model = models.from_pipeline(tiny_pipeline("sd1"))
    base = models.save_model(model, tmp_path / "base.safetensors")
    make_adapter(model, tmp_path / "a.safetensors", algo="lora", preset="attn", seed=1)
    out = tmp_path / "out"
    out.mkdir()
    dead = _dead_pid()
    (out / f".m.safetensors.{dead}.k1l2.tmp").write_bytes(b"gigabytes, once")
    (out / f".other.safetensors.{dead}.k1l2.tmp").write_bytes(b"not this bake's")
    rc = main(["bake", "--model", str(base), "--lora", str(tmp_path / "a.safetensors"),
               "--out", str(out / "m.safetensors"), "--quiet"])
    printed = capsys.readouterr().out
    assert rc == 0 and f"sdlora: note: removed {out / f'.m.safetensors.{dead}.k1l2.tmp'}" in printed
    assert _hidden(out) == [f".other.safetensors.{dead}.k1l2.tmp"]
