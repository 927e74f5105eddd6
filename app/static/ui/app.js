// The dlkit download page: a client of the job API in plain JavaScript (no framework, no build).
//
// initiate (Idempotency-Key, so a retry cannot start a second job)
//   -> follow the job: server-sent events from /v1/download/events/{id}, read with fetch() so that
//      the API key can travel in the Authorization header (EventSource cannot send headers);
//      polling /v1/download/status/{id} at the Retry-After interval when the stream is unavailable
//   -> Download: GET /v1/download/{id} answers 302 to a short-lived presigned S3 URL.
// Every call honours Retry-After (429, 503) and backs off on other 5xx and network errors. The job
// id is kept in localStorage, so a reload or a reopened tab resumes the same job; the API key in
// sessionStorage (this tab only).

const JOB_STORAGE = "dlkit.jobId";
const KEY_STORAGE = "dlkit.apiKey";
const TERMINAL = new Set(["completed", "failed", "cancelled"]);
const STATUS_LABELS = {
  queued: "Queued", processing: "Processing", completed: "Completed", failed: "Failed", cancelled: "Cancelled",
};
// Heartbeats come every SSE_HEARTBEAT_S (15 s): a stream silent for this long is dead.
const STREAM_IDLE_MS = 60_000;
const MAX_BACKOFF_S = 30;

const $ = (id) => document.getElementById(id);
const ui = {
  form: $("start-form"), keyField: $("key-field"), key: $("api-key"), ids: $("file-ids"), start: $("start"),
  job: $("job"), jobId: $("job-id"), status: $("job-status"), counts: $("counts"), progress: $("progress"),
  eta: $("eta"), cancel: $("cancel"), download: $("download"), message: $("message"),
};

let following = null; // the AbortController of whatever the page is currently doing for a job

// --- HTTP ----------------------------------------------------------------------------------------

// The API's URLs, relative to this page (/ui/ -> /v1/...), so a path prefix in front still works.
const apiUrl = (path) => new URL(`../v1/${path}`, document.baseURI);

function request(path, { method = "GET", body, headers = {}, signal } = {}) {
  const all = new Headers(headers);
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (key) all.set("Authorization", `Bearer ${key}`);
  if (body !== undefined) all.set("Content-Type", "application/json");
  return fetch(apiUrl(path), {
    method, headers: all, signal, cache: "no-store", body: body === undefined ? undefined : JSON.stringify(body),
  });
}

// One call, retried the way the API asks: after Retry-After on 429 and 503, with exponential
// backoff and jitter on other 5xx and network errors. Every other answer goes back to the caller.
async function call(path, options = {}) {
  for (let attempt = 1; ; attempt++) {
    let response;
    try {
      response = await request(path, options);
    } catch (error) {
      if (options.signal?.aborted) throw error;
      const wait = backoff(attempt);
      notice(`Cannot reach the service; retrying in ${formatSeconds(wait)}.`);
      await pause(wait, options.signal);
      continue;
    }
    if (response.status === 429) {
      const wait = retryAfter(response) ?? backoff(attempt);
      notice(`Too many requests: the service asks to wait ${formatSeconds(wait)} (Retry-After); ` +
             "this page will try again then.");
      await pause(wait, options.signal);
      continue;
    }
    if (response.status >= 500) {
      const wait = retryAfter(response) ?? backoff(attempt);
      notice(`The service had a problem (HTTP ${response.status}); retrying in ${formatSeconds(wait)}.`);
      await pause(wait, options.signal);
      continue;
    }
    if (ui.message.dataset.kind === "retry") say("");
    return response;
  }
}

function backoff(attempt) {
  const ceiling = Math.min(MAX_BACKOFF_S, 2 ** (attempt - 1));
  return ceiling / 2 + Math.random() * ceiling / 2;
}

// Retry-After is seconds (fractional on a scaled demo stack) or an HTTP date.
function retryAfter(response) {
  const value = response.headers.get("Retry-After");
  if (!value) return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds);
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, (date - Date.now()) / 1000);
}

function pause(seconds, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(resolve, seconds * 1000);
    signal?.addEventListener("abort", () => { clearTimeout(timer); reject(signal.reason); }, { once: true });
  });
}

// A readable sentence from an RFC 9457 problem document (or whatever came back).
async function problemText(response) {
  try {
    const problem = await response.json();
    const details = (problem.errors ?? []).map((e) => `${e.loc}: ${e.msg}`).join("; ");
    const text = [problem.detail ?? problem.title, details].filter(Boolean).join(" ");
    if (text) return text;
  } catch { /* not JSON */ }
  return `The service answered HTTP ${response.status}.`;
}

