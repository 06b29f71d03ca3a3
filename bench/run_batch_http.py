"""``run_batch`` over an OpenAI-compatible HTTP backend: gathered in waves vs concurrent.

A loopback server answers each request after a delay (slow ones for a quarter of the
runs). Gathering concurrent calls into ``generate_batch`` waves (what ``RequestBatcher``
did for every backend with a ``generate_batch``) makes each wave wait for its slowest
request; a backend whose server batches by itself (``Capabilities(continuous_batching=True)``,
``sgl.OpenAI``'s declaration) is called concurrently. Both modes run here, in one process.

    python bench/run_batch_http.py --runs 32 --slow 0.8 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import sgl
from sgl.backends.base import Capabilities
from sgl.backends.openai import OpenAI


def serve(slow_s: float, fast_s: float) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            time.sleep(slow_s if b"slow" in body else fast_s)
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for event in ({"choices": [{"index": 0, "delta": {"content": "ok"}, "finish_reason": None}]},
                          {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}):
                self.wfile.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            self.wfile.write(b"data: [DONE]\n\n")

    class Server(ThreadingHTTPServer):
        request_queue_size = 256
        daemon_threads = True

    httpd = Server(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


class Gathered(OpenAI):
    """The old behaviour: run_batch gathers concurrent calls into waves of 8."""

    capabilities = Capabilities(gathers_batches=True, max_batch=8)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=32)
    ap.add_argument("--slow", type=float, default=0.8, help="seconds of a slow request")
    ap.add_argument("--fast", type=float, default=0.02, help="seconds of a fast request")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    @sgl.function
    def prog(s, kind):
        s += kind + ": " + sgl.gen("answer", max_tokens=4)

    items = [{"kind": "slow" if i % 4 == 0 else "fast"} for i in range(args.runs)]
    httpd = serve(args.slow, args.fast)
    url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    try:
        for name, cls in (("gathered (waves of 8)", Gathered), ("concurrent (declared)", OpenAI)):
            backend = cls(model="m", base_url=url, api_key="x", server_kind="sgl", timeout=30.0)
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                states = prog.run_batch(items, backend=backend)
                times.append(time.perf_counter() - start)
                assert all(st.error() is None for st in states)
            print(f"{name:24s} median {statistics.median(times):.2f} s  (runs {args.runs}, "
                  f"slow {args.slow} s x {sum(k['kind'] == 'slow' for k in items)})")
    finally:
        httpd.shutdown()
        httpd.server_close()


if __name__ == "__main__":
    main()
