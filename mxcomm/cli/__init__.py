"""The ``mxcomm`` command line."""


def csv_list(value: str) -> tuple[str, ...]:
    """A comma-separated option as its non-empty, stripped items (``"a, b,"`` -> ``("a", "b")``)."""
    return tuple(v.strip() for v in value.split(",") if v.strip())


def int_list(value: str, option: str, error: type[Exception]) -> tuple[int, ...]:
    """A comma-separated option of integers; anything else raises ``error`` naming ``option``."""
    try:
        return tuple(int(v) for v in csv_list(value))
    except ValueError:
        raise error(f"{option} takes comma-separated integers, got {value!r}") from None
