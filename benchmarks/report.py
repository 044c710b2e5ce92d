"""Turn the samples of a run into results.json, a markdown table, the floors and a PNG."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

US = 1e-3  # samples are in ns; reports in us
BIG = 720 * 1280 * 3  # "720p and above"
OURS, RAW, OLD, IOX, LIMIT, LIMIT_SHM = "ndsharray", "raw", "ndsharray-1.1.4", "iceoryx2", "limit", "limit-shm"
LIMITS = (LIMIT, LIMIT_SHM)  # one in-process copy (peers/limit.py, peers/limit_shm.py)

# key, column, unit of the JSON value; "t" = microseconds
FIGURES: list[tuple[str, str, str]] = [
    ("write", "write", "t"),
    ("read_new", "read new", "t"),
    ("read_new_copy", "read new copy=True", "t"),
    ("read_none", "read none", "t"),
    ("lat_busy", "e2e busy-poll", "t"),
    ("lat_busy_copy", "e2e busy-poll copy=True", "t"),
    ("lat_block", "e2e blocking", "t"),
    ("write_block", "write, reader asleep", "t"),
    ("fps", "frames/s", "1/s"),
    ("gbps", "GB/s", "GB/s"),
    ("attach", "attach", "t"),
    ("mem_per_read", "mem/read", "B"),
    ("anon_per_read", "anonymous mem/read", "B"),
]
TABLE = ["write", "read_new", "read_none", "lat_busy", "lat_block", "fps", "gbps", "torn", "attach",
         "mem_per_read"]
TITLES = {k: t for k, t, _ in FIGURES} | {"torn": "torn"}


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def machine() -> dict[str, Any]:
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "numpy": np.__version__, "pyzmq": _version("pyzmq"),
            "SharedArray": _version("SharedArray"), "iceoryx2": _version("iceoryx2"),
            "eclipse-ecal": _version("eclipse-ecal"), "ndsharray": _version("ndsharray"), "commit": _commit()}


def _commit() -> str:
    """The checkout's commit (with "+dirty" if it has uncommitted changes), or "?"."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return rev + ("+dirty" if dirty else "")


def machine_line(m: dict[str, Any] | None = None) -> str:
    m = m or machine()
    return (f"Machine: {m['cpu']}, {m['cores']} cores, Linux {m['kernel']}, Python {m['python']}, "
            f"numpy {m['numpy']}, pyzmq {m['pyzmq']}, SharedArray {m['SharedArray']}, "
            f"iceoryx2 {m.get('iceoryx2', '?')}, eclipse-ecal {m.get('eclipse-ecal', '?')}, "
            f"ndsharray {m['ndsharray']} (ours, commit {m.get('commit', '?')}) vs 1.1.4")


def stats(values: list[float], scale: float = 1.0) -> dict[str, float]:
    a = np.asarray(values, dtype=float) * scale
    return {"min": float(a.min()), "median": float(np.median(a)), "p99": float(np.percentile(a, 99)),
            "n": int(a.size)}


# ---- results.json ---------------------------------------------------------------------


