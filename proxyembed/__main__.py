"""``python -m proxyembed`` runs the CLI."""

from proxyembed.cli import main

main()
