"""Shared helpers for system tests: run MicroPython scripts, find free ports."""
import json
import os
import socket
import subprocess

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
MICROPYTHON = os.path.join(ROOT, ".venv", "bin", "micropython")
MICROPYPATH = ":".join([ROOT, os.path.join(ROOT, "host_tests", "shims"), os.path.join(ROOT, "lib"),
                        ".frozen"])


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def mp_env(**extra):
    env = dict(os.environ, MICROPYPATH=MICROPYPATH)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_mp(script, *args, timeout=60, heap=None, env=None):
    """Run a MicroPython script (path relative to host_tests/system/mp or absolute) to the end;
    returns CompletedProcess. Fails the test clearly when micropython is missing."""
    if not os.path.exists(MICROPYTHON):
        raise AssertionError("MicroPython unix port missing at %s: run `make deps`" % MICROPYTHON)
    path = script if os.path.isabs(script) else os.path.join(HERE, "mp", script)
    cmd = [MICROPYTHON] + (["-X", "heapsize=%s" % heap] if heap else []) + [path] + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env=env or mp_env(), cwd=ROOT)


def run_mp_spec(script, spec, **kw):
    """run_mp with a JSON spec handed over in a file: this micropython build aborts with
    'uncaught NLR' when an argv string is longer than about 256 bytes."""
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(spec, f)
    try:
        return run_mp(script, f.name, **kw)
    finally:
        os.unlink(f.name)


def json_lines(stdout):
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
