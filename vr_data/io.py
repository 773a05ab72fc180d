"""Atomic file writes: a temporary name beside the target, flushed to disk, then renamed.

A killed job leaves either the old file or the new one, never half of one. Used by the store
builder, the statistics and the CLIs alike.

A rename replaces whatever has the target name, so it only ever replaces a regular file: a
device, a FIFO, a directory or a symlink to one of them is refused (`--json /dev/stdout` once
replaced the `/dev/stdout` symlink, as root, with a regular file). A symlink to a regular file
is followed: the file it points to is replaced and the link kept. A failed write (permission,
full disk, a parent that is a file) is a `VRDataError` naming the path, never a traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from vr_data.errors import VRDataError

UNWRITABLE = "unwritable"  # VRDataError code: an output that cannot be written
STDOUT = "-"                # the output name that means standard output, where a command offers it


def file_kind(mode: int) -> str:
    """What a `st_mode` describes, in words ("regular file", "named pipe (FIFO)", ...)."""
    if stat.S_ISREG(mode):
        return "regular file"
    if stat.S_ISDIR(mode):
        return "directory"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISFIFO(mode):
        return "named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def not_regular_reason(path: str | Path) -> str | None:
    """Why `path` (symlinks followed) is not a regular file to read, or None when it is one.

    Only `stat` is used: opening a FIFO to look at it would block until a writer appears.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "broken symbolic link" if os.path.islink(path) else "file not found"
    except OSError as error:
        return f"cannot stat ({os_reason(error)})"
    if stat.S_ISREG(mode):
        return None
    return f"not a regular file: a {file_kind(mode)}"


def os_reason(error: OSError) -> str:
    """An OSError's reason in lower-case words, without the path ("permission denied")."""
    text = error.strerror or type(error).__name__
    return text[:1].lower() + text[1:]


def replaceable_target(path: str | Path) -> Path:
    """The regular file an atomic write to `path` replaces (the path itself, or the file a
    symlink leads to), or a new file's path; refuses anything else with a VRDataError."""
    path = Path(path)
    absolute = os.path.abspath(path)
    if absolute.startswith(("/dev/", "/proc/")) and not absolute.startswith("/dev/shm/"):
        # /dev/stdout, /dev/fd/1, /proc/self/fd/1 name a descriptor: replacing what it leads to
        # (a redirected file) would not even reach the descriptor.
        raise VRDataError(path, "names a device or a descriptor, not a file: refusing to replace it; use '-' "
                                "for standard output", UNWRITABLE)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            raise VRDataError(path, "is a broken symbolic link; refusing to write through it", UNWRITABLE) from None
        return path
    except OSError as error:
        raise VRDataError(path, f"cannot write ({os_reason(error)})", UNWRITABLE) from None
    if not stat.S_ISREG(mode):
        hint = "; use '-' for standard output" if stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) else ""
        raise VRDataError(path, f"is a {file_kind(mode)}, not a regular file: refusing to replace it{hint}",
                          UNWRITABLE)
    return Path(os.path.realpath(path)) if os.path.islink(path) else path


def check_writable(path: str | Path) -> None:
    """Fail early (before hours of work) when an atomic write to `path` would be refused: a
    non-regular target, or a folder we cannot create or write into."""
    target = replaceable_target(path)
    folder = target.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise VRDataError(path, f"cannot write: {folder} is not a directory", UNWRITABLE)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise VRDataError(path, f"cannot write: no permission to write in {folder}", UNWRITABLE)


