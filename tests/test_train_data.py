"""Training data: folder scan, robust image decoding, captions, buckets, epoch order, cache keys.

A test per bad input: corrupt file, zero-byte file, CMYK JPEG, EXIF-rotated photo, RGBA PNG, tiny image,
caption-less image, empty folder — each with the documented behaviour and message.
"""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from sdlora.trainers import buckets
from sdlora.trainers.batches import epoch_batches, epoch_samples, local_slice, rng_for
from sdlora.trainers.captions import augment
from sdlora.trainers.config import DatasetSection, SubsetSection
from sdlora.trainers.data import DatasetError, scan
from sdlora.files.images import BadImage, decode, to_bucket
from trainkit import draw, make_images


def _section(path, **kw) -> DatasetSection:
    kw.setdefault("min_image_side", 16)
    return DatasetSection(path=str(path), **kw)


def _skipped(ds) -> dict[str, str]:
    return {p.name: why for p, why in ds.report.skipped}


# ------------------------------------------------------------------------------------- bad inputs
def test_corrupt_and_zero_byte_files_are_skipped_and_reported(tmp_path):
    make_images(tmp_path, 2)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 50)
    (tmp_path / "empty.jpg").write_bytes(b"")
    buf = io.BytesIO()
    draw((64, 64), 1).save(buf, format="JPEG")
    (tmp_path / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    (tmp_path / "notes.txt").write_text("not an image caption")  # not an image: ignored silently
    ds = scan(_section(tmp_path))
    assert len(ds.items) == 2
    skipped = _skipped(ds)
    assert skipped["empty.jpg"] == "empty file (0 bytes)"
    assert skipped["corrupt.png"].startswith(("not an image", "corrupt or truncated"))
    assert skipped["truncated.jpg"].startswith("corrupt or truncated")
    text = ds.report.format()
    assert "skipped 3 files" in text and "empty.jpg: empty file (0 bytes)" in text


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)  # pure red in CMYK
    d = decode(tmp_path / "cmyk.jpg")
    assert d.image.mode == "RGB" and d.mask is None
    r, g, b = d.image.getpixel((16, 16))
    assert r > 200 and g < 60 and b < 60


def test_exif_rotated_photo_is_turned_upright(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 20))  # red stripe on the left as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    img.save(tmp_path / "photo.jpg", exif=exif, quality=95)
    d = decode(tmp_path / "photo.jpg")
    assert d.image.size == (20, 40)  # displayed portrait
    top = d.image.getpixel((10, 2))  # the stored left edge is now on top
    assert top[0] > 200 and top[2] < 60
    ds = scan(_section(tmp_path))
    assert ds.items[0].size == (20, 40)


def test_rgba_png_is_composited_or_used_as_a_mask(tmp_path):
    rgba = Image.new("RGBA", (32, 32), (255, 0, 0, 0))  # fully transparent red...
    rgba.paste((0, 255, 0, 255), (8, 8, 24, 24))  # ...around an opaque green square
    rgba.save(tmp_path / "cut.png")
    d = decode(tmp_path / "cut.png", "background", "white")
    assert d.image.mode == "RGB" and d.mask is None
    assert d.image.getpixel((1, 1)) == (255, 255, 255) and d.image.getpixel((16, 16)) == (0, 255, 0)
    d = decode(tmp_path / "cut.png", "background", "#000000")
    assert d.image.getpixel((1, 1)) == (0, 0, 0)
    d = decode(tmp_path / "cut.png", "mask", "white")
    assert d.mask is not None and d.mask.getpixel((1, 1)) == 0 and d.mask.getpixel((16, 16)) == 255
    sample = to_bucket(d, (32, 32))
    assert sample.mask.shape == (1, 32, 32) and float(sample.mask.mean()) == pytest.approx(0.25, abs=0.02)
    ds = scan(_section(tmp_path, alpha_mode="mask"))
    assert ds.items[0].has_alpha_mask
    # an alpha channel that is opaque everywhere is no mask
    Image.new("RGBA", (32, 32), (1, 2, 3, 255)).save(tmp_path / "opaque.png")
    assert decode(tmp_path / "opaque.png", "mask").mask is None


