"""Problem generators (MATH.md §9)."""
