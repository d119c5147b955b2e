"""Subcommands of the ``lifeline`` CLI; each module registers its own."""
