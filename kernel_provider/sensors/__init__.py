"""sensors of the Kernel provider."""
