"""The voice library on disk: entries, names, import/export."""
