"""The click command class every entry point uses."""

from __future__ import annotations

import click


class CCFVCommand(click.Command):
    """A click command whose unknown-option error lists every valid parameter.

    ``mlflow run -P name=value`` passes a misspelled ``name`` through as ``--name value``; this turns
    it into an error that names the valid parameters instead of a terse "No such option".
    """

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.NoSuchOption as exc:
            valid = sorted(
                opt.lstrip("-").replace("-", "_")
                for p in self.params
                if isinstance(p, click.Option)
                for opt in p.opts
                if opt.startswith("--")
            )
            raise click.UsageError(
                f"Unknown parameter {exc.option_name!r} for '{self.name}'. "
                f"Valid parameters: {', '.join(valid)}.",
                ctx,
            ) from exc
