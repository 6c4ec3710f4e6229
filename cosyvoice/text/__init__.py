"""Text processing both engines share: markup, normalization, the G2P dictionary, splitting into pieces."""
