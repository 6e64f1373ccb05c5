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

from sdlora.commands.inspect import inspect_file
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

    control.request(tmp_path, "save")  # made before the trainer starts: not for it
    c = control.Control(tmp_path)
    assert c.poll() == []
    control.request(tmp_path, "sample")
    control.request(tmp_path, "save")
    assert c.poll() == ["sample", "save"] and c.poll() == []
    with pytest.raises(ConfigError):
        control.request(tmp_path, "delete")
