"""The measurement harness: everything that measures mxcomm, above the library core.

Nothing in ``mxcomm.formats`` / ``kernels`` / ``collectives`` / ``tp`` imports
this package. One purpose per module:

* :mod:`~mxcomm.bench.metrics` -- error metrics of a decoded tensor;
* :mod:`~mxcomm.bench.synthetic` -- synthetic LLM-like activations;
* :mod:`~mxcomm.bench.sweep` / :mod:`~mxcomm.bench.report` -- the format sweep and its report;
* :mod:`~mxcomm.bench.slowlink` -- network namespaces shaped with ``tc`` (root), the collective sweep;
* :mod:`~mxcomm.bench.launch` -- spawning a group of local ranks;
* :mod:`~mxcomm.bench.smollm2` -- the evaluation model and text (no downloads);

``mxcomm eval`` (SmolLM2-135M under compressed TP):

* :mod:`~mxcomm.bench.settings` -- the communication settings and the lists of them;
* :mod:`~mxcomm.bench.rank_setup` -- sharding, switching settings and calibrating inside a rank;
* :mod:`~mxcomm.bench.wire_accounting` -- what a forward pass sent, per forward;
* :mod:`~mxcomm.bench.perplexity` -- perplexity per setting and the paired statistics of its Δ;
* :mod:`~mxcomm.bench.ttft` -- time to first token over shaped links;
* :mod:`~mxcomm.bench.emulation` -- the single-process emulation of compressed TP (the bitwise oracle);
* :mod:`~mxcomm.bench.eval_tables` / :mod:`~mxcomm.bench.eval_report` -- the markdown tables; the output
  folder (results.md, results.json, plots, calibration);
* :mod:`~mxcomm.bench.eval_run` -- one run: its options, phases and output folder.
"""
