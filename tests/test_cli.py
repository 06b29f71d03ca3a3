"""The ``sgl`` command, run as a subprocess. ``sgl run`` uses a scripted backend given
with ``--backend``; the real model runs the CLI in tests/test_lang_model.py."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

BACKEND = '''
from sgl.backends.base import Backend, GenerateResult, SelectResult


class Echo(Backend):
    """Answers with the last word of the prompt, upper-cased; fails on "boom"."""

    def generate(self, request):
        word = request.prompt.split()[-1]
        if word == "boom:":
            raise RuntimeError("scripted failure")
        return GenerateResult(word.upper())

    def select(self, prompt, choices, method="token_length_normalized"):
        return SelectResult(len(choices) - 1, [0.0] * len(choices))

    def role_text(self, role, content):
        return f"[{role}]", f"[/{role}]"
'''

PROGRAM = """
import sgl


@sgl.function
def shout(s, word, n=1):
    s += "say " + word + ":" + sgl.gen("loud", max_tokens=4)
    s += " " + sgl.select("pick", ["x", "y"])


@sgl.function
def other(s):
    s += "hi"
"""


def sgl_cli(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "sgl.cli", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_check_clean_program_exits_0(tmp_path):
    prog = write(tmp_path, "prog.py", PROGRAM)
    out = sgl_cli("check", prog)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "" and out.stderr == ""


def test_check_reports_diagnostics_and_exits_1(tmp_path):
    prog = write(
        tmp_path,
        "bad.sgl",
        "import sgl\n@sgl.function\ndef p(s):\n    s += sgl.gen('a', max_token=3)\n    s += sgl.select('b', [])\n",
    )
    out = sgl_cli("check", prog)
    assert out.returncode == 1
    lines = out.stderr.splitlines()
    assert (
        lines[0]
        == f"{prog}:4:23: error: unknown argument 'max_token' to gen (did you mean 'max_tokens'?)"
    )
    assert lines[1] == "        s += sgl.gen('a', max_token=3)"
    assert lines[2] == "                          ^~~~~~~~~~~"
    assert lines[3] == f"{prog}:5:26: error: select with empty choices"
    assert lines[-1] == "2 errors"


def test_check_ir_prints_the_program(tmp_path):
    prog = write(tmp_path, "prog.py", PROGRAM)
    out = sgl_cli("check", "--ir", prog, "--fn", "shout")
    assert out.returncode == 0
    assert out.stdout.splitlines() == [
        f"function shout(s, word, n)  # {prog}:6",
        "  s += 'say ' + `word` + ':' + gen loud(max_tokens=4)",
        "  s += ' ' + select pick(['x', 'y'])",
    ]


def test_check_missing_file_and_no_function(tmp_path):
    assert sgl_cli("check", tmp_path / "nope.py").returncode == 2
    plain = write(tmp_path, "plain.py", "x = 1\n")
    out = sgl_cli("check", plain)
    assert out.returncode == 1 and "1:1: error: no @sgl.function in this program" in out.stderr


def test_run_once_with_args(tmp_path):
    prog = write(tmp_path, "prog.py", PROGRAM)
    backend = write(tmp_path, "echo_backend.py", BACKEND)
    out = sgl_cli(
        "run",
        prog,
        "--fn",
        "shout",
        "--arg",
        "word=hello",
        "--arg",
        "n=2",
        "--backend",
        f"{backend}:Echo",
    )
    assert out.returncode == 0, out.stderr
    (record,) = [json.loads(line) for line in out.stdout.splitlines()]
    assert record == {
        "args": {"word": "hello", "n": 2},
        "variables": {"loud": "HELLO:", "pick": "y"},
        "text": "say hello:HELLO: y",
        "error": None,
    }


def test_run_batch_to_file_keeps_order_and_reports_failures(tmp_path):
    prog = write(tmp_path, "prog.py", PROGRAM)
    backend = write(tmp_path, "echo_backend.py", BACKEND)
    batch = tmp_path / "args.jsonl"
    words = ["a", "b", "boom", "c"]
    batch.write_text("".join(json.dumps({"word": w}) + "\n" for w in words))
    out_path = tmp_path / "results.jsonl"
    out = sgl_cli(
        "run",
        prog,
        "--fn",
        "shout",
        "--batch",
        batch,
        "--out",
        out_path,
        "--threads",
        "3",
        "--backend",
        f"{backend}:Echo",
    )
    assert out.returncode == 1  # one run failed
    assert "3/4 runs ok" in out.stderr
    records = [json.loads(line) for line in out_path.read_text().splitlines()]
    assert [r["args"]["word"] for r in records] == words
    assert [r["variables"].get("loud") for r in records] == ["A:", "B:", None, "C:"]
    assert records[2]["text"] == "say boom:" and "scripted failure" in records[2]["error"]


def test_run_needs_fn_when_several_and_refuses_bad_programs(tmp_path):
    prog = write(tmp_path, "prog.py", PROGRAM)
    backend = write(tmp_path, "echo_backend.py", BACKEND)
    out = sgl_cli("run", prog, "--backend", f"{backend}:Echo")
    assert out.returncode == 2 and "several SGL functions (shout, other)" in out.stderr
    bad = write(
        tmp_path,
        "bad.py",
        "import sgl\n@sgl.function\ndef p(s):\n    s += sgl.gen('a', max_token=3)\n",
    )
    out = sgl_cli("run", bad, "--backend", f"{backend}:Echo")
    assert out.returncode == 1 and "unknown argument 'max_token'" in out.stderr and out.stdout == ""


def test_version_and_help():
    out = sgl_cli("--version")
    assert out.returncode == 0 and out.stdout.startswith("sgl ")
    out = sgl_cli("--help")
    assert "run" in out.stdout and "check" in out.stdout


def test_python_dash_m_sgl_is_the_sgl_command(tmp_path):
    prog = write(tmp_path, "prog.py", PROGRAM)
    out = subprocess.run([sys.executable, "-m", "sgl", "check", str(prog)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    bad = subprocess.run([sys.executable, "-m", "sgl", "no-such-command"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode != 0 and "no-such-command" in bad.stderr
