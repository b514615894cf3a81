// "Try it": a form generated from the method's input type; the registry validates, and its errors are shown
// at the field they name (error.field, e.g. "inputs[0]" or "inputs.temperature").
import { api, servablePath, token } from "./api.js";
import { h, pretty, section } from "./dom.js";
import { navigate } from "./router.js";
import { outcome } from "./task.js";
import { SCALARS, keyPart, typeLabel } from "./types.js";

let fieldCounter = 0;

function typeName(type) {
  return String((type && type.type) || "python object").toLowerCase();
}

// One form control for a value of `type` at `path`; read() gives its value, or throws a field error.
function control(type, path, label, example) {
  const id = `f${++fieldCounter}`;
  const errorId = `${id}-error`;
  const name = typeName(type);
  let input;
  let read;
  if (name === "boolean") {
    input = h("input", { id, type: "checkbox", checked: example === true });
    read = () => input.checked;
  } else if (SCALARS.has(name)) {
    const numeric = name !== "string";
    input = h("input", { id, type: "text", inputmode: numeric ? "decimal" : null, value: example === null || example === undefined ? "" : String(example) });
    read = () => {
      if (!numeric) return input.value;
      const value = Number(input.value.trim());
      if (input.value.trim() === "" || Number.isNaN(value)) throw new Error("enter a number");
      return value;
    };
  } else if (name === "file") {
    input = h("input", { id, type: "file" });
    read = () => input.files[0] || (() => { throw new Error("choose a file"); })();
  } else {
    input = h("textarea", { id, rows: 4, spellcheck: "false" });
    input.value = pretty(example === undefined ? null : example);
    read = () => {
      try {
        return JSON.parse(input.value);
      } catch {
        throw new Error("not valid JSON");
      }
    };
  }
  input.setAttribute("aria-describedby", errorId);
  input.dataset.path = path;
  const error = h("p", { id: errorId, class: "field-error", "data-error-for": path });
  const wrapper = h("div", { class: "field", "data-path": path },
    h("label", { for: id }, label, " ", h("span", { class: "hint" }, `(${typeLabel(type)}${name === "python object" ? ", JSON" : ""})`)), input, error);
  return { path, input, error, read, wrapper, isFile: name === "file" };
}

function buildControls(type, example) {
  const name = typeName(type);
  const props = type && type.properties && typeof type.properties === "object" ? Object.entries(type.properties) : [];
  if (name === "dict" && props.length && props.every(([, t]) => SCALARS.has(typeName(t)))) {
    const fields = props.map(([key, t]) => control(t, `inputs${keyPart(key)}`, key, example && typeof example === "object" ? example[key] : undefined));
    const read = () => Object.fromEntries(fields.map((f, i) => [props[i][0], f.read()]));
    return { fields, read };
  }
  const field = control(type, "inputs", "Inputs", example);
  return { fields: [field], read: () => field.read() };
}

function showError(fields, path, message) {
  // The field whose path is the longest prefix of the one the registry names.
  const matches = fields.filter((f) => path === f.path || path.startsWith(f.path + "[") || path.startsWith(f.path + "."));
  const field = matches.sort((a, b) => b.path.length - a.path.length)[0];
  if (!field) return false;
  field.error.textContent = message;
  field.input.setAttribute("aria-invalid", "true");
  field.input.focus();
  return true;
}

async function readInputs(form, fields) {
  const inputs = form.read();
  for (const field of fields.filter((f) => f.isFile)) {
    if (!token()) throw Object.assign(new Error("sign in to upload a file"), { field: field.path });
  }
  if (fields.length === 1 && fields[0].isFile) {
    const file = inputs;
    const blob = await api(`/blobs?filename=${encodeURIComponent(file.name)}`, { method: "POST", raw: file });
    return { blob: blob.blob_id };
  }
  return inputs;
}

export function renderTryIt(slot, model, example) {
  const methods = Object.keys((model.metadata.servable || {}).methods || { run: {} });
  const method = methods.includes("run") ? "run" : methods[0];
  const spec = ((model.metadata.servable || {}).methods || {})[method] || {};
  const form = buildControls(spec.input, example);
  const asyncBox = h("input", { id: "run-async", type: "checkbox" });
  const formError = h("div", { id: "run-error", role: "alert" });
  const result = h("div", { id: "run-result", "aria-live": "polite" });
  const submit = h("button", { type: "submit", id: "run-button" }, "Run");
  const onSubmit = async (event) => {
    event.preventDefault();
    for (const f of form.fields) { f.error.textContent = ""; f.input.removeAttribute("aria-invalid"); }
    formError.replaceChildren();
    result.replaceChildren();
    let inputs;
    try {
      inputs = await readInputs(form, form.fields);
    } catch (error) {
      if (!showError(form.fields, error.field || "inputs", error.message)) formError.textContent = error.message;
      return;
    }
    submit.disabled = true;
    result.textContent = "Running…";
    try {
      const body = { inputs, method, asynchronous: asyncBox.checked };
      const answer = await api(`${servablePath(model.owner, model.name, model.version)}/run`, { method: "POST", body });
      if (asyncBox.checked && answer.state !== "completed") {
        navigate(`/tasks/${encodeURIComponent(answer.task_id)}`);
        return;
      }
      result.replaceChildren(h("p", { id: "run-state", "data-state": answer.state }, `State: ${answer.state}`, answer.cached ? " (cached)" : ""), outcome(answer));
    } catch (error) {
      result.replaceChildren();
      if (!(error.field && showError(form.fields, error.field, error.message))) formError.textContent = error.message;
    } finally {
      submit.disabled = false;
    }
  };
  slot.replaceChildren(section("Try it",
    h("form", { id: "try-it", onsubmit: onSubmit, novalidate: true },
      methods.length > 1 ? h("p", { class: "hint" }, `Runs method ${method}.`) : null,
      form.fields.map((f) => f.wrapper),
      h("div", { class: "field inline" }, asyncBox, h("label", { for: "run-async" }, "Run asynchronously (follow the task on its own page)")),
      submit, formError),
    result));
}
