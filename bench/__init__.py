"""offload's benchmark suite: the hot paths measured side by side with RQ and arq.

``python -m bench`` (``make bench``) runs it all against one redis-server it starts on a
free loopback port, prints a table and writes the figures as JSON to ``bench/results/``.
See ``docs/benchmarks.md`` for what each figure means.
"""
