"""The collective algorithms, with the stable codes the handshake sends.

``Algorithm`` is the one definition: ``all_reduce`` accepts the members of
``REQUESTABLE``, the planner chooses among ``ALL_REDUCE_ALGORITHMS``, and the
handshake descriptor carries ``member.code``.
"""

from __future__ import annotations

from mxcomm.formats.enums import CodedEnum


class Algorithm(CodedEnum):
    NONE = "none", 0  # uncompressed: the process group's own all_reduce
    ALLGATHER = "allgather", 1  # one-shot: encode once, all-gather, decode_sum of n shards
    TWO_SHOT = "two_shot", 2  # all-to-all of compressed chunks, reduce, re-encode, all-gather
    AUTO = "auto", 3  # the planner picks one of the above
    ALL_TO_ALL = "all_to_all", 4  # reduce_scatter's single exchange (not an all_reduce algorithm)


#: What the planner chooses between for an all-reduce.
ALL_REDUCE_ALGORITHMS: tuple[Algorithm, ...] = (Algorithm.NONE, Algorithm.ALLGATHER, Algorithm.TWO_SHOT)
#: What ``all_reduce(..., algorithm=...)`` accepts.
REQUESTABLE: tuple[Algorithm, ...] = (Algorithm.AUTO, *ALL_REDUCE_ALGORITHMS)
#: The all-reduce algorithms that encode.
COMPRESSED: tuple[Algorithm, ...] = (Algorithm.ALLGATHER, Algorithm.TWO_SHOT)

__all__ = ["ALL_REDUCE_ALGORITHMS", "COMPRESSED", "REQUESTABLE", "Algorithm"]
