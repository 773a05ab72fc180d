"""`vrtrain`: the model CLI (presets, training, separation, evaluation)."""

from __future__ import annotations

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train and run frame-primer vocal removers.")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
