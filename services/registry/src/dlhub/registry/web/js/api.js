// The one way the page talks to the registry: same origin, /api/v1, the token (if any) as a bearer header.
// No cookies are involved (credentials: "omit"), which is what makes the page CSRF-safe (docs/web.md).

const TOKEN_KEY = "dlhub.token";
export const API = "/api/v1";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.type = error.type || "http_error";
    this.field = error.field || null;
  }
}

export async function api(path, { method = "GET", body, text = false, signal, raw } = {}) {
  const headers = { Accept: "application/json" };
  const current = token();
  if (current) headers.Authorization = `Bearer ${current}`;
  let payload;
  if (raw !== undefined) payload = raw;
  else if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    payload = JSON.stringify(body);
  }
  const response = await fetch(API + path, { method, headers, body: payload, credentials: "omit", cache: "no-store", signal });
  if (!response.ok) {
    let error = { message: `HTTP ${response.status}` };
    try {
      error = (await response.json()).error || error;
    } catch {
      // not the JSON envelope: keep the status line
    }
    throw new ApiError(response.status, error);
  }
  return text ? response.text() : response.json();
}

export function servablePath(owner, name, version) {
  const base = `/servables/${encodeURIComponent(owner)}/${encodeURIComponent(name)}`;
  return version ? `${base}/versions/${version}` : base;
}
