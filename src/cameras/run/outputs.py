"""Output files of ``cameras explain``: their names, the refusal to overwrite an input or
another output (files are written by ``core.files``)."""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..core.files import write_atomically
from ..core.images import ImageError
from .items import ImageResult, ImageTask, RenderedFiles


def image_tasks(
    paths: Sequence[Path], clashes: Callable[[str], bool] | None = None
) -> list[ImageTask]:
    """Tasks for the inputs in order, each with an output stem no other task has.

    An input keeps its own stem when it can; otherwise (a stem seen before, or one for
    which ``clashes(stem)`` says the outputs would replace an input) it gets the first
    free ``<stem>-2``, ``<stem>-3``, ... Stems are compared case-insensitively, so the
    names stay distinct on case-insensitive disks too, and a made-up ``img-2`` never
    takes the name of an input that is really called ``img-2``.
    """
    clashes = clashes or (lambda stem: False)
    # Every input's own stem is reserved first: an input named img-2 keeps img-2 even
    # when an earlier duplicate img would otherwise have been given it.
    reserved = {Path(p).stem.casefold() for p in paths}
    used: set[str] = set()
    tasks = []
    for index, path in enumerate(paths):
        own = Path(path).stem
        stem, count = own, 1
        while (
            stem.casefold() in used or clashes(stem) or (count > 1 and stem.casefold() in reserved)
        ):
            count += 1
            stem = f"{own}-{count}"
        used.add(stem.casefold())
        tasks.append(ImageTask(index, str(path), stem))
    return tasks


class ImageWriter:
    """The one writer of ``cameras explain``'s files: OUT/<stem>_<method>.png and .npy,
    or OUT/<stem>_<method>_class<C>.png and .npy for a class C given, so a map for a
    chosen class never replaces the top-1 map.

    Refuses (as an ImageError naming the input) an output that would replace an input
    file or a file this run already wrote, so no output is ever overwritten by another.

    run: what makes this run's maps what they are (model, weights, layer, method, scales,
    rule, class; see ``cli.explain``), stored in each overlay as a PNG text chunk. With
    it, a file left by a run with other settings (or not by ``cameras explain``) is not
    replaced unless ``overwrite``; ``complete`` tells ``--resume`` which are done.
    """

    def __init__(
        self,
        out: Path,
        method_name: str,
        inputs: Iterable[Path],
        tag: str = "",
        run: str | None = None,
        overwrite: bool = False,
    ) -> None:
        self.out = Path(out)
        self.method_name = method_name
        # What the names add for the target: "" (top-1), "_class281", "_box10-20-110-220",
        # ... (``apps.photo_targets.target_file_tag``), so no target's map replaces another's.
        self.suffix = tag
        self.inputs = OutputGuard(inputs)
        self.written: set[str] = set()
        self.run = None if run is None else run.encode("ascii", "backslashreplace").decode()
        self.overwrite = overwrite

    def paths(self, task: ImageTask) -> tuple[Path, Path]:
        return self.paths_for(task.stem)

    def paths_for(self, stem: str) -> tuple[Path, Path]:
        # Suffixes are appended, never swapped (Path.with_suffix would turn the stem
        # "photo.v1" into "photo.png").
        name = f"{stem}_{self.method_name}{self.suffix}"
        return self.out / f"{name}.png", self.out / f"{name}.npy"

    def clashes(self, stem: str) -> bool:
        """Whether ``stem``'s outputs would replace an input (for ``image_tasks``)."""
        return any(self.inputs.covers(path) for path in self.paths_for(stem))

    def complete(self, task: ImageTask) -> bool:
        """Whether ``task``'s two files are on disk, written by a run like this one."""
        png, npy = self.paths(task)
        return self.run is not None and npy.is_file() and run_of(png) == self.run

    def _refuse_another_run(self, task: ImageTask, png: Path, npy: Path) -> None:
        if self.run is None or self.overwrite or not (png.exists() or npy.exists()):
            return
        theirs = run_of(png)
        if theirs != self.run:
            source = f"a run with {theirs}" if theirs else "something other than cameras explain"
            raise ImageError(
                f"{task.path}: {png.name} in {self.out} was written by {source}; pass "
                "--overwrite to replace it, or use another --out"
            )

    def write(self, result: ImageResult, files: RenderedFiles) -> Path:
        """Write one result's files; returns the overlay's path."""
        return store_files(self.claim(result.task), files)

    def claim(self, task: ImageTask) -> OutputClaim:
        """Check and reserve ``task``'s two output paths (ImageError when an input, a file
        of this run or a file of another run is in the way); ``store_files`` writes
        them, here or in another process. Claimed in input order, by the driver alone,
        so the checks see every earlier image's names."""
        png, npy = self.paths(task)
        self._refuse_another_run(task, png, npy)
        for path in (png, npy):
            if self.inputs.covers(path):
                raise ImageError(
                    f"{task.path}: output {path.name} would overwrite an input; use --out"
                )
            if same_name(path) in self.written:
                raise ImageError(f"{task.path}: output {path.name} was already written")
        self.written.update((same_name(png), same_name(npy)))
        return OutputClaim(task.path, png, npy, self.run)


