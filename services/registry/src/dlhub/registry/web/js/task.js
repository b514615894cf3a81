// The task page: follows an asynchronous run by its UUID until it completes or fails.
import { api } from "./api.js";
import { formatDate, h, pretty } from "./dom.js";

const POLL_INTERVAL_MS = 500;
const TERMINAL = new Set(["completed", "failed"]);

function wait(ms, signal) {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => { clearTimeout(timer); resolve(); }, { once: true });
  });
}

export function timingsTable(timings) {
  if (!timings) return null;
  return h("table", { class: "timings" }, h("caption", null, "Timings"),
    h("tbody", null, Object.entries(timings).map(([key, value]) => h("tr", null, h("th", { scope: "row" }, key), h("td", null, `${Number(value).toFixed(2)}`)))));
}

export function outcome(record) {
  return h("div", { class: "outcome", id: "outcome" },
    record.output !== undefined && record.state === "completed" ? h("div", null, h("h3", null, "Output"), h("pre", { id: "output" }, pretty(record.output))) : null,
    record.error ? h("div", { class: "error", role: "alert" }, h("strong", null, record.error.type || "error"), ": ", record.error.message || "",
      record.error.traceback ? h("pre", null, record.error.traceback) : null) : null,
    timingsTable(record.timings),
    record.warnings ? h("ul", { class: "warnings" }, record.warnings.map((w) => h("li", null, w))) : null);
}

export async function renderTask(main, { taskId }, signal) {
  document.title = `Task ${taskId} · DLHub`;
  const state = h("p", { id: "task-state", role: "status" }, "Loading…");
  const body = h("div");
  main.replaceChildren(h("h1", null, "Task ", h("code", null, taskId)), state, body);
  const show = (record) => {
    state.textContent = `State: ${record.state}`;
    state.dataset.state = record.state;
    body.replaceChildren(
      h("dl", { class: "facts" },
        h("dt", null, "Servable"), h("dd", null, record.servable || ""),
        h("dt", null, "Kind"), h("dd", null, record.kind || ""),
        h("dt", null, "Created"), h("dd", null, formatDate(record.created_at)),
        h("dt", null, "Updated"), h("dd", null, formatDate(record.updated_at))),
      outcome(record));
    return TERMINAL.has(record.state);
  };
  // The first answer renders the page; the polling goes on after it (the page is ready meanwhile).
  if (show(await api(`/tasks/${encodeURIComponent(taskId)}`, { signal }))) return;
  follow(taskId, show, signal).catch((error) => { if (!signal.aborted) state.textContent = `Following the task stopped: ${error.message}`; });
}

async function follow(taskId, show, signal) {
  while (!signal.aborted) {
    await wait(POLL_INTERVAL_MS, signal);
    if (signal.aborted) return;
    const record = await api(`/tasks/${encodeURIComponent(taskId)}`, { signal });
    if (signal.aborted || show(record)) return;
  }
}
