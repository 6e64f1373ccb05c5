// The REST client every page uses: JSON in and out; errors as ApiError {status, message, field}.
const params = new URLSearchParams(location.search);
if (params.get("token")) sessionStorage.setItem("sdlora-token", params.get("token"));
const token = sessionStorage.getItem("sdlora-token");

export class ApiError extends Error {
  constructor(status, message, field) { super(message); this.status = status; this.field = field; }
}

export function url(path, query = {}) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null) q.set(k, v);
  if (token) q.set("token", token);
  const s = q.toString();
  return s ? `${path}${path.includes("?") ? "&" : "?"}${s}` : path;
}

export async function api(method, path, body, query) {
  const init = { method, headers: {} };
  if (token) init.headers["X-Sdlora-Token"] = token;
  if (body instanceof Blob) { init.body = body; init.headers["Content-Type"] = "application/octet-stream"; }
  else if (body !== undefined) { init.body = JSON.stringify(body); init.headers["Content-Type"] = "application/json"; }
  const resp = await fetch(url(path, query), init);
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = text; }
  if (!resp.ok) {
    const message = (data && data.error) || `${resp.status} ${resp.statusText}`;
    throw new ApiError(resp.status, message, data && data.field);
  }
  return data;
}

export const get = (path, query) => api("GET", path, undefined, query);
export const post = (path, body, query) => api("POST", path, body, query);
export const put = (path, body) => api("PUT", path, body);
export const fileUrl = (path) => url("/api/files", { path });
export const thumbUrl = (path, size = 128) => url("/api/thumb", { path, size });
export const events = (path) => new EventSource(url(path));
