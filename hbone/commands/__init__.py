"""`hbone` subcommands. Each module exposes `register(subparsers)`; `hbone.cli` assembles them."""
