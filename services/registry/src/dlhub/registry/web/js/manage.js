// Managing a model from its page (owner and maintainers only; the registry decides, the page only hides
// what would be refused): deprecate with a reason and a replacement, undo it, delete a version or all of
// them. Each destructive step asks in a modal <dialog>: focus moves into it, Escape cancels, and focus
// returns to the button that opened it.
import { api, servablePath } from "./api.js";
import { whoami } from "./auth.js";
import { h, section } from "./dom.js";
import { navigate, rerender } from "./router.js";

export function canManage(me, model) {
  if (!me) return false;
  if (me.user === model.owner) return true;
  const maintainers = new Set(((model.metadata || {}).dlhub || {}).maintainers || []);
  return (me.identities || []).some((identity) => identity !== "public" && maintainers.has(identity));
}

export async function renderManage(slot, model) {
  const me = await whoami();
  if (!canManage(me, model) || model.status === "deleted") return;
  const ref = `${model.owner}/${model.name}@${model.version}`;
  const deprecate = h("button", { type: "button", id: "deprecate-open" }, `Deprecate v${model.version}…`);
  deprecate.addEventListener("click", () => deprecateDialog(model, ref, deprecate));
  const undo = h("button", { type: "button", id: "undeprecate", class: "secondary" }, "Remove the deprecation");
  const status = h("p", { id: "manage-status", role: "status" });
  undo.addEventListener("click", async () => {
    try {
      await api(`${servablePath(model.owner, model.name, model.version)}/undeprecate`, { method: "POST" });
      rerender();
    } catch (error) {
      status.textContent = error.message;
    }
  });
  const remove = h("button", { type: "button", id: "delete-open", class: "danger" }, "Delete…");
  remove.addEventListener("click", () => deleteDialog(model, ref, remove));
  slot.replaceChildren(section("Manage",
    h("p", { class: "hint" }, `You may manage this ${model.type === "dataset" ? "dataset" : "model"}.`),
    h("div", { class: "actions" }, model.deprecated ? undo : deprecate, remove), status));
}

function field(id, label, control, hint) {
  const error = h("p", { id: `${id}-error`, class: "field-error" });
  control.setAttribute("aria-describedby", [hint ? `${id}-hint` : null, `${id}-error`].filter(Boolean).join(" "));
  return { control, error, wrapper: h("div", { class: "field" }, h("label", { for: id }, label), hint ? h("p", { id: `${id}-hint`, class: "hint" }, hint) : null, control, error) };
}

// A modal dialog around `body`; onConfirm() returns true to close, or shows its own errors and returns false.
function dialog({ id, title, body, confirmLabel, danger, opener, onConfirm }) {
  const formError = h("p", { class: "field-error", role: "alert", id: `${id}-error` });
  const confirm = h("button", { type: "submit", id: `${id}-confirm`, class: danger ? "danger" : null }, confirmLabel);
  const cancel = h("button", { type: "button", class: "secondary", id: `${id}-cancel` }, "Cancel");
  const form = h("form", { novalidate: true }, body, formError, h("div", { class: "actions" }, cancel, confirm));
  const box = h("dialog", { id, "aria-labelledby": `${id}-title` }, h("h2", { id: `${id}-title` }, title), form);
  cancel.addEventListener("click", () => box.close());
  box.addEventListener("close", () => { box.remove(); if (opener.isConnected) opener.focus(); });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    formError.textContent = "";
    confirm.disabled = true;
    try {
      if (await onConfirm(formError)) box.close();
    } catch (error) {
      formError.textContent = error.message;
    } finally {
      confirm.disabled = false;
    }
  });
  document.body.append(box);
  box.showModal();
  return box;
}

function deprecateDialog(model, ref, opener) {
  const reason = field("dep-reason", "Reason (optional)", h("textarea", { id: "dep-reason", rows: 3, maxlength: 2000, autofocus: true }), "Shown on the model page and in every run's warnings.");
  const replacement = field("dep-replacement", "Replacement (optional)", h("input", { id: "dep-replacement", type: "text", placeholder: "owner/name@version", autocomplete: "off" }), "The version callers should use instead.");
  const fields = { reason, replacement };
  dialog({
    id: "deprecate-dialog", title: `Deprecate ${ref}?`, confirmLabel: "Deprecate", opener,
    body: [h("p", null, "The version keeps running; callers see a warning, and “latest” moves to the newest version that is not deprecated."), reason.wrapper, replacement.wrapper],
    onConfirm: async (formError) => {
      for (const f of Object.values(fields)) { f.error.textContent = ""; f.control.removeAttribute("aria-invalid"); }
      const body = {};
      if (reason.control.value.trim()) body.reason = reason.control.value.trim();
      if (replacement.control.value.trim()) body.replacement = replacement.control.value.trim();
      try {
        await api(`${servablePath(model.owner, model.name, model.version)}/deprecate`, { method: "POST", body });
      } catch (error) {
        const target = fields[error.field];
        if (!target) throw error;
        target.error.textContent = error.message;
        target.control.setAttribute("aria-invalid", "true");
        target.control.focus();
        formError.textContent = "";
        return false;
      }
      rerender();
      return true;
    },
  });
}

function deleteDialog(model, ref, opener) {
  const live = (model.versions || []).filter((v) => v.status !== "deleted");
  const choice = (value, label, checked) => h("div", { class: "field inline" },
    h("input", { type: "radio", name: "delete-scope", id: `delete-${value}`, value, checked }), h("label", { for: `delete-${value}` }, label));
  const scope = h("fieldset", null, h("legend", null, "Delete"),
    choice("version", `only version ${model.version}`, true),
    choice("all", `every version of ${model.owner}/${model.name} (${live.length})`, false));
  dialog({
    id: "delete-dialog", title: `Delete ${ref}?`, confirmLabel: "Delete", danger: true, opener,
    body: [h("p", null, "A deleted version no longer runs or shows in search; its citation stays, marked withdrawn. This cannot be undone."), scope],
    onConfirm: async () => {
      const all = scope.querySelector("input:checked").value === "all";
      const answer = await api(servablePath(model.owner, model.name, all ? null : model.version), { method: "DELETE" });
      const remaining = live.filter((v) => !(answer.deleted || []).includes(v.version));
      if (remaining.length) navigate(`/m/${encodeURIComponent(model.owner)}/${encodeURIComponent(model.name)}`);
      else showDeleted(model, answer.deleted || []);
      return true;
    },
  });
  // The safe choice has the focus first: Enter alone does not delete.
  opener.ownerDocument.getElementById("delete-dialog-cancel").focus();
}

function showDeleted(model, versions) {
  const main = document.getElementById("main");
  document.title = "Deleted · DLHub";
  main.replaceChildren(h("h1", null, "Deleted"),
    h("p", { id: "deleted-notice", role: "status" }, `${model.owner}/${model.name}: deleted version${versions.length === 1 ? "" : "s"} ${versions.join(", ")}.`),
    h("p", null, h("a", { href: "/", "data-nav": true }, "Back to the catalog")));
  main.focus();
}