def test_tiny_image_is_skipped_with_the_minimum_named(tmp_path):
    make_images(tmp_path, 1)
    draw((8, 12)).save(tmp_path / "tiny.png")
    ds = scan(_section(tmp_path, min_image_side=16))
    assert [it.path.name for it in ds.items] == ["img0.png"]
    assert _skipped(ds)["tiny.png"] == ("too small (8x12; the shorter side must be at least 16 px, "
                                        "dataset.min_image_side)")


def test_caption_less_image_uses_fallback_and_is_reported(tmp_path):
    make_images(tmp_path, 2)
    draw((32, 32), 3).save(tmp_path / "bare.png")
    ds = scan(_section(tmp_path, trigger="sks", class_token="dog"))
    by = {it.path.name: it for it in ds.items}
    assert (by["bare.png"].trigger, by["bare.png"].caption) == ("sks", "dog")
    assert (by["img0.png"].trigger, by["img0.png"].caption) == ("sks", "a square, colour 0")
    assert ds.report.no_caption == [tmp_path / "bare.png"]
    assert "1 images have no caption file" in ds.report.format()
    ds = scan(_section(tmp_path, fallback_caption="a photo"))
    assert {it.path.name: it.caption for it in ds.items}["bare.png"] == "a photo"


def test_empty_or_missing_folder_is_an_error(tmp_path):
    with pytest.raises(DatasetError, match=r"dataset.path = .* holds no images \(looked for .png, .jpg"):
        scan(_section(tmp_path))
    with pytest.raises(DatasetError, match="no such folder"):
        scan(_section(tmp_path / "nope"))
    (tmp_path / "bad.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="(?s)no usable training image.*every image was skipped.*bad.png: empty file"):
        scan(_section(tmp_path))


def test_other_modes_and_formats_are_converted(tmp_path):
    arr16 = (np.linspace(0, 65535, 32 * 32).reshape(32, 32)).astype(np.uint16)
    Image.fromarray(arr16).save(tmp_path / "gray16.png")
    draw(mode="L").save(tmp_path / "gray.png")
    draw(mode="LA").save(tmp_path / "la.png")
    pal = draw().convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "palette.png", transparency=0)
    draw(mode="1").save(tmp_path / "bw.png")
    draw().save(tmp_path / "photo.webp")
    for name in ("gray16.png", "gray.png", "la.png", "palette.png", "bw.png", "photo.webp"):
        d = decode(tmp_path / name)
        assert d.image.mode == "RGB" and d.image.size == (32, 32), name
    g = decode(tmp_path / "gray16.png").image
    assert g.getpixel((0, 0))[0] == 0 and g.getpixel((31, 31))[0] == 255  # scaled, not clipped
    assert g.getpixel((16, 16))[0] not in (0, 255)
    ds = scan(_section(tmp_path))
    assert len(ds.items) == 6 and not ds.report.skipped


def test_unicode_paths_duplicate_stems_and_kohya_folders(tmp_path):
    root = tmp_path / "données d'été"
    make_images(root / "10_sks chien", 2, caption=False)
    make_images(root / "3_other", 1)
    (root / "notes").mkdir()
    draw().save(root / "10_sks chien" / "img0.jpg")  # same stem as img0.png
    ds = scan(_section(root, trigger="sks"))
    reps = {s.name: s.repeats for s in ds.subsets}
    assert reps == {"10_sks chien": 10, "3_other": 3}
    chien = [it for it in ds.items if ds.subsets[it.subset].name == "10_sks chien"]
    assert {it.path.name for it in chien} == {"img0.jpg", "img1.png"} or {it.path.name for it in chien} == {"img0.png", "img1.png"}
    assert len(ds.report.duplicates) == 1 and ds.report.duplicates[0][1].stem == "img0"
    assert all(it.caption == "sks chien" and it.trigger == "" for it in chien)  # folder name holds the trigger
    assert "share a name" in ds.report.format() and "folders ignored" in ds.report.format()
    assert ds.dataset_dirs()["10_sks chien"] == {"n_repeats": 10, "img_count": 2}


