"""triggers of the Kernel provider."""
