// Train: a form generated from the config schema; presets; validate; save as TOML; queue.
import { get, post } from "/static/api.js";
import { h, showError, banner } from "/static/ui.js";

let schema = null;

function input(section, f, value) {
  const key = `${section}.${f.name}`;
  let el;
  if (f.type === "bool") el = h("input", { type: "checkbox", checked: !!value });
  else if (f.choices) el = h("select", {}, (f.optional ? [""] : []).concat(f.choices).map((c) => h("option", { value: c, selected: c === (value ?? "") }, c === "" ? "(empty)" : c)));
  else if (f.type === "tables") el = h("textarea", { rows: 2 }, JSON.stringify(value || []));
  else {
    const shown = Array.isArray(value) ? value.join(", ") : value ?? "";
    el = h("input", { type: f.type === "int" || f.type === "float" ? "number" : "text", step: "any", value: String(shown),
      placeholder: f.optional ? "empty" : "" });
    if (f.type === "int|list[int]") el.type = "text";
  }
  el.dataset.key = key;
  el.name = key;
  return el;
}

function read(f, el) {
  if (f.type === "bool") return el.checked;
  const v = el.value.trim();
  if (f.type === "tables") { try { return JSON.parse(v || "[]"); } catch { return v; } }
  if (v === "" && (f.optional || f.type === "int" || f.type === "float")) return f.optional ? null : v;
  if (f.type === "int" || f.type === "float") return Number.isFinite(Number(v)) ? Number(v) : v;
  if (f.type === "int|list[int]") return v.includes(",") ? v.split(",").map((x) => Number(x.trim())) : Number(v);
  if (f.type.startsWith("list[")) {
    const items = v ? v.split(",").map((x) => x.trim()).filter((x) => x !== "") : [];
    return f.type === "list[float]" || f.type === "list[int]" ? items.map(Number) : items;
  }
  return el.value;
}

function collect(form) {
  const config = {};
  for (const [section, fields] of Object.entries(schema)) {
    config[section] = {};
    for (const f of fields) {
      const el = form.querySelector(`[data-key="${section}.${f.name}"]`);
      const v = read(f, el);
      if (v !== null) config[section][f.name] = v;
    }
  }
  return config;
}

function showFieldError(form, err) {
  for (const el of form.querySelectorAll(".invalid")) el.classList.remove("invalid");
  for (const el of form.querySelectorAll(".field .error")) el.textContent = "";
  showError(err);
  if (!err.field) return;
  const key = err.field.replace(/\[\d+\].*$/, "");
  const el = form.querySelector(`[data-key="${key}"]`);
  if (!el) return;
  el.classList.add("invalid");
  el.closest(".field").querySelector(".error").textContent = err.message;
  el.scrollIntoView({ block: "center" });
}

function build(form, config) {
  form.replaceChildren();
  for (const [section, fields] of Object.entries(schema)) {
    const box = h("div", { class: "fields" });
    for (const f of fields) {
      const hint = [f.doc, f.min !== undefined ? `min ${f.min}` : "", f.max !== undefined ? `max ${f.max}` : ""].filter(Boolean).join(" · ");
      box.append(h("label", { class: "field" }, h("div", { class: "key" }, f.name, h("span", { class: "muted" }, ` ${f.type}`)),
        input(section, f, (config[section] || {})[f.name] ?? f.default), hint ? h("div", { class: "doc" }, hint) : null,
        h("div", { class: "error" })));
    }
    form.append(h("fieldset", { class: "form-section", id: `section-${section}` }, h("legend", {}, `[${section}]`), box));
  }
}

export async function render(view) {
  const form = h("form", { id: "train-form", onsubmit: (e) => e.preventDefault() });
  const presetSel = h("select", { id: "preset" });
  const savePath = h("input", { id: "save-path", value: "configs/studio.toml", style: "width:220px" });
  const toml = h("pre", { class: "params", id: "toml", hidden: true });
  const act = (fn) => async () => { try { await fn(); } catch (e) { showFieldError(form, e); } };
  const validate = act(async () => { const r = await post("/api/train/validate", { config: collect(form) }); showFieldError(form, { message: "" }); banner("the config is valid", true); toml.hidden = false; toml.textContent = r.toml; });
  const save = act(async () => { const r = await post("/api/train/save", { config: collect(form), path: savePath.value, overwrite: true }); banner(`saved ${r.path}: sdlora train ${r.path}`, true); toml.hidden = false; toml.textContent = r.toml; });
  const queue = act(async () => { const job = await post("/api/train/queue", { config: collect(form) }); location.hash = `#/jobs/${job.id}`; });
  view.append(h("h2", {}, "Train"),
    h("div", { class: "card row" }, h("label", {}, "preset ", presetSel),
      h("button", { onclick: validate, id: "validate" }, "Validate"),
      h("span", {}, savePath, " ", h("button", { onclick: save, id: "save" }, "Save as TOML")),
      h("button", { class: "primary", onclick: queue, id: "queue" }, "Queue training")),
    toml, form);
  try {
    schema = await get("/api/train/schema");
    const presets = await get("/api/train/presets");
    presetSel.append(h("option", { value: "" }, "(defaults)"), ...presets.map((p) => h("option", { value: p.name }, p.name)));
    const load = async () => {
      const cfg = presetSel.value ? (await get(`/api/train/presets/${presetSel.value}`)).config : {};
      build(form, cfg);
    };
    presetSel.addEventListener("change", act(load));
    if (presets.some((p) => p.name === "quickstart")) presetSel.value = "quickstart";
    await load();
  } catch (e) { showError(e); }
}
