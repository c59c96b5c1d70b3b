"""hooks of the Kernel provider."""
