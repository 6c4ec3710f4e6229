"""CosyVoice Studio: a self-hosted zero-shot voice-cloning service."""

__version__ = "0.1.0"
