"use strict";

function row(t) {
  const tr = el("tr");
  tr.dataset.tag = t.tag;
  const link = el("a", t.tag);
  link.href = tagPath("/tag/", t.tag);
  const first = el("td");
  first.appendChild(link);
  tr.appendChild(first);
  const cells = [
    t.dtype || "-", fmtShape(t.shape), t.dtype ? fmtSize(t.nbytes) : "-", fmtWriter(t), t.readers, t.writes,
    t.rate_hz === null || t.rate_hz === undefined ? "-" : t.rate_hz.toFixed(1), fmtAge(t.last_write_age_s),
    fmtLatency(t.max_read_latency_s), t.max_behind === null || t.max_behind === undefined ? "-" : t.max_behind,
    t.generation,
  ];
  for (const c of cells) tr.appendChild(el("td", c));
  return tr;
}

function show(table) {
  const empty = document.getElementById("empty");
  const problem = document.getElementById("problem");
  const tbody = document.querySelector("#tags tbody");
  document.getElementById("where").textContent = table.endpoint;
  problem.hidden = !table.error;
  problem.textContent = table.error ? "the daemon does not answer: " + table.error : "";
  tbody.replaceChildren(...table.tags.map(row));
  document.getElementById("tags").hidden = table.tags.length === 0;
  empty.hidden = table.tags.length !== 0 || !!table.error;
  if (!table.daemon) {
    empty.textContent = "No tags: no ndsharrayd runs at " + table.endpoint +
      ". The first writer starts one; its tags appear here as soon as it writes.";
  } else {
    empty.textContent = "No tags yet at " + table.endpoint + ". A writer creates one: " +
      "NdShArray('name', array, r_w='w'); it appears here as soon as it is opened.";
  }
  document.getElementById("notes").replaceChildren(...(table.notes || []).map((n) => el("li", "note: " + n)));
}

watchTable(show);
