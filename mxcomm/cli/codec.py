"""``mxcomm formats`` and ``mxcomm roundtrip``."""

from __future__ import annotations

import argparse
import time

import torch

import mxcomm
from mxcomm.bench.metrics import max_abs_error, sqnr_db
from mxcomm.bench.synthetic import llm_activation
from mxcomm.formats import list_aliases

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("formats", help="list the registered formats")
    p.set_defaults(func=cmd_formats)

    p = sub.add_parser(
        "roundtrip",
        help="encode a synthetic LLM activation in every format; print size, error and codec time",
    )
    p.add_argument("--tokens", type=int, default=512)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--dtype", choices=sorted(_DTYPES), default="bf16")
    p.add_argument("--formats", nargs="*", default=None, help="format names (default: all registered)")
    p.add_argument("--backend", default="auto", help="auto | torch | cpu | triton")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_roundtrip)


def cmd_formats(args: argparse.Namespace) -> int:
    aliases: dict[str, list[str]] = {}
    for alias, target in list_aliases().items():
        aliases.setdefault(target, []).append(alias)
    print(f"{'name':16s} {'element':18s} {'block':>5s} {'scale':8s} {'bits/elem':>9s} {'vs bf16':>7s}  aliases")
    for name in mxcomm.list_formats():
        f = mxcomm.get_format(name)
        scale = f.scale + ("+t" if f.tensor_scale else "")
        print(
            f"{name:16s} {str(f.element):18s} {f.block_size:5d} {scale:8s} {f.bits_per_element:9.3f} "
            f"{f.compression_vs(16):6.2f}x  {', '.join(aliases.get(name, []))}"
        )
    return 0


def cmd_roundtrip(args: argparse.Namespace) -> int:
    x = llm_activation(args.tokens, args.hidden, seed=args.seed, dtype=_DTYPES[args.dtype])
    names = args.formats or mxcomm.list_formats()
    resolved = mxcomm.resolve_backend(args.backend, x.device)
    backend = getattr(resolved, "description", resolved.name)  # the cpu backend names its native build
    print(
        f"input: synthetic LLM activation {tuple(x.shape)} {args.dtype} with outlier channels, "
        f"{x.numel() * x.element_size() / 2**20:.1f} MiB; backend: {backend}"
    )
    print(
        f"{'format':16s} {'bits/elem':>9s} {'ratio':>6s} {'SQNR dB':>8s} {'max abs err':>11s} "
        f"{'encode ms':>9s} {'decode ms':>9s}"
    )
    for name in names:
        fmt = mxcomm.get_format(name)
        t0 = time.perf_counter()
        p = mxcomm.encode(x, fmt, backend=args.backend)
        t1 = time.perf_counter()
        y = mxcomm.decode(p, backend=args.backend)
        t2 = time.perf_counter()
        bits = 8 * p.nbytes / x.numel()
        ratio = x.numel() * x.element_size() / p.nbytes
        print(
            f"{name:16s} {bits:9.3f} {ratio:5.2f}x {sqnr_db(x, y):8.2f} {max_abs_error(x, y):11.4g} "
            f"{(t1 - t0) * 1e3:9.1f} {(t2 - t1) * 1e3:9.1f}"
        )
    return 0
