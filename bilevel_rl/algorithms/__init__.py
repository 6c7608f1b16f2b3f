"""Bilevel algorithms, one module each."""