def test_subsets_and_regularisation_images(tmp_path):
    make_images(tmp_path / "a", 2)
    make_images(tmp_path / "reg", 3, caption=False)
    section = DatasetSection(min_image_side=16, trigger="sks", class_token="dog", prior_loss_weight=0.5, subsets=[
        SubsetSection(path=str(tmp_path / "a"), repeats=2, flip=True),
        SubsetSection(path=str(tmp_path / "reg"), is_reg=True)])
    ds = scan(section)
    a, reg = ds.subsets
    assert (a.repeats, a.flip, a.loss_weight, reg.loss_weight, reg.trigger) == (2, True, 1.0, 0.5, "")
    assert {ds.items[i].caption for i in ds.reg_items()} == {"dog"}
    samples = epoch_samples(ds, 0, 0)
    assert len(samples) == 8  # 2 images × 2 repeats + as many regularisation samples
    assert sum(1 for i in samples if i in ds.reg_items()) == 4
    section = DatasetSection(path=str(tmp_path / "a"), reg_path=str(tmp_path / "reg"), min_image_side=16)
    assert [s.is_reg for s in scan(section).subsets] == [False, True]


# ------------------------------------------------------------------------------------- captions
def test_caption_shuffle_keeps_trigger_and_first_tags(tmp_path):
    make_images(tmp_path, 1, caption=False)
    (tmp_path / "img0.txt").write_text("first, b, c, d, e, f")
    ds = scan(_section(tmp_path, trigger="sks", shuffle_captions=True, keep_tokens=1))
    item, sub = ds.items[0], ds.subsets[0]
    seen = {augment(item, sub, rng_for(0, k)) for k in range(30)}
    assert len(seen) > 5
    assert all(c.startswith("sks, first, ") and sorted(c.split(", ")[2:]) == list("bcdef") for c in seen)
    assert augment(item, sub, rng_for(0, 3)) == augment(item, sub, rng_for(0, 3))  # reproducible


def test_caption_and_tag_dropout(tmp_path):
    make_images(tmp_path, 1)
    ds = scan(_section(tmp_path, caption_dropout=0.5))
    out = [augment(ds.items[0], ds.subsets[0], rng_for(1, k)) for k in range(200)]
    assert 60 < out.count("") < 140 and "a square, colour 0" in out
    ds = scan(_section(tmp_path, tag_dropout=0.5))
    lengths = {len(augment(ds.items[0], ds.subsets[0], rng_for(1, k)).split(", ")) for k in range(50)}
    assert lengths >= {1, 2}


# -------------------------------------------------------------------------------------- buckets
def test_buckets_cover_aspect_ratios_within_the_area():
    found = buckets.make_buckets((512, 512), 256, 1024, 64)
    assert (512, 512) in found and (256, 1024) in found and (1024, 256) in found
    assert all(w * h <= 512 * 512 and w % 64 == 0 and h % 64 == 0 for w, h in found)
    assert buckets.nearest((1000, 500), found) == (704, 320) or buckets.nearest((1000, 500), found)[0] > 512
    assert buckets.nearest((300, 300), found) == (512, 512)


