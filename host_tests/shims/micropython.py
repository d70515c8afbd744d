"""CPython stand-in for the `micropython` module (MicroPython's builtin wins on the unix port)."""


def const(x):
    return x


def native(f):
    return f


viper = native


def heap_lock():
    return 0


def heap_unlock():
    return 0


def mem_info(*a):
    pass


def mem_peak():
    return 0


def schedule(fn, arg):
    fn(arg)


def alloc_emergency_exception_buf(n):
    pass
