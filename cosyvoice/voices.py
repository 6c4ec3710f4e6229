"""The voice library: voices saved once and reused by every front end (UI, CLI, /v1 API).

On disk, under --voices-dir (default voices/, never inside the model dir), one folder per voice,
named by its id (names never touch the file system):

    voices/<id>/voice.json                 id, name, created, duration, sha256, language, notes, transcript
    voices/<id>/prompt.wav                 the prompt as the service hears it: decoded, mono, trimmed, float32
    voices/<id>/features/<identity>.npz    engine features per engine + model identity (no pickle)

Every write is whole or not at all: a voice is built in a hidden temp folder and renamed into
place; voice.json and feature files are replaced atomically. The name check and the rename
happen under one lock (a file lock, so the CLI and the server agree), so two saves of one name
cannot both succeed. A folder that cannot be read is listed as broken and skipped with a WARNING.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
import unicodedata
import uuid
import zipfile
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import soundfile as sf
from loguru import logger

from .audio import load_prompt_audio, prompt_from_samples
from .engines.base import Engine, PromptAudio, Voice
from .errors import StudioError, UserInputError
from .outputs import atomic_file

MAX_NAME_CHARS = 64
MAX_NOTES_CHARS = 500
MAX_TRANSCRIPT_CHARS = 300
MAX_ARCHIVE_BYTES = 64 * 2**20          # uncompressed: a 30 s float WAV plus features is ~10 MB
MAX_ARCHIVE_MEMBERS = 16
META_FILE, AUDIO_FILE, FEATURES_DIR = "voice.json", "prompt.wav", "features"
IDENTITY_KEY = "__identity__"           # stored inside each npz: which engine + model made it
TEMP_PREFIX, TRASH_PREFIX = ".tmp-", ".trash-"
STALE_TEMP_S = 3600.0


class VoiceNotFound(UserInputError):
    """The named voice is not in the library (or was deleted)."""


class VoiceNameTaken(UserInputError):
    """Another voice already has this name."""


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
    def audio_path(self) -> Path:
        return self.folder / AUDIO_FILE


def validate_name(name: object) -> str:
    """A voice name a user can type and read back; refuses anything that looks like a path or control."""
    if not isinstance(name, str):
        raise UserInputError("The voice name must be text.")
    name = unicodedata.normalize("NFC", name.strip())
    if not name:
        raise UserInputError("The voice name is empty. Give the voice a name, e.g. 'narrator' or '小王'.")
    if len(name) > MAX_NAME_CHARS:
        raise UserInputError(f"The voice name is {len(name)} characters long; the limit is {MAX_NAME_CHARS}.")
    bad = [c for c in name if not (c.isalnum() or c in " -_.()'")]
    if bad or name.startswith(".") or ".." in name:
        shown = "".join(dict.fromkeys(repr(c)[1:-1] for c in bad)) or "."
        raise UserInputError(f"The voice name {name[:40]!r} has characters a name cannot hold ({shown}). Use "
                             f"letters, digits, spaces and - _ . ( ) ', not starting with a dot.")
    return name


def check_voices_dir(voices_dir: Path, model_dir: Path | None) -> None:
    """Refuse a voices dir inside the model dir: model dirs are replaced whole on upgrade."""
    if model_dir is None:
        return
    voices, model = Path(voices_dir).resolve(), Path(model_dir).resolve()
    if voices == model or model in voices.parents:
        raise VoiceLibraryError(f"--voices-dir {voices_dir} is inside the model dir {model_dir}; keep saved "
                                f"voices outside it (the default is voices/ in the app folder).")


def new_voice_id() -> str:
    return f"voice_{uuid.uuid4().hex[:12]}"


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
        np.savez(handle, **arrays)


def read_npz(path: Path) -> dict[str, np.ndarray]:
    """Arrays of an npz, never unpickling (an object array is an error, not code run)."""
    with np.load(path, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _entry_from_meta(folder: Path, meta: dict) -> VoiceEntry:
    if not isinstance(meta, dict):
        raise ValueError("voice.json is not an object")
    entry = VoiceEntry(id=str(meta["id"]), name=validate_name(meta["name"]), created=str(meta["created"]),
                       duration=float(meta["duration"]), sha256=str(meta["sha256"]),
                       language=str(meta.get("language", "")), notes=str(meta.get("notes", "")),
                       transcript=str(meta.get("transcript", "")), sample_rate=int(meta.get("sample_rate", 0)),
                       folder=folder)
    if entry.id != folder.name:
        raise ValueError(f"voice.json names id {entry.id!r} but lives in folder {folder.name!r}")
    return entry


class VoiceLibrary:
    def __init__(self, root: Path):
        self.root = Path(root)
        self._lock = threading.Lock()
        self._warned: set[tuple[str, str]] = set()

    # ---- reading ----------------------------------------------------------------------------------
    def entries(self) -> list[VoiceEntry]:
        """Every voice, newest first; broken ones carry `problem` (and were logged once as a WARNING)."""
        if not self.root.is_dir():
            return []
        found = []
        for folder in self.root.iterdir():
            if folder.name.startswith(".") or not folder.is_dir():
                continue
            found.append(self._read(folder))
        return sorted(found, key=lambda e: e.created, reverse=True)

    def voices(self) -> list[VoiceEntry]:
        return [entry for entry in self.entries() if not entry.broken]

    def _read(self, folder: Path) -> VoiceEntry:
        try:
            meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
            entry = _entry_from_meta(folder, meta)
            if not (folder / AUDIO_FILE).is_file():
                raise ValueError(f"{AUDIO_FILE} is missing")
            return entry
        except (OSError, ValueError, KeyError, TypeError, UserInputError) as err:
            problem = f"{type(err).__name__}: {err}"
            if (folder.name, problem) not in self._warned:
                self._warned.add((folder.name, problem))
                logger.bind(req="-").warning(f"voice library: skipping broken voice folder {folder} ({problem}); "
                                             f"delete it or restore it from an export")
            return VoiceEntry(id=folder.name, name=folder.name, created="", duration=0.0, sha256="",
                              folder=folder, problem=problem)

    def get(self, name_or_id: str) -> VoiceEntry:
        """The voice with this id or name (names compare case-insensitively)."""
        if not isinstance(name_or_id, str) or not name_or_id.strip():
            raise VoiceNotFound("No voice was named. Pick a saved voice (GET /v1/audio/voices lists them).")
        wanted = unicodedata.normalize("NFC", name_or_id.strip())
        entries = self.entries()
        for entry in entries:
            if entry.id == wanted or (not entry.broken and entry.name.casefold() == wanted.casefold()):
                if entry.broken:
                    raise UserInputError(f"Voice {wanted!r} is damaged on disk ({entry.problem}); save it again.")
                return entry
        names = ", ".join(repr(e.name) for e in entries if not e.broken)[:300] or "none yet"
        raise VoiceNotFound(f"There is no saved voice {wanted[:64]!r}. Saved voices: {names}.")

    # ---- writing ----------------------------------------------------------------------------------
    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time, in this process (thread lock) and across processes (flock)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            handle = open(self.root / ".lock", "a")
        except OSError as err:
            raise VoiceLibraryError(f"The voice library {self.root} cannot be written: {err.strerror or err}. "
                                    f"Fix its permissions or choose another --voices-dir.") from err
        with self._lock, handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _check_free(self, name: str, except_id: str | None = None) -> None:
        for entry in self.voices():
            if entry.name.casefold() == name.casefold() and entry.id != except_id:
                raise VoiceNameTaken(f"The name {name!r} is taken by another saved voice (id {entry.id}). "
                                     f"Choose another name, or delete or rename that voice first.")

    def _temp_folder(self) -> Path:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            return Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=self.root))
        except OSError as err:
            raise VoiceLibraryError(f"The voice library {self.root} cannot be written: {err.strerror or err}. "
                                    f"Fix its permissions or choose another --voices-dir.") from err

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
        loaded = load_prompt_audio(audio_path)
        if engine is not None and voice is None:
            voice = engine.prepare_voice(loaded.audio, None)
        folder = self._temp_folder()
        try:
            audio = loaded.audio
            # float32 keeps the samples bit-exact, so features recomputed later equal the first ones
            sf.write(folder / AUDIO_FILE, audio.samples, audio.sample_rate, format="WAV", subtype="FLOAT")
            entry = VoiceEntry(id=new_voice_id(), name=name,
                               created=datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                               duration=round(audio.seconds, 3), sha256=_sha256(folder / AUDIO_FILE),
                               language=language, notes=notes, transcript=transcript,
                               sample_rate=audio.sample_rate)
            _write_json_atomic(folder / META_FILE, entry.metadata())
            if engine is not None and voice is not None:
                self._store_features(folder, engine, voice)
            with self._locked():
                self._check_free(name)
                target = self.root / entry.id
                os.rename(folder, target)       # a folder rename: the voice appears whole or not at all
            entry.folder = target
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        logger.bind(req="-").info(f"voice library: saved voice {name!r} (id {entry.id}, {entry.duration:.2f} s"
                                  f"{', with transcript' if transcript else ', no transcript'}) in {self.root}")
        return entry

    def rename(self, name_or_id: str, new_name: str) -> VoiceEntry:
        new_name = validate_name(new_name)
        with self._locked():
            entry = self.get(name_or_id)
            self._check_free(new_name, except_id=entry.id)
            old = entry.name
            entry.name = new_name
            _write_json_atomic(entry.folder / META_FILE, entry.metadata())
        logger.bind(req="-").info(f"voice library: renamed voice {old!r} to {new_name!r} (id {entry.id})")
        return entry

    def delete(self, name_or_id: str) -> VoiceEntry:
        """Remove a voice. Requests already using it keep its features in memory and finish normally."""
        with self._locked():
            try:
                entry = self.get(name_or_id)
            except UserInputError:          # a broken entry can still be deleted by its id
                entry = next((e for e in self.entries() if e.id == name_or_id and e.broken), None)
                if entry is None:
                    raise
            trash = self.root / f"{TRASH_PREFIX}{entry.id}-{uuid.uuid4().hex[:6]}"
            os.rename(entry.folder, trash)      # gone from the library at once; the files go below
        shutil.rmtree(trash, ignore_errors=True)
        logger.bind(req="-").info(f"voice library: deleted voice {entry.name!r} (id {entry.id})")
        return entry

    def clean_temp(self, max_age_s: float = STALE_TEMP_S) -> int:
        """Remove temp and trash folders a crashed save or delete left behind."""
        removed = 0
        if not self.root.is_dir():
            return 0
        for folder in self.root.iterdir():
            if folder.name.startswith((TEMP_PREFIX, TRASH_PREFIX)) and folder.is_dir():
                try:
                    if time.time() - folder.stat().st_mtime > max_age_s:
                        shutil.rmtree(folder, ignore_errors=True)
                        removed += 1
                except OSError:
                    continue
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

    def load_voice(self, entry: VoiceEntry, engine: Engine, prompt_text: str | None) -> tuple[Voice, str | None]:
        """(voice, notice): stored features when this engine + model made them; otherwise they are
        extracted from the stored recording, saved for next time, and the notice says why."""
        identity = engine.feature_identity()
        path = entry.folder / FEATURES_DIR / _feature_file(identity)
        problem = None
        try:
            arrays = read_npz(path)
            if str(arrays.pop(IDENTITY_KEY, "")) != identity:
                raise ValueError("the file was made for another engine or model")
            return engine.import_voice(arrays, prompt_text), None
        except FileNotFoundError:
            if not entry.audio_path.is_file():
                raise VoiceNotFound(f"Voice {entry.name!r} was deleted while this request was loading it.") from None
        except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as err:
            problem = f"its stored features could not be read ({type(err).__name__}: {err})"
        others = self._other_identities(entry, identity)
        if problem is None:
            problem = (f"its stored features were made by {', '.join(others)}; this server runs {identity}, so "
                       f"they were recomputed from the stored recording" if others else
                       f"it had no stored features for {identity} yet; they were extracted once from the "
                       f"stored recording")
        else:
            problem += "; they were recomputed from the stored recording"
        try:
            audio = self.stored_audio(entry)
        except (OSError, RuntimeError, sf.LibsndfileError) as err:
            raise VoiceNotFound(f"Voice {entry.name!r} cannot be used: its stored recording is unreadable "
                                f"({err}). Delete it and save it again.") from None
        if entry.sha256 and _sha256(entry.audio_path) != entry.sha256:
            raise UserInputError(f"Voice {entry.name!r} cannot be used: its stored recording does not match its "
                                 f"checksum (damaged on disk). Delete it and save it again.")
        voice = engine.prepare_voice(audio, prompt_text)
        try:
            self._store_features(entry.folder, engine, voice)
        except OSError as err:
            logger.bind(req="-").warning(f"voice library: could not store features for {entry.name!r}: {err}")
        notice = f"Voice {entry.name!r}: {problem} and saved, so the next use loads them."
        return voice, notice

    def _other_identities(self, entry: VoiceEntry, identity: str) -> list[str]:
        others = []
        for path in sorted((entry.folder / FEATURES_DIR).glob("*.npz")):
            try:
                with np.load(path, allow_pickle=False) as data:
                    other = str(data[IDENTITY_KEY])
                if other != identity:
                    others.append(other)
            except (OSError, ValueError, KeyError):
                continue
        return others

    # ---- export / import --------------------------------------------------------------------------
    def export_zip(self, name_or_id: str, target: Path) -> Path:
        entry = self.get(name_or_id)
        target = Path(target)
        with atomic_file(target) as handle, zipfile.ZipFile(handle, "w", zipfile.ZIP_DEFLATED) as archive:
            archive.write(entry.folder / META_FILE, META_FILE)
            archive.write(entry.audio_path, AUDIO_FILE)
            for path in sorted((entry.folder / FEATURES_DIR).glob("*.npz")):
                archive.write(path, f"{FEATURES_DIR}/{path.name}")
        return target

    def import_zip(self, archive_path: Path, name: str | None = None) -> VoiceEntry:
        """Add a voice from an export; anything wrong with the archive is refused before the voice appears."""
        label = Path(archive_path).name
        folder = self._temp_folder()
        try:
            meta = self._unpack(Path(archive_path), folder, label)
            try:
                meta["name"] = validate_name(name if name is not None else meta.get("name"))
                audio_ok = sf.info(folder / AUDIO_FILE).frames > 0
            except (RuntimeError, sf.LibsndfileError):
                audio_ok = False
            if not audio_ok:
                raise UserInputError(f"{label} is not a voice archive: {AUDIO_FILE} is not readable audio.")
            if _sha256(folder / AUDIO_FILE) != meta.get("sha256"):
                raise UserInputError(f"{label} is damaged: {AUDIO_FILE} does not match the checksum in {META_FILE}.")
            for path in (folder / FEATURES_DIR).glob("*.npz"):
                try:
                    read_npz(path)
                except (OSError, ValueError, zipfile.BadZipFile) as err:
                    raise UserInputError(f"{label} is damaged: {FEATURES_DIR}/{path.name} is not a plain "
                                         f"array file ({err}).") from None
            meta["id"] = new_voice_id()
            for key, limit in (("transcript", MAX_TRANSCRIPT_CHARS), ("notes", MAX_NOTES_CHARS), ("language", 16)):
                try:
                    meta[key] = _bounded(meta.get(key), key, limit)
                except UserInputError as err:
                    raise UserInputError(f"{label} is not a usable voice archive: {err}") from None
            meta.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
            try:
                entry = _entry_from_meta(self.root / meta["id"], meta)
            except (ValueError, KeyError, TypeError) as err:
                raise UserInputError(f"{label} is not a voice archive: {META_FILE} is incomplete ({err}).") from None
            _write_json_atomic(folder / META_FILE, entry.metadata())
            with self._locked():
                self._check_free(entry.name)
                os.rename(folder, entry.folder)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        logger.bind(req="-").info(f"voice library: imported voice {entry.name!r} (id {entry.id}) from {label}")
        return entry

    def _unpack(self, archive_path: Path, folder: Path, label: str) -> dict:
        """Extract only the members a voice has, each checked by name, type and size; returns voice.json."""
        try:
            archive = zipfile.ZipFile(archive_path)
        except (OSError, zipfile.BadZipFile) as err:
            raise UserInputError(f"{label} is not a voice archive (not a readable zip: {err}).") from None
        with archive:
            members = archive.infolist()
            if len(members) > MAX_ARCHIVE_MEMBERS:
                raise UserInputError(f"{label} is not a voice archive: it holds {len(members)} files.")
            if sum(m.file_size for m in members) > MAX_ARCHIVE_BYTES:
                raise UserInputError(f"{label} unpacks to more than {MAX_ARCHIVE_BYTES // 2**20} MB; a voice "
                                     f"archive is far smaller.")
            wanted = {}
            for member in members:
                if member.is_dir():
                    continue
                name = member.filename
                allowed = name in (META_FILE, AUDIO_FILE) or (
                    name.startswith(f"{FEATURES_DIR}/") and name.count("/") == 1 and name.endswith(".npz")
                    and not name[len(FEATURES_DIR) + 1:].startswith("."))
                is_link = (member.external_attr >> 16) & 0o170000 == 0o120000
                if not allowed or is_link:
                    raise UserInputError(f"{label} is not a voice archive: it holds {name[:80]!r}, which is not "
                                         f"a file a voice has (voice.json, prompt.wav, features/*.npz); nothing "
                                         f"was imported.")
                wanted[name] = member
            if META_FILE not in wanted or AUDIO_FILE not in wanted:
                raise UserInputError(f"{label} is not a voice archive: it lacks {META_FILE} or {AUDIO_FILE}.")
            for name, member in wanted.items():
                target = folder / name
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with archive.open(member) as source, open(target, "wb") as sink:
                        shutil.copyfileobj(source, sink)
                except (OSError, zipfile.BadZipFile, EOFError) as err:
                    raise UserInputError(f"{label} is damaged: {name} cannot be read ({err}).") from None
        try:
            meta = json.loads((folder / META_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UserInputError(f"{label} is not a voice archive: {META_FILE} is not JSON ({err}).") from None
        if not isinstance(meta, dict):
            raise UserInputError(f"{label} is not a voice archive: {META_FILE} is not an object.")
        return meta


def _bounded(value: object, what: str, limit: int) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise UserInputError(f"The voice {what} must be text.")
    value = value.strip()
    if len(value) > limit:
        raise UserInputError(f"The voice {what} is {len(value)} characters long; the limit is {limit}.")
    return value
