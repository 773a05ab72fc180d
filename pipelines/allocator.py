"""A fast malloc for CPU training and the data workers, chosen before the interpreter starts.

glibc's malloc serves every block over its mmap threshold (128 KiB, raised adaptively up to
32 MiB) with fresh pages from `mmap` and hands them back with `munmap` on free. A training
step allocates and frees hundreds of activation maps of 1-30 MB, so the kernel zero-fills
and page-faults the same memory over and over: measured on the `tiny` preset (batch 4, 256
frames, one thread), `sys` time was as large as `user` time and the step took about twice as
long as the arithmetic needs. tcmalloc keeps freed spans for reuse; glibc can be told to do
the same with tunables. Both act only when the process starts, hence the re-exec.

`ensure_fast_allocator()` re-executes the current command once, with
- `LD_PRELOAD` of tcmalloc (Debian's `libtcmalloc-minimal4`, installed by `make` where it
  can be) when the library is on the system, otherwise
- `GLIBC_TUNABLES` that switch glibc's mmap path off and keep freed memory
  (`glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=16 GiB`).
Child processes inherit the environment, so DataLoader workers (spawned) and dask workers get
the same allocator. The allocator does not change a single result: it places the same
arithmetic at other addresses (torch aligns its CPU tensors to 64 bytes either way).

`VR_MALLOC` chooses: `auto` (default: tcmalloc, else tunables), `tcmalloc`, `glibc` (the
tunables), or `system` (leave the process alone). A `LD_PRELOAD` that already names a malloc
(jemalloc, tcmalloc, mimalloc) is respected. `VR_MALLOC_ACTIVE` marks a process that has been
through this, so it never re-executes twice.

    python -m pipelines.allocator                   # what this machine would use
    python -m pipelines.allocator CMD [ARGS...]     # run CMD under the fast allocator
"""

from __future__ import annotations

import glob
import os
import sys
import sysconfig
from collections.abc import Callable, Mapping

CHOICE_VARIABLE = "VR_MALLOC"
ACTIVE_VARIABLE = "VR_MALLOC_ACTIVE"
CHOICES = ("auto", "tcmalloc", "glibc", "system")

# mmap_max=0: no block is ever served by mmap, so freed activation maps stay in the heap for
# the next step; trim_threshold=16 GiB: free memory at the top of the heap is not given back.
GLIBC_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184"
TCMALLOC_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
# tcmalloc reports every allocation over 1 GiB on stderr; a 2048-frame crop makes several.
TCMALLOC_QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 62)}
_PRELOADED_MALLOCS = ("tcmalloc", "jemalloc", "mimalloc")
_STRIPPED = ("LD_PRELOAD", "GLIBC_TUNABLES", ACTIVE_VARIABLE, *TCMALLOC_QUIET)


def library_dirs() -> list[str]:
    """Where a system or environment malloc library may live, most specific first."""
    dirs = [os.path.join(sys.prefix, "lib")]
    multiarch = sysconfig.get_config_var("MULTIARCH")
    if multiarch:
        dirs += [f"/usr/lib/{multiarch}", f"/lib/{multiarch}"]
    dirs += ["/usr/lib64", "/usr/lib", "/usr/local/lib", "/lib64", "/lib"]
    return dirs


def find_tcmalloc(dirs: list[str] | None = None) -> str | None:
    """Absolute path of a tcmalloc shared library, or None."""
    for directory in dirs if dirs is not None else library_dirs():
        for name in TCMALLOC_NAMES:
            for path in sorted(glob.glob(os.path.join(directory, name))):
                if os.path.isfile(path):
                    return path
    return None


