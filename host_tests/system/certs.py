"""The tests' PKI comes from tools/pki.py (the local clouds use the same code)."""
from tools.pki import make_certs  # noqa: F401
