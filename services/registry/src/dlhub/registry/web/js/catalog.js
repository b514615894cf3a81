// The catalog: free-text search, facets, sorting and paging, all of it in the URL (?q=&domain=&page=2).
import { api } from "./api.js";
import { h } from "./dom.js";
import { navigate } from "./router.js";

const PAGE_SIZE = 20;
const FACETS = [
  ["kind", "Kind"],
  ["domain", "Domain"],
  ["model_type", "Model type"],
  ["servable_type", "Servable type"],
  ["owner", "Owner"],
];
const SORTS = [
  ["relevance", "Relevance"],
  ["publication_date", "Newest"],
  ["name", "Name"],
];

function withParams(params, changes) {
  const next = new URLSearchParams(params);
  for (const [key, value] of Object.entries(changes)) {
    if (value === null || value === "") next.delete(key);
    else next.set(key, value);
  }
  if (!("page" in changes)) next.delete("page");
  const query = next.toString();
  return query ? `/?${query}` : "/";
}

function searchQuery(params, page) {
  const query = new URLSearchParams({ facets: FACETS.map(([key]) => key).join(","), limit: PAGE_SIZE, offset: (page - 1) * PAGE_SIZE });
  for (const key of ["q", "sort", ...FACETS.map(([facet]) => facet)]) {
    const value = params.get(key);
    if (value) query.set(key, value);
  }
  return query;
}

export async function renderCatalog(main, _route, signal) {
  const params = new URLSearchParams(location.search);
  const page = Math.max(1, Number.parseInt(params.get("page") || "1", 10) || 1);
  const results = await api(`/search?${searchQuery(params, page)}`, { signal });
  document.title = params.get("q") ? `${params.get("q")} · DLHub` : "DLHub catalog";
  main.replaceChildren(
    h("h1", { class: "visually-hidden" }, "Model catalog"),
    searchForm(params),
    h("div", { class: "catalog" }, facetPanel(params, results.facets || {}), resultList(params, results, page)),
  );
}

function searchForm(params) {
  const input = h("input", { id: "q", name: "q", type: "search", value: params.get("q") || "", placeholder: "e.g. band gap, iris, perovskite" });
  const sort = h(
    "select",
    { id: "sort", name: "sort", onchange: () => navigate(withParams(params, { sort: sort.value === "relevance" ? null : sort.value })) },
    SORTS.map(([value, label]) => h("option", { value, selected: (params.get("sort") || "relevance") === value }, label)),
  );
  const submit = (event) => {
    event.preventDefault();
    navigate(withParams(params, { q: input.value.trim() }));
  };
  return h(
    "form",
    { class: "search", role: "search", onsubmit: submit },
    h("label", { for: "q" }, "Search models"),
    h("div", { class: "search-row" }, input, h("button", { type: "submit", id: "search-button" }, "Search")),
    h("label", { for: "sort", class: "sort-label" }, "Sort by"),
    sort,
  );
}

function facetPanel(params, facets) {
  const groups = FACETS.map(([key, label]) => {
    const selected = params.get(key);
    const values = facets[key] || [];
    const items = values.map(({ value, count }) => {
      const active = selected === value;
      const href = withParams(params, { [key]: active ? null : value });
      return h(
        "li",
        null,
        h("a", { href, "data-nav": true, class: active ? "facet active" : "facet", "data-facet": key, "data-value": value, "aria-current": active ? "true" : null },
          h("span", { class: "facet-value" }, value), h("span", { class: "count" }, String(count))),
      );
    });
    if (!items.length && !selected) return null;
    return h("nav", { class: "facet-group", "aria-label": `Filter by ${label.toLowerCase()}` }, h("h2", null, label), h("ul", null, items));
  });
  return h("aside", { class: "facets" }, groups);
}

function activeFilters(params) {
  const chips = FACETS.filter(([key]) => params.get(key)).map(([key, label]) =>
    h("a", { href: withParams(params, { [key]: null }), "data-nav": true, class: "chip", "data-remove": key }, `${label}: ${params.get(key)} ✕`),
  );
  return chips.length ? h("p", { class: "chips" }, "Filters: ", chips) : null;
}

function resultList(params, results, page) {
  const pages = Math.max(1, Math.ceil(results.total / PAGE_SIZE));
  const summary = h("p", { id: "result-count", role: "status" }, `${results.total} ${results.total === 1 ? "result" : "results"}`);
  const items = results.hits.map((hit) => {
    const href = `/m/${encodeURIComponent(hit.owner)}/${encodeURIComponent(hit.name)}`;
    return h(
      "li",
      { class: "hit", "data-servable": hit.shorthand_name },
      h("h2", null, h("a", { href, "data-nav": true }, hit.title || hit.shorthand_name)),
      h("p", { class: "meta" }, hit.kind && hit.kind !== "servable" ? [h("span", { class: "badge kind" }, hit.kind), " "] : null,
        hit.shorthand_name, ` · v${hit.version}`, hit.servable_type ? ` · ${hit.servable_type}` : "", hit.model_type ? ` · ${hit.model_type}` : ""),
      hit.columns && hit.columns.length ? h("p", { class: "columns" }, "Columns: ", hit.columns.map((c, i) => [i ? ", " : "", h("code", null, c)])) : null,
      hit.authors && hit.authors.length ? h("p", { class: "authors" }, hit.authors.join("; ")) : null,
      hit.description ? h("p", { class: "description" }, hit.description) : null,
      hit.domains && hit.domains.length ? h("p", { class: "tags" }, hit.domains.map((domain) => h("span", { class: "tag" }, domain))) : null,
    );
  });
  const pager = h(
    "nav",
    { class: "pager", "aria-label": "Pages" },
    page > 1 ? h("a", { href: withParams(params, { page: page - 1 > 1 ? page - 1 : null }), "data-nav": true, rel: "prev" }, "← Previous") : null,
    h("span", null, `Page ${page} of ${pages}`),
    page < pages ? h("a", { href: withParams(params, { page: page + 1 }), "data-nav": true, rel: "next", id: "next-page" }, "Next →") : null,
  );
  return h("div", { class: "results" }, activeFilters(params), summary, items.length ? h("ul", { class: "hits" }, items) : h("p", null, "No models match."), pager);
}
