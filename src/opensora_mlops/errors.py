"""Errors a user is meant to read, not debug.

Each of these is raised for a problem in the user's input or settings (a malformed config, a data
table that breaks its contract, footage without captions, a stage with no full batch, a generation
request over the size limit, weights that do not load) and its message already names the cause and the
fix. The command line and ``kedro run`` print such an error as one short message instead of a
traceback through Kedro's runner (hundreds of lines); ``OPENSORA_TRACEBACK=1`` brings the traceback
back. Anything else (a bug) keeps its full traceback.
"""

from __future__ import annotations

import os

from opensora_mlops.config import ConfigError
from opensora_mlops.curation.curate import EmptyCurationError
from opensora_mlops.curation.errors import CurationInputError
from opensora_mlops.data.contracts import ContractError
from opensora_mlops.data.sampler import EmptyEpochError
from opensora_mlops.inference.mask_strategy import MaskStrategyError
from opensora_mlops.inference.sampling import GenerationError
from opensora_mlops.training.checkpoint import CheckpointError

# ConfigError covers its subclasses: StageDataError (training preflight), CaptionSourceError (ingestion)
EXPECTED_ERRORS: tuple[type[BaseException], ...] = (
    ConfigError, ContractError, CurationInputError, EmptyCurationError, EmptyEpochError, GenerationError,
    MaskStrategyError, CheckpointError,
)
TRACEBACK_ENV = "OPENSORA_TRACEBACK"


def expected_error(error: BaseException | None) -> BaseException | None:
    """The user-facing error in ``error``'s chain (it may arrive wrapped by a runner), or None."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, EXPECTED_ERRORS):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def want_traceback() -> bool:
    return os.environ.get(TRACEBACK_ENV, "").strip().lower() not in ("", "0", "false", "no")


def short_message(error: BaseException, where: str | None = None) -> str:
    """``error: <Type> in <where>: <message>`` plus how to get the traceback."""
    place = f" in {where}" if where else ""
    return (f"error: {type(error).__name__}{place}:\n{error}\n"
            f"(an input or settings problem, explained above; {TRACEBACK_ENV}=1 shows the traceback)")
