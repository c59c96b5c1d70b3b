"""Benchmarks against the local Kernel emulator; each runs its subject side by side with a baseline."""
