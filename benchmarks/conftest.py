"""Benchmarks measure this machine as it is; torch uses every core it sees."""