def test_bucket_assignment_report_and_no_upscale(tmp_path):
    draw((64, 32)).save(tmp_path / "wide.png")
    draw((32, 64)).save(tmp_path / "tall.png")
    draw((48, 48)).save(tmp_path / "square.png")
    draw((16, 16)).save(tmp_path / "small.png")
    section = _section(tmp_path, bucket_step=8, bucket_min_side=16, bucket_max_side=128)
    ds = scan(section)
    buckets.assign(ds, section, (48, 48))
    by = {it.path.name: it.bucket for it in ds.items}
    assert by["wide.png"][0] > by["wide.png"][1] and by["tall.png"][0] < by["tall.png"][1]
    assert by["square.png"] == (48, 48) and by["small.png"] == (48, 48)
    assert all(w * h <= 48 * 48 for w, h in by.values())
    assert "48x48 (aspect 1.00): 2 images" in buckets.report(ds)
    section.bucket_no_upscale = True
    buckets.assign(ds, section, (48, 48))
    assert {it.path.name: it.bucket for it in ds.items}["small.png"] == (16, 16)
    section.buckets = False
    buckets.assign(ds, section, (40, 32))
    assert {it.bucket for it in ds.items} == {(40, 32)}


def test_fit_to_bucket_crops_and_flips(tmp_path):
    img = Image.new("RGB", (64, 32), (0, 0, 0))
    img.paste((255, 255, 255), (0, 0, 16, 32))  # white on the left quarter
    from sdlora.files.images import Decoded

    s = to_bucket(Decoded(img, None), (32, 32), "center")
    assert s.pixels.shape == (3, 32, 32) and s.original_size == (32, 64) and s.crop_top_left == (0, 16)
    assert float(s.pixels[:, :, 0].mean()) < -0.9  # the white quarter was cropped away
    left = to_bucket(Decoded(img, None), (32, 32), "random", rng=rng_for(0, 0))
    assert 0 <= left.crop_top_left[1] <= 32
    flipped = to_bucket(Decoded(img, None), (64, 32), flip=True)
    assert float(flipped.pixels[:, :, -1].mean()) > 0.9  # white moved to the right edge


# ---------------------------------------------------------------------------------- epoch order
def test_epoch_batches_are_a_function_of_seed_and_epoch(tmp_path):
    draw((64, 32)).save(tmp_path / "w.png")
    make_images(tmp_path, 5)
    section = _section(tmp_path, bucket_step=8, bucket_min_side=16)
    ds = scan(section)
    buckets.assign(ds, section, (32, 32))
    a = epoch_batches(ds, 1, 0, 2)
    assert a == epoch_batches(ds, 1, 0, 2) and a != epoch_batches(ds, 1, 1, 2)
    assert sorted(i for b in a for i in b) == list(range(len(ds.items)))
    assert all(len({ds.items[i].bucket for i in b}) == 1 for b in a)  # one bucket per batch
    assert [local_slice(list(range(5)), r, 2) for r in (0, 1)] == [(0, 3), (3, 5)]
    assert local_slice([7], 1, 2) == (1, 1)


def test_cache_key_follows_content(tmp_path):
    from sdlora.trainers.cache import LatentCache, Store

    make_images(tmp_path, 2)
    section = _section(tmp_path, bucket_step=8)
    ds = scan(section)
    buckets.assign(ds, section, (32, 32))
    cache = LatentCache(Store(), lambda px: px[:, :1], "vae-a", 1, "white")
    sub = ds.subsets[0]
    k0, k1 = cache.key(ds.items[0], sub, False), cache.key(ds.items[1], sub, False)
    assert k0 != k1 and k0 != cache.key(ds.items[0], sub, True)
    assert k0 != LatentCache(Store(), None, "vae-b", 1, "white").key(ds.items[0], sub, False)
    out = cache.get(ds.items, ds.subsets, [False, False])
    assert cache.store.encoded == 2 and out[0]["latents"].shape == (1, 32, 32)
    cache.get(ds.items, ds.subsets, [False, False])
    assert cache.store.encoded == 2
    draw((32, 32), 5).save(tmp_path / "img1.png")  # the file changes: a new key
    ds2 = scan(section)
    buckets.assign(ds2, section, (32, 32))
    assert cache.key(ds2.items[0], sub, False) == k0 and cache.key(ds2.items[1], sub, False) != k1
    assert torch.is_tensor(out[1]["latents"])


def test_bad_image_error_type(tmp_path):
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(BadImage, match="empty file"):
        decode(tmp_path / "x.png")
