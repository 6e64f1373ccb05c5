"""sdlora studio's REST API through FastAPI's test client: every endpoint, bad input (4xx JSON naming the
field, nothing changed on disk) and the security rules (root confinement, token, body limits, no shell)."""
from __future__ import annotations

import ast
import io
import json
import os
import pathlib
import signal
import tomllib

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from sdlora.commands.actions.inspect import inspect_file
from sdlora.commands.studio import resolve_token
from sdlora.errors import ConfigError
from sdlora.studio.app import create_app
from sdlora.trainers import control
from sdlora.trainers.config import load_config, to_dict
from sdlora.trainers.events import EventLog
from studiokit import make_root, wait_for

STUDIO = pathlib.Path(__file__).resolve().parent.parent / "sdlora" / "studio"


@pytest.fixture
def root(tmp_path) -> pathlib.Path:
    return make_root(tmp_path / "root")


@pytest.fixture
def client(root):
    with TestClient(create_app(root, run_jobs=False)) as c:
        yield c


def _png(color=(200, 30, 30), size=(32, 32)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _tree(folder: pathlib.Path) -> dict[str, bytes]:
    skip = ".sdlora-studio"
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and skip not in p.parts}


def _err(resp, status: int, field: str | None = None) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert isinstance(body["error"], str) and body["error"]
    if field is not None:
        assert body["field"] == field, body
    return body["error"]


# ------------------------------------------------------------------------------------------ security
@pytest.mark.parametrize("bad", ["../outside", "/etc", "datasets/../../x", "datasets/escape"])
def test_paths_outside_the_root_are_refused_everywhere(client, root, tmp_path, bad):
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (32, 32)).save(outside / "x.png")
    (root / "datasets" / "escape").symlink_to(outside, target_is_directory=True)
    before = _tree(root)
    _err(client.get("/api/datasets/images", params={"path": bad}), 403, "path")
    _err(client.get("/api/datasets/scan", params={"path": bad}), 403, "path")
    _err(client.get("/api/files", params={"path": f"{bad}/x.png"}), 403, "path")
    _err(client.get("/api/thumb", params={"path": f"{bad}/x.png"}), 403, "path")
    _err(client.put("/api/datasets/caption", json={"path": f"{bad}/x.png", "caption": "hi"}), 403, "path")
    _err(client.post("/api/datasets/upload", params={"folder": bad, "name": "y.png"}, content=_png()), 403, "path")
    _err(client.get("/api/adapters/info", params={"path": f"{bad}/a.safetensors"}), 403, "path")
    _err(client.post("/api/train/save", json={"config": {}, "path": f"{bad}/c.toml"}), 422)  # config first
    cfg = client.get("/api/train/presets/quickstart").json()["config"]
    _err(client.post("/api/train/save", json={"config": cfg, "path": f"{bad}/c.toml"}), 403, "path")
    cfg["dataset"]["path"] = bad
    _err(client.post("/api/train/validate", json={"config": cfg}), 403, "dataset.path")
    _err(client.post("/api/generate", json={"prompt": "x", "loras": [{"path": f"{bad}/a.safetensors"}]}), 403,
         "loras[0].path")
    _err(client.post("/api/tools/convert", json={"file": f"{bad}/a.safetensors", "to": "peft", "out": "o.safetensors"}),
         403, "file")
    assert not (outside / "x.txt").exists() and sorted(p.name for p in outside.iterdir()) == ["x.png"]
    assert _tree(root) == before


