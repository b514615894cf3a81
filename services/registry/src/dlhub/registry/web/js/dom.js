// DOM helpers: every piece of text goes in as a text node, never as markup (titles, abstracts and outputs
// are untrusted). Attribute values are set with setAttribute; URLs from metadata go through safeUrl.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "value") el.value = value;
    else if (key === "checked") el.checked = Boolean(value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// An http(s) URL from untrusted metadata, or null (no javascript:, data: ... links).
export function safeUrl(value) {
  try {
    const url = new URL(String(value));
    return url.protocol === "https:" || url.protocol === "http:" ? url.href : null;
  } catch {
    return null;
  }
}

export function section(title, ...children) {
  const id = "s-" + title.toLowerCase().replace(/[^a-z0-9]+/g, "-");
  return h("section", { class: "card", "aria-labelledby": id }, h("h2", { id }, title), ...children);
}

export function formatDate(value) {
  if (!value) return "";
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

export function pretty(value) {
  return JSON.stringify(value, null, 2);
}

export function errorBox(error) {
  const message = error && error.message ? error.message : String(error);
  return h("div", { class: "error", role: "alert" }, message);
}

// Copy text to the clipboard; the button says what happened (announced through its live region).
export function copyButton(label, getText) {
  const status = h("span", { class: "copy-status", role: "status" });
  const button = h("button", { type: "button", class: "copy", onclick: async () => {
    const text = getText();
    try {
      await navigator.clipboard.writeText(text);
      status.textContent = "Copied";
    } catch {
      status.textContent = "Copy failed: select the text and copy it";
    }
    button.dataset.copied = text.length;
  } }, label);
  return h("span", { class: "copy-wrap" }, button, status);
}
