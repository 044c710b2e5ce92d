"use strict";
// Shared by both pages. Every text from the server goes into the page with textContent,
// never innerHTML: a tag name is text, whatever characters it holds.

function el(name, text, cls) {
  const e = document.createElement(name);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

// /tag/<tag> and friends: each part of the tag percent-encoded.
function tagPath(prefix, tag) {
  return prefix + tag.split("/").map(encodeURIComponent).join("/");
}

function fmtAge(s) {
  if (s === null || s === undefined) return "-";
  if (s < 1) return (s * 1000).toFixed(0) + " ms";
  if (s < 120) return s.toFixed(1) + " s";
  return (s / 60).toFixed(0) + " min";
}

function fmtLatency(s) {
  if (s === null || s === undefined) return "-";
  return s < 0.001 ? (s * 1e6).toFixed(0) + " us" : (s * 1000).toFixed(1) + " ms";
}

function fmtSize(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n.toFixed(0)) + " " + units[i];
}

function fmtShape(shape) {
  if (shape === null || shape === undefined) return "-";
  return shape.length ? shape.join("x") : "()";
}

function fmtWriter(t) {
  if (t.writer_pid) return "pid " + t.writer_pid + " (alive)";
  if (t.last_writer_pid) return (t.writer_left || "gone") + " (pid " + t.last_writer_pid + ")";
  return "-";
}

function fmtNumber(v) {
  if (v === null || v === undefined) return "-";
  return Math.abs(v) >= 1e6 || (v !== 0 && Math.abs(v) < 1e-3) ? v.toExponential(4) : String(+v.toPrecision(6));
}

// The tag table, pushed by the server (Server-Sent Events); `onTable` gets each one.
function watchTable(onTable) {
  const live = document.getElementById("live");
  const source = new EventSource("/events/tags");
  source.onmessage = (ev) => {
    live.textContent = "live";
    onTable(JSON.parse(ev.data));
  };
  source.onerror = () => { live.textContent = "reconnecting…"; };
  return source;
}
