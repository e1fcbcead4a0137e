"""Stand-ins for the demo, the tests and the benchmarks: Kombo simulator and friends."""
