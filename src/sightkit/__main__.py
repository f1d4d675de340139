"""``python -m sightkit`` (and ``torchrun ... -m sightkit``) runs the command line."""

from sightkit.cli import main

if __name__ == "__main__":
    main()
