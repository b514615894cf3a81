// The model page (the model card): what it is, who made it, how to cite it, its versions and types, how to
// call it, and a form to try it.
import { api, servablePath, token } from "./api.js";
import { whoami } from "./auth.js";
import { copyButton, formatDate, h, pretty, safeUrl, section } from "./dom.js";
import { filesSection, previewsSection, trainingDataSection, usedBySection } from "./datasets.js";
import { renderManage } from "./manage.js";
import { renderTryIt } from "./tryit.js";
import { exampleOf, pyLiteral, shellQuote, typeLabel } from "./types.js";

const PLACEHOLDER_DOI = "10.datacite/placeholder";
const ORCID = /^(?:https:\/\/orcid\.org\/)?(\d{4}-\d{4}-\d{4}-\d{3}[\dX])$/;

export async function renderModel(main, { owner, name, version }, signal) {
  const path = servablePath(owner, name, version);
  whoami(); // asked alongside the model, for the Manage section
  const model = await api(path, { signal });
  const pinned = servablePath(owner, name, model.version);
  const [bibtex, datacite] = await Promise.all([
    api(`${pinned}/citation?format=bibtex`, { text: true, signal }).catch(() => null),
    api(`${pinned}/citation?format=datacite`, { signal }).catch(() => null),
  ]);
  const meta = model.metadata || {};
  const dc = meta.datacite || {};
  const dl = meta.dlhub || {};
  const title = (dc.titles && dc.titles[0] && dc.titles[0].title) || model.shorthand_name;
  document.title = `${title} · DLHub`;
  const dataset = model.type === "dataset";
  main.replaceChildren(
    h("article", { class: "model" },
      header(model, title),
      h("div", { class: "model-grid" },
        h("div", { class: "model-main" },
          about(dc, dl, model),
          model.steps ? stepsSection(model.steps) : null,
          dataset ? null : typesSection(meta.servable || {}),
          dataset ? previewsSection(model) : usageSection(model, meta.servable || {}, dl),
          filesSection(model),
          dataset ? usedBySection(model) : trainingDataSection(model),
          dataset ? null : h("div", { id: "try-it-slot" })),
        h("div", { class: "model-side" },
          h("div", { id: "manage-slot" }),
          citeSection(bibtex, datacite),
          versionsSection(model),
          dataset ? null : environmentSection(model, dl),
          dataset ? null : vectorsSection(model, dl)))));
  if (!dataset) renderTryIt(main.querySelector("#try-it-slot"), model, exampleInputs(model, meta.servable || {}, dl));
  await renderManage(main.querySelector("#manage-slot"), model);
}

function header(model, title) {
  return h("header", { class: "model-head" },
    h("h1", { id: "model-title" }, title),
    h("p", { class: "meta" }, h("code", null, `${model.shorthand_name}@${model.version}`), " ",
      h("span", { class: `badge status-${model.status}` }, model.status), " ",
      model.type && model.type !== "servable" ? h("span", { class: "badge" }, model.type) : null),
    model.deprecated ? h("p", { class: "notice", role: "note" }, "This version is deprecated",
      model.deprecation_reason ? `: ${model.deprecation_reason}` : "",
      model.deprecation_replacement ? ` (use ${model.deprecation_replacement} instead)` : "") : null,
    model.status === "failed" && model.status_reason ? h("p", { class: "error" }, model.status_reason) : null);
}

function creatorName(creator) {
  if (creator.familyName || creator.givenName) return [creator.givenName, creator.familyName].filter(Boolean).join(" ");
  return creator.name || creator.creatorName || "";
}

function orcidOf(creator) {
  for (const id of creator.nameIdentifiers || []) {
    const scheme = String(id.nameIdentifierScheme || "").toUpperCase();
    const match = String(id.nameIdentifier || "").match(ORCID);
    if (scheme === "ORCID" && match) return match[1];
  }
  return null;
}

