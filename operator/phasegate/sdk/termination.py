"""The termination message: how a pod tells Kubernetes (and the operator) how it ended.

Kubernetes keeps at most 4096 bytes of it; a longer message is cut, so results are kept
small and written whole.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from phasegate.api import contract

LIMIT = 4096


def write_termination_message(path: Path, message: Any) -> bool:
    """Write the message; False when there is nowhere to write it (run by hand, outside a pod)."""
    text = message if isinstance(message, str) else json.dumps(message, separators=(",", ":"), default=str)
    data = text.encode()[:LIMIT]
    path = Path(path)
    if str(path) == contract.DEFAULT_TERMINATION_MESSAGE_PATH and not path.exists():
        # Outside a pod nobody mounted it; creating a file under /dev would be wrong.
        return False
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            fh.write(data)
    except OSError:
        return False
    return True
