// Publish from the browser: dlhub.json and its package files go up as the multipart body the SDK sends
// (POST /servables: a "metadata" part and a "package" part), then the build is followed live through
// GET .../build?follow=true (JSON lines, read from the response stream as they arrive).
import { API, ApiError, api, servablePath, token } from "./api.js";
import { whoami } from "./auth.js";
import { h } from "./dom.js";
import { buildPackage } from "./tar.js";

const ARCHIVE = /\.(tar\.gz|tgz|tar|zip)$/i;
const TERMINAL = new Set(["ready", "failed"]);
const RECONNECT_MS = 1000;

export function declaredFiles(metadata) {
  const files = ((metadata && metadata.dlhub) || {}).files || {};
  const fetched = new Set((((metadata && metadata.dlhub) || {}).url_files || []).map((entry) => entry && entry.path));
  const paths = Object.values(files).flatMap((value) => (Array.isArray(value) ? value : [value])).map(String);
  return [...new Set(paths)].filter((path) => !fetched.has(path)).sort();
}

function fileField(id, label, hint, attrs) {
  const input = h("input", { id, name: id, type: "file", "aria-describedby": `${id}-hint ${id}-error`, ...attrs });
  const error = h("p", { id: `${id}-error`, class: "field-error" });
  const wrapper = h("div", { class: "field" }, h("label", { for: id }, label), h("p", { id: `${id}-hint`, class: "hint" }, hint), input, error);
  return { input, error, wrapper };
}

function setError(field, message) {
  field.error.textContent = message;
  if (message) field.input.setAttribute("aria-invalid", "true");
  else field.input.removeAttribute("aria-invalid");
}

async function readMetadata(field) {
  const file = field.input.files[0];
  if (!file) throw Object.assign(new Error("choose the dlhub.json metadata document"), { target: field });
  try {
    const doc = JSON.parse(await file.text());
    if (doc === null || typeof doc !== "object" || Array.isArray(doc)) throw new Error("not an object");
    return doc;
  } catch (error) {
    throw Object.assign(new Error(`${file.name} is not a JSON object: ${error.message}`), { target: field });
  }
}

// The package: one archive as it is, or the chosen files placed at the paths dlhub.files declares (matched
// by file name), like `dlhub publish` tars them from the folder.
async function packageOf(metadata, field) {
  const chosen = [...field.input.files];
  if (chosen.length === 1 && ARCHIVE.test(chosen[0].name)) return { blob: chosen[0], filename: chosen[0].name };
  const declared = declaredFiles(metadata);
  const byName = new Map(chosen.map((file) => [file.name, file]));
  const missing = declared.filter((path) => !byName.has(path.split("/").pop()));
  if (missing.length) throw Object.assign(new Error(`choose the declared files: ${missing.join(", ")} missing`), { target: field });
  if (!declared.length) return chosen.length ? buildPackage(chosen.map((file) => ({ path: file.name, file }))) : null;
  return buildPackage(declared.map((path) => ({ path, file: byName.get(path.split("/").pop()) })));
}

export async function renderPublish(main) {
  document.title = "Publish · DLHub";
  const me = await whoami();
  if (!me) {
    main.replaceChildren(h("h1", null, "Publish a model"), h("p", { id: "publish-signed-out" }, "Sign in with an API token (at the top of the page) to publish."));
    return;
  }
  const metadata = fileField("pub-metadata", "Metadata document (dlhub.json)", "The publication document, e.g. what dlhub init writes.", { accept: ".json,application/json", required: true });
  const files = fileField("pub-files", "Package files", "The files dlhub.files names (each placed at its declared path), or one .tar.gz, .tgz, .tar or .zip archive of them.", { multiple: true });
  const summary = h("div", { id: "pub-summary", "aria-live": "polite" });
  const formError = h("div", { id: "pub-error", role: "alert" });
  const submit = h("button", { type: "submit", id: "pub-submit" }, "Publish");
  const buildSlot = h("div", { id: "build-slot" });
  let follow = null;
  metadata.input.addEventListener("change", async () => {
    setError(metadata, "");
    summary.replaceChildren();
    try {
      const doc = await readMetadata(metadata);
      const declared = declaredFiles(doc);
      summary.replaceChildren(h("p", null, "Name: ", h("code", null, String((doc.dlhub || {}).name || "?")), ` · ${declared.length} declared ${declared.length === 1 ? "file" : "files"}`),
        declared.length ? h("ul", { class: "declared" }, declared.map((path) => h("li", null, h("code", null, path)))) : null);
    } catch (error) {
      setError(metadata, error.message);
    }
  });
  const onSubmit = async (event) => {
    event.preventDefault();
    setError(metadata, "");
    setError(files, "");
    formError.replaceChildren();
    if (follow) follow.abort();
    submit.disabled = true;
    try {
      const doc = await readMetadata(metadata);
      const body = new FormData();
      body.append("metadata", new Blob([JSON.stringify(doc)], { type: "application/json" }), "dlhub.json");
      const pkg = await packageOf(doc, files);
      if (pkg) body.append("package", pkg.blob, pkg.filename);
      const answer = await api("/servables", { method: "POST", raw: body });
      follow = new AbortController();
      followBuild(buildSlot, answer, follow.signal);
    } catch (error) {
      showPublishError(error, { metadata, files, formError });
    } finally {
      submit.disabled = false;
    }
  };
  main.replaceChildren(
    h("h1", null, "Publish a model"),
    h("p", { class: "hint" }, "Publishing as ", h("strong", null, me.user), ". The build runs on the registry; its log appears below as it happens."),
    h("form", { id: "publish-form", class: "card", onsubmit: onSubmit, novalidate: true }, metadata.wrapper, summary, files.wrapper, submit, formError),
    buildSlot,
  );
}

