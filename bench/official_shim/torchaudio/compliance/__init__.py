"""torchaudio.compliance: only `kaldi.fbank` (see kaldi.py)."""
from . import kaldi  # noqa: F401
