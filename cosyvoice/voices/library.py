"""The voice library: voices saved once and reused by every front end (UI, CLI, /v1 API).

On disk, under --voices-dir (default voices/, never inside the model dir), one folder per voice,
named by its id (names never touch the file system):

    voices/<id>/voice.json                 id, name, created, duration, sha256, language, notes, transcript
    voices/<id>/prompt.wav                 the prompt as the service hears it: decoded, mono, trimmed, float32
    voices/<id>/features/<identity>.npz    engine features per engine + model identity (no pickle)
    voices/.generation                     rewritten on every change, so other processes notice it

A voice has one identity, its id; a name is a label, unique as a reader sees it and never an id
(cosyvoice.voices.names). `resolve(ref)` turns what a user typed into one entry, once: an id exactly,
else a name; `get(id)` is exact. Other words kept apart: the *library* is this folder, *entries*
are all its folders (broken ones listed with the reason), *usable entries* the readable ones; the
service's in-memory feature cache is not the library.

Every write is whole or not at all: a voice is built in a hidden temp folder (flock-ed while its
writer lives) and renamed into place; voice.json and feature files are replaced atomically; a full
disk is a StorageFullError with nothing left behind. The name check and the rename happen under one
file lock, so the CLI and the server agree. Lookups use an index re-read only when the folder or
.generation changes (or after INDEX_MAX_AGE_S, for hand edits). Files from outside (imports, stored
features) are read within limits (cosyvoice.voices.archive).
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import json
import math
import os
import re
import shutil
import tempfile
import threading
import time
import unicodedata
import uuid
import zipfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
from loguru import logger

from cosyvoice.voices import archive as voice_archive
from cosyvoice.audio.prompt import MAX_SECONDS, load_prompt_audio, prompt_from_samples
from cosyvoice.engines.base import Engine, PromptAudio, Voice
from cosyvoice.errors import StorageFullError, StudioError, UserInputError
from cosyvoice.ops.atomic import atomic_file
from cosyvoice.voices.names import (MAX_NAME_CHARS, check_stored_name, is_voice_id, looks_like_id, name_key,  # noqa: F401
                          new_voice_id, validate_name)

MAX_NOTES_CHARS = 500
MAX_TRANSCRIPT_CHARS = 300
MAX_ARCHIVE_BYTES = voice_archive.MAX_ARCHIVE_BYTES
MAX_ARCHIVE_MEMBERS = voice_archive.MAX_ARCHIVE_MEMBERS
MAX_STORED_SECONDS = 3600.0             # a duration read from voice.json beyond this is not a prompt's
META_FILE, AUDIO_FILE, FEATURES_DIR = "voice.json", "prompt.wav", "features"
GENERATION_FILE = ".generation"
IDENTITY_KEY = "__identity__"           # stored inside each npz: which engine + model made it
TEMP_PREFIX, TRASH_PREFIX = ".tmp-", ".trash-"
INDEX_MAX_AGE_S = 10.0                  # a hand edit of a voice.json is seen within this
MIN_ORPHAN_AGE_S = 2.0                  # an unlocked temp folder younger than this may be a save just starting
FEATURE_FILE = re.compile(r"[0-9a-f]{16}\.npz")


class VoiceNotFound(UserInputError):
    """The named voice is not in the library (or was deleted)."""


class VoiceNameTaken(UserInputError):
    """Another voice already has this name (or one a reader could mistake for it)."""


class VoiceLibraryError(StudioError):
    """The library folder itself cannot be used (permissions, disk, a bad --voices-dir)."""


@dataclass
class VoiceEntry:
    id: str
    name: str
    created: str
    duration: float
    sha256: str
    language: str = ""
    notes: str = ""
    transcript: str = ""
    sample_rate: int = 0
    folder: Path | None = field(default=None, repr=False)
    problem: str | None = None           # set on a broken entry: why it cannot be used

    @property
    def broken(self) -> bool:
        return self.problem is not None

    def metadata(self) -> dict:
        data = asdict(self)
        data.pop("folder"), data.pop("problem")
        return data

    @property
    def saved_folder(self) -> Path:
        """The entry's folder in the library; only an entry still being staged has none."""
        if self.folder is None:
            raise ValueError(f"voice {self.id} is not in the library yet")
        return self.folder

    @property
    def audio_path(self) -> Path:
        return self.saved_folder / AUDIO_FILE


