// Globus sign-in from the page, as Globus documents it for a public (native or single-page) client: the
// OAuth2 authorization code grant with PKCE (RFC 7636, S256), no client secret. The verifier and the state
// wait in sessionStorage (this tab) while the browser visits Globus Auth; /signin/callback checks the state,
// exchanges the code for tokens from the page (Globus Auth's token endpoint answers CORS), keeps the access
// token for this registry's scope where the API token goes (api.js), and returns to the page it started on.
import { setToken } from "./api.js";
import { h } from "./dom.js";

const FLOW_KEY = "dlhub.globus";

function base64url(bytes) {
  let text = "";
  for (const byte of new Uint8Array(bytes)) text += String.fromCharCode(byte);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function randomText(length) {
  return base64url(crypto.getRandomValues(new Uint8Array(length)));
}

export function redirectUri() {
  return `${location.origin}/signin/callback`;
}

export async function startGlobusSignIn(info) {
  const verifier = randomText(32); // 43 characters, within RFC 7636's 43..128
  const challenge = base64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
  const state = randomText(16);
  sessionStorage.setItem(FLOW_KEY, JSON.stringify({ verifier, state, back: location.pathname + location.search }));
  const query = new URLSearchParams({
    client_id: info.native_client_id,
    redirect_uri: redirectUri(),
    scope: info.scope,
    response_type: "code",
    code_challenge: challenge,
    code_challenge_method: "S256",
    state,
    access_type: "online",
  });
  location.assign(`${info.authorize_url}?${query}`);
}

// The token for the registry's scope: the main one, or one of other_tokens (Globus answers one token per
// resource server).
function tokenFor(answer, scope) {
  const candidates = [answer, ...(answer.other_tokens || [])];
  const found = candidates.find((t) => String(t.scope || "").split(" ").includes(scope));
  return found ? found.access_token : null;
}

// /signin/callback: finish the flow; returns where to go next. Throws with a message to show.
export async function finishGlobusSignIn(info) {
  const params = new URLSearchParams(location.search);
  const flow = JSON.parse(sessionStorage.getItem(FLOW_KEY) || "null");
  sessionStorage.removeItem(FLOW_KEY); // one use, whatever happens
  if (params.get("error")) throw new Error(`Globus sign-in failed: ${params.get("error_description") || params.get("error")}`);
  if (!flow || !params.get("code") || params.get("state") !== flow.state) {
    throw new Error("This sign-in did not start here (state mismatch): sign in again");
  }
  const body = new URLSearchParams({
    grant_type: "authorization_code",
    code: params.get("code"),
    redirect_uri: redirectUri(),
    client_id: info.native_client_id,
    code_verifier: flow.verifier,
  });
  const response = await fetch(info.token_url, { method: "POST", body, credentials: "omit", cache: "no-store" });
  if (!response.ok) throw new Error(`Globus Auth refused the sign-in (HTTP ${response.status})`);
  const access = tokenFor(await response.json(), info.scope);
  if (!access) throw new Error("Globus Auth answered without a token for this registry");
  setToken(access);
  return flow.back && flow.back.startsWith("/") && !flow.back.startsWith("//") ? flow.back : "/";
}

export function globusButton(info) {
  return h("button", { type: "button", id: "globus-sign-in", class: "secondary", onclick: () => startGlobusSignIn(info) }, "Sign in with Globus");
}
