# Runs the dual-runtime unit tests under the MicroPython unix port.
# Usage: micropython host_tests/mp_runner.py [-v] [-d] [test_file.py[::test_name] ...]
# -d lists the 20 slowest tests (wall time; the edit loop's budget, not an assertion).
# Imports each host_tests/unit/test_*.py module and calls every module-level test_* function,
# exactly the functions pytest collects on CPython. Prints "micropython: N passed, M failed".
import gc
import os
import sys
import time

HERE = __file__.rsplit("/", 1)[0] if "/" in __file__ else "."
UNIT = HERE + "/unit"


def _test_files(args):
    if args:
        return [a.rsplit("/", 1)[-1] for a in args]
    return sorted(n for n in os.listdir(UNIT) if n.startswith("test_") and n.endswith(".py"))


def _run_module(modname, only):
    passed = failed = 0
    mod = __import__(modname)
    names = sorted(n for n in dir(mod) if n.startswith("test_"))
    for name in names:
        if only and name not in only:
            continue
        fn = getattr(mod, name)
        if not callable(fn):
            continue
        if VERBOSE:  # a file that hangs then names its test (mp_parallel runs with -v)
            print("RUN", modname + "::" + name)
        t0 = time.ticks_ms()
        try:
            fn()
            TIMES.append((time.ticks_diff(time.ticks_ms(), t0), modname + "::" + name))
            passed += 1
            if VERBOSE:
                print("PASS", modname + "::" + name)
        except Exception as e:  # report and go on: one broken test must not hide the rest
            failed += 1
            print("FAIL", modname + "::" + name)
            sys.print_exception(e)
    return passed, failed


VERBOSE = "-v" in sys.argv
TIMES = []  # (ms, test) of the tests that passed


def _forget(keep):
    """Drop the modules a test file loaded (its own, the firmware's, their tables and caches)
    and collect: each file starts with the heap the runner had, as under pytest's fresh
    imports. Kept, they filled the heap so that every allocation ran a full collection over
    it (the unit run took 4+ minutes instead of 30 s, mostly in Ed25519's bignums)."""
    for name in list(sys.modules):
        if name not in keep:
            del sys.modules[name]
    gc.collect()


def main():
    sys.path.insert(0, UNIT)
    args = [a for a in sys.argv[1:] if a not in ("-v", "-d")]
    only = {}  # file -> the test names asked for (none: all of them)
    for a in args:
        if "::" in a:
            f, name = a.split("::", 1)
            only.setdefault(f.rsplit("/", 1)[-1], []).append(name)
    files = _test_files([a.split("::", 1)[0] for a in args])
    before = set(sys.modules)
    passed = failed = 0
    for fname in files:
        try:
            p, f = _run_module(fname[:-3], only.get(fname))
        except Exception as e:  # an import error fails the file, visibly
            p, f = 0, 1
            print("FAIL", fname, "(import)")
            sys.print_exception(e)
        _forget(before)
        passed += p
        failed += f
    if "-d" in sys.argv:
        for ms, name in sorted(TIMES, reverse=True)[:20]:
            print("%7d ms  %s" % (ms, name))
    print("micropython: %d passed, %d failed" % (passed, failed))
    if failed or not passed:
        sys.exit(1)


main()
