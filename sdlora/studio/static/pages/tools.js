// Tools: bake, merge, resize, extract, convert and eval, each queued as a job (its log is the report).
import { get, post } from "/static/api.js";
import { h, showError } from "/static/ui.js";

export async function render(view, arg) {
  let tools, adapters;
  try { [tools, adapters] = await Promise.all([get("/api/tools"), get("/api/adapters")]); } catch (e) { return showError(e); }
  const names = Object.keys(tools);
  const current = names.includes(arg) ? arg : names[0];
  const tabs = h("div", { class: "row card tabs" }, names.map((n) => h("a", { href: `#/tools/${n}`, class: n === current ? "selected" : "" }, n)));
  const form = h("div", { class: "card", id: "tool-form" });
  const paths = adapters.filter((a) => !a.facts.error).map((a) => a.path);
  const inputs = {};
  for (const f of tools[current]) {
    let el;
    if (f.kind === "adapters") {
      el = h("div", { class: "adapter-list" });
      const add = () => el.insertBefore(h("div", { class: "row adapter-item" }, h("select", { class: "path" }, paths.map((p) => h("option", { value: p }, p))),
        h("input", { class: "weight", type: "number", value: "1", step: "0.1", style: "width:80px" })), el.lastChild);
      el.append(h("button", { onclick: add }, "+ adapter"));
      add();
    } else if (f.kind === "choice") el = h("select", {}, (f.required ? [] : [""]).concat(f.choices).map((c) => h("option", { value: c }, c || "(default)")));
    else if (f.kind === "in") el = h("select", {}, paths.map((p) => h("option", { value: p }, p)));
    else el = h("input", { value: f.kind === "model" ? "default" : f.kind === "out" ? `outputs/${current}-${Date.now() % 100000}${current === "eval" ? "" : current === "bake" ? ".safetensors" : ".safetensors"}` : "",
      type: f.kind === "int" || f.kind === "float" ? "number" : "text", step: "any" });
    el.dataset.field = f.name;
    inputs[f.name] = [f, el];
    form.append(h("label", { class: "field", style: "margin-bottom:8px" }, h("div", { class: "key" }, f.name, f.required ? " *" : "", h("span", { class: "muted" }, ` ${f.kind}`)), el));
  }
  const run = h("button", { class: "primary", id: "run-tool", onclick: async () => {
    const body = {};
    for (const [name, [f, el]] of Object.entries(inputs)) {
      if (f.kind === "adapters") body[name] = [...el.querySelectorAll(".adapter-item")].map((r) => ({ path: r.querySelector(".path").value, weight: Number(r.querySelector(".weight").value) }));
      else if (el.value !== "") body[name] = f.kind === "int" || f.kind === "float" ? Number(el.value) : el.value;
    }
    try { const job = await post(`/api/tools/${current}`, body); location.hash = `#/jobs/${job.id}`; } catch (e) { showError(e); }
  } }, `Run ${current}`);
  form.append(run);
  view.append(h("h2", {}, "Tools"), tabs, form);
}
