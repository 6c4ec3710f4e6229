"""Audio in and out: prompt recordings, mastering and encoding."""
