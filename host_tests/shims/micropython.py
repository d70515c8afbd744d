"""CPython stand-in for the `micropython` module (MicroPython's builtin wins on the unix port);
the definitions live in tools/cpython_compat.py, which host tools use without this path."""
from tools.cpython_compat import (  # noqa: F401
    alloc_emergency_exception_buf,
    const,
    heap_lock,
    heap_unlock,
    mem_info,
    mem_peak,
    native,
    schedule,
    viper,
)
