"""The firmware application package (see DESIGN.md for the layout)."""
