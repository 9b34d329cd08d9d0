"""The ``mxcomm`` command line."""