def test_token_is_required_on_every_request_when_set(root):
    with TestClient(create_app(root, token="s3cret", run_jobs=False)) as c:
        for path in ("/api/health", "/api/datasets", "/", "/static/app.js", "/docs", "/api/jobs/1/events"):
            assert c.get(path).status_code == 401, path
        assert "token" in c.get("/api/health").json()["error"]
        assert c.get("/api/health", headers={"X-Sdlora-Token": "wrong"}).status_code == 401
        assert c.get("/api/health", headers={"X-Sdlora-Token": "s3cret"}).status_code == 200
        assert c.get("/api/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.get("/api/health", params={"token": "s3cret"}).status_code == 200
        assert c.get("/api/jobs/1/events", params={"token": "s3cret"}).status_code == 404  # past the guard: no job 1
        # the index page sets a cookie from ?token=, which the module scripts then carry
        assert c.get("/", params={"token": "s3cret"}).status_code == 200
        assert c.get("/static/app.js").status_code == 200
    with TestClient(create_app(root, run_jobs=False)) as c:  # 127.0.0.1 default: no token
        assert c.get("/api/health").status_code == 200


def test_studio_command_requires_a_token_off_the_loopback():
    assert resolve_token("127.0.0.1", None) is None and resolve_token("localhost", None) is None
    generated = resolve_token("0.0.0.0", None)
    assert generated and len(generated) >= 20 and generated != resolve_token("0.0.0.0", None)
    assert resolve_token("0.0.0.0", "given") == "given" and resolve_token("127.0.0.1", "t") == "t"
    from sdlora.cli import build_parser

    args = build_parser().parse_args(["studio"])
    assert (args.root, args.host, args.port, args.token) == (".", "127.0.0.1", 7860, None)


def test_body_and_upload_size_limits(client, root):
    big = json.dumps({"config": {"x": "a" * (1 << 20)}})
    _err(client.post("/api/train/validate", content=big, headers={"Content-Type": "application/json"}), 413, "body")
    _err(client.post("/api/datasets/upload", params={"folder": "datasets/demo", "name": "huge.png"},
                     content=b"\0" * ((20 << 20) + 1)), 413, "body")
    assert not (root / "datasets" / "demo" / "huge.png").exists()


def test_no_endpoint_runs_a_shell_or_evaluates_text(client):
    for path in STUDIO.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                func = node.func
                if isinstance(func, ast.Name):
                    assert func.id not in ("eval", "exec", "compile", "__import__"), (path.name, func.id)
                elif isinstance(func, ast.Attribute):
                    assert func.attr not in ("system", "popen", "spawnl", "execv", "execvp"), (path.name, func.attr)
                assert not any(k.arg == "shell" for k in node.keywords), path.name
    # shell syntax in a field stays one argument of the command
    job = client.post("/api/tools/resize", json={"file": "configs/quickstart.toml", "rank": 2,
                                                  "out": "outputs/a;touch pwned$(id).safetensors"}).json()
    assert job["argv"] == ["resize", "--out", "outputs/a;touch pwned$(id).safetensors", "--rank", "2",
                           "configs/quickstart.toml"]


# ------------------------------------------------------------------------------------------ datasets
def test_datasets_list_images_and_captions(client, root):
    listed = client.get("/api/datasets").json()
    demo = next(d for d in listed if d["path"] == "datasets/demo")
    assert (demo["images"], demo["captioned"]) == (20, 20)
    images = client.get("/api/datasets/images", params={"path": "datasets/demo"}).json()["images"]
    assert len(images) == 20
    first = images[0]
    assert first["caption"] == (root / "datasets/demo" / (pathlib.Path(first["name"]).stem + ".txt")).read_text().strip()
    assert (first["width"], first["height"]) == (32, 32)
    _err(client.get("/api/datasets/images", params={"path": "nope"}), 404, "path")


def test_caption_edit_is_written_atomically_and_bad_input_changes_nothing(client, root):
    txt = root / "datasets/demo/00_blue_gray.txt"
    r = client.put("/api/datasets/caption", json={"path": "datasets/demo/00_blue_gray.png", "caption": " new words "})
    assert r.status_code == 200 and r.json()["caption"] == "new words"
    assert txt.read_text() == "new words\n"
    assert not list(txt.parent.glob("*.tmp*"))
    before = _tree(root)
    _err(client.put("/api/datasets/caption", json={"path": "datasets/demo/00_blue_gray.txt", "caption": "x"}), 422)
    _err(client.put("/api/datasets/caption", json={"path": "datasets/demo/00_blue_gray.png", "caption": "x" * 10_001}),
         422, "caption")
    _err(client.put("/api/datasets/caption", json={"path": "datasets/demo/none.png", "caption": "x"}), 404, "path")
    _err(client.put("/api/datasets/caption", json={"caption": "x"}), 422, "path")
    assert _tree(root) == before


def test_scan_report_names_bad_images_and_counts_buckets(client, root):
    folder = root / "datasets/demo"
    (folder / "broken.png").write_bytes(b"not an image at all")
    Image.new("RGB", (8, 8)).save(folder / "tiny.png")
    Image.new("RGB", (64, 32)).save(folder / "wide.png")
    rep = client.get("/api/datasets/scan", params={"path": "datasets/demo", "resolution": 32, "bucket_step": 8,
                                                    "bucket_min_side": 16, "bucket_max_side": 64,
                                                    "min_image_side": 16}).json()
    skipped = {s["path"]: s["reason"] for s in rep["skipped"]}
    assert set(skipped) == {"datasets/demo/broken.png", "datasets/demo/tiny.png"}
    assert "not an image" in skipped["datasets/demo/broken.png"] and "too small" in skipped["datasets/demo/tiny.png"]
    assert rep["usable"] == 21 and "datasets/demo/wide.png" in rep["no_caption"]
    buckets = {(b["width"], b["height"]): b["images"] for b in rep["buckets"]}
    assert buckets[(32, 32)] == 20 and sum(buckets.values()) == 21 and len(buckets) == 2
    msg = _err(client.get("/api/datasets/scan", params={"path": "datasets/demo", "resolution": 30}), 422,
               "dataset.resolution")
    assert "multiples of 8" in msg


def test_upload_decodes_with_the_trainers_decoder_and_limits_type(client, root):
    folder = root / "datasets/demo"
    r = client.post("/api/datasets/upload", params={"folder": "datasets/demo", "name": "new.png"}, content=_png())
    assert r.status_code == 200 and (r.json()["width"], r.json()["height"]) == (32, 32)
    assert (folder / "new.png").read_bytes() == _png()
    before = _tree(root)
    msg = _err(client.post("/api/datasets/upload", params={"folder": "datasets/demo", "name": "bad.png"},
                           content=b"GIF89a garbage"), 422, "file")
    assert "bad.png" in msg and "nothing was saved" in msg
    _err(client.post("/api/datasets/upload", params={"folder": "datasets/demo", "name": "x.exe"}, content=_png()),
         422, "name")
    _err(client.post("/api/datasets/upload", params={"folder": "datasets/demo", "name": "../x.png"}, content=_png()),
         422, "name")
    _err(client.post("/api/datasets/upload", params={"folder": "datasets/demo", "name": "new.png"}, content=_png()),
         409, "name")
    assert _tree(root) == before


def test_thumbnails_are_made_once_and_files_are_served(client, root):
    path = "datasets/demo/03_yellow_gray.png"
    r1 = client.get("/api/thumb", params={"path": path, "size": 64})
    assert r1.status_code == 200 and r1.headers["content-type"] == "image/png"
    thumbs = list((root / ".sdlora-studio/thumbs").glob("*.png"))
    stamp = thumbs[0].stat().st_mtime_ns
    assert client.get("/api/thumb", params={"path": path, "size": 64}).content == r1.content
    assert list((root / ".sdlora-studio/thumbs").glob("*.png")) == thumbs and thumbs[0].stat().st_mtime_ns == stamp
    _err(client.get("/api/thumb", params={"path": path, "size": 100}), 422, "size")
    assert client.get("/api/files", params={"path": path}).content == (root / path).read_bytes()
    _err(client.get("/api/files", params={"path": "configs/quickstart.toml"}), 404, "path")


# ------------------------------------------------------------------------------------------ train
def test_schema_comes_from_the_config_dataclasses(client):
    schema = client.get("/api/train/schema").json()
    assert list(schema) == ["model", "network", "dataset", "training", "optimizer", "noise", "sample", "output"]
    steps = next(f for f in schema["training"] if f["name"] == "max_steps")
    assert (steps["type"], steps["default"], steps["min"], steps["optional"]) == ("int", 1000, 1, False)
    opt = next(f for f in schema["optimizer"] if f["name"] == "name")
    assert opt["choices"] == ["adamw", "adamw8bit", "lion", "adafactor", "prodigy"]
    alpha = next(f for f in schema["network"] if f["name"] == "alpha")
    assert alpha["optional"] and alpha["type"] == "float"
    assert next(f for f in schema["dataset"] if f["name"] == "path")["path"] is True


def test_presets_come_from_configs(client, root):
    assert client.get("/api/train/presets").json() == [{"name": "quickstart", "path": "configs/quickstart.toml"}]
    cfg = client.get("/api/train/presets/quickstart").json()["config"]
    assert cfg["model"]["path"] == "default" and cfg["dataset"]["path"] == "datasets/demo"
    assert cfg["output"]["dir"] == "runs/quickstart" and cfg["training"]["max_steps"] == 30
    _err(client.get("/api/train/presets/nothere"), 404, "name")
    _err(client.get("/api/train/presets/..%2Fx"), 404)


@pytest.mark.parametrize("section,key,value", [("training", "max_steps", 0), ("optimizer", "name", "sgd"),
                                               ("dataset", "resolution", 33), ("network", "rank", "eight"),
                                               ("training", "max_stepz", 5)])
def test_invalid_values_get_the_same_sentence_as_sdlora_train(client, root, tmp_path, section, key, value):
    cfg = client.get("/api/train/presets/quickstart").json()["config"]
    cfg[section][key] = value
    before = _tree(root)
    msg = _err(client.post("/api/train/validate", json={"config": cfg}), 422, f"{section}.{key}")
    _err(client.post("/api/train/queue", json={"config": cfg}), 422, f"{section}.{key}")
    _err(client.post("/api/train/save", json={"config": cfg, "path": "configs/x.toml"}), 422, f"{section}.{key}")
    assert _tree(root) == before and not list((root / ".sdlora-studio").glob("configs/*"))
    toml_path = tmp_path / "same.toml"
    raw = tomllib.loads((root / "configs/quickstart.toml").read_text())
    raw.setdefault(section, {})[key] = value
    toml_path.write_text("\n".join(f"[{name}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in body.items())
                                   for name, body in raw.items()))
    with pytest.raises(ConfigError) as exc:
        load_config(toml_path)
    assert str(exc.value) == f"{toml_path}: {msg}"


def test_saved_toml_runs_unchanged_with_sdlora_train(client, root):
    cfg = client.get("/api/train/presets/quickstart").json()["config"]
    cfg["training"]["max_steps"] = 12
    r = client.post("/api/train/save", json={"config": cfg, "path": "configs/mine.toml"})
    assert r.status_code == 200 and r.json()["path"] == "configs/mine.toml"
    text = (root / "configs/mine.toml").read_text()
    assert 'path = "../datasets/demo"' in text and 'dir = "../runs/quickstart"' in text  # portable paths
    loaded = load_config(root / "configs/mine.toml")
    validated = client.post("/api/train/validate", json={"config": cfg}).json()["config"]
    assert loaded.training.max_steps == 12 and loaded.dataset.path == str(root / "datasets/demo")
    assert to_dict(loaded)["training"] == validated["training"]
    _err(client.post("/api/train/save", json={"config": cfg, "path": "configs/mine.toml"}), 409, "path")
    _err(client.post("/api/train/save", json={"config": cfg, "path": "configs/mine.txt"}), 422, "path")


def test_queue_saves_the_config_and_refuses_a_busy_output_dir(client, root):
    cfg = client.get("/api/train/presets/quickstart").json()["config"]
    job = client.post("/api/train/queue", json={"config": cfg}).json()
    assert job["status"] == "queued" and job["kind"] == "train" and job["out_dir"] == "runs/quickstart"
    saved = root / job["config_path"]
    assert job["argv"] == ["train", job["config_path"]] and load_config(saved).training.max_steps == 30
    _err(client.post("/api/train/queue", json={"config": cfg}), 409, "output.dir")
    listed = client.get("/api/jobs").json()
    assert [j["id"] for j in listed] == [job["id"]]
    stopped = client.post(f"/api/jobs/{job['id']}/stop").json()
    assert stopped["status"] == "cancelled"
    _err(client.post(f"/api/jobs/{job['id']}/stop"), 409, "id")
    _err(client.post(f"/api/jobs/{job['id']}/resume"), 409, "id")
    _err(client.post(f"/api/jobs/{job['id']}/control", json={"action": "sample"}), 409, "id")
    _err(client.post(f"/api/jobs/{job['id']}/control", json={"action": "explode"}), 422, "action")
    _err(client.get("/api/jobs/999"), 404, "id")
    scripted = client.post("/api/train/queue", json={"preset": "quickstart", "set": [
        "training.max_steps=12", 'output.dir="runs/scripted"']}).json()
    assert scripted["out_dir"] == "runs/scripted" and load_config(root / scripted["config_path"]).training.max_steps == 12
    _err(client.post("/api/train/queue", json={"preset": "quickstart", "set": ["training.max_steps=0"]}), 422,
         "training.max_steps")
    _err(client.post("/api/train/queue", json={"preset": "quickstart", "set": ['output.dir="../x"']}), 403, "output.dir")
    _err(client.post("/api/train/queue", json={}), 422, "config")


# ------------------------------------------------------------------------------------------ events / control
def test_event_log_and_control_file(tmp_path):
    log = EventLog(tmp_path, total=3, initial=0)
    log.step(1, 0.5, {"unet": 1e-3}, 2.0)
    log.step(2, float("nan"), {"unet": 1e-3}, None)
    log.sample(2, [tmp_path / "s.png"])
    log.save(2, tmp_path / "a.safetensors", tmp_path / "state-2")
    log.close(2, "interrupted")
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in events] == ["start", "step", "step", "sample", "save", "end"]
    assert events[1]["loss"] == 0.5 and events[2]["loss"] is None and events[2]["its"] > 0
    again = EventLog(tmp_path, total=3, initial=2)  # a resumed run appends
    again.close(3, "done")
    assert len((tmp_path / "events.jsonl").read_text().splitlines()) == 8

    from sdlora.studio.api_jobs import job_events

    path = tmp_path / "events.jsonl"
    assert [e["kind"] for e in job_events(tmp_path, path)] == ["start", "step", "step", "sample", "save", "end",
                                                               "start", "end"]
    with open(path, "a") as f:
        f.write('{"kind": "step", "step": 4, "total": 3}\n{"kind": "st')  # a line still being written
    assert [e["kind"] for e in job_events(tmp_path, path)][-1] == "step"  # read on from where it stopped
    fresh = EventLog(tmp_path, total=2, initial=0)  # a fresh run starts the file anew
    for step in range(1, 12):  # longer than what was read of the old file
        fresh.step(step, 0.1, {"unet": 1e-3}, None)
    assert [e.get("step") for e in job_events(tmp_path, path)] == list(range(12))

    control.request(tmp_path, "save")  # made before the trainer starts: not for it
    c = control.Control(tmp_path)
    assert c.poll() == []
    control.request(tmp_path, "sample")
    control.request(tmp_path, "save")
    assert c.poll() == ["sample", "save"] and c.poll() == []
    with pytest.raises(ConfigError):
        control.request(tmp_path, "delete")


