"""Safe file writing for the ``hyresr`` tools: nothing is ever left half-written under its final name.

Everything written goes to a temporary name in the destination folder first and is moved into place
with :func:`os.replace`, so an interrupted run never leaves a half-written file under the final name
(and never touches an existing file until the new one is complete). Final files get the usual mode
(0666 less the umask), not the 0600 of a temporary file.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator


def same_file(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> bool:
    """True when a and b name the same file (existing or not, resolving links and '..')."""
    pa, pb = Path(a), Path(b)
    try:
        if pa.exists() and pb.exists():
            return os.path.samefile(pa, pb)
    except OSError:
        pass
    return os.path.normcase(os.path.realpath(pa)) == os.path.normcase(os.path.realpath(pb))


def ensure_writable_dir(path: str | os.PathLike[str]) -> Path:
    """Create `path` if needed and prove it is writable; otherwise raise PermissionError or
    NotADirectoryError with a message naming the folder."""
    d = Path(path)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(f"{d}: exists and is not a folder") from None
    except OSError as err:
        raise PermissionError(f"{d}: cannot create output folder: {err.strerror or err}") from None
    if not d.is_dir():
        raise NotADirectoryError(f"{d}: exists and is not a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=".hyresr-write-test-", dir=d)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise PermissionError(f"{d}: output folder is not writable: {err.strerror or err}") from None
    return d


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to `final` (same extension); on success move it into place.

    The temporary file is removed if the block raises, so `final` is either the complete new file
    or untouched.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".partial{final.suffix}", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes 0600, and so do writers that replace the file (safetensors): set the usual
        # mode on whatever is there now
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, final)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp_path.unlink()
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(final: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(final) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def sha256_of(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
