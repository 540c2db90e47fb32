"""``FunctionCall.get_call_graph()``: the tree of calls made from inside containers, in
Modal's shape (``InputInfo`` nodes with their ``children``)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any


class InputStatus(enum.IntEnum):
    PENDING = 0
    SUCCESS = 1
    FAILURE = 2
    INIT_FAILURE = 3
    TERMINATED = 4
    TIMEOUT = 5


_STATUS = {"pending": InputStatus.PENDING, "success": InputStatus.SUCCESS,
           "failure": InputStatus.FAILURE, "internal": InputStatus.FAILURE,
           "terminated": InputStatus.TERMINATED, "timeout": InputStatus.TIMEOUT}


@dataclass
class InputInfo:
    """One call of the graph: ``function_call_id`` is the call's id (what
    ``FunctionCall.from_id`` takes), ``function_name`` the function it called."""

    input_id: str
    function_call_id: str
    task_id: str
    status: InputStatus
    function_name: str
    module_name: str
    children: list[InputInfo] = field(default_factory=list)
    app_name: str = ""


def from_api(node: dict[str, Any]) -> InputInfo:
    """An ``InputInfo`` tree from the API's answer (``GET /v1/calls/{id}/graph``)."""
    return InputInfo(input_id=node["input_id"], function_call_id=node["call_id"], task_id="",
                     status=_STATUS.get(node["status"], InputStatus.FAILURE),
                     function_name=node["function_name"], module_name="",
                     children=[from_api(c) for c in node["children"]],
                     app_name=node.get("app", ""))
