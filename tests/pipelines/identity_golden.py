"""Fixture functions whose identity hashes are pinned in ``tests/test_identity.py``.

Do not edit: any change to the code here (comments and docstrings aside) changes the pinned
hashes. ``python -c "import tests.pipelines.identity_golden as m; print(m.hashes())"`` prints
them as JSON, which the tests compare across processes with different ``PYTHONHASHSEED``.
"""

from __future__ import annotations

import dataclasses
import json
import math

import orca

SCALE = 3
TABLE = {"b": (1, 2.5), "a": frozenset({"x", "y", "z"}), 7: None}


@dataclasses.dataclass(frozen=True)
class Config:
    offset: int = 1


CONFIG = Config()


class Model:
    def __init__(self, k: int) -> None:
        self.k = k

    def predict(self, x: int) -> int:
        return _clip(x * self.k)


def _clip(v: int) -> int:
    return max(0, min(v, 100))


def helper(x: int) -> int:
    return _clip(x) + SCALE


@orca.function_pod(output_keys="y")
def plain(x: int) -> int:
    return x + 1


@orca.function_pod(output_keys="y")
def transitive(x: int) -> int:
    """Reads helpers two levels deep, a user class, constants and a stdlib module."""
    return helper(x) + Model(SCALE).predict(x) + TABLE["b"][0] + CONFIG.offset + int(math.sqrt(x))


def make(k: int):
    def scaled(x: int) -> int:
        return x * k

    return scaled


closed = orca.function_pod(output_keys="y", name="closed")(make(7))


def lambda_pod(name: str, fn):
    return orca.function_pod(output_keys="y", name=name, input_types={"x": int}, output_types={"y": int})(fn)


lam_a, lam_b = lambda_pod("lam", lambda x: x + 1), lambda_pod("lam", lambda x: x * 100)
lam_multi = lambda_pod(
    "lam_multi",
    lambda x: (
        x * 2
        + 1
    ),
)

POD_FUNCTIONS = {"plain": plain, "transitive": transitive, "closed": closed, "lam_a": lam_a,
                 "lam_b": lam_b, "lam_multi": lam_multi}


def hashes() -> str:
    """``{name: identity hash}`` of the fixture pods, as JSON."""
    return json.dumps({name: fn.pod.identity.hash for name, fn in POD_FUNCTIONS.items()}, sort_keys=True)