function showPublishError(error, { metadata, files, formError }) {
  if (error.target) {
    setError(error.target, error.message);
    error.target.input.focus();
    return;
  }
  if (error instanceof ApiError && error.field) {
    const target = error.field === "package" ? files : metadata;
    setError(target, `${error.field}: ${error.message}`);
    target.input.focus();
    return;
  }
  formError.replaceChildren(h("p", { class: "error" }, error.message));
}

function followBuild(slot, answer, signal) {
  const ref = `${answer.owner}/${answer.name}@${answer.version}`;
  const state = h("p", { id: "build-state", role: "status" }, "State: queued");
  const log = h("pre", { id: "build-log", tabindex: "0", "aria-label": "Build log" });
  const outcome = h("div", { id: "build-outcome" });
  slot.replaceChildren(h("section", { class: "card", "aria-labelledby": "build-heading" },
    h("h2", { id: "build-heading" }, "Build of ", h("code", null, ref)), state, outcome, h("h3", null, "Log"), log));
  const show = (value, error) => {
    state.textContent = `State: ${value}`;
    state.dataset.state = value;
    if (value === "failed") outcome.replaceChildren(h("p", { class: "error", id: "build-error" }, "The build failed: ", error || "no reason given"));
    if (value === "ready") {
      const href = `/m/${encodeURIComponent(answer.owner)}/${encodeURIComponent(answer.name)}@${answer.version}`;
      outcome.replaceChildren(h("p", { class: "ok" }, "Published. ", h("a", { href, "data-nav": true, id: "build-model-link" }, `Open ${ref}`)));
    }
  };
  const onLine = (line, first) => {
    if (first) {
      log.replaceChildren((line.log || []).join("\n"));
      show(line.state, line.error);
      return;
    }
    if (line.lines) log.append((log.textContent ? "\n" : "") + line.lines.join("\n"));
    if (line.state) show(line.state, line.error);
  };
  streamBuild(servablePath(answer.owner, answer.name, answer.version), onLine, () => TERMINAL.has(state.dataset.state), signal)
    .catch((error) => { if (!signal.aborted) outcome.replaceChildren(h("p", { class: "error" }, `Following the build stopped: ${error.message}`)); });
}

// Read the NDJSON stream line by line; reconnect (the first line repeats the whole record) until the build
// is over, e.g. after the registry's follow timeout or a dropped connection.
async function streamBuild(path, onLine, done, signal) {
  for (let attempt = 0; !signal.aborted && !done(); attempt += 1) {
    if (attempt) await new Promise((resolve) => setTimeout(resolve, RECONNECT_MS));
    const headers = { Accept: "application/x-ndjson" };
    if (token()) headers.Authorization = `Bearer ${token()}`;
    const response = await fetch(`${API}${path}/build?follow=true`, { headers, credentials: "omit", cache: "no-store", signal });
    if (!response.ok) throw new ApiError(response.status, ((await response.json().catch(() => ({}))).error) || {});
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "";
    let first = true;
    for (;;) {
      const { value, done: ended } = await reader.read();
      if (ended) break;
      buffer += value;
      let newline;
      while ((newline = buffer.indexOf("\n")) !== -1) {
        const line = buffer.slice(0, newline).trim();
        buffer = buffer.slice(newline + 1);
        if (line) onLine(JSON.parse(line), first);
        first = false;
      }
    }
  }
}
