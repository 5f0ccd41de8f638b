"""Errors a user can cause. Each carries one sentence meant for the person, not a traceback."""


class UserError(Exception):
    """Bad input: a wrong path, an unreadable file, an unknown option value."""


class BadImageError(UserError):
    """A file or upload that is not an image we can read safely."""


class CheckpointError(UserError):
    """A checkpoint that is missing, corrupt, or does not match its metadata."""
