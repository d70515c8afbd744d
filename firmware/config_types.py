"""What a loaded configuration is: the `Config` object, `ConfigError` and the file names (the
platform list is firmware/platforms.py's). Shared by firmware/config.py (loading, resident)
and firmware/config_check.py (the checks, start-up only), so the checker never imports the
loader that loads it.
config.py re-exports every name: callers use `config.X`.
"""

FILE = "config.json"
SECRETS_KEY = "secrets_file"
SECRETS_FILE = "secrets.json"  # the name `make provision` and Improv Wi-Fi use by default


class ConfigError(Exception):
    """The config cannot start the firmware; `problems` lists every reason, one line each."""

    def __init__(self, problems):
        super().__init__("\n".join(problems))
        self.problems = problems


def join(root, name):
    """`name` under the data root; a root of None, "" or "." is the current directory."""
    return name if not root or root == "." else root.rstrip("/") + "/" + name


class Config:
    def __init__(self, raw, root, warnings):
        self.raw = raw
        self.root = root
        self.warnings = warnings
        ca = raw["cloud"].get("ca_file")
        self.ca_path = join(root, ca) if ca else None

    def get(self, path, default=None):
        node = self.raw
        for part in path.split("."):
            if not isinstance(node, dict) or part not in node:
                return default
            node = node[part]
        return node
