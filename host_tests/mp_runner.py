# Runs the dual-runtime unit tests under the MicroPython unix port.
# Usage: micropython host_tests/mp_runner.py [-v] [test_file.py[::test_name] ...]
# Imports each host_tests/unit/test_*.py module and calls every module-level test_* function,
# exactly the functions pytest collects on CPython. Prints "micropython: N passed, M failed".
import os
import sys

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
        try:
            fn()
            passed += 1
            if VERBOSE:
                print("PASS", modname + "::" + name)
        except Exception as e:  # report and go on: one broken test must not hide the rest
            failed += 1
            print("FAIL", modname + "::" + name)
            sys.print_exception(e)
    return passed, failed


VERBOSE = "-v" in sys.argv


def main():
    sys.path.insert(0, UNIT)
    args = [a for a in sys.argv[1:] if a != "-v"]
    only = {}  # file -> the test names asked for (none: all of them)
    for a in args:
        if "::" in a:
            f, name = a.split("::", 1)
            only.setdefault(f.rsplit("/", 1)[-1], []).append(name)
    files = _test_files([a.split("::", 1)[0] for a in args])
    passed = failed = 0
    for fname in files:
        try:
            p, f = _run_module(fname[:-3], only.get(fname))
        except Exception as e:  # an import error fails the file, visibly
            p, f = 0, 1
            print("FAIL", fname, "(import)")
            sys.print_exception(e)
        passed += p
        failed += f
    print("micropython: %d passed, %d failed" % (passed, failed))
    if failed or not passed:
        sys.exit(1)


main()
