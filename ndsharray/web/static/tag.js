"use strict";
// One tag's page: its facts from the pushed tag table, its frames over a WebSocket. The
// server sends a frame only after the page said it showed the previous one ("ready"), so a
// slow page gets fewer frames, never a backlog.

const tag = location.pathname.slice("/tag/".length).split("/").map(decodeURIComponent).join("/");
const $ = (id) => document.getElementById(id);
let imageUrl = null;
let header = null;
let received = 0; // frames shown (the benchmark reads it)
let socket = null;
const MIN_WIDTH = 480;
window.ndsharrayFrames = () => received;

document.title = "ndsharray: " + tag;
$("tag").textContent = tag;
$("npy").href = tagPath("/api/tags/", tag) + "/frame.npy";

function pngHref() {
  return tagPath("/api/tags/", tag) + "/frame.png" + ($("bgr").checked ? "?bgr=1" : "");
}

function ready() {
  if (socket && socket.readyState === WebSocket.OPEN) {
    socket.send(JSON.stringify({ ready: true, bgr: $("bgr").checked }));
  }
}

function drawHist(stats) {
  const c = $("hist");
  const g = c.getContext("2d");
  g.clearRect(0, 0, c.width, c.height);
  const h = stats ? stats.hist : [];
  const most = Math.max(1, ...h);
  g.fillStyle = "#37474f";
  const w = c.width / Math.max(1, h.length);
  h.forEach((n, i) => {
    const y = (c.height * n) / most;
    g.fillRect(i * w + 1, c.height - y, w - 2, y);
  });
  $("hist-range").textContent = stats && stats.hist_range
    ? "histogram " + fmtNumber(stats.hist_range[0]) + " … " + fmtNumber(stats.hist_range[1]) : "";
}

function showValues(values) {
  const box = $("values-box");
  box.hidden = !values;
  if (!values) return;
  $("values-of").textContent = values.of;
  const head = el("tr");
  head.appendChild(el("th", ""));
  for (const c of values.col_labels) head.appendChild(el("th", c));
  const rows = values.rows.map((r, i) => {
    const tr = el("tr");
    tr.appendChild(el("th", values.row_labels[i]));
    for (const v of r) tr.appendChild(el("td", v));
    return tr;
  });
  $("values").replaceChildren(head, ...rows);
}

function showHeader(h) {
  header = h;
  const s = h.stats;
  $("numbers").hidden = false;
  $("s-shape").textContent = fmtShape(h.shape);
  $("s-dtype").textContent = h.dtype;
  $("s-min").textContent = s ? fmtNumber(s.min) : "-";
  $("s-max").textContent = s ? fmtNumber(s.max) : "-";
  $("s-mean").textContent = s ? fmtNumber(s.mean) : "-";
  $("s-sampled").textContent = !s ? "not numeric" : (s.sampled ? s.sampled + " sampled" : "all")
    + (s.nonfinite ? ", " + s.nonfinite + " NaN/inf left out" : "");
  drawHist(s);
  showValues(h.values);
  $("meta-box").hidden = h.meta === null || h.meta === undefined;
  $("meta").textContent = h.meta === null || h.meta === undefined ? "" : JSON.stringify(h.meta, null, 2);
  $("picture").hidden = !h.image;
  $("png").hidden = !h.image;
  $("png").href = pngHref();
  $("bgr-box").hidden = !h.colour;
  $("status").textContent = "frame " + h.count + (h.age_ms !== null ? ", " + h.age_ms.toFixed(1) + " ms after its write" : "");
  if (!h.image) {
    received++;
    ready();
  }
}

function showImage(bytes) {
  const url = URL.createObjectURL(new Blob([bytes], { type: "image/jpeg" }));
  const img = $("frame");
  img.onload = () => {
    // Small frames are shown at least MIN_WIDTH wide (pixels stay sharp: see app.css).
    img.style.width = Math.max(img.naturalWidth, MIN_WIDTH) + "px";
    if (imageUrl) URL.revokeObjectURL(imageUrl);
    imageUrl = url;
    received++;
    ready();
  };
  img.onerror = () => { URL.revokeObjectURL(url); ready(); };
  img.src = url;
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss://" : "ws://";
  socket = new WebSocket(scheme + location.host + tagPath("/ws/tag/", tag) + ($("bgr").checked ? "?bgr=1" : ""));
  socket.binaryType = "arraybuffer";
  socket.onopen = () => { $("live").textContent = "live"; };
  socket.onmessage = (ev) => {
    if (typeof ev.data !== "string") {
      showImage(ev.data);
      return;
    }
    const msg = JSON.parse(ev.data);
    if (msg.type === "frame") showHeader(msg);
    else if (msg.type === "status") $("status").textContent = msg.error;
  };
  socket.onclose = (ev) => {
    $("live").textContent = "disconnected";
    if (ev.code === 1008) {
      $("status").textContent = "refused: " + (ev.reason || "policy");
      return;
    }
    setTimeout(connect, 1000);
  };
}

$("bgr").addEventListener("change", () => {
  $("png").href = pngHref();
  if (socket && socket.readyState === WebSocket.OPEN) socket.send(JSON.stringify({ ready: true, bgr: $("bgr").checked }));
});

watchTable((table) => {
  const t = table.tags.find((x) => x.tag === tag);
  $("facts").textContent = t
    ? "writer " + fmtWriter(t) + " · " + t.readers + " reader(s) · " + t.writes + " writes · " +
      (t.rate_hz === null || t.rate_hz === undefined ? "-" : t.rate_hz.toFixed(1)) + " Hz · last write " +
      fmtAge(t.last_write_age_s) + " ago · generation " + t.generation
    : "no tag of this name at " + table.endpoint + " (yet): the page shows its frames once a writer writes";
});
connect();
