"""Choosing a backend instance: balancing strategies, health, circuit breakers."""
