"""Runs hostile cases in worker subprocesses with a time limit per case and an
address-space limit (``RLIMIT_AS``) per process.

A worker runs many cases in a row (loading a vocabulary costs a second); when a case
hangs past its limit the worker is killed, the case is recorded as ``hang``, and a
fresh worker takes the remaining cases. A worker that dies (a signal, the kernel's
OOM killer, a C-level abort) gets ``crash`` or ``memory`` for the case it was running.
"""

from __future__ import annotations

import json
import os
import queue
import resource
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import corpus  # noqa: E402

WORKER = os.path.join(HERE, "worker.py")
STARTUP_S = 120.0  # loading the engine and the vocabulary
OUTCOMES = ("compiled", "refused", "crash", "hang", "memory", "dead_end", "n/a")
_MEMORY_HINTS = ("MemoryError", "bad_alloc", "Cannot allocate memory", "out of memory", "memory allocation")


@dataclass
class Limits:
    """Per-case wall time, per-process address space, masked steps per case, and SGL's
    compile budget in seconds (below ``case_s``, so a slow compile ends as a refusal)."""

    case_s: float = 15.0
    memory_bytes: int = 4 << 30
    steps: int = 50
    sgl_budget_s: float = 8.0


def _limit_memory(memory_bytes: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))

    return apply


def _reader(stream, q: queue.Queue) -> None:
    for line in stream:
        q.put(line)
    q.put(None)


def _worker_env(limits: Limits) -> dict:
    env = dict(os.environ)
    env["SGL_HOSTILE_BUDGET_S"] = str(limits.sgl_budget_s)
    # one thread per library: the limits are per process, and the machine is shared
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "RAYON_NUM_THREADS"):
        env[var] = "1"
    return env


WALL_FACTOR = 6.0  # a case may take this many times its limit in wall time on a starved CPU


def _cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (Linux ``/proc``); None elsewhere."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _still_within(pid: int, case_start: tuple[float, float | None], limit_s: float) -> float:
    """Seconds more a running case may wait: its limit counts CPU time (the machine is
    shared, and a starved worker is not hung), capped at ``WALL_FACTOR`` × the limit."""
    wall0, cpu0 = case_start
    cpu = _cpu_seconds(pid)
    if cpu is None or cpu0 is None:
        return 0.0
    wall_left = wall0 + WALL_FACTOR * limit_s - time.monotonic()
    return max(0.0, min(limit_s - (cpu - cpu0), wall_left))


def _run_batch(names: list[str], engine: str, limits: Limits, workdir: str, results: dict) -> None:
    """Run ``names`` in order in one worker, restarting it after a hang or a death."""
    pending = list(names)
    while pending:
        proc = subprocess.Popen(
            [sys.executable, WORKER, "--engine", engine, "--steps", str(limits.steps)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            cwd=workdir, env=_worker_env(limits), preexec_fn=_limit_memory(limits.memory_bytes),
        )
        proc.stdin.write(json.dumps(pending))
        proc.stdin.close()
        q: queue.Queue = queue.Queue()
        threading.Thread(target=_reader, args=(proc.stdout, q), daemon=True).start()
        err: list[str] = []
        threading.Thread(target=err.extend, args=(proc.stderr,), daemon=True).start()
        current, deadline = None, time.monotonic() + STARTUP_S
        case_start: tuple[float, float | None] = (time.monotonic(), None)
        while True:
            try:
                line = q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                more = _still_within(proc.pid, case_start, limits.case_s) if current is not None else 0.0
                if more > 0.05:
                    deadline = time.monotonic() + more
                    continue
                proc.kill()
                proc.wait()
                if current is None:
                    raise RuntimeError(f"worker did not start within {STARTUP_S} s: {''.join(err)[-2000:]}") from None
                results[current] = {"name": current, "outcome": "hang", "detail": f"over {limits.case_s} s of CPU time"}
                pending.remove(current)
                break
            if line is None:  # the worker exited
                proc.wait()
                if current is None and pending:
                    raise RuntimeError(f"worker failed before any case: {''.join(err)[-2000:]}")
                if current is not None:
                    tail = "".join(err)[-300:]
                    kind = "memory" if any(h in tail for h in _MEMORY_HINTS) else "crash"
                    results[current] = {"name": current, "outcome": kind,
                                        "detail": f"worker died (exit {proc.returncode}): {tail.strip()[-200:]}"}
                    pending.remove(current)
                break
            msg = json.loads(line)
            if "start" in msg:
                current, deadline = msg["start"], time.monotonic() + limits.case_s
                case_start = (time.monotonic(), _cpu_seconds(proc.pid))
            elif "name" in msg:
                results[msg["name"]] = msg
                pending.remove(msg["name"])
                current, deadline = None, time.monotonic() + limits.case_s


def run_cases(names: list[str], engine: str = "worker:SGLAdapter", limits: Limits | None = None,
              workers: int = 2) -> dict[str, dict]:
    """Run the named corpus cases on ``workers`` parallel worker processes: name -> result."""
    limits = limits or Limits()
    results: dict[str, dict] = {}
    # spread the expensive groups: round-robin over the corpus order
    batches = [names[i::workers] for i in range(workers)]
    with tempfile.TemporaryDirectory(prefix="sgl-hostile-") as workdir:
        # a file a grammar must never be able to read (Lark %import .evil)
        with open(os.path.join(workdir, "evil.lark"), "w", encoding="utf-8") as f:
            f.write(corpus.EVIL_LARK)
        threads = [threading.Thread(target=_run_batch, args=(b, engine, limits, workdir, results)) for b in batches if b]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    missing = [n for n in names if n not in results]
    if missing:
        raise RuntimeError(f"no result for {missing[:5]} (a worker failed)")
    return {n: results[n] for n in names}


def violations(results: dict[str, dict]) -> list[str]:
    """Results that break the rule (compile and mask within budget, or refuse) or the case's ``expect``."""
    cases = corpus.by_name()
    bad = []
    for name, r in results.items():
        outcome, expect = r["outcome"], cases[name].expect
        if outcome not in ("compiled", "refused"):
            bad.append(f"{name}: {outcome}: {r.get('detail', '')}")
        elif expect == corpus.REFUSE and outcome != "refused":
            bad.append(f"{name}: compiled, but must be refused")
        elif expect == corpus.COMPILE and outcome != "compiled":
            bad.append(f"{name}: refused, but must compile: {r.get('detail', '')}")
    return bad


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description="run the hostile corpus on SGL")
    ap.add_argument("filter", nargs="?", default="", help="only case names containing this")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--case-s", type=float, default=15.0)
    args = ap.parse_args()
    names = [c.name for c in corpus.all_cases() if args.filter in c.name]
    t = time.time()
    res = run_cases(names, limits=Limits(case_s=args.case_s), workers=args.workers)
    for n, r in res.items():
        print(f"{r['outcome']:9} {r.get('compile_s')!s:>8} {r.get('mask_s')!s:>8} {n}  {r.get('detail', '')[:150]}")
    print("\n".join(violations(res)) or "no violations", f"\n{len(res)} cases in {time.time() - t:.1f} s")


if __name__ == "__main__":
    main()