// --- Following a job -----------------------------------------------------------------------------

function begin() {
  following?.abort();
  following = new AbortController();
  return following.signal;
}

async function follow(jobId, signal) {
  let streaming = "TextDecoderStream" in window;
  let lastEventId = null;
  while (!signal.aborted) {
    if (streaming) {
      let result;
      try {
        result = await readEvents(jobId, lastEventId, signal);
      } catch {
        if (signal.aborted) return;
        streaming = false; // the stream broke or went silent: poll instead
        continue;
      }
      if (result.doc) {
        if (TERMINAL.has(result.doc.status)) return;
        lastEventId = result.lastEventId; // the server ended a long stream: reconnect
        continue;
      }
      if (result.response && [401, 404].includes(result.response.status)) return stopped(jobId, result.response);
      streaming = false; // not an event stream (429, 5xx, a proxy that buffers): poll instead
      continue;
    }
    const response = await call(`download/status/${jobId}`, { signal });
    if (response.status !== 200 && response.status !== 410) return stopped(jobId, response);
    const doc = await response.json();
    render(doc);
    if (TERMINAL.has(doc.status)) return;
    await pause(retryAfter(response) ?? 2, signal);
  }
}

// Reads one event stream until the server ends it. Returns {doc, lastEventId} (the last status
// seen), or {response} when the answer is not an event stream.
async function readEvents(jobId, lastEventId, signal) {
  const idle = new AbortController();
  const stop = () => idle.abort();
  signal.addEventListener("abort", stop, { once: true });
  let timer = setTimeout(stop, STREAM_IDLE_MS);
  try {
    const headers = { Accept: "text/event-stream" };
    if (lastEventId) headers["Last-Event-ID"] = lastEventId;
    const response = await request(`download/events/${jobId}`, { headers, signal: idle.signal });
    if (!response.ok || !response.headers.get("Content-Type")?.startsWith("text/event-stream")) return { response };
    const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "", data = [], event = "message", doc = null, id = lastEventId;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return doc ? { doc, lastEventId: id } : { response };
      clearTimeout(timer);
      timer = setTimeout(stop, STREAM_IDLE_MS);
      buffer += value;
      let end;
      while ((end = buffer.search(/\r\n|\r|\n/)) >= 0) {
        const line = buffer.slice(0, end);
        buffer = buffer.slice(end + (buffer.startsWith("\r\n", end) ? 2 : 1));
        if (line === "") { // end of an event
          if (event === "status" && data.length) render(doc = JSON.parse(data.join("\n")));
          data = [];
          event = "message";
          continue;
        }
        if (line.startsWith(":")) continue; // heartbeat comment
        const colon = line.indexOf(":");
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "data") data.push(text);
        else if (field === "event") event = text;
        else if (field === "id") id = text;
      }
    }
  } finally {
    clearTimeout(timer);
    signal.removeEventListener("abort", stop);
  }
}

// A job the page can no longer follow: say why, and forget it when it is gone for good.
async function stopped(jobId, response) {
  if (response.status === 401) return askForKey();
  if (response.status === 404) {
    forget(jobId);
    return say(`Job ${jobId} is not known to the service any more: it expired, or it was started with ` +
               "another API key. Start a new download.", "error");
  }
  if (response.status === 410) {
    forget(jobId);
    return say("This job was cancelled; it has no file to download.", "error");
  }
  say(await problemText(response), "error");
}

function forget(jobId) {
  if (localStorage.getItem(JOB_STORAGE) === jobId) localStorage.removeItem(JOB_STORAGE);
  ui.job.hidden = true;
}

async function resume(jobId) {
  const signal = begin();
  showJob(jobId);
  try {
    await follow(jobId, signal);
  } catch (error) {
    if (!signal.aborted) throw error;
  }
}

// --- Rendering -----------------------------------------------------------------------------------

function showJob(jobId) {
  ui.job.hidden = false;
  ui.jobId.textContent = jobId;
  render({ jobId, status: "queued", progress: 0, processedFiles: 0, totalFiles: null });
}

function render(doc) {
  ui.jobId.textContent = doc.jobId;
  ui.status.textContent = STATUS_LABELS[doc.status] ?? doc.status;
  ui.status.dataset.status = doc.status;
  ui.progress.value = doc.progress ?? 0;
  const unavailable = doc.unavailableFileIds?.length ?? 0;
  ui.counts.textContent = doc.totalFiles == null ? "" :
    `${doc.processedFiles} of ${doc.totalFiles} files` + (unavailable ? `, ${unavailable} not available` : "");
  const eta = doc.estimatedSecondsRemaining;
  ui.eta.textContent =
    doc.status === "queued" ? "Waiting for a worker." :
    doc.status === "processing" && eta != null ? `About ${formatSeconds(eta)} left.` : "";
  ui.cancel.hidden = TERMINAL.has(doc.status);
  ui.download.hidden = doc.status !== "completed";
  if (doc.status === "completed") {
    ui.download.href = apiUrl(`download/${doc.jobId}`);
    say("Your zip is ready.");
  } else {
    ui.download.removeAttribute("href");
  }
  if (doc.status === "failed") say(`The job failed: ${doc.error ?? "no reason given"}.`, "error");
  if (doc.status === "cancelled") say("The job was cancelled.");
}

