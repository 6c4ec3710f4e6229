"""The synthesis service: it admits, validates, resolves the voice, synthesises, saves and reports."""
