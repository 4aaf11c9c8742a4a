"""fastgw's benchmark suite: ``python -m bench run --scenario NAME ...`` (see
docs/benchmarking.md). Scenarios start real processes (fastgw, a mock backend, peer proxies),
drive them with wrk, read CPU and memory from /proc and write ``results.json`` and
``report.md``. Kept free of imports so that ``python -m bench.<module>`` runs cleanly."""
