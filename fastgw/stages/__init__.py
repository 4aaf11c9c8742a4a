"""Request stages, one per file. Each is a small object whose ``on_request(ex) -> int`` the plan
puts into a route's chain (see ``pipeline.py`` for the verdicts)."""
