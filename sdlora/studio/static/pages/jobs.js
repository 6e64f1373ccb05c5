// Jobs: the queue and history; a job's live progress (SSE), chart, samples, log and controls.
import { get, post, events, fileUrl } from "/static/api.js";
import { h, showError, banner, fmtTime, fmtDuration, status } from "/static/ui.js";
import { LineChart } from "/static/chart.js";

export async function render(view, arg) {
  const table = h("table", { id: "jobs" });
  const detail = h("div", { class: "col", id: "job-detail" });
  view.append(h("h2", {}, "Jobs"), h("div", { class: "row" }, h("div", { class: "col card", style: "max-width:480px" }, table), detail));
  const refresh = async () => {
    let jobs;
    try { jobs = await get("/api/jobs"); } catch (e) { return showError(e); }
    table.replaceChildren(h("tr", {}, h("th", {}, "#"), h("th", {}, "job"), h("th", {}, "status"), h("th", {}, "progress")), ...
      jobs.map((j) => h("tr", { class: `clickable ${String(j.id) === arg ? "selected" : ""}`, dataset: { id: j.id },
        onclick: () => (location.hash = `#/jobs/${j.id}`) },
        h("td", {}, j.id), h("td", {}, j.title, h("div", { class: "muted" }, fmtTime(j.created))), h("td", {}, status(j.status)),
        h("td", {}, j.progress ? `${j.progress.step}/${j.progress.total ?? "?"}` : ""))));
    if (!jobs.length) table.append(h("tr", {}, h("td", { colspan: 4, class: "muted" }, "No jobs yet: queue one on the Train or Tools page.")));
  };
  await refresh();
  const timer = setInterval(refresh, 3000);
  let stopDetail = null;
  if (arg) stopDetail = await showJob(detail, Number(arg), refresh);
  return () => { clearInterval(timer); if (stopDetail) stopDetail(); };
}

async function showJob(box, id, refresh) {
  let job;
  try { job = await get(`/api/jobs/${id}`); } catch (e) { showError(e); return null; }
  const st = h("span", { id: "job-status" }, status(job.status));
  const err = h("div", { class: "banner", id: "job-error", hidden: !job.error }, job.error || "");
  const stats = h("div", { class: "stats", id: "job-stats" });
  const canvas = h("canvas", { class: "chart", id: "chart" });
  const samples = h("div", { class: "thumbs", id: "samples" });
  const log = h("pre", { class: "log", id: "log" });
  const act = (fn) => async () => { try { await fn(); } catch (e) { showError(e); } };
  const buttons = {
    stop: h("button", { id: "stop", onclick: act(async () => { await post(`/api/jobs/${id}/stop`); banner("stopping after the current step (adapter and state are saved)…", true); }) }, "Stop"),
    sample: h("button", { id: "sample-now", onclick: act(async () => { await post(`/api/jobs/${id}/control`, { action: "sample" }); banner("samples will be drawn after this step", true); }) }, "Sample now"),
    save: h("button", { id: "save-now", onclick: act(async () => { await post(`/api/jobs/${id}/control`, { action: "save" }); banner("adapter and state will be saved after this step", true); }) }, "Save now"),
    resume: h("button", { id: "resume", class: "primary", onclick: act(async () => { const j = await post(`/api/jobs/${id}/resume`); location.hash = `#/jobs/${j.id}`; }) }, "Resume"),
  };
  const train = job.kind === "train";
  box.replaceChildren(h("div", { class: "card" },
    h("div", { class: "row" }, h("h3", { style: "margin:0" }, `#${job.id} ${job.title}`), st,
      buttons.stop, train ? [buttons.sample, buttons.save, buttons.resume] : null),
    h("div", { class: "muted" }, `sdlora ${job.argv.join(" ")}`), err,
    train ? [stats, canvas, h("h3", {}, "Samples"), samples] : null,
    h("h3", {}, "Log"), log));
  const chart = new LineChart(canvas);
  const state = { points: [], step: 0, total: null, its: null, loss: null, lr: null, samples: [] };
  const draw = (s) => {
    st.replaceChildren(status(s.status)); st.dataset.status = s.status; err.hidden = !s.error; err.textContent = s.error || "";
    buttons.stop.disabled = !["queued", "running"].includes(s.status);
    buttons.sample.disabled = buttons.save.disabled = s.status !== "running";
    buttons.resume.disabled = !s.resumable;
    const eta = state.its && state.total ? (state.total - state.step) / state.its : null;
    stats.replaceChildren(...[["step", `${state.step} / ${state.total ?? "?"}`], ["it/s", state.its ? state.its.toFixed(2) : "–"],
      ["ETA", s.status === "running" ? fmtDuration(eta) : "–"], ["loss", state.loss !== null ? state.loss.toFixed(4) : "–"],
      ["LR", state.lr !== null ? state.lr.toExponential(2) : "–"]].map(([k, v]) => h("div", {}, h("b", { dataset: { stat: k } }, v), k)));
  };
  draw(job);
  const source = events(`/api/jobs/${id}/events`);
  source.addEventListener("update", (msg) => {
    const d = JSON.parse(msg.data);
    if (d.reset) { state.points = []; state.samples = []; samples.replaceChildren(); }
    const pts = [];
    for (const e of d.events) {
      if (e.kind === "step") { pts.push({ step: e.step, loss: e.loss, lr: e.lr }); Object.assign(state, { step: e.step, total: e.total, its: e.its }); if (e.loss !== null) state.loss = e.loss; state.lr = e.lr; }
      else if (e.kind === "start") { state.total = e.total; state.step = e.step; }
      else if (e.kind === "sample") for (const p of e.images) samples.append(h("a", { href: fileUrl(p), target: "_blank" }, h("img", { src: fileUrl(p), title: `step ${e.step}: ${p}`, class: "sample" })));
      else if (e.kind === "save") log.append(`[saved ${e.adapter}${e.state ? " and " + e.state : ""}]\n`);
    }
    if (pts.length) { chart.add(pts); canvas.dataset.points = String(chart.points.length); }
    if (d.log.length) { log.append(d.log.join("\n") + "\n"); log.scrollTop = log.scrollHeight; }
    draw(d);
    refresh();
  });
  source.addEventListener("end", (msg) => { draw({ ...JSON.parse(msg.data), resumable: job.resumable }); source.close(); get(`/api/jobs/${id}`).then((j) => draw(j)).catch(() => {}); });
  chart.draw();
  return () => source.close();
}
