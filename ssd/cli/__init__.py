"""The console scripts (`ssd-train`, `ssd-evaluate`, ...): each module parses its arguments, calls
the library and prints; `main(argv) -> int` returns the exit status (2 for a usage error)."""