function about(dc, dl, model) {
  const authors = (dc.creators || []).map((creator) => {
    const orcid = orcidOf(creator);
    return h("li", null, creatorName(creator),
      orcid ? [" ", h("a", { href: `https://orcid.org/${orcid}`, class: "orcid", rel: "noopener", "aria-label": `ORCID of ${creatorName(creator)}` }, `ORCID ${orcid}`)] : null);
  });
  const abstracts = (dc.descriptions || []).filter((d) => d.description);
  const doi = dc.identifier && dc.identifier.identifierType === "DOI" && dc.identifier.identifier !== PLACEHOLDER_DOI ? dc.identifier.identifier : null;
  const related = (dc.relatedIdentifiers || []).map((rel) => h("li", null, `${rel.relationType || "Related"}: `, identifierLink(rel.relatedIdentifier, rel.relatedIdentifierType)));
  return section("About",
    h("h3", null, "Authors"), h("ul", { class: "authors", id: "authors" }, authors),
    abstracts.length ? [h("h3", null, "Abstract"), abstracts.map((d) => h("p", { class: "abstract" }, d.description))] : null,
    (dl.domains || []).length ? [h("h3", null, "Domains"), h("p", { class: "tags" }, dl.domains.map((d) => h("span", { class: "tag" }, d)))] : null,
    h("h3", null, "Identifiers"),
    h("ul", { class: "identifiers" },
      doi ? h("li", null, "DOI: ", identifierLink(doi, "DOI")) : h("li", null, "No DOI"),
      related),
    h("p", { class: "meta" }, `Published ${formatDate(model.published_at)} by ${model.owner}`));
}

function identifierLink(value, kind) {
  const text = String(value || "");
  const href = String(kind).toUpperCase() === "DOI" ? `https://doi.org/${encodeURI(text)}` : safeUrl(text);
  return href ? h("a", { href, rel: "noopener" }, text) : text;
}

function stepsSection(steps) {
  return section("Pipeline steps", h("ol", { class: "steps" }, steps.map((step) => {
    const ref = typeof step === "string" ? step : step.servable;
    const [path] = String(ref).split("@");
    const [owner, name] = path.split("/");
    return h("li", null, h("a", { href: `/m/${encodeURIComponent(owner)}/${encodeURIComponent(name)}${ref.includes("@") ? "@" + ref.split("@")[1] : ""}`, "data-nav": true }, ref),
      step.method && step.method !== "run" ? ` (method ${step.method})` : "");
  })));
}

function typesSection(servable) {
  const methods = Object.entries(servable.methods || {});
  return section("Inputs and outputs", methods.map(([method, spec]) => h("div", { class: "method" },
    h("h3", null, `Method `, h("code", null, method)),
    h("dl", { class: "facts" },
      h("dt", null, "Input"), h("dd", { class: "type" }, typeLabel(spec.input), spec.input && spec.input.description ? h("span", { class: "hint" }, ` — ${spec.input.description}`) : null),
      h("dt", null, "Output"), h("dd", { class: "type" }, typeLabel(spec.output), spec.output && spec.output.description ? h("span", { class: "hint" }, ` — ${spec.output.description}`) : null),
      Object.keys(spec.parameters || {}).length ? [h("dt", null, "Parameters"), h("dd", null, h("code", null, JSON.stringify(spec.parameters)))] : null))),
  servable.model_type ? h("p", null, `Model type: ${servable.model_type}`) : null,
  servable.type ? h("p", null, `Servable type: ${servable.type}`) : null);
}

function citeSection(bibtex, datacite) {
  if (bibtex === null && datacite === null) return section("Cite this", h("p", null, "No citation available."));
  const datacitePretty = datacite ? pretty(datacite) : "";
  return section("Cite this",
    h("h3", null, "BibTeX ", copyButton("Copy BibTeX", () => bibtex || "")),
    h("pre", { id: "bibtex", tabindex: "0" }, bibtex || ""),
    h("details", null, h("summary", null, "DataCite JSON"),
      copyButton("Copy DataCite", () => datacitePretty),
      h("pre", { id: "datacite", tabindex: "0" }, datacitePretty)));
}

function versionsSection(model) {
  const rows = [...(model.versions || [])].reverse().map((v) => h("tr", { class: v.version === model.version ? "current" : null },
    h("td", null, h("a", { href: `/m/${encodeURIComponent(model.owner)}/${encodeURIComponent(model.name)}@${v.version}`, "data-nav": true, "aria-current": v.version === model.version ? "page" : null }, `v${v.version}`)),
    h("td", null, h("span", { class: `badge status-${v.status}` }, v.status)),
    h("td", null, formatDate(v.published_at)),
    h("td", null, v.deprecated ? `deprecated${v.deprecation_reason ? ": " + v.deprecation_reason : ""}${v.deprecation_replacement ? " (use " + v.deprecation_replacement + ")" : ""}` : "")));
  return section("Versions", h("table", { class: "versions" },
    h("thead", null, h("tr", null, ["Version", "Status", "Published", "Notes"].map((c) => h("th", { scope: "col" }, c)))),
    h("tbody", null, rows)));
}

function environmentSection(model, dl) {
  const python = (dl.dependencies && dl.dependencies.python) || {};
  const entries = Object.entries(python);
  return section("Dependencies and environment",
    entries.length ? h("ul", { class: "deps" }, entries.map(([pkg, ver]) => h("li", null, h("code", null, ver ? `${pkg}==${ver}` : pkg)))) : h("p", null, "No declared Python dependencies."),
    h("p", null, model.environment ? ["Own environment ", h("code", null, model.environment)] : "Runs in the shared worker environment."),
    model.build_state ? h("p", null, `Build: ${model.build_state}`) : null);
}

