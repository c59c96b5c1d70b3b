"""TaskFlow decorators of the Kernel provider (``@task.kernel`` and friends)."""
