// Generate: model, a LoRA stack (strength / TE strength / block weights), prompt, sampler settings, sweeps.
import { get, post, fileUrl } from "/static/api.js";
import { h, showError, banner } from "/static/ui.js";

function slider(cls, value, min = -1, max = 2) {
  const range = h("input", { type: "range", min, max, step: "0.05", value, class: cls });
  const out = h("output", {}, Number(value).toFixed(2));
  range.addEventListener("input", () => (out.textContent = Number(range.value).toFixed(2)));
  return h("div", { class: "slider" }, range, out);
}

export async function render(view, _arg, query) {
  let adapters = [], options;
  try { [adapters, options] = await Promise.all([get("/api/adapters"), get("/api/generate/options")]); } catch (e) { return showError(e); }
  const stack = h("div", { id: "stack" });
  const addRow = (path = "", strength = 1) => {
    const sel = h("select", { class: "lora-path" }, adapters.filter((a) => !a.facts.error).map((a) => h("option", { value: a.path, selected: a.path === path }, a.path)));
    const te = slider("lora-te", strength), st = slider("lora-strength", strength);
    const bw = h("select", { class: "lora-blocks" }, h("option", { value: "" }, "all blocks"), options.block_presets.map((p) => h("option", { value: p }, p)));
    const row = h("div", { class: "stack-row" }, sel, h("label", {}, "strength", st), h("label", {}, "text encoder", te), bw,
      h("button", { onclick: () => row.remove() }, "✕"));
    st.querySelector("input").addEventListener("input", (e) => { if (!te.dataset.touched) { te.querySelector("input").value = e.target.value; te.querySelector("output").textContent = Number(e.target.value).toFixed(2); } });
    te.querySelector("input").addEventListener("input", () => (te.dataset.touched = "1"));
    stack.append(row);
  };
  const f = {
    model: h("input", { id: "model", value: "default" }),
    prompt: h("textarea", { id: "prompt", rows: 2 }, "a red sks on a white background"),
    negative: h("input", { id: "negative", value: "" }),
    sampler: h("select", { id: "sampler" }, options.samplers.map((s) => h("option", { value: s, selected: s === "euler a" }, s))),
    steps: h("input", { id: "steps", type: "number", value: "20", min: "1", max: "150", style: "width:70px" }),
    cfg: h("input", { id: "cfg", type: "number", value: "3", step: "0.5", style: "width:70px" }),
    seed: h("input", { id: "seed", type: "number", value: "1", style: "width:110px" }),
    width: h("input", { id: "width", type: "number", placeholder: "native", step: "8", style: "width:80px" }),
    height: h("input", { id: "height", type: "number", placeholder: "native", step: "8", style: "width:80px" }),
    count: h("input", { id: "count", type: "number", value: "1", min: "1", max: "8", style: "width:60px" }),
    sweep: h("input", { id: "sweep", placeholder: "e.g. 0,0.5,1 (optional)", style: "width:180px" }),
  };
  const results = h("div", { class: "gen", id: "results" });
  const go = h("button", { class: "primary", id: "generate" }, "Generate");
  const num = (el) => (el.value === "" ? null : Number(el.value));
  go.addEventListener("click", async () => {
    const loras = [...stack.querySelectorAll(".stack-row")].map((r) => ({ path: r.querySelector(".lora-path").value,
      strength: Number(r.querySelector(".lora-strength").value),
      te_strength: r.querySelector(".lora-te").closest(".slider").dataset.touched ? Number(r.querySelector(".lora-te").value) : null,
      block_weights: r.querySelector(".lora-blocks").value || null }));
    const body = { model: f.model.value, loras, prompt: f.prompt.value, negative: f.negative.value, sampler: f.sampler.value,
      steps: num(f.steps), cfg: num(f.cfg), seed: num(f.seed) ?? -1, width: num(f.width), height: num(f.height), count: num(f.count) ?? 1,
      sweep: f.sweep.value.trim() ? f.sweep.value.split(",").map(Number) : null };
    go.disabled = true; go.textContent = "Generating…"; banner(null);
    try {
      const r = await post("/api/generate", body);
      const note = r.model_loaded ? "model loaded" : `cached model; stack: ${["added", "updated", "removed", "kept"].map((k) => r[k].length ? `${k} ${r[k].join(", ")}` : "").filter(Boolean).join("; ") || "unchanged"}`;
      for (const im of r.images.reverse()) results.prepend(h("div", { class: "result" }, h("a", { href: fileUrl(im.path), target: "_blank" }, h("img", { src: fileUrl(im.path), class: "generated" })),
        h("div", {}, h("div", { class: "muted" }, `${im.path} · ${note}`), h("pre", { class: "params" }, im.parameters))));
    } catch (e) { showError(e); }
    go.disabled = false; go.textContent = "Generate";
  });
  const lbl = (text, el) => h("label", {}, h("div", { class: "muted" }, text), el);
  view.append(h("h2", {}, "Generate"), h("div", { class: "row" },
    h("div", { class: "col card", style: "max-width:640px" },
      lbl("model ('default' = the embedded model, or a path under the root)", f.model),
      h("h3", {}, "LoRA stack"), stack, h("button", { onclick: () => addRow(adapters[0] && adapters[0].path) }, "+ adapter"),
      h("h3", {}, "Prompt"), f.prompt, lbl("negative prompt", f.negative),
      h("div", { class: "row", style: "margin-top:8px" }, lbl("sampler", f.sampler), lbl("steps", f.steps), lbl("CFG", f.cfg),
        lbl("seed", f.seed), lbl("width", f.width), lbl("height", f.height), lbl("count", f.count)),
      h("div", { class: "row", style: "margin-top:8px" }, lbl("strength sweep", f.sweep), go)),
    h("div", { class: "col" }, results)));
  const wanted = query.get("lora");
  if (wanted) addRow(wanted, 0.8);
  try {
    for (const im of await get("/api/generate/images", { limit: 4 }))
      results.append(h("div", { class: "result" }, h("img", { src: fileUrl(im.path) }), h("div", {}, h("div", { class: "muted" }, im.path), h("pre", { class: "params" }, im.parameters || ""))));
  } catch (e) { showError(e); }
}