// "3 min ago", "2 h ago", "5 d ago" (the exact time is in the element's title).
export function ago(iso, now = Date.now()) {
  const seconds = Math.max(0, Math.round((now - new Date(iso).getTime()) / 1000));
  if (seconds < 60) return "just now";
  if (seconds < 3600) return `${Math.floor(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.floor(seconds / 3600)} h ago`;
  return `${Math.floor(seconds / 86400)} d ago`;
}

// The latest run of the vectors, as describe's last_verification says (or as POST .../verify answered).
function verificationSummary(last) {
  const failed = last.vectors.filter((v) => !v.passed);
  return [
    h("p", { id: "last-verification", "data-passed": String(last.passed) },
      h("span", { class: `badge ${last.passed ? "status-ready" : "status-failed"}` }, last.passed ? "passed" : "failed"), " ",
      h("time", { datetime: last.at, title: formatDate(last.at) }, `Verified ${ago(last.at)}`),
      `: ${last.passed_count}/${last.total} passed`, last.trigger === "publish" ? " (at publication)" : ""),
    failed.length ? h("ul", { class: "vector-failures" }, failed.map((v) => h("li", null, `#${v.index}: ${v.message || "failed"}`))) : null,
  ];
}

function vectorsSection(model, dl) {
  const vectors = dl.test_vectors || [];
  const last = h("div", { id: "verification" }, model.last_verification ? verificationSummary(model.last_verification) : h("p", { class: "hint" }, "Not verified since verifications were recorded."));
  const result = h("div", { id: "verify-result", role: "status" });
  const verify = async () => {
    result.textContent = "Verifying…";
    try {
      const answer = await api(`${servablePath(model.owner, model.name, model.version)}/verify`, { method: "POST" });
      const checks = (answer.vectors || []).map((v) => ({ index: v.index, passed: v.passed, message: v.message }));
      last.replaceChildren(...verificationSummary({ at: new Date().toISOString(), trigger: "verify", passed: answer.passed,
        passed_count: checks.filter((v) => v.passed).length, total: checks.length, vectors: checks }));
      result.textContent = `${answer.passed ? "Passed" : "Failed"}: ${checks.filter((v) => v.passed).length}/${checks.length}`;
    } catch (error) {
      result.textContent = error.message;
    }
  };
  return section("Test vectors",
    vectors.length ? h("ol", { class: "vectors" }, vectors.map((v) => h("li", null,
      v.description ? h("p", null, v.description) : null,
      h("p", null, "Inputs: ", h("code", null, JSON.stringify(v.inputs))),
      h("p", null, "Expected: ", h("code", null, JSON.stringify(v.expected)))))) : h("p", null, "No test vectors published."),
    vectors.length ? last : null,
    vectors.length && model.status === "ready" ? h("button", { type: "button", id: "verify", onclick: verify }, "Verify now") : null,
    result);
}

function exampleInputs(model, servable, dl) {
  const vector = (dl.test_vectors || []).find((v) => (v.method || "run") === "run");
  if (vector) return vector.inputs;
  const run = (servable.methods || {}).run || Object.values(servable.methods || {})[0];
  return exampleOf(run && run.input);
}

function usageSection(model, servable, dl) {
  const ref = `${model.owner}/${model.name}@${model.version}`;
  const inputs = exampleInputs(model, servable, dl);
  const origin = location.origin;
  const sdk = `from dlhub.client import DLHubClient\n\nclient = DLHubClient(${JSON.stringify(origin)})  # token=... for private models\nprint(client.run(${JSON.stringify(ref)}, ${pyLiteral(inputs)}))`;
  const cli = `dlhub --url ${origin} run ${ref} --input ${shellQuote(JSON.stringify(inputs))}`;
  const auth = token() ? ` \\\n  -H "Authorization: Bearer $DLHUB_TOKEN"` : "";
  const curl = `curl -sS -X POST ${origin}/api/v1${servablePath(model.owner, model.name, model.version)}/run \\\n  -H 'Content-Type: application/json'${auth} \\\n  -d ${shellQuote(JSON.stringify({ inputs }))}`;
  const snippet = (label, id, text) => [h("h3", null, label, " ", copyButton(`Copy ${label}`, () => text)), h("pre", { id, tabindex: "0" }, text)];
  return section("Use it", snippet("Python SDK", "usage-sdk", sdk), snippet("CLI", "usage-cli", cli), snippet("curl", "usage-curl", curl));
}
