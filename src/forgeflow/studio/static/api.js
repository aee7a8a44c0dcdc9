// REST access for Studio: the session cookie plus the CSRF header on every call, JSON errors turned
// into ApiError, a 401 sends the browser to the sign-in page (which says why), a 403 makes the shell ask
// /api/session again (the role may have changed meanwhile), and server-sent events read from a fetch body.

export class ApiError extends Error {
  constructor(status, body) {
    const message = errorMessage(body) || `HTTP ${status}`;
    super(message);
    this.status = status;
    this.error = (body && typeof body.error === "string") ? body.error : null;
    this.field = (body && body.field) || null;
  }
}

/** The readable message of an error body: ours ({error, message}) or OpenAI's ({error: {message}}). */
export function errorMessage(body) {
  if (!body) return "";
  if (typeof body === "string") return body;
  if (typeof body.message === "string") return body.message;
  if (body.error && typeof body.error === "object" && body.error.message) return body.error.message;
  if (typeof body.detail === "string") return body.detail;
  return typeof body.error === "string" ? body.error : "";
}

export function signInPath() {
  const next = "/" + (location.hash || "");
  return "/signin?next=" + encodeURIComponent(next);
}

export const SIGNIN_REASON = "forgeflow.signin.reason";  // read by signin.html

let leaving = false;
/** Back to the sign-in page; `reason` (the server's 401 message) is shown there. */
export function toSignIn(reason) {
  if (leaving) return;
  leaving = true;
  try {
    if (reason) sessionStorage.setItem(SIGNIN_REASON, reason);
  } catch { /* storage refused: the page just does not say why */ }
  location.assign(signInPath());
}

/** Tell the shell a call was refused for the role (it re-reads /api/session, so what the role lost is hidden). */
function forbidden() {
  window.dispatchEvent(new CustomEvent("forgeflow:forbidden"));
}

async function readBody(res) {
  const text = await res.text();
  if (!text) return null;
  try { return JSON.parse(text); } catch { return text; }
}

/**
 * Call the control plane. `body` is sent as JSON unless `raw` is given (a Blob/File sent as is).
 * Resolves to the parsed JSON answer; rejects with ApiError.
 */
export async function api(method, path, {body, raw, signal, query} = {}) {
  let url = "/api" + path;
  if (query) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(query)) if (v !== undefined && v !== null) q.set(k, String(v));
    const s = q.toString();
    if (s) url += (url.includes("?") ? "&" : "?") + s;
  }
  const headers = {"X-Forgeflow-Studio": "1", "Accept": "application/json"};
  let payload;
  if (raw !== undefined) {
    payload = raw;
    headers["Content-Type"] = "application/octet-stream";
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    headers["Content-Type"] = "application/json";
  }
  let res;
  try {
    res = await fetch(url, {method, headers, body: payload, credentials: "same-origin", signal});
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, {message: "The server did not answer. Is 'forgeflow serve' still running?"});
  }
  const data = await readBody(res);
  if (res.status === 401) {
    const err = new ApiError(401, data);
    toSignIn(err.message);
    throw err;
  }
  if (res.status === 403) forbidden();
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

export const get = (path, opts) => api("GET", path, opts);
export const post = (path, body, opts = {}) => api("POST", path, {...opts, body});
export const patch = (path, body, opts = {}) => api("PATCH", path, {...opts, body});
export const put = (path, body, opts = {}) => api("PUT", path, {...opts, body});
export const del = (path, opts) => api("DELETE", path, opts);

/** A path segment, escaped. */
export const seg = (s) => encodeURIComponent(s);

/**
 * Yield the `data:` payloads of a server-sent-events response body, one event at a time.
 * Events are separated by a blank line; several data lines of one event are joined with "\n".
 */
export async function* sseEvents(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true}).replace(/\r\n?/g, "\n");
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = dataOf(block);
        if (data !== null) yield data;
      }
    }
    buffer += decoder.decode();
    const data = dataOf(buffer);
    if (data !== null) yield data;
  } finally {
    reader.releaseLock();
  }
}

function dataOf(block) {
  const lines = block.split("\n").filter((l) => l.startsWith("data:"));
  if (!lines.length) return null;
  return lines.map((l) => l.slice(5).replace(/^ /, "")).join("\n");
}

/** An error thrown from a non-2xx streaming answer (body read as JSON when it is JSON). */
export async function streamError(res) {
  const data = await readBody(res);
  const err = new ApiError(res.status, data);
  if (res.status === 401 && !res.url.includes("/endpoints/")) toSignIn(err.message);
  if (res.status === 403 && !res.url.includes("/endpoints/")) forbidden();
  return err;
}

/**
 * Chat with an endpoint over its OpenAI route, streaming. Calls onDelta(text) per token chunk;
 * resolves to {text, finish_reason, deployment}. Authenticated with the endpoint key, not the session.
 */
export async function streamEndpointChat({endpoint, deployment, key, messages, temperature, maxTokens, signal, onDelta}) {
  const headers = {"Content-Type": "application/json", "Authorization": "Bearer " + key};
  if (deployment) headers["azureml-model-deployment"] = deployment;
  const body = {model: deployment || endpoint, messages, stream: true};
  if (temperature !== undefined && temperature !== null) body.temperature = temperature;
  if (maxTokens) body.max_tokens = maxTokens;
  let res;
  try {
    res = await fetch(`/endpoints/${seg(endpoint)}/v1/chat/completions`, {
      method: "POST", headers, body: JSON.stringify(body), credentials: "omit", signal});
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, {message: "The server did not answer."});
  }
  if (!res.ok) throw await streamError(res);
  let text = "";
  let finish = null;
  for await (const data of sseEvents(res)) {
    if (data === "[DONE]") break;
    let chunk;
    try { chunk = JSON.parse(data); } catch { continue; }
    if (chunk.error) throw new ApiError(500, chunk);
    const choice = (chunk.choices || [])[0];
    if (!choice) continue;
    const delta = (choice.delta && choice.delta.content) || "";
    if (delta) { text += delta; onDelta(delta, text); }
    if (choice.finish_reason) finish = choice.finish_reason;
  }
  return {text, finish_reason: finish, deployment: res.headers.get("azureml-model-deployment")};
}

/**
 * Test a flow, streaming its chat output. onDelta(output, delta) per chunk; resolves to the final
 * {outputs, nodes, duration_s}.
 */
export async function streamFlowTest({flow, inputs, signal, onDelta}) {
  let res;
  try {
    res = await fetch(`/api/flows/${seg(flow)}/test`, {
      method: "POST", credentials: "same-origin", signal,
      headers: {"Content-Type": "application/json", "X-Forgeflow-Studio": "1"},
      body: JSON.stringify({inputs, stream: true})});
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, {message: "The server did not answer."});
  }
  if (!res.ok) throw await streamError(res);
  const type = res.headers.get("content-type") || "";
  if (!type.includes("text/event-stream")) return await res.json();
  let final = null;
  for await (const data of sseEvents(res)) {
    let event;
    try { event = JSON.parse(data); } catch { continue; }
    if (event.error) {
      const err = new ApiError(event.status || 500, typeof event.error === "string"
        ? {error: event.error, message: event.message || event.error, field: event.field} : event.error);
      err.nodes = event.nodes || null;
      throw err;
    }
    if (event.delta !== undefined) onDelta(event.output, event.delta);
    if (event.done) final = event;
  }
  if (!final) throw new ApiError(500, {message: "the flow run ended without a result"});
  return final;
}
