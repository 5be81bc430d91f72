"""The one error type of tasks/: a leaf module, so every reader and spec can raise it."""


class TaskError(ValueError):
    """Task data or a task definition we cannot use; the message names the file and the problem."""
