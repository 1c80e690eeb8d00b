"""``python -m orca``: the ``orca`` command line (see ``docs/cli.md``)."""

from orca.cli import main

if __name__ == "__main__":
    main(prog_name="orca")
