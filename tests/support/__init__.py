"""Helpers shared by the test suites: a raw HTTP/1.1 client and gateway/backends fixtures."""
