"""Benchmarks, run by hand: ./dev bench [api|images] (see README)."""
