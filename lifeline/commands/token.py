"""``lifeline token new``: make an API token and the settings line that admits it."""

from __future__ import annotations

import argparse

from lifeline.auth import new_token, token_digest


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``token`` command."""
    p = sub.add_parser("token", help="API tokens")
    tsub = p.add_subparsers(dest="token_command", required=True)
    new = tsub.add_parser("new", help="print a new token and its [[api.tokens]] entry")
    new.add_argument("--name", required=True)
    new.add_argument("--role", choices=["viewer", "operator", "admin"], required=True)
    new.set_defaults(func=new_command)


def new_command(args: argparse.Namespace) -> int:
    """Print the token once; only its SHA-256 goes into the settings."""
    token = new_token()
    print(f"token (shown once, give it to {args.name}): {token}")
    print("add to lifeline.toml:")
    print(f'[[api.tokens]]\nname = "{args.name}"\nrole = "{args.role}"\n'
          f'sha256 = "{token_digest(token)}"')
    return 0