def check_voices_dir(voices_dir: Path, model_dir: Path | None) -> None:
    """Refuse a voices dir inside the model dir: model dirs are replaced whole on upgrade."""
    if model_dir is None:
        return
    voices, model = Path(voices_dir).resolve(), Path(model_dir).resolve()
    if voices == model or model in voices.parents:
        raise VoiceLibraryError(f"--voices-dir {voices_dir} is inside the model dir {model_dir}; keep saved "
                                f"voices outside it (the default is voices/ in the app folder).")


def _feature_file(identity: str) -> str:
    return hashlib.sha1(identity.encode("utf-8")).hexdigest()[:16] + ".npz"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_json_atomic(path: Path, data: dict) -> None:
    with atomic_file(path, "w", make_parents=False) as handle:
        json.dump(data, handle, ensure_ascii=False, indent=1)


def _write_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(exist_ok=True)     # not parents: a voice deleted meanwhile must not reappear
    with atomic_file(path, make_parents=False) as handle:
        # numpy's stub types **kwds as if a key could be its `allow_pickle` flag; ours are feature names.
        np.savez(handle, **arrays)  # type: ignore[arg-type]


def _write_wav(path: Path, samples: np.ndarray, rate: int) -> None:
    """Encoded in memory, written with Python's I/O: a full disk is an OSError with its errno
    (libsndfile's own write error is a RuntimeError that says neither)."""
    buffer = io.BytesIO()
    # float32 keeps the samples bit-exact, so features recomputed later equal the first ones
    sf.write(buffer, samples, rate, format="WAV", subtype="FLOAT")
    with open(path, "wb") as handle:
        handle.write(buffer.getbuffer())
        handle.flush()
        os.fsync(handle.fileno())


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Arrays of an npz, every header checked against the limits first and nothing unpickled."""
    return voice_archive.read_npz(path)


def _text(meta: dict, key: str, default: str | None = None, limit: int = 1000) -> str:
    value = meta.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"{key!r} is {'missing' if value is None else 'not text'}")
    if len(value) > limit:
        raise ValueError(f"{key!r} is {len(value)} characters long (at most {limit})")
    return value


def _number(meta: dict, key: str, default: float | None, high: float) -> float:
    """A number from voice.json: finite and in [0, high] (NaN, inf, 1e400 and "abc" are refused)."""
    value = meta.get(key, default)
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{key!r} is not a number ({str(value)[:30]!r})") from None
    if not math.isfinite(number) or not 0 <= number <= high:
        raise ValueError(f"{key!r} is {str(value)[:30]!r}, not a finite number from 0 to {high:g}")
    return number


def _created(meta: dict) -> str:
    created = _text(meta, "created", limit=64)
    try:
        datetime.fromisoformat(created).timestamp()
    except (ValueError, OverflowError, OSError):
        raise ValueError(f"'created' is {created[:40]!r}, not a date and time (ISO 8601)") from None
    return created


def _entry_from_meta(folder: Path, meta: dict) -> VoiceEntry:
    """A voice.json checked field by field; anything unusable is a ValueError saying which field."""
    if not isinstance(meta, dict):
        raise ValueError("voice.json is not an object")
    entry = VoiceEntry(id=_text(meta, "id", limit=64), name=check_stored_name(meta.get("name")),
                       created=_created(meta), duration=round(_number(meta, "duration", None, MAX_STORED_SECONDS), 3),
                       sha256=_text(meta, "sha256", limit=64), language=_text(meta, "language", "", 16),
                       notes=_text(meta, "notes", "", MAX_NOTES_CHARS),
                       transcript=_text(meta, "transcript", "", MAX_TRANSCRIPT_CHARS),
                       sample_rate=int(_number(meta, "sample_rate", 0, 10**6)), folder=folder)
    if entry.id != folder.name:
        raise ValueError(f"voice.json names id {entry.id!r} but lives in folder {folder.name!r}")
    return entry


def _in_use(folder: Path) -> bool:
    """Whether a live writer holds this temp folder's lock (a crashed one's lock died with it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)


