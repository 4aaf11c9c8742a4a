"""Helpers shared by the test suites: a raw HTTP/1.1 client, gateway/backends fixtures and
synthetic benchmark results (``bench_results``)."""
