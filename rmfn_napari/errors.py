"""Errors raised at the project's public boundary.

Every problem with user input (a file, a parameter) is raised as :class:`InputError`
with a message that names the file or parameter and says what is wrong, so that the CLI
and the widgets can show it as one line instead of a traceback from deep inside torch.
"""


class InputError(ValueError):
    """Bad user input: a missing/truncated/malformed file or an invalid parameter.

    The message names the file (or parameter) and the problem.
    """

    def __init__(self, message: str, path=None):
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {message}" if self.path else message)
