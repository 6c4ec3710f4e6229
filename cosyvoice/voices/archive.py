"""Reading voice files that came from outside, within limits: export archives and feature npz files.

Every size is checked before the bytes are made: an archive member's declared size (and its real
size while it is unpacked, in case the zip lies), and every array in an npz from its .npy header
(shape and dtype) before it is loaded. A 272 KB zip can otherwise hold a 3 GiB array, and an npz
can declare 10^12 elements. Anything over a limit, or unreadable, is a ValueError naming the
member; the library turns it into the user's message (import) or a re-extraction (a stored voice).
"""
from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

MAX_ARCHIVE_MEMBERS = 16
MAX_ARCHIVE_BYTES = 64 * 2**20          # all members unpacked: a 30 s float WAV plus features is ~10 MB
MAX_META_BYTES = 64 * 2**10             # voice.json
MAX_AUDIO_BYTES = 32 * 2**20            # prompt.wav: 30 s of 48 kHz stereo float is 11.5 MB
MAX_FEATURE_FILE_BYTES = 16 * 2**20     # one features/*.npz
MAX_NPZ_ARRAYS = 32
MAX_ARRAY_BYTES = 16 * 2**20            # one array inside an npz (the largest real one is ~2 MB)
MAX_ARRAY_DIMS = 4


def member_limit(name: str) -> int:
    if name == "voice.json":
        return MAX_META_BYTES
    if name == "prompt.wav":
        return MAX_AUDIO_BYTES
    return MAX_FEATURE_FILE_BYTES


def _mb(size: float) -> str:
    if size >= 2**30:
        return f"{size / 2**30:,.1f} GB"
    return f"{size / 2**20:.1f} MB" if size >= 2**20 else f"{size / 2**10:.0f} KB"


def check_declared_sizes(members: list[zipfile.ZipInfo]) -> None:
    """Refuse an archive by what its directory declares, before anything is unpacked."""
    if len(members) > MAX_ARCHIVE_MEMBERS:
        raise ValueError(f"it holds {len(members)} files (a voice has at most {MAX_ARCHIVE_MEMBERS})")
    for member in members:
        limit = member_limit(member.filename)
        if member.file_size > limit:
            raise ValueError(f"{member.filename[:80]} unpacks to {_mb(member.file_size)}; the limit for it is "
                             f"{_mb(limit)}")
    total = sum(member.file_size for member in members)
    if total > MAX_ARCHIVE_BYTES:
        raise ValueError(f"it unpacks to {_mb(total)}; the limit is {_mb(MAX_ARCHIVE_BYTES)}")


def copy_member(archive: zipfile.ZipFile, member: zipfile.ZipInfo, target: Path) -> None:
    """Unpack one member, counting bytes: more than declared (or than its limit) stops the copy."""
    limit = min(member.file_size, member_limit(member.filename))
    written = 0
    with archive.open(member) as source, open(target, "wb") as sink:
        while block := source.read(1 << 16):
            written += len(block)
            if written > limit:
                raise ValueError(f"{member.filename[:80]} holds more than it declares ({_mb(limit)})")
            sink.write(block)


def _array_header(handle: IO[bytes], label: str) -> tuple[tuple[int, ...], np.dtype]:
    try:
        version = np.lib.format.read_magic(handle)
        readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
        if version not in readers:
            raise ValueError(f"npy format version {version} is not one numpy writes for plain arrays")
        shape, _, dtype = readers[version](handle)      # the header only: no data is read
    except (ValueError, SyntaxError, TypeError, EOFError) as err:
        raise ValueError(f"{label} is not a plain array ({err})") from None
    if dtype.hasobject:
        raise ValueError(f"{label} holds Python objects, which are never loaded")
    if len(shape) > MAX_ARRAY_DIMS or any(not isinstance(n, int) or n < 0 for n in shape):
        raise ValueError(f"{label} declares a shape {shape!r} no voice feature has")
    size = math.prod(shape) * dtype.itemsize
    if size > MAX_ARRAY_BYTES:
        raise ValueError(f"{label} declares {math.prod(shape):,} elements of {dtype} ({_mb(size)}); the limit "
                         f"for one array is {_mb(MAX_ARRAY_BYTES)}")
    return shape, dtype


def check_npz(path: Path) -> None:
    """Every array's header read and checked; nothing loaded."""
    with zipfile.ZipFile(path) as bundle:
        members = bundle.infolist()
        if len(members) > MAX_NPZ_ARRAYS:
            raise ValueError(f"it holds {len(members)} arrays (at most {MAX_NPZ_ARRAYS})")
        for member in members:
            label = f"array {member.filename[:60]!r}"
            if member.file_size > MAX_ARRAY_BYTES + 4096:
                raise ValueError(f"{label} unpacks to {_mb(member.file_size)}; the limit is {_mb(MAX_ARRAY_BYTES)}")
            with bundle.open(member) as handle:
                _array_header(handle, label)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """The arrays of an npz after `check_npz`, never unpickling; any problem is a ValueError."""
    try:
        if Path(path).stat().st_size > MAX_FEATURE_FILE_BYTES:
            raise ValueError(f"the file is over {_mb(MAX_FEATURE_FILE_BYTES)}")
        check_npz(path)
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except zipfile.BadZipFile as err:
        raise ValueError(f"not an npz file ({err})") from None
    except (EOFError, MemoryError) as err:
        raise ValueError(f"the arrays cannot be read ({type(err).__name__})") from None


def unpack_into(archive: zipfile.ZipFile, wanted: dict[str, zipfile.ZipInfo], folder: Path) -> None:
    for name, member in wanted.items():
        target = folder / name
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            copy_member(archive, member, target)
        except (zipfile.BadZipFile, EOFError, NotImplementedError) as err:
            raise ValueError(f"{name} cannot be read ({err})") from None