def build(bench: Any, all_sizes: list[tuple[str, tuple[int, ...], str]], sizes: list[int],
          plan: Any, wall: float, leaks: dict[str, Any], daemon_left: bool) -> dict[str, Any]:
    size_rows: list[dict[str, Any]] = [
        {"label": label, "shape": list(shape), "dtype": dtype, "nbytes": int(np.prod(shape)) * np.dtype(dtype).itemsize}
        for label, shape, dtype in (all_sizes[i] for i in sizes)
    ]
    results: dict[str, Any] = {}
    idle: dict[str, Any] = {}
    for impl in bench.impls:
        na = dict(getattr(impl, "na", {}))
        if not getattr(impl, "copy_option", False):
            na["read_new_copy"] = na["lat_busy_copy"] = "no copy option"
        if impl.name in LIMITS:
            na.update(mem_per_read="no reader process", anon_per_read="no reader process",
                      write_block="no reader process")
        per_size: dict[str, Any] = {}
        for srow in size_rows:
            label = srow["label"]
            S = bench.samples[impl.name][label]
            C = bench.counts[impl.name][label]
            err = bench.errors[impl.name].get(label)
            row: dict[str, Any] = {}
            for key, _, unit in FIGURES:
                if key == "gbps":
                    vals = [f * srow["nbytes"] / 1e9 for f in S.get("fps", [])]
                else:
                    vals = S.get(key, [])
                if vals:
                    row[key] = stats(vals, US if unit == "t" else 1.0)
                elif key == "gbps" and "fps" in na:
                    row[key] = {"na": na["fps"]}
                else:
                    row[key] = {"na": na.get(key) or (f"error: {err}" if err else "no data")}
            row.update({str(k): int(v) for k, v in C.items()})
            if "received" not in C:
                row["torn"] = None
            if err:
                row["error"] = err
            per_size[label] = row
        results[impl.name] = per_size
        vals = bench.samples[impl.name]["*"].get("idle_cpu", [])
        idle[impl.name] = stats(vals) if vals else {"na": na.get("idle_cpu", "no data")}
    plan_d = {k: ({all_sizes[i][0]: v[i] for i in sizes} if isinstance(v, tuple) else v)
              for k, v in asdict(plan).items()}
    data: dict[str, Any] = {
        "machine": machine(), "plan": plan_d, "wall_s": wall, "sizes": size_rows,
        "impls": [i.name for i in bench.impls], "results": results, "idle_cpu_pct": idle,
        "daemon_idle_cpu_pct": bench.extra.get("daemon_idle_cpu_pct"),
        "errors": {k: v for k, v in bench.errors.items() if v}, "dev_shm": leaks,
        "ndsharray_1_1_4_files_removed": bench.extra.get("nds114_removed", 0),
        "daemon_left_running": daemon_left, "daemon_starts": bench.extra.get("daemon_starts"),
        "phase_seconds": bench.extra.get("seconds", {}),
        "rounds": {label: dict(kinds) for label, kinds in getattr(bench, "rounds", {}).items()},
    }
    data["floors"] = floors(data)
    return data


# ---- floors ---------------------------------------------------------------------------


def _med(data: dict[str, Any], impl: str, label: str, key: str) -> float | None:
    cell = data["results"].get(impl, {}).get(label, {}).get(key, {})
    return cell.get("median") if isinstance(cell, dict) else None


