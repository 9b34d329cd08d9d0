"""The ``mxcomm`` command line."""


def csv_list(value: str) -> tuple[str, ...]:
    """A comma-separated option as its non-empty, stripped items (``"a, b,"`` -> ``("a", "b")``)."""
    return tuple(v.strip() for v in value.split(",") if v.strip())