@dataclass(frozen=True)
class OutputClaim:
    """Where one image's files go (checked by ``ImageWriter.claim``); picklable, so a
    render process can write them."""

    source: str  # the input's path, for messages
    png: Path
    npy: Path
    run: str | None  # the run note stored in the overlay (``with_run_note``)


def store_files(claim: OutputClaim, files: RenderedFiles) -> Path:
    """Write a claimed image's overlay and map, both or neither (``core.files``); returns
    the overlay's path. An OSError becomes an ImageError naming the input."""
    png = files.png if claim.run is None else with_run_note(files.png, claim.run)
    try:  # both or neither: a map never sits beside another run's overlay
        write_atomically({claim.png: png, claim.npy: files.npy})
    except OSError as error:
        raise ImageError(f"{claim.source}: {write_failure(error)}") from None
    return claim.png


# The PNG text chunk that names the run an overlay came from.
RUN_KEY = "cameras-run"


def with_run_note(png: bytes, run: str) -> bytes:
    """``png`` with a tEXt chunk ``cameras-run: run`` (ASCII) right after its header."""
    data = RUN_KEY.encode() + b"\0" + run.encode("ascii", "backslashreplace")
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data
    chunk += struct.pack(">I", zlib.crc32(b"tEXt" + data))
    header_end = 8 + 4 + 4 + 13 + 4  # signature, then IHDR: length, type, 13 bytes, CRC
    return png[:header_end] + chunk + png[header_end:]


def run_of(png: Path) -> str | None:
    """The run an overlay came from (``with_run_note``), or None (no file, not ours)."""
    from PIL import Image

    try:
        with Image.open(png) as picture:
            return picture.info.get(RUN_KEY)
    except Exception:  # noqa: BLE001 - any unreadable file is simply not ours
        return None


def write_failure(error: OSError, path: Path | None = None) -> str:
    """An OSError from writing a file (``path``, when the error does not name it), as
    the tail of one line: "cannot write FILE (reason)"."""
    reason = error.strerror or str(error)
    target = error.filename or path
    return f"cannot write {target} ({reason})" if target else f"cannot write ({reason})"


def same_name(path: Path) -> str:
    """A path as a case-insensitive disk sees it: resolved, case folded."""
    return str(Path(path).resolve()).casefold()


class OutputGuard:
    """The input files of a run, recognised by name (case-insensitively, through
    symbolic links) and by identity (a hard link under another name is the same file)."""

    def __init__(self, inputs: Iterable[Path]) -> None:
        self.names: set[str] = set()
        self.files: set[tuple[int, int]] = set()
        for path in inputs:
            self.names.add(same_name(path))
            try:
                status = os.stat(path)
                self.files.add((status.st_dev, status.st_ino))
            except OSError:
                pass  # a missing input is reported by the loader, not here

    def covers(self, path: Path) -> bool:
        """Whether writing ``path`` would replace one of the inputs."""
        if same_name(path) in self.names:
            return True
        try:
            status = os.stat(path)
        except OSError:
            return False
        return (status.st_dev, status.st_ino) in self.files
