"""The project's own error types. Helpers raise them; each script's entry point turns them into one line
("error: ...") and an exit code, so every function can also be called from a notebook or a test."""


class DataError(Exception):
    """Problems with the data folder, listed all at once, with what to do."""


class ModelFileError(RuntimeError):
    """Weights or a checkpoint that cannot be had or used; the message says what to do."""


class UsageError(Exception):
    """A flag or an input that cannot work as given; the message says what to use instead."""


class TrainingError(RuntimeError):
    """A run that had to stop (a non-finite loss, out of memory); the message says what to try."""


class StorageError(OSError):
    """A file that could not be written for lack of space; the message says how much is needed."""


class Interrupted(Exception):
    """Ctrl-C or SIGTERM during training; the message says what was kept and how to resume."""


# What the command-line scripts report as a message instead of a traceback.
USER_ERRORS = (DataError, ModelFileError, UsageError, TrainingError, StorageError, FileNotFoundError)
