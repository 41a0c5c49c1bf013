"""The one base class of errors a user can fix (a bad param, a missing input,
a diverged run): a stage reports them in one line and exits 2, while any other
exception is a bug and keeps its traceback."""


class UserError(Exception):
    """Something the user can fix; the message says what and where."""
