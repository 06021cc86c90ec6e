"""Errors raised by the curation library for one input; the pipeline quarantines the input with the message."""

from __future__ import annotations


class CurationInputError(ValueError):
    """One video (or clip) cannot be curated: unreadable, absurd dimensions/fps, a decode failure.

    The message names the file and the problem; the pipeline records it as the quarantine reason and
    goes on with the other inputs.
    """