def fast_allocator_environ(environ: Mapping[str, str], tcmalloc: str | None) -> tuple[str, dict[str, str]]:
    """(allocator, environment) a process should start with; `environ` is not modified.

    `allocator` is "tcmalloc", "glibc-tunables", "preloaded" (the user's LD_PRELOAD names a
    malloc) or "system" (VR_MALLOC=system: nothing changed). `tcmalloc` is the library path
    (`find_tcmalloc()`) or None. Raises ValueError for a bad VR_MALLOC, or VR_MALLOC=tcmalloc
    without the library.
    """
    choice = environ.get(CHOICE_VARIABLE, "auto") or "auto"
    if choice not in CHOICES:
        raise ValueError(f"{CHOICE_VARIABLE}={choice!r}; expected one of {', '.join(CHOICES)}")
    env = dict(environ)
    preload = env.get("LD_PRELOAD", "")
    if choice == "system":
        allocator = "system"
    elif any(name in preload for name in _PRELOADED_MALLOCS):
        allocator = "preloaded"
    elif choice in ("auto", "tcmalloc") and tcmalloc:
        env["LD_PRELOAD"] = f"{tcmalloc}:{preload}" if preload else tcmalloc
        env.update({key: env.get(key, value) for key, value in TCMALLOC_QUIET.items()})
        allocator = "tcmalloc"
    elif choice == "tcmalloc":
        raise ValueError(f"{CHOICE_VARIABLE}=tcmalloc but no {' or '.join(TCMALLOC_NAMES)} in "
                         f"{', '.join(library_dirs())} (Debian: apt-get install libtcmalloc-minimal4)")
    else:
        existing = env.get("GLIBC_TUNABLES", "")
        env["GLIBC_TUNABLES"] = f"{existing}:{GLIBC_TUNABLES}" if existing else GLIBC_TUNABLES
        allocator = "glibc-tunables"
    env[ACTIVE_VARIABLE] = allocator
    return allocator, env


def shipped_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` without this module's changes, marked so that nothing re-executes: glibc's
    default malloc, as the project ran before (benchmarks use it as their baseline)."""
    env = {key: value for key, value in environ.items() if key not in _STRIPPED}
    env[CHOICE_VARIABLE] = "system"
    env[ACTIVE_VARIABLE] = "system"
    return env


def allocator_in_use() -> str:
    """The malloc of this process: "tcmalloc", "jemalloc", "mimalloc", "glibc-tunables" or "glibc".

    Read from the libraries mapped into the process (a preload that failed to load is not
    mapped) and, for glibc, from the tunables it started with.
    """
    try:
        with open("/proc/self/maps") as maps:
            mapped = maps.read()
    except OSError:
        mapped = ""
    for name in _PRELOADED_MALLOCS:
        if f"lib{name}" in mapped:
            return name
    return "glibc-tunables" if "glibc.malloc.mmap_max=0" in os.environ.get("GLIBC_TUNABLES", "") else "glibc"


def _command_line() -> list[str]:
    """The interpreter's own command line, flags and `-m module` included."""
    return [sys.executable, *sys.orig_argv[1:]]


def ensure_fast_allocator(before_exec: Callable[[], None] | None = None) -> str:
    """Re-execute this process under the fast allocator unless it already runs under it.

    Call it first thing in a CLI's `main()`. Returns the allocator in effect when it does not
    re-execute (the re-executed process returns here with `VR_MALLOC_ACTIVE` set). Only on
    Linux; elsewhere, and when the exec fails, the process goes on unchanged. `before_exec`
    runs just before the exec (pytest uses it to hand back the captured stdout and stderr).
    """
    active = os.environ.get(ACTIVE_VARIABLE)
    if active is not None or not sys.platform.startswith("linux"):
        return active or "system"
    try:
        allocator, env = fast_allocator_environ(os.environ, find_tcmalloc())
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    if allocator in ("system", "preloaded"):
        os.environ[ACTIVE_VARIABLE] = allocator  # children need not check again
        return allocator
    if before_exec is not None:
        before_exec()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, _command_line(), env)
    except OSError as error:
        print(f"fast allocator: could not re-execute ({error}); going on with glibc's defaults", file=sys.stderr)
        os.environ[ACTIVE_VARIABLE] = "system"
        return "system"
    raise AssertionError("unreachable: execve returned")  # pragma: no cover


def main(argv: list[str] | None = None) -> int:
    """`python -m pipelines.allocator [CMD ARGS...]`: show the choice, or exec CMD under it."""
    argv = sys.argv[1:] if argv is None else argv
    tcmalloc = find_tcmalloc()
    try:
        allocator, env = fast_allocator_environ(os.environ, tcmalloc)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if os.environ.get(ACTIVE_VARIABLE) is not None:  # already chosen upstream: keep it
        allocator, env = os.environ[ACTIVE_VARIABLE], dict(os.environ)
    if not argv:
        print(f"allocator: {allocator}")
        print(f"tcmalloc library: {tcmalloc or 'not found (Debian: apt-get install libtcmalloc-minimal4)'}")
        for key in ("LD_PRELOAD", "GLIBC_TUNABLES"):
            if env.get(key) != os.environ.get(key):
                print(f"{key}={env[key]}")
        return 0
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as error:
        print(f"error: cannot run {argv[0]}: {error}", file=sys.stderr)
        return 127
    return 0  # pragma: no cover


if __name__ == "__main__":
    sys.exit(main())
