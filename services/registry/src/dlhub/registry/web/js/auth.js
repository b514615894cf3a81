// Sign-in with an API token, or with Globus when the registry uses it (globus.js): the token is kept in
// sessionStorage (this tab only) and checked with GET /whoami.
import { api, setToken, token } from "./api.js";
import { errorBox, h } from "./dom.js";
import { finishGlobusSignIn, globusButton } from "./globus.js";
import { navigate, rerender } from "./router.js";

let whoamiCache = null;
let authCache = null;

// How this registry signs people in (GET /auth), asked once per page load.
export function authInfo() {
  if (authCache === null) authCache = api("/auth").catch(() => ({ provider: "local" }));
  return authCache;
}

function globusReady(info) {
  return info.provider === "globus" && info.native_client_id && info.authorize_url && info.token_url;
}

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
  await showForm(box, "");
}

async function showForm(box, message) {
  const info = await authInfo();
  const input = h("input", { id: "token", name: "token", type: "password", autocomplete: "off", required: true, "aria-describedby": "token-error" });
  const form = h(
    "form",
    { class: "signin", onsubmit: (event) => signIn(event, box, input) },
    h("label", { for: "token" }, "API token"),
    input,
    h("button", { type: "submit", id: "sign-in" }, "Sign in"),
    h("span", { id: "token-error", class: "field-error", role: "alert" }, message),
  );
  box.replaceChildren(...[form, globusReady(info) ? globusButton(info) : null].filter(Boolean));
}

// The view at /signin/callback: Globus Auth sent the browser back here with a code.
export async function renderSignInCallback(main) {
  document.title = "Signing in · DLHub";
  main.replaceChildren(h("p", { class: "loading", role: "status" }, "Signing in with Globus…"));
  const info = await authInfo();
  let next;
  try {
    if (!globusReady(info)) throw new Error("This registry does not sign in with Globus");
    next = await finishGlobusSignIn(info);
  } catch (error) {
    main.replaceChildren(h("h1", null, "Sign-in failed"), errorBox(error));
    return;
  }
  await renderAccount(document.getElementById("account"));
  navigate(next, { replace: true }); // the code leaves the address bar and the history
}

async function signIn(event, box, input) {
  event.preventDefault();
  setToken(input.value.trim());
  whoamiCache = null;
  try {
    await api("/whoami");
  } catch (error) {
    setToken(null);
    await showForm(box, error.status === 401 ? "That token was not accepted" : error.message);
    return;
  }
  await renderAccount(box);
  rerender();
}

async function signOut(box) {
  setToken(null);
  whoamiCache = null;
  await showForm(box, "");
  rerender();
}
