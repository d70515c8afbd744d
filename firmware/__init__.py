"""The firmware application package (docs/design.md: the loop and the practices)."""