def floors(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets for ndsharray, each PASS / FAIL (None when a number is missing)."""
    out: list[dict[str, Any]] = []

    def add(name: str, ok: bool | None, detail: str) -> None:
        out.append({"floor": name, "pass": ok, "detail": detail})

    def fx(v: float | None, unit: str = "us") -> str:
        return "n/a" if v is None else (f"{v:.3g} {unit}" if unit else f"{v:.3g}")

    def against_raw(name: str, figure: str, ratio: float, margin: float) -> None:
        """Big frames: at most ``ratio`` x raw; small ones: at most raw + ``margin`` us."""
        for s in data["sizes"]:
            lab, big = s["label"], s["nbytes"] >= BIG
            o, r = _med(data, OURS, lab, figure), _med(data, RAW, lab, figure)
            if o is None or r is None:
                add(f"{name} {lab}", None, "n/a")
            elif big:
                add(f"{name} {lab} <= {ratio:g}x raw", o <= ratio * r, f"{fx(o)} vs raw {fx(r)} = {o / r:.2f}x")
            else:
                add(f"{name} {lab} <= raw + {margin:g} us", o <= r + margin, f"{fx(o)} vs raw {fx(r)}")

    against_raw("write", "write", 1.2, 5)
    for s in data["sizes"]:
        lab = s["label"]
        o = _med(data, OURS, lab, "read_new")
        add(f"zero-copy read of a new frame {lab} <= 15 us", None if o is None else o <= 15, fx(o))
    against_raw("e2e busy-poll", "lat_busy", 0.75, 10)
    for s in data["sizes"]:
        lab = s["label"]
        b, p = _med(data, OURS, lab, "lat_block"), _med(data, OURS, lab, "lat_busy")
        ok = None if b is None or p is None else b <= p + 50
        add(f"e2e blocking {lab} <= busy-poll + 50 us", ok, f"{fx(b)} vs busy {fx(p)}")
    idle = data["idle_cpu_pct"].get(OURS, {}).get("median")
    add("idle blocked reader CPU < 1% of a core", None if idle is None else idle < 1, fx(idle, "%"))
    o, r = _med(data, OURS, "720p", "fps"), _med(data, RAW, "720p", "fps")
    add("sustained 720p frames/s >= 0.9x raw", None if o is None or r is None else o >= 0.9 * r,
        f"{fx(o, '/s')} vs raw {fx(r, '/s')}" + (f" = {o / r:.2f}x" if o and r else ""))
    torn = {s["label"]: data["results"].get(OURS, {}).get(s["label"], {}).get("torn") for s in data["sizes"]}
    add("0 torn frames at every size", None if None in torn.values() else not any(torn.values()),
        ", ".join(f"{k}: {v}" for k, v in torn.items()))
    att = {s["label"]: _med(data, OURS, s["label"], "attach") for s in data["sizes"]}
    add("attach <= 2 ms at every size", None if None in att.values() else all((v or 0) <= 2000 for v in att.values()),
        ", ".join(f"{k}: {fx(v)}" for k, v in att.items()))
    for key, higher in (("write", False), ("read_new", False), ("read_none", False), ("lat_busy", False),
                        ("fps", True), ("attach", False)):
        lost, seen = [], 0
        for s in data["sizes"]:
            o, t = _med(data, OURS, s["label"], key), _med(data, OLD, s["label"], key)
            if o is None or t is None:
                continue
            seen += 1
            if not (o > t if higher else o < t):
                lost.append(f"{s['label']} ({o:.3g} vs {t:.3g})")
        add(f"faster than 1.1.4: {TITLES[key]}", None if not seen else not lost,
            "every size" if seen and not lost else ("lost at " + ", ".join(lost) if lost else "n/a"))
    return out


# ---- markdown -------------------------------------------------------------------------


def paired(data: dict[str, Any], label: str, kind: str, a: str, b: str) -> list[float]:
    """a's figure over b's, one ratio per round in which both were measured back to back.

    This machine's memory bandwidth swings for seconds at a time and hits every
    implementation alike, so the ratio within a round (both within a second of each other)
    holds still where the ratio of two medians, each over every round, does not.
    """
    rounds = data.get("rounds", {}).get(label, {}).get(kind, [])
    return [r[a] / r[b] for r in rounds if r.get(a) and r.get(b)]


def _paired_cell(ratios: list[float]) -> str:
    if not ratios:
        return "n/a"
    q = [25, 50, 75] if len(ratios) >= 4 else [0, 50, 100]
    lo, mid, hi = np.percentile(ratios, q)
    return f"{mid:.2f}x ({lo:.2f}-{hi:.2f}, n={len(ratios)})"


def headline(data: dict[str, Any]) -> list[str]:
    """Issue 16's two figures: sustained frames/s against iceoryx2, e2e latency against one copy
    (into numpy's memory, and into shared memory's pages)."""
    lines = ["", "## Against iceoryx2, and against one copy", "",
             "| size | sustained frames/s: ndsharray | iceoryx2 | ratio | paired ratio "
             "| e2e busy-poll: ndsharray | one np.copyto (limit) | ratio | paired ratio "
             "| np.copyto into shared memory (limit-shm) | paired ratio |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in data["sizes"]:
        lab = s["label"]
        o, i = _med(data, OURS, lab, "fps"), _med(data, IOX, lab, "fps")
        lo, ll, ls = (_med(data, impl, lab, "lat_busy") for impl in (OURS, LIMIT, LIMIT_SHM))
        cells = [f"{o:,.0f}" if o else "n/a", f"{i:,.0f}" if i else "n/a",
                 f"{o / i:.2f}x" if o and i else "n/a", _paired_cell(paired(data, lab, "sustained", OURS, IOX)),
                 fmt_us(lo) if lo else "n/a", fmt_us(ll) if ll else "n/a", f"{lo / ll:.2f}x" if lo and ll else "n/a",
                 _paired_cell(paired(data, lab, "lat_busy", OURS, LIMIT)),
                 fmt_us(ls) if ls else "n/a", _paired_cell(paired(data, lab, "lat_busy", OURS, LIMIT_SHM))]
        lines.append(f"| {lab} | " + " | ".join(cells) + " |")
    lines += ["", "| size | write: ndsharray | iceoryx2 | paired ratio |", "|---|---:|---:|---:|"]
    for s in data["sizes"]:
        lab = s["label"]
        o, i = _med(data, OURS, lab, "write"), _med(data, IOX, lab, "write")
        lines.append(f"| {lab} | {fmt_us(o) if o else 'n/a'} | {fmt_us(i) if i else 'n/a'} | "
                     f"{_paired_cell(paired(data, lab, 'write', OURS, IOX))} |")
    lines += ["", "Paired ratio: the median of one ratio per round, each round every implementation "
              "back to back (interquartile range, or min-max under 4 rounds, and the number of rounds); "
              "the host's memory bandwidth swings for seconds at a time and moves both sides of a round alike. "
              "limit copies into numpy's arrays (2 MiB pages from 4 MiB up), limit-shm into files in the "
              "segments' folder (on a /dev/shm without huge=, 4 KiB pages), as every shared-memory transport must."]
    return lines


def fmt_us(us: float) -> str:
    if us < 10:
        return f"{us:.2f} us"
    if us < 1000:
        return f"{us:.1f} us" if us < 100 else f"{us:.0f} us"
    if us < 1e6:
        return f"{us / 1e3:.2f} ms" if us < 1e4 else f"{us / 1e3:.1f} ms"
    return f"{us / 1e6:.2f} s"


def fmt(key: str, cell: Any, notes: dict[str, str]) -> str:
    if key == "torn":
        return "-" if cell is None else str(cell)
    if "na" in cell:
        reason = cell["na"]
        mark = notes.setdefault(reason, chr(ord("a") + len(notes)))
        return f"n/a [{mark}]"
    v = cell["median"]
    unit = next(u for k, _, u in FIGURES if k == key)
    if unit == "t":
        return fmt_us(v)
    if unit == "1/s":
        return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"
    if unit == "GB/s":
        return f"{v:.3g}"
    return f"{v:,.0f} B" if abs(v) >= 10 else f"{v:.1f} B"


def _per(d: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in d.items())


def markdown(data: dict[str, Any]) -> str:
    notes: dict[str, str] = {}
    p = data["plan"]
    lines = [
        "# ndsharray benchmark", "",
        machine_line(data["machine"]), "",
        f"Command: `{data.get('command', 'python benchmarks/run.py')}`", "",
        f"Wall time {data['wall_s']:.0f} s. Per size: repetitions (interleaved round-robin) {_per(p['reps'])}; "
        f"latency frames per repetition {_per(p['n_lat'])}, after unmeasured {_per(p['warm'])}; "
        f"flat-out seconds per slice {_per(p['sustain_s'])}; each figure in {p.get('slices', 1)} interleaved "
        "slices per repetition (a latency figure's frames split over them). "
        "Cells are medians (min / median / p99 of every figure in results.json)."
        + (" During the run, processes other than the benchmark's used {other_processes_cpu_pct:.0f}% of the "
           "machine's CPU, and the hypervisor stole {steal_pct:.1f}%.".format(**data["machine_load"])
           if data.get("machine_load") else ""), "",
        "| size | implementation | " + " | ".join(TITLES[k] for k in TABLE) + " |",
        "|---|---|" + "---:|" * len(TABLE),
    ]
    for s in data["sizes"]:
        for impl in data["impls"]:
            row = data["results"][impl][s["label"]]
            cells = []
            for key in TABLE:
                c = fmt(key, row[key] if key != "torn" else row.get("torn"), notes)
                if key == "read_new" and "median" in row.get("read_new_copy", {}):
                    c += f" (copy=True {fmt('read_new_copy', row['read_new_copy'], notes)})"
                anon = row.get("anon_per_read", {})
                if key == "mem_per_read" and "median" in anon and abs(anon["median"] - row[key]["median"]) > 1024:
                    c += f" ({fmt('anon_per_read', anon, notes)} anon.)"
                cells.append(c)
            lines.append(f"| {s['label']} | {impl} | " + " | ".join(cells) + " |")
    lines += ["", "Idle reader blocked on a tag nobody writes (process CPU time / wall time, % of one core):", "",
              "| implementation | CPU |", "|---|---:|"]
    for impl, cell in data["idle_cpu_pct"].items():
        lines.append(f"| {impl} | " + (f"{cell['median']:.3f} %" if "median" in cell else
                                       f"n/a [{notes.setdefault(cell['na'], chr(ord('a') + len(notes)))}]") + " |")
    if data.get("daemon_idle_cpu_pct") is not None:
        lines.append(f"| (ndsharrayd, same window) | {data['daemon_idle_cpu_pct']:.3f} % |")
    lines += headline(data)
    lines += ["", "## Floors (ndsharray)", "", "| floor | measured | verdict |", "|---|---|---|"]
    for f in data["floors"]:
        verdict = {True: "PASS", False: "**FAIL**", None: "n/a"}[f["pass"]]
        lines.append(f"| {f['floor']} | {f['detail']} | {verdict} |")
    lines += ["", "## Notes", ""]
    lines += [f"- [{m}] n/a: {reason}" for reason, m in notes.items()]
    lines.append("- write: one `write()` call, a reader busy-polling, frames ~0.3 ms apart. read new: the `read()` "
                 "call that returns a new frame, including dropping the previous one. read none: a `read()` with "
                 "nothing new. e2e: `time.monotonic_ns()` just before `write()` to just after `read()` returns. "
                 "frames/s, GB/s: frames received and verified word by word while the writer fills and writes "
                 "flat out. torn: frames received whose words disagree. attach: constructor + first successful "
                 "read in a fresh process, imports done. mem/read: RSS growth from /proc/self/statm over the "
                 "flat-out reads, divided by their number.")
    lines.append("- lost: latency frames the reader never received (the writer waits for each one's "
                 "acknowledgement, gives up after a timeout and sends the next); they are not in the latency figures.")
    lines.append("- retries: copies the seqlock reader of raw/SharedArray threw away because the writer "
                 "changed the frame meanwhile (flat-out phase); they are why its frames/s collapses at 720p+.")
    lines.append("- limit: one in-process `np.copyto` (3 destinations in turn) stands for write, read new and "
                 "e2e; its frames/s is copies per second, no fill and no verification.")
    for impl in data["impls"]:
        for s in data["sizes"]:
            row = data["results"][impl][s["label"]]
            extra = {k: row[k] for k in ("stale", "lost", "retries") if row.get(k)}
            if row.get("written") and row.get("received") is not None and impl not in LIMITS:
                extra["received/written"] = f"{row['received']}/{row['written']}"
            if extra and (extra.get("lost") or extra.get("retries") or impl in (OURS, OLD)):
                lines.append(f"- {impl} @ {s['label']}: " + ", ".join(f"{k} {v}" for k, v in extra.items()))
    for impl, hint in data.get("skipped", {}).items():
        lines.append(f"- skipped: {impl} is not installed (to include it: `{hint}`)")
    for impl, errs in data["errors"].items():
        for lab, msg in errs.items():
            lines.append(f"- error: {impl} @ {lab}: {msg}")
    shm = data["dev_shm"]
    lines.append(f"- /dev/shm: ndsharray 1.1.4 left {data['ndsharray_1_1_4_files_removed']} files behind "
                 "(removed by run.py); leaked by the others: " + (", ".join(shm["leaked"]) or "none")
                 + ("; new files not from this run, left alone: " + ", ".join(shm["new_in_dev_shm_not_ours"])
                    if shm["new_in_dev_shm_not_ours"] else ""))
    if shm.get("removed_ecal_registration"):
        lines.append("- /dev/shm: eCAL's registration files, removed by run.py: "
                     + ", ".join(shm["removed_ecal_registration"]))
    lines.append("- our ndsharrayd left running after the run: " + ("YES" if data["daemon_left_running"] else "no"))
    if (data.get("daemon_starts") or 1) > 1:
        lines.append(f"- WARNING: our private ndsharrayd was started {data['daemon_starts']} times during the run "
                     "(something stopped it; its clients saw errors): ndsharray's numbers are suspect")
    return "\n".join(lines) + "\n"


# ---- figure ---------------------------------------------------------------------------


def plot(data: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.8))
    xs = [s["nbytes"] for s in data["sizes"]]
    for impl in data["impls"]:
        style = dict(marker="o", lw=2.5 if impl == OURS else 1.3, ls="--" if impl in LIMITS else "-")
        for ax, key in ((ax1, "lat_busy"), (ax2, "gbps")):
            cells = [data["results"][impl][s["label"]][key] for s in data["sizes"]]
            pts = [(x, c["median"]) for x, c in zip(xs, cells, strict=True) if c.get("median")]
            if pts:
                x, y = zip(*pts, strict=True)
                ax.plot(x, y, label=impl, **style)
    for ax, title, ylabel in ((ax1, "end-to-end latency, busy-polling reader (median)", "microseconds"),
                              (ax2, "sustained throughput, every frame verified (median)", "GB/s")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(xs, [s["label"] for s in data["sizes"]], rotation=35, ha="right")
        ax.minorticks_off()
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("frame size")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="major", alpha=0.3)
    ax1.legend(fontsize=8)
    fig.suptitle(machine_line(data["machine"]), fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
