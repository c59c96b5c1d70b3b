"""operators of the Kernel provider."""
