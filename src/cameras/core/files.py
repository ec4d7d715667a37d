"""Files written whole or not at all: the one writer every output of the package uses.

``open_atomically`` / ``write_atomically`` write under a hidden temporary name in the same
folder and rename into place, so a reader sees the old complete file or the new one;
``append_lines`` appends whole lines (a failed append is cut back) and ``complete_lines``
reads past a torn last line. Standard library only.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def open_atomically(path: Path | str, mode: str = "wb", **options) -> Iterator[IO]:
    """A file that appears at ``path`` only when the block completes.

    Written under a temporary name in the same folder, flushed to the disk, then renamed
    over ``path`` (atomic on one file system): a reader sees the old complete file or the
    new complete one. When the block raises (a full disk), the temporary file is removed
    and ``path`` is left as it was; an OSError names ``path``, not the temporary name.
    The file gets the permissions a plain open would."""
    path = Path(path)
    temporary = _temporary_name(path)
    try:
        with _named(path):
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            with open(descriptor, mode, **options) as handle:
                yield handle
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def write_atomically(files: Mapping[Path, bytes | bytearray | str]) -> None:
    """Write every file in ``files`` (path -> contents) all or nothing: each is written
    in full under a temporary name first, and only then are they renamed into place; a
    failed write removes the temporary files and replaces no file. An OSError names the
    file the user knows, not its temporary name."""
    temporaries: list[tuple[Path, Path]] = []
    try:
        for path, data in files.items():
            path = Path(path)
            temporaries.append((_temporary_name(path), path))
            _write_temporary(temporaries[-1][0], path, data)
        for temporary, path in temporaries:
            with _named(path):
                os.replace(temporary, path)
    except BaseException:
        for temporary, _ in temporaries:  # those already renamed are gone: suppressed
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        raise


def _write_temporary(temporary: Path, path: Path, data: bytes | bytearray | str) -> None:
    text = isinstance(data, str)
    options = {"encoding": "utf-8", "newline": ""} if text else {}
    with _named(path):
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with open(descriptor, "w" if text else "wb", **options) as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


@contextlib.contextmanager
def _named(path: Path) -> Iterator[None]:
    """An OSError inside names ``path`` (the file the user knows), not a temporary name."""
    try:
        yield
    except OSError as error:
        if error.errno is None:
            raise
        raise type(error)(error.errno, error.strerror, str(path)) from None


def append_lines(path: Path, lines: Sequence[str]) -> None:
    """Append whole lines: a write that fails part-way (a full disk) is cut back to where
    the file ended, so the next append never continues a torn line."""
    if not lines:
        return
    data = memoryview("".join(lines).encode("utf-8"))
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        end = os.lseek(descriptor, 0, os.SEEK_END)
        try:
            while data:
                data = data[os.write(descriptor, data) :]
            os.fsync(descriptor)
        except OSError:
            os.ftruncate(descriptor, end)
            raise
    finally:
        os.close(descriptor)


def complete_lines(path: Path) -> list[str]:
    """The file's lines without their newline, dropping a last line cut off mid-write."""
    if not path.exists():
        return []
    pieces = path.read_bytes().split(b"\n")  # bytes: a torn line may end mid-character
    return [line.decode("utf-8") for line in pieces[:-1] if line]  # the last is partial


def _temporary_name(path: Path) -> Path:
    # Hidden, unique (several threads or processes may write the same name), and in the
    # same folder: a rename across file systems would not be atomic.
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.part")
