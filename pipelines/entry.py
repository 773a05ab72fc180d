"""Console-script entry points (`vrtrain`, `vrdata`): the allocator first, then the CLI.

`ensure_fast_allocator()` re-executes the process under tcmalloc or glibc's tunables
(pipelines/allocator.py). Called here, before the CLI module and its imports (typer, torch,
dask) load, the re-exec costs one bare interpreter start instead of 2-3 CPU seconds of
imports done twice. The CLIs' own `main()` calls it again, which is then a no-op.
"""

from __future__ import annotations


def vrtrain() -> None:
    from pipelines.allocator import ensure_fast_allocator

    ensure_fast_allocator()
    from pipelines.vrtrain import main

    main()


def vrdata() -> None:
    from pipelines.allocator import ensure_fast_allocator

    ensure_fast_allocator()
    from pipelines.vrdata import main

    main()
