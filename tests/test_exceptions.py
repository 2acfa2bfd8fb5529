"""The errors users catch: their fields, hierarchy and text."""

from __future__ import annotations

import copy
import pickle

from policyengine import CircuitOpenError, PolicyEngineError, RejectedError


def test_circuit_open_error_carries_guard_retry_after_and_state() -> None:
    err = CircuitOpenError("payments", 12.5, "half_open")
    assert isinstance(err, RejectedError)
    assert isinstance(err, PolicyEngineError)
    assert (err.guard, err.retry_after, err.state, err.reason) == (
        "payments",
        12.5,
        "half_open",
        "circuit_open",
    )
    assert str(err) == "circuit 'payments' is half_open; retry after 12.500s"


def test_circuit_open_error_defaults_to_open_and_never_says_negative_seconds() -> None:
    err = CircuitOpenError("payments", -0.25)
    assert err.state == "open"
    assert err.retry_after == 0.0


def test_circuit_open_error_survives_pickle_and_copy() -> None:
    err = CircuitOpenError("payments", 3.0, "forced_open")
    for clone in (pickle.loads(pickle.dumps(err)), copy.copy(err)):
        assert isinstance(clone, CircuitOpenError)
        assert (clone.guard, clone.retry_after, clone.state) == ("payments", 3.0, "forced_open")


def test_circuit_open_error_guard_can_be_renamed_by_a_wrapper() -> None:
    err = CircuitOpenError("payments", 3.0)
    err.guard = "payments-eu"
    assert err.guard == "payments-eu"
    assert err.retry_after == 3.0
    assert "payments-eu" in str(err)
