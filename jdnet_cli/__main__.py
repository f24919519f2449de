"""``python -m jdnet_cli`` (also what torchrun launches)."""
from .cli.app import main

if __name__ == "__main__":
    main()
