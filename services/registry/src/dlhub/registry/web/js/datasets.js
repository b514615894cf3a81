// Datasets on the model page: the files (sizes, checksums, downloads), the tabular previews, the models
// trained on a dataset, and a servable's own training and test data. Cell text and column names are
// untrusted: they go in as text nodes only (h() never parses markup).
import { API, servablePath, token } from "./api.js";
import { h, section } from "./dom.js";

export function formatBytes(size) {
  if (size < 1024) return `${size} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let value = size / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

// The file's URL: each path segment percent-encoded, its "/" separators kept (docs/api.md, Files).
export function fileUrl(model, path) {
  const encoded = String(path).split("/").map(encodeURIComponent).join("/");
  return `${API}${servablePath(model.owner, model.name, model.version)}/files/${encoded}`;
}

function baseName(path) {
  return String(path).split("/").pop() || "download";
}

// Signed out, a plain link downloads. Signed in, a private version needs the bearer token, which a link
// cannot carry: fetch with the header and save the bytes through a Blob URL.
async function download(event, url, filename, status) {
  const current = token();
  if (!current) return;
  event.preventDefault();
  status.textContent = `Downloading ${filename}…`;
  try {
    const response = await fetch(url, { headers: { Authorization: `Bearer ${current}` }, credentials: "omit", cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const blob = await response.blob();
    const objectUrl = URL.createObjectURL(blob);
    const link = h("a", { href: objectUrl, download: filename, hidden: true });
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(objectUrl), 60_000);
    status.textContent = `Downloaded ${filename}`;
  } catch (error) {
    status.textContent = `Download failed: ${error.message}`;
  }
}

function downloadLink(url, filename, label, status, attrs = {}) {
  return h("a", { href: url, download: filename, class: "download", ...attrs, onclick: (event) => download(event, url, filename, status) }, label);
}

export function filesSection(model) {
  const manifest = model.manifest || [];
  if (!manifest.length) return null;
  const status = h("p", { id: "download-status", role: "status", class: "hint" });
  const total = manifest.reduce((sum, f) => sum + f.size_bytes, 0);
  const packageUrl = `${API}${servablePath(model.owner, model.name, model.version)}/package`;
  const rows = manifest.map((file) => h("tr", { "data-path": file.path },
    h("td", null, h("code", null, file.path)),
    h("td", { class: "num" }, formatBytes(file.size_bytes)),
    h("td", null, h("code", { class: "sha", title: file.sha256 }, file.sha256)),
    h("td", null, downloadLink(fileUrl(model, file.path), baseName(file.path), "Download", status, { "aria-label": `Download ${file.path}` }))));
  return section("Files",
    h("p", null, `${manifest.length} ${manifest.length === 1 ? "file" : "files"}, ${formatBytes(total)} · `,
      downloadLink(packageUrl, `${model.owner}-${model.name}-${model.version}`, "Download everything (package)", status, { id: "download-package" })),
    h("div", { class: "table-scroll" }, h("table", { class: "files", id: "files" },
      h("caption", { class: "visually-hidden" }, "Files with their sizes and SHA-256 checksums"),
      h("thead", null, h("tr", null, ["Path", "Size", "SHA-256", ""].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", null, rows))),
    status);
}

export function previewsSection(model) {
  const previews = model.previews || [];
  if (!previews.length) return null;
  return section("Previews", previews.map((preview, i) => {
    const id = `preview-${i}`;
    const shown = `${preview.rows.length} ${preview.rows.length === 1 ? "row" : "rows"}${preview.truncated ? " (first rows only)" : ""}`;
    return h("div", { class: "preview", "data-path": preview.path },
      h("h3", { id: `${id}-title` }, h("code", null, preview.path), ` · ${preview.format} · ${shown}`),
      h("div", { class: "table-scroll", tabindex: "0", role: "region", "aria-labelledby": `${id}-title` },
        h("table", { class: "preview-table", id },
          h("caption", { class: "visually-hidden" }, `First rows of ${preview.path}`),
          h("thead", null, h("tr", null, preview.columns.map((column) => h("th", { scope: "col" }, column.name, h("span", { class: "col-type" }, ` ${column.type}`))))),
          h("tbody", null, preview.rows.map((row) => h("tr", null, row.map((cell) => h("td", null, cell))))))));
  }));
}

function refLink(ref) {
  const match = String(ref).match(/^([^/@]+)\/([^/@]+)(?:@(\d+))?$/);
  if (!match) return h("code", null, ref);
  const href = `/m/${encodeURIComponent(match[1])}/${encodeURIComponent(match[2])}${match[3] ? "@" + match[3] : ""}`;
  return h("a", { href, "data-nav": true }, ref);
}

export function usedBySection(model) {
  if (model.used_by === undefined) return null;
  const users = model.used_by || [];
  return section("Models trained on this dataset",
    users.length ? h("ul", { id: "used-by" }, users.map((use) => h("li", { "data-servable": use.servable },
      refLink(use.servable), use.title ? ` — ${use.title}` : "", ` (${use.relation === "test" ? "tested on" : "trained on"} ${use.dataset})`)))
      : h("p", null, "No published model names this dataset yet."),
    model.used_by_truncated ? h("p", { class: "hint", id: "used-by-more" },
      `More models name this dataset than the ${users.length} shown; the API's search lists them all (trained_on=${model.owner}/${model.name}).`) : null);
}

export function trainingDataSection(model) {
  const links = model.datasets || [];
  if (!links.length) return null;
  const item = (link) => h("li", { "data-dataset": link.dataset },
    link.kind === "doi" ? h("a", { href: `https://doi.org/${encodeURI(link.dataset)}`, rel: "noopener" }, `doi:${link.dataset}`) : refLink(link.dataset));
  const training = links.filter((l) => l.relation === "training");
  const test = links.filter((l) => l.relation === "test");
  return section("Data",
    training.length ? [h("h3", null, "Trained on"), h("ul", { id: "training-data" }, training.map(item))] : null,
    test.length ? [h("h3", null, "Tested on"), h("ul", { id: "test-data" }, test.map(item))] : null);
}
