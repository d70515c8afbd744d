"""Type-check the firmware against the ESP32 MicroPython stubs, not CPython's stdlib.

mypy gets the stubs' stdlib as its typeshed and only the stub modules (machine, network,
esp32, time, ...) on its path, so an API the ESP32 port lacks is an error here.
"""
import os
import subprocess
import sys
import sysconfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SITE = sysconfig.get_paths()["purelib"]
STUB_DIR = os.path.join(ROOT, "build", "stubs")
DISTS = ("micropython_esp32_stubs", "micropython_stdlib_stubs")


def stub_files():
    for name in os.listdir(SITE):
        if name.endswith(".dist-info") and name.startswith(DISTS):
            with open(os.path.join(SITE, name, "RECORD")) as record:
                for line in record:
                    path = line.split(",", 1)[0]
                    if path.endswith(".pyi") and not path.startswith(("stdlib/", "stubs/")):
                        yield path


def link_stubs():
    for rel in stub_files():
        dst = os.path.join(STUB_DIR, rel)
        if not os.path.lexists(dst):
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            os.symlink(os.path.join(SITE, rel), dst)


def main(targets):
    link_stubs()
    env = dict(os.environ, MYPYPATH=STUB_DIR)
    cmd = [sys.executable, "-m", "mypy", "--custom-typeshed-dir", SITE, "--no-site-packages",
           "--config-file", os.path.join(ROOT, "pyproject.toml")] + targets
    return subprocess.call(cmd, cwd=ROOT, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or ["firmware", "boot.py", "main.py"]))