function formatSeconds(seconds) {
  if (seconds < 1) return "under a second";
  if (seconds < 90) return `${Math.round(seconds)} s`;
  return `${Math.round(seconds / 60)} min`;
}

// kind: "info" (default), "error", or "retry" (cleared by the next answer that gets through).
function say(text, kind = "info") {
  ui.message.textContent = text;
  ui.message.dataset.kind = kind;
}

function notice(text) {
  say(text, "retry");
}

function askForKey() {
  ui.keyField.hidden = false;
  ui.key.focus();
  say(ui.key.value ? "The service does not know this API key." : "This service needs an API key: enter it above.",
      "error");
}

// --- Actions -------------------------------------------------------------------------------------

function parseIds(text) {
  const tokens = text.split(/[\s,;]+/).filter(Boolean);
  if (!tokens.length) return "Enter at least one file id.";
  const bad = tokens.find((t) => !/^\d+$/.test(t));
  if (bad) return `"${bad}" is not a file id: use whole numbers.`;
  return tokens.map(Number);
}

function randomKey() {
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

function saveKey() {
  const key = ui.key.value.trim();
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
}

ui.form.addEventListener("submit", async (event) => {
  event.preventDefault();
  saveKey();
  const ids = parseIds(ui.ids.value);
  if (typeof ids === "string") {
    say(ids, "error");
    ui.ids.focus();
    return;
  }
  const signal = begin();
  ui.start.disabled = true;
  say("Starting…");
  try {
    // One key per click: resending after a lost answer returns the same job, never a second one.
    const response = await call("download/initiate", {
      method: "POST", body: { file_ids: ids }, headers: { "Idempotency-Key": randomKey() }, signal,
    });
    if (response.status === 401) return askForKey();
    if (response.status !== 202) return say(await problemText(response), "error");
    const { jobId } = await response.json();
    localStorage.setItem(JOB_STORAGE, jobId);
    say("");
    showJob(jobId);
    ui.start.disabled = false;
    await follow(jobId, signal);
  } catch (error) {
    if (!signal.aborted) throw error;
  } finally {
    ui.start.disabled = false;
  }
});

ui.cancel.addEventListener("click", async () => {
  const jobId = localStorage.getItem(JOB_STORAGE);
  if (!jobId) return;
  ui.cancel.disabled = true;
  try {
    const response = await call(`download/cancel/${jobId}`, { method: "POST" });
    if (response.ok) {
      following?.abort();
      render(await response.json());
    } else if (response.status === 409) {
      say(await problemText(response)); // it finished first; the status on screen follows
    } else {
      await stopped(jobId, response);
    }
  } finally {
    ui.cancel.disabled = false;
  }
});

ui.download.addEventListener("click", async (event) => {
  // Without an API key this is a plain link: GET /v1/download/{id} redirects to the file. A
  // navigation cannot carry the Authorization header, so with a key the page reads a freshly
  // presigned URL from the status document and goes there instead.
  if (!sessionStorage.getItem(KEY_STORAGE)) return;
  event.preventDefault();
  const jobId = localStorage.getItem(JOB_STORAGE);
  const response = await call(`download/status/${jobId}`);
  if (response.status !== 200) return stopped(jobId, response);
  const doc = await response.json();
  if (doc.downloadUrl) window.location.assign(doc.downloadUrl);
  else render(doc);
});

ui.key.addEventListener("change", () => {
  saveKey();
  const jobId = localStorage.getItem(JOB_STORAGE);
  if (jobId) resume(jobId); // a job that waited for the key
  else probe();
});

// Does this service want an API key? Ask once on arrival rather than after the first click.
async function probe() {
  const response = await call("downloads?limit=1");
  if (response.status === 401) askForKey();
  else if (ui.message.dataset.kind === "error") say("");
}

// --- Start ---------------------------------------------------------------------------------------

ui.key.value = sessionStorage.getItem(KEY_STORAGE) ?? "";
ui.keyField.hidden = !ui.key.value;
const stored = localStorage.getItem(JOB_STORAGE);
if (stored) resume(stored);
else probe();
