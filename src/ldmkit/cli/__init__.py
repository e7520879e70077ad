"""The ``ldm`` command line (thin: it parses and calls the library)."""
