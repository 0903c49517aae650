"""Subcommands of the `microxds` CLI; each module has `register(subparsers)`."""
