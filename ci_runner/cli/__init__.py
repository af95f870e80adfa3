"""The command-line interface: the typer app, the live view, and reports."""
