"""The measurement harness: everything that measures mxcomm, above the library core.

Nothing in ``mxcomm.formats`` / ``kernels`` / ``collectives`` / ``tp`` imports
this package. One purpose per module:

* :mod:`~mxcomm.bench.metrics` -- error metrics of a decoded tensor;
* :mod:`~mxcomm.bench.synthetic` -- synthetic LLM-like activations;
* :mod:`~mxcomm.bench.sweep` / :mod:`~mxcomm.bench.report` -- the format sweep and its report;
* :mod:`~mxcomm.bench.slowlink` -- network namespaces shaped with ``tc`` (root), the collective sweep;
* :mod:`~mxcomm.bench.launch` -- spawning a group of local ranks;
* :mod:`~mxcomm.bench.smollm2` -- the evaluation model and text (no downloads);
* :mod:`~mxcomm.bench.evaluation` -- perplexity and TTFT under compressed TP.
"""
