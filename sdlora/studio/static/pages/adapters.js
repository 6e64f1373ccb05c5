// Adapters: every .safetensors adapter under the root, with inspect's facts and its last samples.
import { get, fileUrl } from "/static/api.js";
import { h, showError, fmtTime } from "/static/ui.js";

const spread = (s) => (!s ? "–" : s.min === s.max ? `${s.min}` : `${s.min}…${s.max}`);

export async function render(view) {
  const box = h("div", { id: "adapters" });
  view.append(h("h2", {}, "Adapters"), box);
  let list;
  try { list = await get("/api/adapters"); } catch (e) { return showError(e); }
  if (!list.length) box.append(h("p", { class: "muted" }, "No adapter files under the root yet: train one on the Train page."));
  for (const a of list) {
    const f = a.facts;
    const rows = f.error ? [["error", f.error]] : [
      ["algorithm", Object.entries(f.algorithms).map(([k, v]) => `${k} ×${v}`).join(", ")],
      ["family", f.family_name || "unknown"], ["rank", spread(f.rank)], ["alpha", spread(f.alpha)],
      ["modules", `${f.modules} (${Object.entries(f.modules_per_component).map(([k, v]) => `${k} ${v}`).join(", ")})`],
      ["trigger words", f.trigger_words.join(", ") || "–"],
      ["training", Object.entries(f.training).map(([k, v]) => `${k} ${Array.isArray(v) ? v.join(" ") : v}`).join("; ") || "–"],
      ["hash", f.hashes.sshs_model_hash || f.hashes.data_sha256 || "–"], ["size", `${(f.file_size / 1e6).toFixed(2)} MB, ${f.dtype}`],
    ];
    box.append(h("div", { class: "card adapter", dataset: { path: a.path } },
      h("div", { class: "row" }, h("h3", { style: "margin:0" }, a.name), h("span", { class: "muted" }, `${a.path} · ${fmtTime(a.modified)}`),
        h("a", { href: `#/generate?lora=${encodeURIComponent(a.path)}` }, "generate with it →")),
      h("div", { class: "row" }, h("table", { class: "col" }, rows.map(([k, v]) => h("tr", {}, h("th", { style: "width:130px" }, k), h("td", {}, v)))),
        h("div", { class: "thumbs" }, a.samples.map((p) => h("img", { src: fileUrl(p), title: p }))))));
  }
}
