// The router: #/page[/arg][?query] -> pages/<page>.js's render(view, arg, query).
import { banner } from "/static/ui.js";

const PAGES = ["datasets", "train", "jobs", "adapters", "generate", "tools"];
let cleanup = null;

async function route() {
  const [path, qs] = (location.hash.slice(1) || "/datasets").split("?");
  const [, page = "datasets", arg] = path.split("/");
  const name = PAGES.includes(page) ? page : "datasets";
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === name);
  if (cleanup) { cleanup(); cleanup = null; }
  banner(null);
  const view = document.getElementById("view");
  view.replaceChildren();
  view.dataset.page = name;
  const mod = await import(`/static/pages/${name}.js`);
  cleanup = (await mod.render(view, arg ? decodeURIComponent(arg) : null, new URLSearchParams(qs || ""))) || null;
}

window.addEventListener("hashchange", route);
route();
