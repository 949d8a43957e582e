"""``python -m mritumor`` runs the command-line interface."""

from mritumor.cli.main import main

if __name__ == "__main__":
    main()
