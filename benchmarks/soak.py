"""Soak: everything at once for N minutes, then check that nothing grew and nothing tore.

    python benchmarks/soak.py --minutes 10

On a private endpoint (its own daemon, its own /dev/shm prefix) it runs, each in a process
of its own:

- a writer of 720p uint8 at 60 Hz that changes shape every few seconds (720p <-> 360p) and
  closes and reopens its handle every few seconds; frame n is the 64-bit word n throughout;
- a blocking reader (``read(timeout=...)``) that checks every word of every frame it gets
  (a mix of two writes is "torn") and, before dropping the frame it held, checks it again
  (a view that changed while held is "changed");
- two churning readers that open, read (one zero-copy, one ``copy=True``), check and close
  in a loop (up to --churn-hz times a second each: thousands of times);
- a process that lists the tags (what ``ndsharray ls`` asks) every second;

and this process SIGKILLs the daemon every ``--kill-every`` seconds (the clients start a
new one by themselves). After a warm-up it prints, for the daemon and every client, RSS
(anonymous and shared), open fds, threads and mappings, and the endpoint's entries in
/dev/shm; the same at the end, then the clients' counters. Exit status 1 when a frame was
torn or changed, a count grew beyond noise, a client failed, or something was left behind;
0 otherwise. Ctrl-C stops it early, cleaning up all the same.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any

TAG = "soak/cam"
SHAPES = [(720, 1280, 3), (360, 640, 3)]  # each a multiple of 8 bytes: frames are uint64 words
SHM = "/dev/shm"

# What "grew beyond noise" means between the start and the end sample (each the minimum
# over a few samples, so a handle caught mid-open does not count). RSS is judged on
# anonymous memory only: shared pages follow the segment's size, which changes with shape.
RSS_ANON_SLACK_KIB = 3 * 1024
FD_SLACK = 2
MAPS_SLACK = 4
THREAD_SLACK = 0
SHM_SLACK = 1

_stop = False


def _on_signal(signum: int, frame: Any) -> None:
    global _stop
    _stop = True


def _should_stop(ppid: int) -> bool:
    return _stop or os.getppid() != ppid  # (the orchestrator died: do not run forever)


def check_frame(a: Any) -> tuple[int, bool]:
    """(the frame's number, whether all its words agree)."""
    import numpy as np

    w = np.ascontiguousarray(a).reshape(-1).view(np.uint64)
    n = int(w[0])
    return n, bool(w.min() == n and w.max() == n)


# ---- the clients ------------------------------------------------------------------------

def run_writer(ep: str, args: argparse.Namespace, out: dict[str, Any]) -> None:
    import numpy as np

    import ndsharray

    frames = [np.zeros(s, np.uint8) for s in SHAPES]
    ppid = os.getppid()
    w = ndsharray.NdShArray(TAG, r_w="w", endpoint=ep)
    n = 0
    shape_i = 0
    t0 = time.monotonic()
    next_shape = t0 + args.shape_every
    next_reopen = t0 + args.reopen_every
    tick = t0
    out.update(writes=0, shape_changes=0, reopens=0, errors={}, max_write_s=0.0, max_reopen_s=0.0)
    while not _should_stop(ppid):
        now = time.monotonic()
        if now >= next_shape:
            shape_i = 1 - shape_i
            out["shape_changes"] += 1
            next_shape = now + args.shape_every
        if now >= next_reopen:
            t = time.monotonic()
            w.close()
            w = ndsharray.NdShArray(TAG, r_w="w", endpoint=ep)
            out["max_reopen_s"] = max(out["max_reopen_s"], time.monotonic() - t)
            out["reopens"] += 1
            next_reopen = now + args.reopen_every
        n += 1
        f = frames[shape_i]
        f.reshape(-1).view(np.uint64).fill(n)
        t = time.monotonic()
        try:
            w.write(f)
            out["writes"] += 1
        except ndsharray.NdShArrayError as exc:
            name = type(exc).__name__
            out["errors"][name] = out["errors"].get(name, 0) + 1
            out["last_error"] = str(exc)
        out["max_write_s"] = max(out["max_write_s"], time.monotonic() - t)
        tick += 1 / args.hz
        delay = tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            tick = time.monotonic()  # late (a daemon restart, a busy machine): do not burst
    w.close()


def run_blocking_reader(ep: str, args: argparse.Namespace, out: dict[str, Any]) -> None:
    import ndsharray

    ppid = os.getppid()
    r = ndsharray.NdShArray(TAG, r_w="r", endpoint=ep)
    held: Any = None
    held_n = 0
    last_n = 0
    out.update(verified=0, torn=0, changed=0, missed=0, errors={})
    while not _should_stop(ppid):
        try:
            ok, a = r.read(timeout=0.5)
        except ndsharray.NdShArrayError as exc:
            name = type(exc).__name__
            out["errors"][name] = out["errors"].get(name, 0) + 1
            time.sleep(0.05)
            continue
        if not ok:
            continue
        if held is not None and check_frame(held) != (held_n, True):
            out["changed"] += 1  # the view we held changed under us
        n, good = check_frame(a)
        if good:
            out["verified"] += 1
        else:
            out["torn"] += 1
        if last_n and n > last_n + 1:
            out["missed"] += n - last_n - 1
        last_n = max(last_n, n)
        held, held_n = a, n
    r.close()


def run_churn_reader(ep: str, args: argparse.Namespace, out: dict[str, Any], copy: bool) -> None:
    import ndsharray

    ppid = os.getppid()
    out.update(opens=0, frames=0, torn=0, errors={}, max_open_s=0.0, max_close_s=0.0,
               slow_closes=0, copy=copy)
    keep: Any = None  # the last frame outlives its handle, as a user's would
    tick = time.monotonic()
    while not _should_stop(ppid):
        tick += 1 / args.churn_hz
        delay = tick - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            tick = time.monotonic()
        try:
            t = time.monotonic()
            r = ndsharray.NdShArray(TAG, r_w="r", endpoint=ep)
            out["max_open_s"] = max(out["max_open_s"], time.monotonic() - t)
            out["opens"] += 1
            try:
                ok, a = r.read(copy=copy, timeout=0.5)
                if ok:
                    good = check_frame(a)[1]
                    out["frames" if good else "torn"] += 1
                    # A view outlives its handle, as a user's would; a copy is dropped (it
                    # is the reader's own memory: kept, it would count as anonymous RSS).
                    keep = None if copy else a
                    del a
            finally:
                t = time.monotonic()
                r.close()
                took = time.monotonic() - t
                out["max_close_s"] = max(out["max_close_s"], took)
                out["slow_closes"] += took > 0.5
        except ndsharray.NdShArrayError as exc:
            name = type(exc).__name__
            out["errors"][name] = out["errors"].get(name, 0) + 1
            time.sleep(0.05)
    del keep


def run_lister(ep: str, args: argparse.Namespace, out: dict[str, Any]) -> None:
    import ndsharray

    ppid = os.getppid()
    out.update(lists=0, seen=0, errors={})
    while not _should_stop(ppid):
        try:
            tags = ndsharray.list_tags(ep)
            out["lists"] += 1
            out["seen"] += any(t.tag == TAG for t in tags)
        except ndsharray.NdShArrayError as exc:
            name = type(exc).__name__
            out["errors"][name] = out["errors"].get(name, 0) + 1
        time.sleep(1.0)


def child_main(role: str, ep: str, args: argparse.Namespace) -> None:
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    out: dict[str, Any] = {"role": role, "pid": os.getpid()}
    try:
        if role == "writer":
            run_writer(ep, args, out)
        elif role == "blocking":
            run_blocking_reader(ep, args, out)
        elif role == "churn":
            run_churn_reader(ep, args, out, copy=False)
        elif role == "churn-copy":
            run_churn_reader(ep, args, out, copy=True)
        elif role == "ls":
            run_lister(ep, args, out)
        else:
            raise SystemExit(f"unknown role {role}")
    except BaseException as exc:
        out["crash"] = f"{type(exc).__name__}: {exc}"
        print(json.dumps(out), flush=True)
        raise
    print(json.dumps(out), flush=True)


# ---- the orchestrator -------------------------------------------------------------------

ROLES = ["writer", "blocking", "churn", "churn-copy", "ls"]


def proc_figures(pid: int) -> dict[str, int] | None:
    """RSS (KiB: anonymous, shared memory, file), open fds, threads, mappings of ``pid``."""
    try:
        status = {}
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                status[k] = v.split()
        with open(f"/proc/{pid}/maps") as f:
            maps = sum(1 for _ in f)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        return None
    return {"rss": int(status["VmRSS"][0]), "anon": int(status["RssAnon"][0]),
            "shmem": int(status["RssShmem"][0]), "fds": fds, "threads": int(status["Threads"][0]),
            "maps": maps}


def shm_entries(prefix: str) -> list[str]:
    return sorted(n for n in os.listdir(SHM) if n.startswith(prefix))


def snapshot(pids: dict[str, int], prefix: str, samples: int = 5) -> dict[str, Any]:
    """Every process's figures, each the minimum over ``samples`` samples 0.2 s apart (a
    churning reader caught between open and close has a few more fds and mappings)."""
    import ndsharray.admin as admin

    out: dict[str, dict[str, int]] = {}
    shm = []
    for k in range(samples):
        if k:
            time.sleep(0.2)
        all_pids = dict(pids)
        dpid = admin.daemon_pid(ENDPOINT)
        if dpid is not None:
            all_pids["daemon"] = dpid
        for role, pid in all_pids.items():
            fig = proc_figures(pid)
            if fig is None:
                continue
            fig["pid"] = pid
            if role in out and out[role]["pid"] == pid:
                out[role] = {key: min(v, fig[key]) for key, v in out[role].items()}
            else:
                out[role] = fig
        shm.append(len(shm_entries(prefix)))
    return {"procs": out, "shm": min(shm)}


def print_snapshot(title: str, snap: dict[str, Any]) -> None:
    print(f"\n{title}: /dev/shm entries of this endpoint: {snap['shm']}")
    print(f"  {'process':<11} {'pid':>7} {'RSS KiB':>9} {'anon':>8} {'shmem':>8} {'fds':>5} {'threads':>7} {'maps':>6}")
    for role, f in snap["procs"].items():
        print(f"  {role:<11} {f['pid']:>7} {f['rss']:>9} {f['anon']:>8} {f['shmem']:>8} {f['fds']:>5} "
              f"{f['threads']:>7} {f['maps']:>6}")
    sys.stdout.flush()


def growth(start: dict[str, Any], end: dict[str, Any]) -> list[str]:
    """What grew beyond noise between two snapshots."""
    bad = []
    for role, s in start["procs"].items():
        e = end["procs"].get(role)
        if e is None:
            bad.append(f"{role}: gone at the end")
            continue
        for key, slack in (("anon", RSS_ANON_SLACK_KIB), ("fds", FD_SLACK), ("threads", THREAD_SLACK),
                           ("maps", MAPS_SLACK)):
            if e[key] > s[key] + slack:
                bad.append(f"{role}: {key} {s[key]} -> {e[key]} (more than +{slack})")
    if end["shm"] > start["shm"] + SHM_SLACK:
        bad.append(f"/dev/shm entries {start['shm']} -> {end['shm']}")
    return bad


ENDPOINT = ""


def orchestrate(args: argparse.Namespace) -> int:
    global ENDPOINT
    import ndsharray.admin as admin
    from ndsharray import config, daemonctl

    folder = tempfile.mkdtemp(prefix="ndsoak-", dir="/tmp")
    ENDPOINT = ep = f"ipc://{folder}/d.sock"
    prefix = config.segment_prefix(ep)
    # A fixed mmap threshold: glibc otherwise raises it after the first frame-sized buffer
    # is freed, and later ones (read(copy=True) copies) stay in the heap after they are
    # freed, so anonymous RSS would swing by a frame or two (2.6 MiB each) between samples.
    env = {**os.environ, config.ENV_ENDPOINT: ep, config.ENV_AUTOSTART: "1",
           "MALLOC_MMAP_THRESHOLD_": str(128 * 1024)}
    children: dict[str, subprocess.Popen[str]] = {}
    results: dict[str, Any] = {}
    problems: list[str] = []
    kills: list[float] = []  # seconds until a new daemon answered, per kill
    interrupted = False

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    here = os.path.dirname(os.path.abspath(__file__))
    rev = subprocess.run(["git", "-C", here, "describe", "--always", "--dirty"], capture_output=True,
                         text=True, check=False).stdout.strip() or "unknown"
    print(f"soak: {args.minutes:g} min at {ep} (segments {prefix}*), {args.hz:g} Hz 720p writer, "
          f"daemon SIGKILL every {args.kill_every:g} s; code {rev} in {os.path.dirname(here)}")
    start_snap: dict[str, Any] | None = None
    try:
        daemonctl.start_daemon(ep)
        cmd = [sys.executable, os.path.abspath(__file__), "--endpoint", ep,
               "--hz", str(args.hz), "--shape-every", str(args.shape_every),
               "--reopen-every", str(args.reopen_every), "--churn-hz", str(args.churn_hz)]
        for role in ROLES:
            # A session of their own: a Ctrl-C reaches this process only, which stops them
            # in order (clients first, then the daemon).
            children[role] = subprocess.Popen(cmd + ["--child", role], env=env, stdout=subprocess.PIPE,
                                              text=True, start_new_session=True)
            if role == "writer":  # readers of a tag that has data: every one starts alike
                time.sleep(1.0)
        pids = {role: p.pid for role, p in children.items()}
        t0 = time.monotonic()
        end = t0 + args.minutes * 60
        next_kill = t0 + args.kill_every
        next_report = t0 + 60
        samples: list[dict[str, Any]] = []
        while time.monotonic() < end:
            time.sleep(0.2)
            now = time.monotonic()
            for role, p in children.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{role} (pid {p.pid}) exited early with {p.returncode}")
            if start_snap is None and now - t0 >= args.warmup:
                start_snap = snapshot(pids, prefix)
                print_snapshot(f"start (after {args.warmup:g} s of warm-up)", start_snap)
                samples.append({"t": now - t0, **start_snap})
            if now >= next_kill:
                next_kill += args.kill_every
                pid = admin.daemon_pid(ep)
                if pid is not None:
                    os.kill(pid, signal.SIGKILL)
                    t = time.monotonic()
                    while time.monotonic() - t < 30:
                        new = admin.daemon_pid(ep)
                        if new is not None and new != pid:
                            break
                        time.sleep(0.01)
                    kills.append(time.monotonic() - t)
                    print(f"[{now - t0:6.0f} s] SIGKILL daemon {pid}; pid {admin.daemon_pid(ep)} serves "
                          f"after {kills[-1]:.2f} s", flush=True)
            if now >= next_report:
                next_report += 60
                snap = snapshot(pids, prefix, samples=1)
                samples.append({"t": now - t0, **snap})
                line = "  ".join(f"{r} {f['anon']}" for r, f in snap["procs"].items())
                print(f"[{now - t0:6.0f} s] anon RSS KiB: {line}; shm {snap['shm']}", flush=True)
        end_snap = snapshot(pids, prefix)
        samples.append({"t": time.monotonic() - t0, **end_snap})
        if start_snap is not None:
            print_snapshot("end", end_snap)
            problems += growth(start_snap, end_snap)
        if args.samples:
            with open(args.samples, "w") as f:
                for s in samples:
                    f.write(json.dumps(s) + "\n")
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted: cleaning up", flush=True)
    except RuntimeError as exc:
        problems.append(str(exc))
    finally:
        # Clients first (each closes its handles and reports), then the daemon.
        for p in children.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for role, p in children.items():
            try:
                stdout, _ = p.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                stdout, _ = p.communicate()
                problems.append(f"{role} did not stop within 20 s of SIGTERM")
            if p.returncode not in (0, -signal.SIGTERM):
                problems.append(f"{role} exited with {p.returncode}")
            lines = [ln for ln in (stdout or "").splitlines() if ln.startswith("{")]
            if lines:
                results[role] = json.loads(lines[-1])
        starts = 0
        log_text = ""
        try:
            with open(config.log_path(ep), errors="replace") as f:
                log_text = f.read()
            starts = log_text.count(" serving ")
        except OSError:
            pass
        try:
            admin.stop_daemon(ep)
        except Exception as exc:
            problems.append(f"could not stop the daemon: {exc}")
        left = shm_entries(prefix)
        if left:
            problems.append(f"left in {SHM} after the daemon stopped: {left}")
            for name in left:  # ours: a regular file of this uid under this endpoint's prefix
                path = os.path.join(SHM, name)
                st = os.lstat(path)
                if st.st_uid == os.getuid() and (st.st_mode & 0o170000) == 0o100000:
                    os.unlink(path)
        if "Traceback" in log_text:
            problems.append("a daemon logged a Traceback:\n" + log_text[-3000:])
        shutil.rmtree(folder, ignore_errors=True)

    print("\nclients:")
    for role, r in results.items():
        figures = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                            for k, v in r.items() if k not in ("role", "pid"))
        print(f"  {role:<11} {figures}")
        if r.get("crash"):
            problems.append(f"{role} crashed: {r['crash']}")
    print(f"daemon: {len(kills)} SIGKILL(s), a new one served after "
          + (", ".join(f"{k:.2f}" for k in kills) or "-") + f" s; {starts} daemon start(s) logged")
    blocking = results.get("blocking", {})
    torn = blocking.get("torn", 0) + sum(results.get(r, {}).get("torn", 0) for r in ("churn", "churn-copy"))
    print(f"frames verified {blocking.get('verified', 0)} (blocking reader) + "
          f"{sum(results.get(r, {}).get('frames', 0) for r in ('churn', 'churn-copy'))} (churning readers), "
          f"torn {torn}, changed while held {blocking.get('changed', 0)}")
    stalls = {r: results[r]["max_close_s"] for r in ("churn", "churn-copy")
              if results.get(r, {}).get("slow_closes")}
    if stalls:  # (reported, not judged: a figure of the daemon restarts, not a leak)
        print("NOTE: close() took over 0.5 s (the daemon was down): longest " +
              ", ".join(f"{r} {s:.2f} s" for r, s in stalls.items()))
    if torn or blocking.get("changed", 0):
        problems.append(f"{torn} torn frame(s), {blocking.get('changed', 0)} view(s) changed while held")
    if not interrupted and not blocking.get("verified"):
        problems.append("the blocking reader verified no frame")
    if problems:
        print("\nFAIL:\n  " + "\n  ".join(problems))
        return 1
    print("\nOK" + (" (interrupted)" if interrupted else ""))
    return 130 if interrupted else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--hz", type=float, default=60.0, help="writer rate (default 60)")
    ap.add_argument("--shape-every", type=float, default=4.0, help="seconds between shape changes")
    ap.add_argument("--reopen-every", type=float, default=7.0, help="seconds between writer reopens")
    ap.add_argument("--churn-hz", type=float, default=100.0,
                    help="opens per second of each churning reader, at most (default 100)")
    ap.add_argument("--kill-every", type=float, default=60.0, help="seconds between daemon SIGKILLs")
    ap.add_argument("--warmup", type=float, default=20.0, help="seconds before the start figures")
    ap.add_argument("--samples", help="write every sample (each minute) as JSON lines to this file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--endpoint", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child_main(args.child, args.endpoint, args)
        return
    sys.exit(orchestrate(args))


if __name__ == "__main__":
    main()