class VoiceLibrary:
    """The saved voices under one folder. Safe to share between threads and between processes."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._lock = threading.Lock()            # one writer at a time in this process (flock across them)
        self._index_lock = threading.Lock()
        self._index: dict[str, VoiceEntry] = {}
        self._index_stamp: tuple | None = None
        self._index_time = 0.0
        self._names: tuple[dict, dict[str, list[VoiceEntry]]] | None = None
        self._warned: set[tuple[str, str]] = set()
        self.clean_temp()                        # a save that crashed last time leaves nothing behind

    # ---- the index --------------------------------------------------------------------------------
    def _stamp(self) -> tuple | None:
        """What changes whenever the library does: the folder (voices added, removed) and .generation
        (rewritten by every change, renames included, in any process)."""
        try:
            folder = self.root.stat()
        except OSError:
            return None
        try:
            generation = (self.root / GENERATION_FILE).read_bytes()[:64]
        except OSError:
            generation = b""
        return folder.st_ino, folder.st_mtime_ns, generation

    def _current(self) -> dict[str, VoiceEntry]:
        """{id: entry}, re-read from disk only when the stamp changed (or the index is old)."""
        stamp = self._stamp()
        with self._index_lock:
            fresh = time.monotonic() - self._index_time < INDEX_MAX_AGE_S
            if stamp is not None and stamp == self._index_stamp and fresh:
                return self._index
        index = self._scan()
        with self._index_lock:
            self._index, self._index_stamp, self._index_time = index, stamp, time.monotonic()
        return index

    def _scan(self) -> dict[str, VoiceEntry]:
        try:
            folders = [f for f in self.root.iterdir() if not f.name.startswith(".") and f.is_dir()]
        except OSError:
            return {}
        return {folder.name: self._read(folder) for folder in folders}

    def _changed(self) -> None:
        """Tell every process (this one included) that the library changed; best effort, the change
        itself has already happened."""
        with self._index_lock:
            self._index_stamp = None
        try:
            with atomic_file(self.root / GENERATION_FILE, "w", make_parents=False) as handle:
                handle.write(uuid.uuid4().hex)
        except OSError as err:
            logger.bind(req="-").warning(f"voice library: could not mark {self.root} as changed ({err}); other "
                                         f"processes see the change within {INDEX_MAX_AGE_S:.0f} s")

    # ---- reading ----------------------------------------------------------------------------------
    def entries(self) -> list[VoiceEntry]:
        """Every folder of the library, newest first; broken ones carry `problem` (logged once as a WARNING)."""
        return sorted(self._current().values(), key=lambda e: e.created, reverse=True)

    def usable_entries(self) -> list[VoiceEntry]:
        """The voices a request can use: every entry that is not broken."""
        return [entry for entry in self.entries() if not entry.broken]

    def _read(self, folder: Path) -> VoiceEntry:
        try:
            with open(folder / META_FILE, "rb") as handle:
                raw = handle.read(voice_archive.MAX_META_BYTES + 1)
            if len(raw) > voice_archive.MAX_META_BYTES:
                raise ValueError(f"{META_FILE} is over {voice_archive.MAX_META_BYTES // 1024} KB")
            entry = _entry_from_meta(folder, json.loads(raw.decode("utf-8")))
            if not (folder / AUDIO_FILE).is_file():
                raise ValueError(f"{AUDIO_FILE} is missing")
            return entry
        except (OSError, ValueError, KeyError, TypeError, RecursionError, UserInputError) as err:
            problem = f"{type(err).__name__}: {err}"[:300]
            if (folder.name, problem) not in self._warned:
                self._warned.add((folder.name, problem))
                logger.bind(req="-").warning(f"voice library: broken voice folder {folder} ({problem}); it is "
                                             f"listed as broken: delete it by its id or restore it from an export")
            return VoiceEntry(id=folder.name, name=folder.name, created="", duration=0.0, sha256="",
                              folder=folder, problem=problem)

    def get(self, voice_id: str) -> VoiceEntry:
        """The voice with exactly this id (names are `resolve`'s)."""
        entry = self._current().get(voice_id) if isinstance(voice_id, str) else None
        return self._usable(entry, voice_id)

    def resolve(self, ref: object) -> VoiceEntry:
        """What a user typed, resolved once: an existing id exactly, else a name (compared as
        `name_key` sees it). The caller passes on `entry.id`, never the name again."""
        if not isinstance(ref, str) or not ref.strip():
            raise VoiceNotFound("No voice was named. Pick a saved voice (GET /v1/audio/voices lists them).")
        ref = unicodedata.normalize("NFC", ref.strip())
        index = self._current()
        if ref in index or is_voice_id(ref):
            return self._usable(index.get(ref), ref)
        matches = self._named(index).get(name_key(ref), [])
        if len(matches) > 1:                   # only possible with folders written before names were unique
            ids = ", ".join(sorted(e.id for e in matches))
            raise UserInputError(f"The name {ref[:64]!r} matches {len(matches)} saved voices ({ids}); name the "
                                 f"voice by its id, or rename one of them.")
        if matches:
            return matches[0]
        return self._usable(None, ref)

    def _named(self, index: dict[str, VoiceEntry]) -> dict[str, list[VoiceEntry]]:
        """{name key: usable entries}, built once per index (old id-like names are reachable by id only)."""
        cached = self._names
        if cached is not None and cached[0] is index:
            return cached[1]
        names: dict[str, list[VoiceEntry]] = {}
        for entry in index.values():
            if not entry.broken and not looks_like_id(entry.name):
                names.setdefault(name_key(entry.name), []).append(entry)
        self._names = (index, names)
        return names

    def _usable(self, entry: VoiceEntry | None, ref: object) -> VoiceEntry:
        if entry is None:
            names = ", ".join(repr(e.name) for e in self.usable_entries())[:300] or "none yet"
            raise VoiceNotFound(f"There is no saved voice {str(ref)[:64]!r}. Saved voices: {names}.")
        if entry.broken:
            raise UserInputError(f"Voice {entry.id!r} is damaged on disk ({entry.problem}); delete it and save it "
                                 f"again.")
        return entry

    # ---- writing ----------------------------------------------------------------------------------
    def _unwritable(self, err: OSError, what: str) -> StudioError:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            return StorageFullError(f"The voice library {self.root} is full (no space left on its disk), so {what} "
                                    f"was not saved and nothing of it was kept. Free some space there, or choose "
                                    f"another --voices-dir.")
        return VoiceLibraryError(f"The voice library {self.root} cannot be written ({err.strerror or err}), so "
                                 f"{what} was not saved. Fix its permissions or choose another --voices-dir.")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time, in this process (thread lock) and across processes (flock)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            handle = open(self.root / ".lock", "a")
        except OSError as err:
            raise self._unwritable(err, "the change") from err
        with self._lock, handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextmanager
    def _staging(self, what: str) -> Iterator[Path]:
        """A hidden temp folder, locked while this writer lives and removed on any failure; a write
        error becomes StorageFullError (disk full) or VoiceLibraryError."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            folder = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=self.root))
        except OSError as err:
            raise self._unwritable(err, what) from err
        fd = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield folder
        except OSError as err:
            shutil.rmtree(folder, ignore_errors=True)
            raise self._unwritable(err, what) from err
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        finally:
            os.close(fd)

    def _check_free(self, name: str, except_id: str | None = None) -> None:
        """Refuse a name that a reader could mistake for another voice's name or for any id."""
        key = name_key(name)
        for entry in self._current().values():
            if entry.id == except_id:
                continue
            if name_key(entry.id) == key:
                raise VoiceNameTaken(f"The name {name!r} is taken: it is the id of another voice. Choose another name.")
            if not entry.broken and name_key(entry.name) == key:
                same = "" if entry.name == name else f" (it reads the same as {entry.name!r})"
                raise VoiceNameTaken(f"The name {name!r} is taken by another saved voice{same}, id {entry.id}. "
                                     f"Choose another name, or delete or rename that voice first.")

    def _place(self, folder: Path, entry: VoiceEntry) -> VoiceEntry:
        """The last step of a save: the name checked again and the folder renamed in, under the lock."""
        with self._locked():
            self._check_free(entry.name)
            target = self.root / entry.id
            os.rename(folder, target)       # a folder rename: the voice appears whole or not at all
            self._changed()
        return replace(entry, folder=target)

    def add(self, name: str, audio_path: str | Path, transcript: str = "", language: str = "", notes: str = "",
            engine: Engine | None = None, voice: Voice | None = None) -> VoiceEntry:
        """Save a prompt recording as a voice; with an engine, its features are stored too.

        The recording passes the same checks as any prompt (format, size, length, silence).
        `voice` (features already extracted from this recording) spares a second extraction.
        """
        name = validate_name(name)
        transcript = _bounded(transcript, "transcript", MAX_TRANSCRIPT_CHARS)
        notes = _bounded(notes, "notes", MAX_NOTES_CHARS)
        language = _bounded(language, "language", 16)
        self._check_free(name)                  # fail fast; checked again under the lock below
        audio = load_prompt_audio(audio_path).audio
        if engine is not None and voice is None:
            voice = engine.prepare_voice(audio, None)
        with self._staging(f"voice {name!r}") as folder:
            _write_wav(folder / AUDIO_FILE, audio.samples, audio.sample_rate)
            entry = VoiceEntry(id=new_voice_id(), name=name,
                               created=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                               duration=round(audio.seconds, 3), sha256=_sha256(folder / AUDIO_FILE),
                               language=language, notes=notes, transcript=transcript,
                               sample_rate=audio.sample_rate)
            _write_json_atomic(folder / META_FILE, entry.metadata())
            if engine is not None and voice is not None:
                self._store_features(folder, engine, voice)
            entry = self._place(folder, entry)
        logger.bind(req="-").info(f"voice library: saved voice {name!r} (id {entry.id}, {entry.duration:.2f} s"
                                  f"{', with transcript' if transcript else ', no transcript'}) in {self.root}")
        return entry

    def _for_change(self, ref: str) -> VoiceEntry:
        """The entry a rename or delete means: an id exactly (broken entries too), else a name."""
        entry = self._current().get(ref) if isinstance(ref, str) else None
        return entry if entry is not None else self.resolve(ref)

    def rename(self, ref: str, new_name: str) -> VoiceEntry:
        new_name = validate_name(new_name)
        with self._locked():
            entry = self._for_change(ref)
            if entry.broken:
                raise UserInputError(f"Voice {entry.id!r} is damaged on disk ({entry.problem}); delete it instead.")
            self._check_free(new_name, except_id=entry.id)
            renamed = replace(entry, name=new_name)
            try:
                _write_json_atomic(entry.saved_folder / META_FILE, renamed.metadata())
            except OSError as err:
                raise self._unwritable(err, f"the new name {new_name!r}") from err
            self._changed()
        logger.bind(req="-").info(f"voice library: renamed voice {entry.name!r} to {new_name!r} (id {entry.id})")
        return renamed

    def delete(self, ref: str) -> VoiceEntry:
        """Remove one voice (an id deletes exactly that voice). Requests already using it keep its
        features in memory and finish normally."""
        with self._locked():
            entry = self._for_change(ref)
            trash = self.root / f"{TRASH_PREFIX}{entry.id}-{uuid.uuid4().hex[:6]}"
            os.rename(entry.saved_folder, trash)      # gone from the library at once; the files go below
            self._changed()
        shutil.rmtree(trash, ignore_errors=True)
        logger.bind(req="-").info(f"voice library: deleted voice {entry.name!r} (id {entry.id})")
        return entry

    def clean_temp(self) -> int:
        """Remove what crashed saves and deletes left: temp folders no live writer holds, and trash."""
        try:
            leftovers = [f for f in self.root.iterdir() if f.name.startswith((TEMP_PREFIX, TRASH_PREFIX))]
        except OSError:
            return 0
        removed = 0
        for folder in leftovers:
            try:
                young = time.time() - folder.stat().st_mtime < MIN_ORPHAN_AGE_S
            except OSError:
                continue
            if folder.name.startswith(TEMP_PREFIX) and (young or _in_use(folder)):
                continue
            shutil.rmtree(folder, ignore_errors=True)
            removed += not folder.exists()
        if removed:
            logger.bind(req="-").warning(f"voice library: removed {removed} unfinished save/delete folder(s) left "
                                         f"in {self.root} by a process that stopped mid-way")
        return removed

    # ---- features ---------------------------------------------------------------------------------
    def _store_features(self, folder: Path, engine: Engine, voice: Voice) -> None:
        identity = engine.feature_identity()
        arrays = {key: np.asarray(value) for key, value in engine.export_voice(voice).items()}
        arrays[IDENTITY_KEY] = np.array(identity)
        _write_npz_atomic(folder / FEATURES_DIR / _feature_file(identity), arrays)

    def stored_audio(self, entry: VoiceEntry) -> PromptAudio:
        samples, rate = sf.read(entry.audio_path, dtype="float32")
        return prompt_from_samples(samples.reshape(-1), int(rate))

    def _stored_features(self, entry: VoiceEntry, engine: Engine, prompt_text: str | None) -> Voice:
        """The stored features for this engine + model; FileNotFoundError when there are none, any
        other problem a ValueError (a file over the limits is never loaded)."""
        identity = engine.feature_identity()
        arrays = read_npz(entry.saved_folder / FEATURES_DIR / _feature_file(identity))
        if str(arrays.pop(IDENTITY_KEY, "")) != identity:
            raise ValueError("the file was made for another engine or model")
        try:
            return engine.import_voice(arrays, prompt_text)
        except (KeyError, TypeError, IndexError, RuntimeError) as err:
            raise ValueError(f"the arrays do not fit {identity} ({type(err).__name__}: {err})") from None

    def load_voice(self, entry: VoiceEntry, engine: Engine, prompt_text: str | None) -> tuple[Voice, str | None]:
        """(voice, notice): stored features when this engine + model made them; otherwise (none yet,
        another model's, or unreadable: over the limits, damaged) they are extracted from the stored
        recording, saved for next time, and the notice says why (the service logs it as a WARNING)."""
        identity = engine.feature_identity()
        problem = None
        try:
            return self._stored_features(entry, engine, prompt_text), None
        except FileNotFoundError:
            if not entry.audio_path.is_file():
                raise VoiceNotFound(f"Voice {entry.name!r} was deleted while this request was loading it.") from None
        except (OSError, ValueError) as err:
            problem = f"its stored features could not be read ({err})"
        others = self._other_identities(entry, identity)
        if problem is None and not others:       # a voice saved by the CLI or another engine: nothing to tell
            voice = self._extract_and_store(entry, engine, prompt_text)
            logger.bind(req="-").info(f"voice library: features for {entry.name!r} on {identity} extracted once "
                                      f"from the stored recording and saved")
            return voice, None
        if problem is None:
            problem = (f"its stored features were made by {', '.join(others)}; this server runs {identity}, so "
                       f"they were recomputed from the stored recording" if others else
                       f"it had no stored features for {identity} yet; they were extracted once from the "
                       f"stored recording")
        else:
            problem += "; they were recomputed from the stored recording"
        voice = self._extract_and_store(entry, engine, prompt_text)
        return voice, f"Voice {entry.name!r}: {problem} and saved, so the next use loads them."

    def _extract_and_store(self, entry: VoiceEntry, engine: Engine, prompt_text: str | None) -> Voice:
        voice = engine.prepare_voice(self._checked_audio(entry), prompt_text)
        try:
            self._store_features(entry.saved_folder, engine, voice)
        except OSError as err:
            logger.bind(req="-").warning(f"voice library: could not store features for {entry.name!r}: {err}")
        return voice

    def _checked_audio(self, entry: VoiceEntry) -> PromptAudio:
        try:
            audio = self.stored_audio(entry)
        except (OSError, RuntimeError, ValueError, sf.LibsndfileError) as err:
            raise VoiceNotFound(f"Voice {entry.name!r} cannot be used: its stored recording is unreadable "
                                f"({err}). Delete it and save it again.") from None
        if entry.sha256 and _sha256(entry.audio_path) != entry.sha256:
            raise UserInputError(f"Voice {entry.name!r} cannot be used: its stored recording does not match its "
                                 f"checksum (damaged on disk). Delete it and save it again.")
        return audio

    def _other_identities(self, entry: VoiceEntry, identity: str) -> list[str]:
        others = []
        for path in sorted((entry.saved_folder / FEATURES_DIR).glob("*.npz")):
            try:
                other = str(read_npz(path)[IDENTITY_KEY])
            except (OSError, ValueError, KeyError):
                continue
            if other != identity:
                others.append(other)
        return others

    # ---- export / import --------------------------------------------------------------------------
    def export_zip(self, ref: str, target: Path) -> Path:
        entry = self.resolve(ref)
        target = Path(target)
        with atomic_file(target) as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.write(entry.saved_folder / META_FILE, META_FILE)
            archive.write(entry.audio_path, AUDIO_FILE)
            for path in sorted((entry.saved_folder / FEATURES_DIR).glob("*.npz")):
                archive.write(path, f"{FEATURES_DIR}/{path.name}")
        return target

    def import_zip(self, archive_path: Path, name: str | None = None) -> VoiceEntry:
        """Add a voice from an export; anything wrong with the archive is refused before the voice
        appears, each size checked before its bytes are made (cosyvoice.voices.archive)."""
        label = Path(archive_path).name
        with self._staging(f"the voice from {label}") as folder:
            meta = self._unpack(Path(archive_path), folder, label)
            entry = self._imported_entry(folder, meta, name, label)
            _write_json_atomic(folder / META_FILE, entry.metadata())
            entry = self._place(folder, entry)
        logger.bind(req="-").info(f"voice library: imported voice {entry.name!r} (id {entry.id}) from {label}")
        return entry

    def _imported_entry(self, folder: Path, meta: dict, name: str | None, label: str) -> VoiceEntry:
        """The unpacked files checked (audio readable and matching its checksum, features plain arrays
        within limits, voice.json complete); a fresh id, since ids are never taken from outside."""
        try:
            meta["name"] = validate_name(name if name is not None else meta.get("name"))
        except UserInputError as err:
            raise UserInputError(f"{label}: {err} Import it with another name.") from None
        try:
            info = sf.info(folder / AUDIO_FILE)
            audio_ok = info.frames > 0 and 8000 <= info.samplerate <= 192000 and info.duration <= MAX_SECONDS + 1
        except (RuntimeError, sf.LibsndfileError):
            audio_ok = False
        if not audio_ok:
            raise UserInputError(f"{label} is not a voice archive: {AUDIO_FILE} is not readable audio of at most "
                                 f"{MAX_SECONDS:.0f} s.")
        if _sha256(folder / AUDIO_FILE) != meta.get("sha256"):
            raise UserInputError(f"{label} is damaged: {AUDIO_FILE} does not match the checksum in {META_FILE}.")
        for path in (folder / FEATURES_DIR).glob("*.npz"):
            try:
                read_npz(path)
            except (OSError, ValueError) as err:
                raise UserInputError(f"{label} is refused: {FEATURES_DIR}/{path.name}: {err}. Nothing was "
                                     f"imported.") from None
        meta["id"] = new_voice_id()
        for key, limit in (("transcript", MAX_TRANSCRIPT_CHARS), ("notes", MAX_NOTES_CHARS), ("language", 16)):
            try:
                meta[key] = _bounded(meta.get(key), key, limit)
            except UserInputError as err:
                raise UserInputError(f"{label} is not a usable voice archive: {err}") from None
        meta.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
        try:
            return _entry_from_meta(self.root / meta["id"], meta)
        except (ValueError, KeyError, TypeError) as err:
            raise UserInputError(f"{label} is not a voice archive: {META_FILE} is unusable ({err}).") from None

    def _unpack(self, archive_path: Path, folder: Path, label: str) -> dict:
        """Extract only the members a voice has, each checked by name, type and size; returns voice.json."""
        try:
            archive = zipfile.ZipFile(archive_path)
        except (OSError, zipfile.BadZipFile) as err:
            raise UserInputError(f"{label} is not a voice archive (not a readable zip: {err}).") from None
        with archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            try:
                voice_archive.check_declared_sizes(members)
                wanted = _voice_members(members, label)
                voice_archive.unpack_into(archive, wanted, folder)
            except ValueError as err:
                raise UserInputError(f"{label} is refused: {err}. Nothing was imported.") from None
        try:
            meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError, RecursionError) as err:
            raise UserInputError(f"{label} is not a voice archive: {META_FILE} is not JSON ({err}).") from None
        if not isinstance(meta, dict):
            raise UserInputError(f"{label} is not a voice archive: {META_FILE} is not an object.")
        return meta


def _voice_members(members: list[zipfile.ZipInfo], label: str) -> dict[str, zipfile.ZipInfo]:
    """The archive's members by name, refusing any file a voice does not have (and links)."""
    wanted = {}
    for member in members:
        name = member.filename
        allowed = name in (META_FILE, AUDIO_FILE) or (
            name.startswith(f"{FEATURES_DIR}/") and FEATURE_FILE.fullmatch(name[len(FEATURES_DIR) + 1:]))
        is_link = (member.external_attr >> 16) & 0o170000 == 0o120000
        if not allowed or is_link or name in wanted:
            raise UserInputError(f"{label} is not a voice archive: it holds {name[:80]!r}, which is not a file a "
                                 f"voice has (voice.json, prompt.wav, features/*.npz); nothing was imported.")
        wanted[name] = member
    if META_FILE not in wanted or AUDIO_FILE not in wanted:
        raise UserInputError(f"{label} is not a voice archive: it lacks {META_FILE} or {AUDIO_FILE}.")
    return wanted


def _bounded(value: object, what: str, limit: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise UserInputError(f"The voice {what} must be text.")
    value = value.strip()
    if len(value) > limit:
        raise UserInputError(f"The voice {what} is {len(value)} characters long; the limit is {limit}.")
    return value
