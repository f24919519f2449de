"""``python -m jdnet_cli`` (also what torchrun launches)."""
from .cli.main import main

if __name__ == "__main__":
    main()