# ------------------------------------------------------------------------------------------ jobs (child processes)
def _sse(client, job_id: int) -> list[tuple[str, dict]]:
    """Every server-sent event of a job's stream until ``end``."""
    out, kind = [], None
    with client.stream("GET", f"/api/jobs/{job_id}/events") as resp:
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                out.append((kind, json.loads(line[6:])))
                if kind == "end":
                    break
    return out


def test_a_failing_job_shows_its_error_sentence_and_history_survives_a_restart(root):
    bad = root / "datasets" / "broken"
    bad.mkdir()
    (bad / "only.png").write_bytes(b"\x89PNG but not really")
    with TestClient(create_app(root)) as c:
        cfg = c.get("/api/train/presets/quickstart").json()["config"]
        cfg["dataset"]["path"] = "datasets/broken"
        job = c.post("/api/train/queue", json={"config": cfg}).json()
        events = _sse(c, job["id"])
        assert events[-1][0] == "end" and events[-1][1]["status"] == "failed"
        final = c.get(f"/api/jobs/{job['id']}").json()
        assert final["returncode"] == 2 and final["error"].startswith("no usable training image in ")
        assert "only.png" in final["error"] and final["error"] == events[-1][1]["error"]
        assert f"sdlora: error: {final['error']}" in c.get(f"/api/jobs/{job['id']}/log").text
        assert c.get("/api/health").status_code == 200
    from sdlora.studio.store import JobStore

    store = JobStore(root / ".sdlora-studio" / "studio.db")
    lost = store.add("train", "was running", ["train", "x.toml"])
    store.update(lost["id"], status="running")
    store.close()
    with TestClient(create_app(root)) as c:  # a new server on the same root
        jobs = {j["id"]: j for j in c.get("/api/jobs").json()}
        assert jobs[job["id"]]["status"] == "failed" and jobs[job["id"]]["error"] == final["error"]
        assert jobs[lost["id"]]["status"] == "interrupted"


