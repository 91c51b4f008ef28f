// The try-it page: plain JavaScript, no build step, no network but this server.
// It calls the service's own endpoints: GET /heads, POST /predict?explain=true.
"use strict";

(function () {
  const KEY_STORE = "featcache-api-key"; // sessionStorage: this tab only, never a cookie or URL
  const $ = (id) => document.getElementById(id);
  const headSelect = $("head");
  const filesInput = $("files");
  const results = $("results");
  const keyForm = $("key-form");
  let pendingAfterKey = null; // what to retry once a key is given

  function apiKey() {
    try { return sessionStorage.getItem(KEY_STORE); } catch (e) { return null; }
  }

  function headers() {
    const key = apiKey();
    return key ? { "X-API-Key": key } : {};
  }

  // One error shape for everything the server refuses: {"error": {"code", "message"}}.
  async function describeError(response) {
    let code = "", message = "";
    try {
      const body = await response.json();
      const err = body && body.error;
      if (err && typeof err === "object") { code = err.code || ""; message = err.message || ""; }
      else if (typeof err === "string") { message = err; }
    } catch (e) { /* not JSON: keep the status line */ }
    const s = response.status;
    let what = message || response.statusText || "request failed";
    if (s === 413) what = "Too large: " + what;
    else if (s === 415) what = "Unsupported file type: " + what;
    else if (s === 503) {
      const retry = response.headers.get("Retry-After");
      what = "Server busy: " + what + (retry ? " (retry after " + retry + " s)" : "");
    }
    return { status: s, code: code, text: "HTTP " + s + (code ? " " + code : "") + ": " + what };
  }

  function askForKey(why, retry) {
    pendingAfterKey = retry;
    $("key-why").textContent = why;
    keyForm.hidden = false;
    $("api-key").focus();
  }

  keyForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const value = $("api-key").value.trim();
    if (!value) return;
    try { sessionStorage.setItem(KEY_STORE, value); } catch (e) { /* private mode: per request */ }
    $("api-key").value = "";
    keyForm.hidden = true;
    const retry = pendingAfterKey;
    pendingAfterKey = null;
    if (retry) retry();
  });

  function showPageError(text) {
    const el = $("page-error");
    el.textContent = text;
    el.hidden = !text;
  }

  // ---- heads -------------------------------------------------------------
  let heads = [];

  async function loadHeads() {
    let response;
    try {
      response = await fetch("heads", { headers: headers() });
    } catch (e) {
      showPageError("Cannot reach the server: " + e.message);
      return;
    }
    if (response.status === 401) {
      const err = await describeError(response);
      askForKey(apiKey() ? "That API key was refused (" + err.text + "). Enter the right one."
                         : "This server needs an API key.", loadHeads);
      return;
    }
    if (!response.ok) {
      showPageError("Cannot list the heads: " + (await describeError(response)).text);
      return;
    }
    showPageError("");
    const body = await response.json();
    heads = body.heads || [];
    const previous = headSelect.value;
    headSelect.textContent = "";
    for (const h of heads) {
      const option = document.createElement("option");
      option.value = h.name;
      option.textContent = h.name + (h.version ? " v" + h.version : "") +
        (h.default ? " (default)" : "");
      headSelect.appendChild(option);
    }
    const chosen = heads.find((h) => h.name === previous) || heads.find((h) => h.default) || heads[0];
    if (chosen) headSelect.value = chosen.name;
    describeHead(body.unserved || []);
  }

  function describeHead(unserved) {
    const h = heads.find((x) => x.name === headSelect.value);
    const info = $("head-info");
    if (!h) { info.textContent = "No head is served."; return; }
    const val = h.metrics && h.metrics.validation && h.metrics.validation.accuracy;
    info.textContent = "Classes: " + h.classes.join(", ") +
      (h.spec && h.spec.layer ? " · features: " + h.spec.layer : "") +
      (typeof val === "number" ? " · validation accuracy " + (100 * val).toFixed(1) + "%" : "");
    const list = $("head-versions");
    list.textContent = "";
    const rows = (h.versions || []).map((v) => [h.name, v]);
    for (const u of unserved) for (const v of u.versions) rows.push([u.name, v]);
    for (const [name, v] of rows) {
      const li = document.createElement("li");
      li.textContent = name + " " + (v.version === null ? "(unversioned)" : "v" + v.version) +
        ": " + v.status + (v.served ? ", served" : "") + (v.reason ? " (" + v.reason + ")" : "");
      list.appendChild(li);
    }
    $("head-versions-box").hidden = rows.length === 0;
  }

  headSelect.addEventListener("change", () => describeHead([]));

  // ---- predictions -------------------------------------------------------
  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function card(file) {
    const li = el("li", "result");
    li.setAttribute("aria-busy", "true");
    const figure = el("figure", "picture");
    const img = el("img", "image");
    img.alt = file.name;
    img.src = URL.createObjectURL(file);
    figure.appendChild(img);
    figure.appendChild(el("figcaption", "filename", file.name));
    li.appendChild(figure);
    const body = el("div", "answer");
    body.appendChild(el("p", "pending", "Classifying…"));
    li.appendChild(body);
    results.prepend(li);
    return { li: li, figure: figure, body: body, name: file.name };
  }

  function showError(c, err) {
    c.li.classList.add("failed");
    c.body.textContent = "";
    const p = el("p", "error", err.text);
    p.setAttribute("role", "alert");
    c.body.appendChild(p);
  }

  function showPrediction(c, r, roundTripMs) {
    c.body.textContent = "";
    const label = el("p", "label");
    if (r.abstained) {
      label.textContent = "Abstained";
      label.classList.add("abstained");
    } else {
      label.textContent = r.label;
    }
    c.body.appendChild(label);
    if (r.in_distribution === false) {
      const warn = el("p", "warning", "Unlike the images this head was trained on" +
        (typeof r.ood_score === "number" ? " (out-of-distribution score " + r.ood_score.toFixed(3) + ")" : "") +
        ": treat the answer with care.");
      warn.setAttribute("role", "alert");
      c.body.appendChild(warn);
    }
    const bars = el("ul", "bars");
    bars.setAttribute("aria-label", "Probability of each class");
    const entries = Object.entries(r.probabilities || {}).sort((a, b) => b[1] - a[1]);
    for (const [name, p] of entries) {
      const row = el("li", "bar-row");
      const pct = (100 * p).toFixed(1) + "%";
      row.appendChild(el("span", "bar-name", name));
      const track = el("span", "bar-track");
      const fill = el("span", "bar-fill" + (name === r.label ? " top" : ""));
      fill.style.width = Math.max(0, Math.min(100, 100 * p)) + "%";
      track.appendChild(fill);
      track.setAttribute("role", "img");
      track.setAttribute("aria-label", name + " " + pct);
      row.appendChild(track);
      row.appendChild(el("span", "bar-value", pct));
      bars.appendChild(row);
    }
    c.body.appendChild(bars);
    const t = r.timings_ms || {};
    const server = typeof t.total === "number" ? t.total.toFixed(0) + " ms on the server, " : "";
    c.body.appendChild(el("p", "timing", server + roundTripMs.toFixed(0) + " ms in all" +
      (r.cached ? " (features from the cache)" : "") + " · head " + r.head +
      (r.version ? " v" + r.version : "")));
    const ex = r.explanation;
    if (ex && typeof ex.overlay_png === "string" && ex.overlay_png) {
      const overlay = el("img", "overlay");
      overlay.alt = "Heatmap of the regions that drove the answer for " + c.name;
      overlay.src = "data:image/png;base64," + ex.overlay_png;
      c.figure.insertBefore(overlay, c.figure.querySelector("figcaption"));
      c.figure.classList.add("explained");
    }
  }

  async function classify(file) {
    const c = card(file);
    const run = async () => {
      const form = new FormData();
      form.append("file", file, file.name);
      const params = new URLSearchParams({ explain: "true" });
      if (headSelect.value) params.set("head", headSelect.value);
      const started = performance.now();
      let response;
      try {
        response = await fetch("predict?" + params.toString(),
                               { method: "POST", headers: headers(), body: form });
      } catch (e) {
        showError(c, { text: "Cannot reach the server: " + e.message });
        return;
      } finally {
        c.li.removeAttribute("aria-busy");
      }
      const elapsed = performance.now() - started;
      if (response.status === 401) {
        const err = await describeError(response);
        showError(c, err);
        askForKey(apiKey() ? "That API key was refused. Enter the right one."
                           : "This server needs an API key.", () => { c.li.remove(); classify(file); });
        return;
      }
      if (!response.ok) { showError(c, await describeError(response)); return; }
      showPrediction(c, await response.json(), elapsed);
    };
    await run();
  }

  async function classifyAll(files) {
    const list = Array.from(files);
    if (!list.length) return;
    $("status").textContent = "Classifying " + list.length + " image" + (list.length > 1 ? "s" : "") + "…";
    for (const f of list) await classify(f); // one at a time: each answer shows its own time
    $("status").textContent = "Done: " + list.length + " image" + (list.length > 1 ? "s" : "") + ".";
  }

  filesInput.addEventListener("change", () => {
    classifyAll(filesInput.files).then(() => { filesInput.value = ""; });
  });

  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer) classifyAll(e.dataTransfer.files);
  });

  loadHeads();
})();
