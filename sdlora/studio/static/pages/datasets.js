// Datasets: folders of images, captions edited in place, the trainer's scan report, uploads.
import { get, post, put, thumbUrl } from "/static/api.js";
import { h, showError, banner } from "/static/ui.js";

export async function render(view, arg) {
  const list = h("div", { class: "list card", id: "dataset-list" });
  const main = h("div", { class: "col", id: "dataset-main" });
  view.append(h("h2", {}, "Datasets"), h("div", { class: "row" }, h("div", { style: "width:260px" }, list), main));
  let folders;
  try { folders = await get("/api/datasets"); } catch (e) { return showError(e); }
  if (!folders.length) list.append(h("p", { class: "muted" }, "No folder with images under the root."));
  const current = arg || (folders[0] && folders[0].path);
  for (const f of folders) {
    list.append(h("a", { href: `#/datasets/${encodeURIComponent(f.path)}`, class: f.path === current ? "selected" : "" },
      h("div", {}, f.path), h("div", { class: "muted" }, `${f.images} images, ${f.captioned} captioned` +
        (f.repeats ? ` · ${f.repeats} repeats (${f.kohya_name})` : ""))));
  }
  if (current) await showFolder(main, current);
}

async function showFolder(main, path) {
  let data;
  try { data = await get("/api/datasets/images", { path }); } catch (e) { return showError(e); }
  const trigger = h("input", { id: "trigger", placeholder: "trigger word, e.g. sks", value: "sks" });
  const resolution = h("input", { id: "resolution", type: "number", value: "32", min: "8", step: "8", style: "width:80px" });
  const report = h("div", { id: "scan-report" });
  const scan = async () => {
    report.replaceChildren(h("span", { class: "muted" }, "scanning…"));
    try {
      const r = Number(resolution.value);
      const rep = await get("/api/datasets/scan", { path, trigger: trigger.value, resolution: r, bucket_step: 8,
        bucket_min_side: Math.max(8, Math.round(r / 2 / 8) * 8), bucket_max_side: r * 2, min_image_side: Math.min(64, r / 2) });
      report.replaceChildren(scanView(rep));
    } catch (e) { report.replaceChildren(h("p", { class: "error" }, e.message)); }
  };
  const upload = h("input", { type: "file", id: "upload", accept: "image/*", multiple: true, onchange: async () => {
    for (const file of upload.files) {
      try { await post("/api/datasets/upload", file, { folder: path, name: file.name }); banner(`added ${file.name}`, true); }
      catch (e) { showError(e); }
    }
    showFolder(main, path);
  } });
  const grid = h("div", { class: "grid", id: "images" });
  for (const im of data.images) grid.append(tile(im));
  main.replaceChildren(
    h("div", { class: "card" },
      h("div", { class: "row" },
        h("div", {}, h("b", {}, path), h("div", { class: "muted" }, `${data.images.length} images` +
          (data.repeats ? ` · kohya folder: ${data.repeats} repeats` : ""))),
        h("label", {}, "trigger ", trigger), h("label", {}, "resolution ", resolution),
        h("button", { onclick: scan, id: "scan" }, "Scan report"),
        h("label", {}, "upload ", upload)),
      report),
    grid);
}

function tile(im) {
  const note = h("div", { class: "muted", style: "font-size:11px;height:14px" });
  const text = h("textarea", { dataset: { path: im.path }, oninput: () => (note.textContent = "edited"),
    onchange: async () => {
      try { await put("/api/datasets/caption", { path: im.path, caption: text.value }); note.textContent = "saved"; note.className = "ok"; }
      catch (e) { note.textContent = e.message; note.className = "error"; }
    } }, im.caption || "");
  return h("div", { class: "tile" }, h("img", { src: thumbUrl(im.path), alt: im.name, loading: "lazy" }),
    h("div", { class: "name", title: im.name }, `${im.name} · ${im.width}×${im.height}`), text, note);
}

function scanView(rep) {
  return h("div", {},
    h("h3", {}, `Scan: ${rep.usable} usable images`),
    h("table", {}, h("tr", {}, h("th", {}, "subset"), h("th", {}, "repeats"), h("th", {}, "images")),
      rep.subsets.map((s) => h("tr", {}, h("td", {}, s.path + (s.is_reg ? " (reg)" : "")), h("td", {}, s.repeats), h("td", {}, s.images)))),
    h("h3", {}, "Buckets"),
    h("table", { id: "buckets" }, h("tr", {}, h("th", {}, "size"), h("th", {}, "images")),
      rep.buckets.map((b) => h("tr", {}, h("td", {}, `${b.width}×${b.height}`), h("td", {}, b.images)))),
    rep.skipped.length ? [h("h3", { class: "error" }, `Skipped ${rep.skipped.length} files`),
      h("ul", { id: "skipped" }, rep.skipped.map((s) => h("li", {}, h("b", {}, s.path), ": ", s.reason)))] : h("p", { class: "ok" }, "No bad images."),
    rep.no_caption.length ? h("p", { class: "muted" }, `${rep.no_caption.length} images without a caption file`) : null);
}
