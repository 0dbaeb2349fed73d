"""What every file format of edgecoe shares: one strict pydantic base and one
way to turn pydantic's errors into :class:`~edgecoe.errors.Problem` records.

Manifests, export specs, device profiles, demo recipes and workload traces are
all untrusted input written by hand or by other tools, so unknown fields are
errors (a typo must not be ignored silently) and records are frozen once read.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError

from edgecoe.errors import Problem


class StrictModel(BaseModel):
    """A frozen pydantic model that refuses unknown fields."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def pydantic_problems(where: str, exc: ValidationError) -> list[Problem]:
    """One :class:`Problem` per pydantic error, located by its field path.

    Args:
        where: the file (and field prefix) the validated data came from.
        exc: pydantic's error, with every failing field.
    """
    out = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err["loc"])
        got = err.get("input")
        shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
        out.append(Problem(f"{where}: {loc}" if loc else where, f"{err['msg']}{shown}"))
    return out
