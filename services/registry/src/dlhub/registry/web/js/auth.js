// Sign-in with an API token: kept in sessionStorage (this tab only), checked with GET /whoami.
import { api, setToken, token } from "./api.js";
import { h } from "./dom.js";
import { rerender } from "./router.js";

let whoamiCache = null;

// The signed-in caller (GET /whoami, asked once per token), or null when signed out.
export function whoami() {
  if (!token()) return Promise.resolve(null);
  if (whoamiCache === null) whoamiCache = api("/whoami").catch(() => null);
  return whoamiCache;
}

export async function renderAccount(box) {
  whoamiCache = null;
  if (token()) {
    try {
      const me = await whoami();
      if (me === null) throw new Error("token not accepted");
      box.replaceChildren(
        h("span", { class: "who", id: "signed-in-as" }, "Signed in as ", h("strong", null, me.user)),
        h("a", { href: "/publish", "data-nav": true, class: "header-link", id: "publish-link" }, "Publish"),
        h("button", { type: "button", id: "sign-out", onclick: () => signOut(box) }, "Sign out"),
      );
      return;
    } catch {
      setToken(null);
    }
  }
  showForm(box, "");
}

function showForm(box, message) {
  const input = h("input", { id: "token", name: "token", type: "password", autocomplete: "off", required: true, "aria-describedby": "token-error" });
  const form = h(
    "form",
    { class: "signin", onsubmit: (event) => signIn(event, box, input) },
    h("label", { for: "token" }, "API token"),
    input,
    h("button", { type: "submit", id: "sign-in" }, "Sign in"),
    h("span", { id: "token-error", class: "field-error", role: "alert" }, message),
  );
  box.replaceChildren(form);
}

async function signIn(event, box, input) {
  event.preventDefault();
  setToken(input.value.trim());
  whoamiCache = null;
  try {
    await api("/whoami");
  } catch (error) {
    setToken(null);
    showForm(box, error.status === 401 ? "That token was not accepted" : error.message);
    return;
  }
  await renderAccount(box);
  rerender();
}

async function signOut(box) {
  setToken(null);
  whoamiCache = null;
  showForm(box, "");
  rerender();
}
