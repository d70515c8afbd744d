"""The import structure, read from the source (every import, also those inside functions):
no cycle among firmware modules (a lazy import does not make a cycle go away), no private
name imported from another module, MQTT without the HTTP client, and no host tool that
needs the test tree (host_tests/) to import."""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _module_name(path):
    rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
    return rel[:-9] if rel.endswith(".__init__") else rel


def _sources(top):
    for d, _, files in os.walk(os.path.join(ROOT, top)):
        for f in sorted(files):
            if f.endswith(".py"):
                yield os.path.join(d, f)


def _is_module(name):
    p = os.path.join(ROOT, *name.split("."))
    return os.path.isfile(p + ".py") or os.path.isfile(os.path.join(p, "__init__.py"))


def _imports(path):
    """(module imported, names taken from it) for every import statement in the file."""
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name, ()
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = []
            for a in node.names:
                sub = node.module + "." + a.name
                if _is_module(sub):
                    yield sub, ()  # `from package import module`
                else:
                    names.append(a.name)
            if names:
                yield node.module, tuple(names)


def _firmware_graph():
    graph = {}
    for path in _sources("firmware"):
        me = _module_name(path)
        graph[me] = {m for m, _ in _imports(path) if m.startswith("firmware.") and m != me}
    return graph


def _cycles(graph):
    found, state = [], {}

    def visit(m, stack):
        state[m] = 1
        stack.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                found.append(stack[stack.index(n):] + [n])
            elif n not in state:
                visit(n, stack)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [])
    return found


def test_no_import_cycle_among_firmware_modules():
    cycles = _cycles(_firmware_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_private_name_imported_from_another_module():
    bad = []
    for top in ("firmware", "tools", "boot.py", "main.py"):
        paths = [os.path.join(ROOT, top)] if top.endswith(".py") else _sources(top)
        for path in paths:
            for mod, names in _imports(path):
                for n in names:
                    if n.startswith("_") and not n.startswith("__"):
                        bad.append("%s: from %s import %s" % (os.path.relpath(path, ROOT), mod, n))
    assert not bad, "\n".join(bad)


def test_mqtt_does_not_load_the_http_client():
    graph = _firmware_graph()
    assert "firmware.net.conn" in graph["firmware.net.mqtt"]
    assert "firmware.net.http" not in graph["firmware.net.mqtt"]


def test_no_tool_imports_from_the_test_tree():
    test_only = {f[:-3] for d in ("host_tests/shims", "host_tests/unit")
                 for f in os.listdir(os.path.join(ROOT, d)) if f.endswith(".py")}
    test_only -= {"micropython"}  # MicroPython's own module name; the tools get theirs from
    bad = []                      # tools/cpython_compat.py
    for path in _sources("tools"):
        text = open(path).read()
        if "sys.path" in text and '"host_tests", "shims"' in text:
            bad.append("%s: puts host_tests/shims on sys.path" % os.path.relpath(path, ROOT))
        for mod, _ in _imports(path):
            top = mod.split(".")[0]
            if top == "host_tests" or top in test_only:
                bad.append("%s: imports %s" % (os.path.relpath(path, ROOT), mod))
    assert not bad, "\n".join(bad)


def test_state_files_are_replaced_by_one_helper():
    # write-temp-then-rename lives in firmware/statefile.py; the outbox keeps its own journal
    # (firmware/outbox.py names its files), outbox_v1.py is the pinned old-format writer and
    # safemode.py, which boot.py imports first, imports nothing from the firmware
    own = {"firmware/statefile.py", "firmware/outbox.py", "firmware/outbox_v1.py",
           "firmware/safemode.py"}
    bad = [os.path.relpath(p, ROOT) for p in _sources("firmware")
           if os.path.relpath(p, ROOT) not in own and '".tmp"' in open(p).read()]
    assert not bad, "write-temp-then-rename outside firmware/statefile.py: %s" % bad


def test_no_firmware_class_grows_past_30_methods():
    # a class with every concern of a platform in it (Xyte had 50 methods) is split along
    # them, as firmware/clouds/xyte*.py are
    big = []
    for path in _sources("firmware"):
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.ClassDef):
                n = sum(isinstance(x, (ast.FunctionDef, ast.AsyncFunctionDef))
                        for x in node.body)
                if n > 30:
                    big.append("%s: %s has %d methods" % (os.path.relpath(path, ROOT),
                                                          node.name, n))
    assert not big, "\n".join(big)
