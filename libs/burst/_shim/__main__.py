"""Entry point of a container: ``python -m burst._shim``."""

from burst._shim.main import main

if __name__ == "__main__":
    main()