def test_a_crashing_job_never_takes_the_server_down(root):
    with TestClient(create_app(root)) as c:
        cfg = c.get("/api/train/presets/quickstart").json()["config"]
        cfg["training"]["max_steps"] = 100000
        job = c.post("/api/train/queue", json={"config": cfg}).json()
        pid = wait_for(lambda: c.get(f"/api/jobs/{job['id']}").json()["pid"], 60)
        os.kill(pid, signal.SIGKILL)
        final = wait_for(lambda: (j := c.get(f"/api/jobs/{job['id']}").json())["status"] == "failed" and j, 60)
        assert final["returncode"] == -9 and "signal 9" in final["error"]
        assert c.get("/api/health").json()["ok"] is True


# ------------------------------------------------------------------------------------------ adapters, generate, tools
@pytest.fixture
def adapter(root) -> pathlib.Path:
    import torch

    from fake_adapters import make_adapter
    from sdlora.models.configs import DEFAULT_MODEL
    from sdlora.models import open_model

    torch.manual_seed(0)
    path = root / "loras" / "toy.safetensors"
    path.parent.mkdir()
    make_adapter(open_model(DEFAULT_MODEL), path, rank=4, seed=3)
    return path


def test_adapters_lists_every_adapter_with_inspects_facts(client, root, adapter):
    model = root / "models" / "m"
    (model / "unet").mkdir(parents=True)
    (model / "model_index.json").write_text("{}")
    (model / "unet" / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    (root / "loras" / "broken.safetensors").write_bytes(b"not safetensors")
    listed = {a["path"]: a for a in client.get("/api/adapters").json()}
    assert set(listed) == {"loras/toy.safetensors", "loras/broken.safetensors"}
    facts = dict(inspect_file(adapter))
    facts["path"] = "loras/toy.safetensors"
    assert listed["loras/toy.safetensors"]["facts"] == json.loads(json.dumps(facts))
    assert listed["loras/broken.safetensors"]["facts"]["error"]
    info = client.get("/api/adapters/info", params={"path": "loras/toy.safetensors"}).json()
    assert info["facts"]["family"] == "sd1" and info["samples"] == []
    _err(client.get("/api/adapters/info", params={"path": "configs/quickstart.toml"}), 404, "path")


def test_generate_keeps_the_model_and_changes_only_strengths(client, root, adapter):
    import numpy as np
    import torch

    from sdlora.inference.generate import generate, read_parameters
    from sdlora.inference.stack import AdapterStack
    from sdlora.models.configs import DEFAULT_MODEL
    from sdlora.models import open_model

    body = {"loras": [{"path": "loras/toy.safetensors", "strength": 1.0}], "prompt": "a red sks on a white background",
            "steps": 3, "cfg": 3, "seed": 7}
    r1 = client.post("/api/generate", json=body).json()
    assert r1["model_loaded"] is True and r1["added"] == ["toy"]
    body["loras"][0]["strength"] = 0.5
    r2 = client.post("/api/generate", json=body).json()
    assert (r2["model_loaded"], r2["added"], r2["removed"], r2["updated"]) == (False, [], [], ["toy"])
    r3 = client.post("/api/generate", json=body).json()
    assert r3["kept"] == ["toy"] and r3["updated"] == []
    paths = [r["images"][0]["path"] for r in (r1, r2, r3)]
    assert paths == ["outputs/generate/00000-7.png", "outputs/generate/00001-7.png", "outputs/generate/00002-7.png"]
    png = root / paths[1]
    assert read_parameters(png) == r2["images"][0]["parameters"] and "<lora:toy:0.5>" in r2["images"][0]["parameters"]
    fresh = open_model(DEFAULT_MODEL, dtype=torch.float32)
    AdapterStack(fresh).add(adapter, strength=0.5)
    expected = generate(fresh, body["prompt"], seed=7, steps=3, cfg=3, progress=False)[0]
    got = np.asarray(Image.open(png)).astype(int)
    # as a fresh load at 0.5 gives (the worker runs on more threads: float sums may round apart by a level)
    assert np.abs(got - np.asarray(expected.image).astype(int)).max() <= 2
    assert np.abs(np.asarray(Image.open(root / paths[0])).astype(int) - got).max() > 10  # strength 1 differs
    tagged = client.post("/api/generate", json={"prompt": "a red sks <lora:toy:0.8>", "steps": 2, "seed": 1}).json()
    assert tagged["removed"] == ["toy"] and "<lora:toy:0.8>" in tagged["images"][0]["parameters"]
    grid = client.post("/api/generate", json={**body, "sweep": [0, 1], "steps": 2}).json()
    assert len(grid["images"]) == 1 and "Sweep:" in grid["images"][0]["parameters"]
    assert [i["path"] for i in client.get("/api/generate/images").json()][:2] == [grid["images"][0]["path"],
                                                                                   tagged["images"][0]["path"]]


def test_generate_refuses_bad_input_by_field(client, root, adapter):
    ok = {"prompt": "x", "steps": 2}
    for change, field in [({"steps": 0}, "steps"), ({"width": 33}, "width"), ({"sampler": "nope"}, "sampler"),
                          ({"cfg": "high"}, "cfg"), ({"prompt": ""}, "prompt"), ({"count": 99}, "count"),
                          ({"model": "models/none"}, "model"),
                          ({"loras": [{"path": "configs/quickstart.toml"}]}, "loras[0].path"),
                          ({"loras": [{"path": "loras/toy.safetensors", "strength": 50}]}, "loras[0].strength"),
                          ({"sweep": [0, 1]}, "sweep")]:
        resp = client.post("/api/generate", json={**ok, **change})
        assert resp.status_code in (404, 422) and resp.json()["field"] == field, (change, resp.text)
    assert not (root / "outputs").exists()


def test_tools_run_as_jobs_with_their_reports(root, adapter):
    with TestClient(create_app(root)) as c:
        tools = c.get("/api/tools").json()
        assert set(tools) == {"bake", "merge", "resize", "extract", "convert", "eval"}
        for body, field in [({"file": "loras/toy.safetensors", "to": "peft"}, "out"),
                            ({"file": "loras/toy.safetensors", "to": "onnx", "out": "o.safetensors"}, "to"),
                            ({"file": "loras/toy.safetensors", "to": "peft", "out": "loras/toy.safetensors"}, "out"),
                            ({"file": "loras/toy.safetensors", "to": "peft", "out": "o.safetensors", "x": 1}, "x")]:
            _err(c.post("/api/tools/convert", json=body), 422, field)
        _err(c.post("/api/tools/format", json={}), 404, "tool")
        job = c.post("/api/tools/convert", json={"file": "loras/toy.safetensors", "to": "peft", "model": "default",
                                                 "out": "outputs/toy-peft.safetensors"}).json()
        assert job["kind"] == "tool" and job["argv"][0] == "convert"
        final = wait_for(lambda: (j := c.get(f"/api/jobs/{job['id']}").json())["status"] in ("done", "failed") and j, 120)
        assert final["status"] == "done", final
        assert (root / "outputs/toy-peft.safetensors").is_file()
        assert c.get(f"/api/jobs/{job['id']}/log").text.strip()  # the command's report
        listed = [a["path"] for a in c.get("/api/adapters").json()]
        assert "outputs/toy-peft.safetensors" in listed