class AtomicOutput:
    """One file written under a temporary name beside its target, renamed over it by `commit`.

    For writers that fill a file piece by piece (a sound file written block by block). The
    target is checked first (`replaceable_target`: a device, FIFO, directory or a symlink to one
    is refused) and its folder created; the file ends as any new file is (mode 0666 less the
    umask, whatever the writer made it). `commit` flushes it to disk and renames it; `abort`
    removes it. Any OSError is a `VRDataError` naming the target's path.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.target = replaceable_target(self.path)
        self.temporary = self.target.with_name(f".{self.target.name}.tmp-{os.getpid()}")
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise VRDataError(self.path, f"cannot write ({os_reason(error)})", UNWRITABLE) from None

    def commit(self) -> None:
        """Flush the temporary file to disk and rename it over the target."""
        try:
            os.chmod(self.temporary, 0o666 & ~current_umask())  # some writers (safetensors) make theirs 0600
            descriptor = os.open(self.temporary, os.O_RDONLY)
            try:
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
            os.replace(self.temporary, self.target)
        except OSError as error:
            self.abort()
            raise VRDataError(self.path, f"cannot write ({os_reason(error)})", UNWRITABLE) from None

    def abort(self) -> None:
        """Remove the temporary file (if the folder itself is the problem, nothing was left)."""
        with contextlib.suppress(OSError):
            self.temporary.unlink(missing_ok=True)


def check_output_folder(folder: str | Path) -> None:
    """Fail early when files cannot be written into `folder` (created if missing): a device or a
    descriptor path (`/dev/stdout`), an existing non-folder, or a folder we may not write into.
    One VRDataError naming the folder (exit 2 at the CLI), instead of one failure per file."""
    folder = Path(folder)
    absolute = os.path.abspath(folder)
    if absolute.startswith(("/dev/", "/proc/")) and not absolute.startswith("/dev/shm/"):
        raise VRDataError(folder, "names a device or a descriptor, not a folder for output files", UNWRITABLE)
    existing = folder
    while not existing.exists() and not existing.is_symlink():
        existing = existing.parent
    if not existing.is_dir():
        what = "a regular file" if existing.is_file() else (not_regular_reason(existing) or "special").removeprefix(
            "not a regular file: ")
        raise VRDataError(folder, f"cannot write output files here: {existing} is not a folder ({what})",
                          UNWRITABLE)
    if not os.access(existing, os.W_OK | os.X_OK):
        raise VRDataError(folder, f"cannot write output files here: no permission to write in {existing}",
                          UNWRITABLE)


def atomic_write_with(path: str | Path, write: Callable[[Path], None]) -> None:
    """Atomically create or replace `path` with a file that `write(temporary)` writes.

    For writers that want a file name (safetensors, ONNX, `torch.save`): the temporary name sits
    beside the target, so the rename stays on one file system. It is created as any new file is
    (mode 0666 less the umask, as other tools do), flushed to disk, then renamed over the
    target. A non-regular target is refused first (`replaceable_target`); any OSError (full disk,
    permission) is a `VRDataError` naming `path`, and the temporary file is removed.
    """
    output = AtomicOutput(path)
    try:
        write(output.temporary)
    except OSError as error:
        output.abort()
        raise VRDataError(output.path, f"cannot write ({os_reason(error)})", UNWRITABLE) from None
    except BaseException:
        output.abort()
        raise
    output.commit()


def current_umask() -> int:
    """The process's umask, read without changing it (Linux's /proc; elsewhere set and restored)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to a temporary name beside `path`, flush it to disk, then rename into place."""
    atomic_write_with(path, lambda temporary: temporary.write_bytes(data))


def write_output(path: str | Path, data: bytes) -> None:
    """An output a command offers to stream: `-` writes `data` to standard output, any other
    path is an atomic write (which refuses non-regular targets such as `/dev/stdout`)."""
    if str(path) == STDOUT:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    atomic_write_bytes(path, data)


def replace_directory(temporary: Path, final: Path) -> None:
    """Put the finished directory `temporary` in place as `final` (beside it, one file system),
    replacing an older `final` directory: the old one is moved aside first and removed after, so
    a kill leaves the old or the new directory under `final`, never a mixture. Anything at
    `final` that is not a directory is refused (a VRDataError naming it)."""
    import shutil
    import tempfile

    if os.path.lexists(final) and (os.path.islink(final) or not os.path.isdir(final)):
        raise VRDataError(final, "is not a directory: refusing to replace it", UNWRITABLE)
    try:
        if os.path.isdir(final):
            stale = Path(tempfile.mkdtemp(prefix=f".{final.name}.old.", dir=final.parent))
            os.replace(final, stale / final.name)
            os.rename(temporary, final)
            shutil.rmtree(stale, ignore_errors=True)
        else:
            os.rename(temporary, final)
    except OSError as error:
        raise VRDataError(final, f"cannot write ({os_reason(error)})", UNWRITABLE) from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, record: dict) -> None:
    atomic_write_bytes(path, (json.dumps(record, indent=1, sort_keys=True) + "\n").encode())


def atomic_write_lines(path: Path, records: list[dict]) -> None:
    """JSONL: one compact sorted-key JSON object per line."""
    atomic_write_bytes(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in records).encode())


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSONL log the project appends to (`metrics.jsonl`, `examples.jsonl`): a
    torn last line, from a kill mid-write, is skipped; a missing file is no records."""
    records = []
    path = Path(path)
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


@contextlib.contextmanager
def exclusive_lock(path: Path, holder: str, *, subject: Path | None = None, remove: bool = True) -> Iterator[None]:
    """Hold an exclusive advisory lock (`flock`) on the file `path` for the `with` block.

    The lock file holds the holder's PID and host. A second process gets a one-line VRDataError
    naming `subject` (default: `path`) at once ("in use by PID ... (`holder`)") instead of
    waiting or, worse, working on the same files. The kernel drops the lock when the process dies, SIGKILL included, so a
    stale lock file never blocks a rerun. `remove` deletes the file on release: after taking the
    lock we check that `path` is still the file we locked, so a racing process that opened the
    old file retries on the new one.
    """
    import fcntl
    import socket

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.read(descriptor, 200).decode(errors="replace").strip() or "another process"
                os.close(descriptor)
                raise VRDataError(subject or path, f"in use by {owner} ({holder}); wait for it to finish",
                                  UNWRITABLE) from None
            try:
                same = os.fstat(descriptor).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(descriptor)
    except OSError as error:
        raise VRDataError(subject or path, f"cannot create the lock file {path.name} ({os_reason(error)})",
                          UNWRITABLE) from None
    try:
        os.ftruncate(descriptor, 0)
        os.write(descriptor, f"PID {os.getpid()} on {socket.gethostname()}\n".encode())
        yield
    finally:
        if remove:
            try:
                os.unlink(path)
            except OSError:
                pass
        os.close(descriptor)
